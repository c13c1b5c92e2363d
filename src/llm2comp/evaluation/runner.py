"""Run mteb tasks on a model and its baselines, print a side-by-side table, write results.json.

    from llm2comp.evaluation import evaluate_model
    scores = evaluate_model("runs/final", ["STSBenchmark", "SICK-R"], limit=500, baselines=["mean", "minilm"])

Every (model, task) pair goes through `mteb.evaluate` with mteb's result cache switched off, so every number is
computed now, from the weights in memory (an mteb cache keyed by model name could otherwise return a stale result
of an earlier model of the same name, or a full-data result for a subsampled run).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .report import EvaluationReport, _fmt, _print_table, _subsample_note
from .result_folder import save_finished, save_progress, set_aside_earlier_run
from .significance import PREDICTIONS_DIR, label_folder, write_gold
from .specs import ModelSpec, baseline_spec, model_spec
from .tasks import DEFAULT_SEED, DEFAULT_TASKS, load_task, resolve_data_dir

logger = logging.getLogger(__name__)


def _main_score(task_result) -> float:
    return float(task_result.get_score())


def _check_labels(labels: list[str], with_predictions: bool) -> None:
    """Refuse, before anything runs, labels that would overwrite each other's scores or prediction folders."""
    seen: dict[str, str] = {}
    for label in labels:
        key = label_folder(label) if with_predictions else label
        if key in seen:
            if seen[key] == label:
                raise ValueError(f"two models share the label '{label}'")
            raise ValueError(f"the labels '{seen[key]}' and '{label}' would share the predictions folder '{key}'")
        seen[key] = label


def run_suite(
    specs: Sequence[ModelSpec],
    tasks: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    limit: int | Mapping[str, int] | None = None,
    batch_size: int = 32,
    *,
    corpus_limit: int | None = None,
    seed: int = DEFAULT_SEED,
    show_progress: bool = True,
    raise_error: bool = True,
    log: Callable[[str], None] | None = None,
    on_task_done: Callable[[EvaluationReport], None] | None = None,
    prediction_dir: str | os.PathLike | None = None,
) -> EvaluationReport:
    """Evaluate each model on each task (models loaded one at a time, freed after their tasks).
    `on_task_done` receives the report so far after every (model, task) pair: long runs save as they go.
    `prediction_dir`: keep mteb's per-item predictions, one folder per model, and the STS gold scores
    (see `significance`)."""
    import mteb

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _check_labels([s.label for s in specs], prediction_dir is not None)
    tasks = list(tasks)
    resolved = resolve_data_dir(data_dir)
    log(f"data: {resolved or 'Hugging Face Hub (no local data dir)'}")
    task_objects = {}
    subsample, sources, main_scores = {}, {}, {}
    for name in tasks:
        task_limit = limit.get(name) if isinstance(limit, Mapping) else limit
        task = load_task(name, resolved, task_limit, corpus_limit=corpus_limit, seed=seed)
        task_objects[name] = task
        subsample[name] = task.llm2comp_subsample
        sources[name] = task.llm2comp_source
        main_scores[name] = task.metadata.main_score
        note = _subsample_note(name, task.llm2comp_subsample)
        if note:
            log(note)
    prediction_dir = Path(prediction_dir) if prediction_dir is not None else None
    if prediction_dir is not None:
        for task in task_objects.values():
            write_gold(task, prediction_dir)

    scores: dict[str, dict[str, float | None]] = {}
    seconds: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, str]] = {}
    total = len(specs) * len(tasks)
    step = 0

    def build_report(complete: bool) -> EvaluationReport:
        return EvaluationReport(
            tasks=tasks,
            models=[s.label for s in specs],
            scores={label: dict(v) for label, v in scores.items()},
            seconds={label: dict(v) for label, v in seconds.items()},
            main_scores=main_scores,
            subsample=subsample,
            sources=sources,
            errors=errors,
            settings={
                "data_dir": str(resolved) if resolved else None,
                "limit": dict(limit) if isinstance(limit, Mapping) else limit,
                "corpus_limit": corpus_limit,
                "seed": seed,
                "batch_size": batch_size,
                "models": {s.label: s.source for s in specs},
            },
            complete=complete,
        )

    for spec in specs:
        scores[spec.label], seconds[spec.label] = {}, {}
        t0 = time.monotonic()
        mteb_model, raw = spec.load()
        log(f"loaded {spec.label} [{spec.kind}: {spec.source}] in {time.monotonic() - t0:.1f}s")
        try:
            for name in tasks:
                step += 1
                log(f"[{step}/{total}] {spec.label} · {name} ...")
                start = time.monotonic()
                try:
                    result = mteb.evaluate(
                        mteb_model,
                        task_objects[name],
                        cache=None,
                        overwrite_strategy="always",
                        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
                        show_progress_bar=False,
                        raise_error=True,
                        prediction_folder=prediction_dir / label_folder(spec.label) if prediction_dir is not None else None,
                    )
                    score = _main_score(result.task_results[0])
                except Exception as error:  # noqa: BLE001 - reported in the table, re-raised on request
                    if raise_error:
                        raise
                    logger.exception("%s on %s failed", spec.label, name)
                    errors.setdefault(spec.label, {})[name] = f"{type(error).__name__}: {error}"
                    score = None
                elapsed = time.monotonic() - start
                scores[spec.label][name] = score
                seconds[spec.label][name] = round(elapsed, 2)
                log(f"[{step}/{total}] {spec.label} · {name}: {_fmt(score)} {main_scores[name]} in {elapsed:.1f}s")
                if on_task_done is not None:
                    on_task_done(build_report(complete=step == total))
        finally:
            del mteb_model, raw
            gc.collect()
    return build_report(complete=True)


