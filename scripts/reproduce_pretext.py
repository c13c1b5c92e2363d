"""Reproduce the paper's pretext comparison (KL vs NLL vs RC vs MNTP) at small scale on the embedded default.

Same data, same order, same budget for every objective; then the offline MTEB suite and the paper's
diagnostics for each, written to docs/results/pretext.md (section 4).

    python scripts/reproduce_pretext.py train --steps 80           # ~1.5 h on a 2-core CPU; resumable
    python scripts/reproduce_pretext.py evaluate                    # after training

The comparison with a supervised stage after each objective (docs/results/pretext.md, section 3.4): `train` with
`--attention causal --memory-init ...`, then `supervise` (the shipped default's recipe from each stage-1 model and
from the bare backbone), `llm2comp evaluate` of each, and `compare-report` for the table and plot.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("kl", "nll", "rc", "mntp")
TASKS = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R", "Banking77Classification", "SciFact")


def train_all(args) -> None:
    from llm2comp.training.config import TrainConfig

    for objective in args.objectives.split(","):
        output = Path(args.runs) / objective
        if (output / "llm2comp_config.json").is_file():
            print(f"[{objective}] done already: {output}")
            continue
        overrides = {"memory_init": args.memory_init} if args.memory_init else {}
        if args.attention and objective != "mntp":  # MNTP is bidirectional by definition (TrainConfig refuses causal)
            overrides["bidirectional"] = args.attention == "bidirectional"
        if args.learning_rate:
            overrides["learning_rate"] = args.learning_rate
        cfg = TrainConfig.from_yaml(
            ROOT / "configs" / "smollm2-135m" / f"pretrain-{objective}.yaml",
            output=str(output), max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
            save_steps=max(10, args.steps // 5), **overrides,
        )
        _timed_train(cfg, output)


def _timed_train(cfg, output: Path) -> None:
    """One resumable run; its wall time (summed over resumed parts) in train_time.json."""
    from llm2comp.training.run import train

    timing = output / "train_time.json"
    spent = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
    cfg.resume = (output / "checkpoints").is_dir()
    start = time.time()
    train(cfg)
    timing.write_text(json.dumps({"seconds": spent + time.time() - start}))
    print(f"[{output.name}] trained in {spent + time.time() - start:.0f}s")


def supervise_all(args) -> None:
    """The same supervised stage (the shipped default's recipe, without its normalizer) after each pretext
    model, and from the bare backbone ("none"): runs/<objective>-sup."""
    from llm2comp.quickstart import default_recipe
    from llm2comp.training.config import TrainConfig

    for objective in args.objectives.split(",") + ["none"]:
        output = Path(args.runs) / f"{objective}-sup"
        if (output / "llm2comp_config.json").is_file():
            print(f"[{objective}-sup] done already: {output}")
            continue
        start_from = "smollm2-135m" if objective == "none" else str(Path(args.runs) / objective)
        if objective != "none" and not (Path(start_from) / "llm2comp_config.json").is_file():
            print(f"[{objective}-sup] stage 1 not trained yet: {start_from}")
            continue
        cfg = TrainConfig.from_yaml(default_recipe(),
                                    model=start_from, output=str(output), fit_normalizer=0,
                                    pooling="memory")
        _timed_train(cfg, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "supervise", "evaluate", "report", "compare-report", "all"])
    parser.add_argument("--runs", default="runs/pretext")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--attention", choices=["bidirectional", "causal"], help="stage 1 encoder attention of the memory objectives (default: each config's; MNTP stays bidirectional)")
    parser.add_argument("--memory-init", help="stage 1 memory tokens from this phrase (default: mean embedding)")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--limits", help='JSON {task: n} subsample sizes, e.g. \'{"SICK-R": 3000}\'')
    parser.add_argument("--data-dir")
    parser.add_argument("--results", default="docs/results/pretext.md",
                        help="the results page to write into; its figures go to ../../figures, the rows to ../../comparison.json")
    args = parser.parse_args()
    if args.phase in ("train", "all"):
        train_all(args)
    if args.phase in ("supervise", "all"):
        supervise_all(args)
    if args.phase in ("evaluate", "all"):
        evaluate_all(args)
    if args.phase in ("report", "all"):
        report(args)
    if args.phase == "compare-report":
        compare_report(args)


def evaluate_all(args) -> None:
    """Each trained model on the offline suite, plus its diagnostics; results.json per model, then the report."""
    from llm2comp import LLM2Comp
    from llm2comp.evaluation import diagnostics, evaluate_model
    from llm2comp.evaluation.tasks import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("no MTEB data: pass --data-dir or set LLM2COMP_DATA_DIR (layout of ../shared/data)")
    sample = [json.loads(line)["sentence1"] for line in
              (data_dir / "mteb" / "STSBenchmark" / "test.jsonl").read_text().splitlines()[:1000]]
    limits = json.loads(args.limits) if args.limits else None
    for objective in args.objectives.split(","):
        output = Path(args.runs) / objective
        target = output / "eval"
        if (target / "results_full.json").is_file():
            print(f"[{objective}] evaluated already")
            continue
        model = LLM2Comp.from_pretrained(output).merge_and_unload()
        evaluate_model(model, tasks=args.tasks, data_dir=data_dir, limit=limits, batch_size=32, output_dir=target)
        result = diagnostics.diagnose(model, sample, output_dir=target)
        (target / "diagnostics_summary.json").write_text(json.dumps(diagnostics.summary(result), indent=2))


PAPER = {  # Llama-2-7B-chat, pretext only (RECIPE.md): per-task scores where we have the task, and the 14-task mean
    "kl": {"SICK-R": 68.28, "STSBenchmark": 70.87, "Banking77Classification": 84.33, "SciFact": 42.57, "mean14": 52.49},
    "mntp": {"SICK-R": 67.65, "STSBenchmark": 65.82, "Banking77Classification": 79.77, "SciFact": 44.51, "mean14": 46.87},
    "nll": {"mean14": 46.22},
    "rc": {"mean14": 35.79},
}
BEGIN, END = "<!-- pretext:begin -->", "<!-- pretext:end -->"
FIGURES_LINK = "../figures"  # from a page in docs/results/ to docs/figures/


def _docs(args) -> Path:
    """The docs folder of the results page: the page sits in docs/results/, figures in docs/figures/."""
    return Path(args.results).parent.parent


def report(args) -> None:
    """Tables, spectra and memory-correlation figures of the evaluated runs, into a section of the results page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = _docs(args) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    rows, spectra = {}, {}
    for objective in args.objectives.split(","):
        target = Path(args.runs) / objective / "eval"
        if not (target / "results.json").is_file():
            continue
        rows[objective] = {
            "scores": json.loads((target / "results.json").read_text()),
            "full": json.loads((target / "results_full.json").read_text()),
            "diag": json.loads((target / "diagnostics_summary.json").read_text()),
            "train_s": json.loads((Path(args.runs) / objective / "train_time.json").read_text())["seconds"],
        }
        spectra[objective] = json.loads((target / "diagnostics.json").read_text())
        if (target / "memory_correlation.png").is_file():
            (figures / f"pretext-{objective}-memory-correlation.png").write_bytes((target / "memory_correlation.png").read_bytes())
    if not rows:
        raise SystemExit("nothing evaluated yet")
    tasks = [t for t in args.tasks.split(",") if all(t in r["scores"] for r in rows.values())]

    fig, ax = plt.subplots(figsize=(6, 4))
    for objective, result in spectra.items():
        values = result["spectrum"]["normalized_spectrum"]
        ax.semilogy(range(1, len(values) + 1), values, label=f"{objective} (eff. dim {result['spectrum']['effective_dimension']:.0f})")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("normalised singular value")
    ax.set_title("Embedding spectra after the pretext stage (STS-B sentences)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figures / "pretext-spectra.png", dpi=120)
    plt.close(fig)

    def pct(x):
        return f"{100 * x:.2f}"

    lines = [BEGIN, "", "| objective | " + " | ".join(tasks) + " | mean | train time |", "|---" * (len(tasks) + 3) + "|"]
    means = {}
    for objective, r in rows.items():
        means[objective] = sum(r["scores"][t] for t in tasks) / len(tasks)
        lines.append(f"| {objective.upper()} | " + " | ".join(pct(r["scores"][t]) for t in tasks)
                     + f" | **{pct(means[objective])}** | {r['train_s'] / 60:.0f} min |")
    ordering = " > ".join(o.upper() for o in sorted(means, key=means.get, reverse=True))
    lines += ["", f"Ordering by mean: **{ordering}** (paper, 14 MTEB tasks, Llama-2-7B: KL 52.49 > MNTP 46.87 > NLL 46.22 > RC 35.79).", ""]
    sub = next(iter(rows.values()))["full"].get("subsampling") or next(iter(rows.values()))["full"].get("settings", {}).get("limit")
    lines += [f"Subsampling (deterministic, seed 42): `{json.dumps(sub)}`; other tasks in full.", ""]
    lines += ["Paper, pretext only, on the tasks we share (Llama-2-7B-chat, 32k samples):", "",
              "| objective | SICK-R | STSBenchmark | Banking77 | SciFact | 14-task mean |", "|---|---|---|---|---|---|"]
    for objective in ("kl", "mntp", "nll", "rc"):
        paper = PAPER[objective]
        lines.append(f"| {objective.upper()} | " + " | ".join(str(paper.get(t, "")) for t in
                     ("SICK-R", "STSBenchmark", "Banking77Classification", "SciFact", "mean14")) + " |")
    lines += ["", "Diagnostics on 1,000 STS-B test sentences (effective dimension = exp(entropy) of the normalised singular values; "
              "memory correlation = mean off-diagonal Pearson correlation between the k=8 memory-token states of a text):", "",
              "| objective | effective dim. | dims for 90% energy | top-1 energy | anisotropy | memory-token corr. (mean / max) |",
              "|---|---|---|---|---|---|"]
    for objective, r in rows.items():
        d = r["diag"]
        memory = f"{d['mean_offdiag_pearson']:.3f} / {d['max_offdiag_pearson']:.3f}" if "mean_offdiag_pearson" in d else "n/a (mean pooling)"
        lines.append(f"| {objective.upper()} | {d['effective_dimension']:.1f} | {d['dims_90']} | {d['top1_energy']:.3f} | {d['anisotropy']:.3f} | {memory} |")
    lines += ["", f"![spectra]({FIGURES_LINK}/pretext-spectra.png)", ""]
    lines += [f"![{o} memory correlation]({FIGURES_LINK}/pretext-{o}-memory-correlation.png)" for o in rows if o != "mntp"]
    lines += ["", END]
    section = "\n".join(lines)
    results = Path(args.results)
    text = results.read_text() if results.is_file() else "# Results\n\n" + BEGIN + END + "\n"
    if BEGIN not in text:
        text += "\n" + BEGIN + END + "\n"
    head, rest = text.split(BEGIN, 1)
    results.write_text(head + section + rest.split(END, 1)[1])
    print(section)


COMPARISON_BEGIN, COMPARISON_END = "<!-- comparison:begin -->", "<!-- comparison:end -->"
DEV_SUITE = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R")
BANKING = "Banking77Classification"


def _scores(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _tail_loss(run: Path, last: int = 20) -> float | None:
    log = run / "loss.jsonl"
    if not log.is_file():
        return None
    losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    return sum(losses[-last:]) / len(losses[-last:]) if losses else None


def _prediction_dir(evals: Path, name: str, tasks: Sequence[str]) -> Path | None:
    """The evaluation of `name` that kept per-item predictions (`--predictions`) of `tasks`, if any: eval/<name>,
    or eval/<name>-pred (a re-evaluation with --predictions of a model whose full evaluation ran without it)."""
    from llm2comp.evaluation.significance import available_tasks

    for folder in (evals / name, evals / f"{name}-pred"):
        if set(tasks) <= set(available_tasks(folder)):
            return folder
    return None


def _vs_none(evals: Path, objective: str, tasks: Sequence[str]) -> dict | None:
    """<objective>-sup minus none-sup with a paired bootstrap over the test items: the STS average of the five
    STS tasks, or the accuracy of one classification task."""
    from llm2comp.evaluation import compare_evaluations

    ours, none = _prediction_dir(evals, f"{objective}-sup", tasks), _prediction_dir(evals, "none-sup", tasks)
    if ours is None or none is None:
        return None
    try:
        last = compare_evaluations(none, ours, list(tasks), resamples=2000)[-1]  # the STS average, or the one task
    except (FileNotFoundError, ValueError) as error:
        print(f"[{objective}] no interval against none on {','.join(tasks)}: {error}")
        return None
    return {"delta": last.delta, "low": last.low, "high": last.high, "p_not_better": last.p_not_better}


def _interval(diff: dict | None) -> str:
    if not diff:
        return "–"
    return f"{100 * diff['delta']:+.2f} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"


def compare_report(args) -> None:
    """The pretext comparison (stage 1, then the same supervised stage) as a table and a plot in the results page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, evals = Path(args.runs), Path(args.runs) / "eval"
    # rows measured in earlier sessions persist here (runs/ is not committed); this session's runs update them
    store = _docs(args) / "comparison.json"
    rows = json.loads(store.read_text()) if store.is_file() else {}
    for objective in ["none"] + args.objectives.split(","):
        stage1 = None if objective == "none" else runs / objective
        pretext = _scores(evals / objective / "results.json")  # none: the untrained (zero-shot) memory tokens
        final = _scores(evals / f"{objective}-sup" / "results.json")
        if stage1 is not None and not (stage1 / "llm2comp_config.json").is_file():
            continue
        timing = _scores(stage1 / "train_time.json") if stage1 else None
        row = {"stage1_min": timing["seconds"] / 60 if timing else None, "stage1_loss": _tail_loss(stage1) if stage1 else None,
               "pretext": pretext, "final": final,
               "vs_none": None if objective == "none" else _vs_none(evals, objective, DEV_SUITE),
               "banking_vs_none": None if objective == "none" else _vs_none(evals, objective, [BANKING])}
        old = rows.get(objective, {})
        rows[objective] = {k: row[k] if row[k] is not None else old.get(k) for k in row}
        if final is not None:  # the intervals belong to these scores: never keep ones computed on older ones
            rows[objective]["vs_none"] = row["vs_none"]
            rows[objective]["banking_vs_none"] = row["banking_vs_none"]
    rows = {k: rows[k] for k in ["none"] + args.objectives.split(",") if k in rows}
    store.write_text(json.dumps(rows, indent=2) + "\n")

    def cell(value, scale=100.0, fmt="{:.2f}"):
        return fmt.format(scale * value) if value is not None else "–"

    lines = [COMPARISON_BEGIN, "",
             "| stage 1 | stage-1 time | stage-1 loss (last 20 steps) | stage 1 only: STS-B / SICK-R (1,000 pairs) | "
             "then supervised: " + " | ".join(DEV_SUITE) + " | STS avg | STS avg minus none [95% interval] | Banking77 | "
             "Banking77 minus none [95% interval] |",
             "|---" * (8 + len(DEV_SUITE)) + "|"]
    averages = {}
    for objective, r in rows.items():
        pretext, final = r["pretext"] or {}, r["final"] or {}
        sts = [final.get(t) for t in DEV_SUITE]
        average = sum(sts) / len(sts) if final and None not in sts else None
        averages[objective] = (average, final.get(BANKING), pretext.get("STSBenchmark"), pretext.get("SICK-R"))
        lines.append(f"| {objective.upper() if objective != 'none' else 'none (supervised only)'} | "
                     f"{cell(r['stage1_min'], 1, '{:.0f} min')} | {cell(r['stage1_loss'], 1, '{:.3f}')} | "
                     f"{cell(pretext.get('STSBenchmark'))} / {cell(pretext.get('SICK-R'))} | "
                     + " | ".join(cell(v) for v in sts) + f" | **{cell(average)}** | {_interval(r.get('vs_none'))} | "
                     f"{cell(final.get(BANKING))} | {_interval(r.get('banking_vs_none'))} |")
    lines += ["", f"![pretext comparison]({FIGURES_LINK}/pretext-comparison.png)", "", COMPARISON_END]

    figures = _docs(args) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = list(averages)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = [n.upper() if n != "none" else "none" for n in names]
    for offset, (index, label) in zip((-0.2, 0.2), ((2, "STS-B"), (3, "SICK-R"))):
        values = [100 * (averages[n][index] or 0) for n in names]
        left.bar([i + offset for i in range(len(names))], values, width=0.4, label=label)
    left.set_title("after stage 1 only (1,000 test pairs each)")
    left.set_ylabel("Spearman x 100")
    # MNTP's stage-1 model is read as LLM2Vec defines it: mean pooling, bidirectional (the others: memory, causal)
    left.set_xticks(range(len(names)), [t + "\n(mean, bidir.)" if t == "MNTP" else t for t in ticks])
    left.set_ylim(0, 1.2 * max([100 * (averages[n][i] or 0) for n in names for i in (2, 3)] + [1]))
    left.legend(fontsize=8, loc="upper right", ncol=2)
    # what the supervised stage ends with, as the difference to no stage 1: the quantity the claim is about
    base = averages.get("none", (None, None))
    series = ((0, "vs_none", -0.1, "o", "C0", "STS average (5 tasks), 95% paired-bootstrap interval"),
              (1, "banking_vs_none", 0.1, "s", "C1", "Banking77 accuracy, 95% interval"))
    for index, key, offset, marker, color, label in series:
        for i, name in enumerate(names):
            diff = rows[name].get(key) if name != "none" else {"delta": 0.0, "low": 0.0, "high": 0.0}
            score = averages[name][index]
            if diff:
                delta = 100 * diff["delta"]
                right.errorbar(i + offset, delta, yerr=[[delta - 100 * diff["low"]], [100 * diff["high"] - delta]],
                               fmt=marker, color=color, capsize=4, label=label if i == 0 else None)
            elif score is not None and base[index] is not None:  # no predictions kept: the difference, no interval
                right.plot(i + offset, 100 * (score - base[index]), marker, color=color)
    right.axhline(0, color="grey", lw=0.8)
    right.set_title("then the same supervised stage: difference to 'none'")
    right.set_ylabel("points x 100 (full test sets)")
    right.set_xticks(range(len(names)), ticks)
    low, high = right.get_ylim()
    right.set_ylim(low, high + 0.35 * (high - low))  # room for the legend above the points
    right.legend(fontsize=8, loc="upper left")
    for ax in (left, right):
        ax.set_xlabel("stage-1 pretext objective")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("SmolLM2-135M: 6,400 texts of stage 1 (causal; MNTP bidirectional), then the same 5,120 supervised pairs "
                 "(train splits, causal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(figures / "pretext-comparison.png", dpi=110)
    plt.close(fig)

    section = "\n".join(lines)
    results = Path(args.results)
    text = results.read_text()
    if COMPARISON_BEGIN not in text:
        raise SystemExit(f"{results}: no {COMPARISON_BEGIN} marker to write the table to")
    head, rest = text.split(COMPARISON_BEGIN, 1)
    results.write_text(head + section + rest.split(COMPARISON_END, 1)[1])
    print(section)


if __name__ == "__main__":
    main()