def evaluate_model(
    model_or_path,
    tasks: Sequence[str] | str | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | Mapping[str, int] | None = None,
    batch_size: int = 32,
    output_dir: str | os.PathLike | None = None,
    baselines: Sequence[str] | str = (),
    *,
    corpus_limit: int | None = None,
    instructions: Mapping[str, str] | None = None,
    use_task_instructions: bool = False,
    seed: int = DEFAULT_SEED,
    device: str | None = None,
    num_threads: int | None = None,
    pooling: str | None = None,
    attention: str | None = None,
    backend: str = "torch",
    save_predictions: bool = False,
    show_progress: bool = True,
    print_table: bool = True,
    return_report: bool = False,
):
    """Evaluate a model (and baselines, side by side) on mteb tasks; returns {task: main score} of the model.

    Args:
        model_or_path: an `LLM2Comp`, a saved LLM2Comp dir, a backbone (alias, dir, hub id, .gguf), a
            SentenceTransformer or its folder, or `minilm`. None evaluates only the baselines that need no
            backbone (e.g. `minilm`).
        tasks: mteb task names (list or comma-separated); default: STSBenchmark, STS13-15, SICK-R, Banking77, SciFact.
        data_dir: local data folder (see `llm2comp.evaluation.tasks`); default $LLM2COMP_DATA_DIR, ../shared/data.
        limit: deterministic subsample size per task (an int, or {task: int}); see `tasks.subsample_task`.
        batch_size: texts per forward pass.
        output_dir: where `results.json` ({task: main score} of the model) and `results_full.json` (every model,
            per-task seconds, subsampling, settings) and `results.txt` (the table) are written; the last two are
            rewritten after every task (with `"complete": false` until the run ends), so a killed run keeps
            what it measured. An earlier run's files in `output_dir` wait in `output_dir/previous_run` until
            this run completes (a killed re-run loses nothing of the last complete run).
        baselines: extra columns: `mean`, `last`, `prompteol` (zero-shot poolings of the model's backbone),
            `minilm`, a sentence-transformers folder, or any LLM2Comp-loadable name.
        corpus_limit: retrieval corpus size under `limit` (default 10 * limit).
        instructions / use_task_instructions: query-side instructions for LLM2Comp models (see `MTEBEncoder`).
        device: where models given by name are loaded (default: LLM2Comp's / sentence-transformers' choice).
        pooling: pooling of the main model when it is loaded by name (`mean`, `last`, `prompteol`, `memory`).
        attention: `causal` or `bidirectional`: the main model's attention mask when it is loaded by name
            (default: as saved; a bare backbone is causal except under memory pooling, see `LLM2Comp`).
        backend: what runs the main model's network when it is loaded by name (`backends.py`: torch, torch-int8,
            onnx, onnx-int8); its label says which.
        num_threads: torch CPU threads during the run (restored after). On a shared CPU machine use 1: OpenMP
            threads oversubscribed by other processes make a 2-thread run up to 10x slower than a 1-thread one.
        save_predictions: also keep each model's per-item predictions and the gold values under
            `output_dir/predictions`, for `llm2comp compare` (a paired bootstrap between two runs).
        return_report: return the full `EvaluationReport` instead of the dict.
    """
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(tasks or DEFAULT_TASKS)
    if isinstance(baselines, str):
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    adapter_kwargs = {"instructions": instructions, "use_task_instructions": use_task_instructions}
    specs = []
    if model_or_path is not None:
        specs.append(model_spec(model_or_path, batch_size=batch_size, adapter_kwargs=adapter_kwargs, device=device, pooling=pooling,
                                attention=attention, backend=backend))
    for baseline in baselines:
        spec = baseline_spec(baseline, model_or_path, batch_size=batch_size, adapter_kwargs=adapter_kwargs, device=device)
        if any(s.label == spec.label for s in specs):
            spec.label = f"{spec.label} (baseline)"
        specs.append(spec)
    if not specs:
        raise ValueError("nothing to evaluate: give a model or at least one baseline")

    import torch

    out = Path(output_dir) if output_dir is not None else None
    if save_predictions and out is None:
        raise ValueError("save_predictions needs an output_dir (--predictions needs --output)")
    if out is not None:
        _check_labels([s.label for s in specs], save_predictions)  # a refused run leaves the folder as it was
        set_aside_earlier_run(out)

    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        report = run_suite(
            specs,
            tasks,
            data_dir=data_dir,
            limit=limit,
            batch_size=batch_size,
            corpus_limit=corpus_limit,
            seed=seed,
            show_progress=show_progress,
            on_task_done=(lambda report: save_progress(out, report)) if out is not None else None,
            prediction_dir=out / PREDICTIONS_DIR if save_predictions else None,
        )
    finally:
        torch.set_num_threads(threads_before)
    if print_table:
        _print_table(report.table())
    main = report.scores[specs[0].label]
    if out is not None:
        save_finished(out, report, main)
    return report if return_report else main
