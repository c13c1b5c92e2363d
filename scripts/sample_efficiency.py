"""Does compression pay? The paper's sample-efficiency claim, measured as one resumable script.

One supervised recipe on NLI pairs (configs/smollm2-135m/supervised-nli-curve.yaml: a constant learning rate after
a 10-step warm-up, a checkpoint every 25 steps, all kept) from three starts, the arms:

    backbone     smollm2-135m, memory tokens from the recipe's phrase (no stage 1)
    compressor   smollm2-135m-compressor, the shipped stage 1 that compresses (KL + bridge, docs/results/pretext.md 3.5)
    mntp         LLM2Vec's pretext: configs/smollm2-135m/pretrain-mntp.yaml for --mntp-steps steps, its (untrained)
                 memory tokens from the recipe's phrase, so that it differs from the backbone arm by its weights only
    compressor-long  stage 1 on long texts as the official release trains it (news passages of >= 1,000 characters,
                 up to 256 tokens, a random split point): configs/smollm2-135m/pretrain-kl-longtext.yaml for
                 --long-steps steps; its compression probe at 256 and at 64 tokens goes to SCORES/stage1-kl-long/

Every arm is read through its memory tokens (the recipe's `pooling: memory`; an MNTP model saves mean pooling, which
the supervised stage would otherwise keep).

The first seed runs to the largest budget, the others to --two-seed-max (with a constant rate, the checkpoint at step
N is what an N-step run gives). Every checkpoint at a budget is scored on the full test sets (five STS tasks and
Banking77, with predictions); every arm is compared with the backbone arm at the same seed and budget (paired
bootstrap over the test items); `report` writes the table (markdown) and the figure (PNG). Every step skips what is
already on disk, so a killed run restarts where it stopped (training with --resume), and a run trained to fewer steps
by an earlier call (say --budgets 25,50) is extended from its last checkpoint when a larger budget is asked for.

Training goes to --runs (checkpoints, not kept in git); the scores go to --scores, a folder in the repository
(docs/results/sample-efficiency/: each scored checkpoint's results, predictions and comparison), so that what one
session scored is committed and the next one trains and scores only the rest (a run cut off mid-training starts again).

    python scripts/sample_efficiency.py run [--runs runs/curve] [--scores DIR] [--seeds 42,7] [--budgets 25,50,100,200]
    python scripts/sample_efficiency.py report [--scores DIR] [--figure docs/figures/sample-efficiency.png]
    python scripts/sample_efficiency.py pretext [--starts untrained,compressor,mntp,compressor-long]  # before any
        supervised step: each start's embedding as it is and with a normalizer (SCORES/pretext-only/)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-135m" / "supervised-nli-curve.yaml"
MNTP = ROOT / "configs" / "smollm2-135m" / "pretrain-mntp.yaml"
LONGTEXT = ROOT / "configs" / "smollm2-135m" / "pretrain-kl-longtext.yaml"
STS = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R")
TASKS = (*STS, "Banking77Classification")
ARMS = ("backbone", "compressor", "mntp", "compressor-long")
SHIPPED = {"backbone": "smollm2-135m", "compressor": "smollm2-135m-compressor"}
STAGE1 = {"mntp": (MNTP, "stage1-mntp"), "compressor-long": (LONGTEXT, "stage1-kl-long")}  # trained here
SCORES = ROOT / "docs" / "results" / "sample-efficiency"


def plan(budgets: list[int], seeds: list[int], two_seed_max: int) -> list[tuple[int, int, list[int]]]:
    """(seed, steps to train, budgets to score) per seed: the first seed to the largest budget, the others only as far
    as the budgets of ``two_seed_max`` steps and fewer (a seed with none of those is left out)."""
    budgets = sorted(set(budgets))
    runs = [(seeds[0], budgets[-1], budgets)]
    for seed in seeds[1:]:
        few = [b for b in budgets if b <= two_seed_max]
        if few:
            runs.append((seed, few[-1], few))
    return runs


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def start_of(arm: str, runs: Path, llm2comp: str, stage1_steps: dict[str, int] | None = None,
             scores: Path = SCORES) -> str:
    """The model an arm's supervised stage starts from; a stage 1 of this script is trained first where missing
    (resumed where it was cut off), and the long-text compressor's probes are written beside the scores."""
    if arm in SHIPPED:
        return SHIPPED[arm]
    config, name = STAGE1[arm]
    out = runs / name
    if not (out / "llm2comp_config.json").is_file():
        steps = (stage1_steps or {}).get(arm, 300)
        # memory tokens from the supervised recipe's phrase: MNTP never trains them, the KL run starts from it
        _run([llm2comp, "train", "--config", str(config), "--max-steps", str(steps), "--output", str(out), "--resume",
              "--memory-init", recipe_setting("memory_init")])
    if arm == "compressor-long":
        probes = scores / name
        for tokens, passages in ((256, 64), (64, 256)):  # at its own length, and at the shipped compressor's
            report = probes / f"probe-{tokens}.json"
            if not report.is_file():
                probes.mkdir(parents=True, exist_ok=True)
                _run([llm2comp, "probe", str(out), "--text-tokens", str(tokens), "--passages", str(passages),
                      "--ceiling-passages", "0", "--output", str(report)])
        for log in ("probe.jsonl", "loss.jsonl", "loss.png"):  # stage 1's own record, kept with the scores
            if (out / log).is_file():
                (probes / log).write_bytes((out / log).read_bytes())
    return str(out)


def recipe_setting(key: str):
    import yaml

    return yaml.safe_load(RECIPE.read_text())[key]


def has_checkpoint(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"checkpoint-{step}" / "checkpoint-complete.json").is_file()


def eval_dir(scores: Path, arm: str, seed: int, budget: int) -> Path:
    return scores / f"{arm}-s{seed}-{budget}"


def run(args) -> None:
    runs, scores, llm2comp = Path(args.runs), Path(args.scores), args.llm2comp
    for seed, steps, budgets in plan(args.budgets, args.seeds, args.two_seed_max):
        for arm in args.arms:
            out = runs / f"{arm}-s{seed}"
            unscored = [b for b in budgets if not (eval_dir(scores, arm, seed, b) / "results.json").is_file()]
            if not all(has_checkpoint(out, b) for b in unscored):
                # a fresh run, a killed one (resumed from its last checkpoint) or a shorter one of an earlier call
                # (extended: with a constant rate the steps after its last checkpoint are those of a longer run)
                start = start_of(arm, runs, llm2comp, {"mntp": args.mntp_steps, "compressor-long": args.long_steps},
                                 scores)
                _run([llm2comp, "train", "--config", str(RECIPE), "--model", start, "--seed", str(seed),
                      "--max-steps", str(steps), "--output", str(out), "--resume"])
            for budget in budgets:
                folder = eval_dir(scores, arm, seed, budget)
                if not (folder / "results.json").is_file():
                    model = out / "checkpoints" / f"checkpoint-{budget}"
                    _run([llm2comp, "evaluate", "--model", str(model), "--tasks", ",".join(TASKS),
                          "--output", str(folder), "--predictions"])
                    slim_predictions(folder)
                if arm != "backbone" and not (folder / "against-backbone.json").is_file():
                    compare(eval_dir(scores, "backbone", seed, budget), folder)
    report(args)


PRETEXT_STARTS = ("untrained", "compressor", "mntp", "compressor-long")


def save_untrained(folder: Path) -> None:
    """The backbone with the recipe's untrained memory tokens (its phrase, causal, memory pooling), as a folder."""
    from llm2comp import LLM2Comp

    LLM2Comp.load("smollm2-135m", memory_init=recipe_setting("memory_init"), bidirectional=False,
                  pooling="memory", device="cpu").save(folder)


def pretext(args) -> None:
    """The pretext-only row: each stage-1 model's embedding before any supervised step, as it is and with a
    normalizer fitted on training text (NLI sentences, decontaminated), against untrained memory tokens and MNTP (read
    as LLM2Vec reads it: mean pooling, bidirectional, as saved), on the curve's tasks. A start whose stage 1 is
    not trained yet under --runs is skipped."""
    runs, scores, llm2comp = Path(args.runs), Path(args.scores) / "pretext-only", args.llm2comp
    for start in args.starts:
        if start == "untrained":
            model = runs / "untrained"
            if not (model / "llm2comp_config.json").is_file():
                save_untrained(model)
        elif start in SHIPPED:
            model = SHIPPED[start]
        else:
            model = runs / STAGE1[start][1]
            if not (model / "llm2comp_config.json").is_file():
                print(f"[{start}] stage 1 not trained under {runs}: skipped", flush=True)
                continue
        if main_scores(scores / start) is None:
            _run([llm2comp, "evaluate", "--model", str(model), "--tasks", ",".join(TASKS), "--output", str(scores / start)])
        if main_scores(scores / f"{start}-normalized") is None:
            normalized = runs / f"{start}-normalized"
            if not (normalized / "llm2comp_config.json").is_file():
                _run([llm2comp, "fit-normalizer", str(model), "--data", "builtin:nli-pairs", "--output", str(normalized)])
            _run([llm2comp, "evaluate", "--model", str(normalized), "--tasks", ",".join(TASKS),
                  "--output", str(scores / f"{start}-normalized")])
    rows = ["| stage-1 model | STS avg | Banking77 | STS avg, normalized | Banking77, normalized |", "|---|---|---|---|---|"]
    for start in PRETEXT_STARTS:
        read = [main_scores(scores / start), main_scores(scores / f"{start}-normalized")]
        if any(read):
            cells = [f"{x:.2f}" if x is not None else "-" for pair in read for x in (pair or (None, None))]
            rows.append(f"| {start} | " + " | ".join(cells) + " |")
    if len(rows) > 2:
        scores.mkdir(parents=True, exist_ok=True)
        (scores / "pretext-only.md").write_text("\n".join(rows) + "\n")
        print("\n".join(rows))


def main_scores(folder: Path) -> tuple[float, float] | None:
    """An evaluation folder's STS average and Banking77 accuracy (x 100), or None where it is not scored."""
    if not (folder / "results.json").is_file():
        return None
    result = json.loads((folder / "results.json").read_text())
    return 100 * sum(result[t] for t in STS) / len(STS), 100 * result["Banking77Classification"]


def slim_predictions(folder: Path) -> None:
    """Keep of an evaluation's predictions only what the STS comparison reads (the cosine of each pair, 5 decimals;
    the gold scores), compactly: about 0.2 MB instead of 2.6 MB, small enough for git. Banking77's per-item labels
    (0.7 MB) are dropped: its score is in results.json, its interval is not computed."""
    predictions = folder / "predictions"
    for path in sorted(predictions.glob("*/*.json")):
        task = path.stem.removesuffix("_predictions")
        if task not in STS:
            path.unlink()
            continue
        data = json.loads(path.read_text())
        if path.parent.name != "gold":
            for key, subset in data.items():
                if key != "mteb_model_meta":
                    data[key] = {split: {"cosine_scores": [round(x, 5) for x in values["cosine_scores"]]}
                                 for split, values in subset.items()}
        path.write_text(json.dumps(data, separators=(",", ":")))


def compare(reference: Path, folder: Path) -> None:
    """B (this arm) minus A (the backbone arm) per STS task and for the STS average, with paired bootstrap intervals."""
    from llm2comp.evaluation import compare_evaluations

    if not (reference / "results.json").is_file():
        return  # the backbone arm of this seed and budget is not scored yet
    rows = compare_evaluations(reference, folder, resamples=2000, tolerance=1e-4)  # cosines rounded to 5 decimals
    rows = [{"task": r.task, "difference": 100 * r.delta, "low": 100 * r.low, "high": 100 * r.high} for r in rows]
    (folder / "against-backbone.json").write_text(json.dumps(rows, indent=1))


def collect(scores: Path) -> list[dict]:
    """One row per scored (arm, seed, budget): the STS average and Banking77 (x 100), and the paired difference
    from the backbone arm where it was compared."""
    rows = []
    for folder in sorted(scores.glob("*-s*-*")):
        arm, seed, budget = folder.name.rsplit("-", 2)
        scored = main_scores(folder)
        if scored is None:
            continue
        row = {"arm": arm, "seed": int(seed[1:]), "budget": int(budget), "sts": scored[0], "banking77": scored[1]}
        compared = folder / "against-backbone.json"
        if compared.is_file():
            for item in json.loads(compared.read_text()):
                if item["task"] == "STS average":
                    row["vs_backbone"] = (item["difference"], item["low"], item["high"])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["budget"], ARMS.index(r["arm"]) if r["arm"] in ARMS else 9, r["seed"]))


def table(rows: list[dict]) -> str:
    lines = ["| steps | arm | seed | STS avg | Banking77 | STS avg - backbone [95% CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "" if "vs_backbone" not in r else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*r["vs_backbone"])
        lines.append(f"| {r['budget']} | {r['arm']} | {r['seed']} | {r['sts']:.2f} | {r['banking77']:.2f} | {diff} |")
    return "\n".join(lines)


def pivot(rows: list[dict]) -> str:
    """The same rows by (budget, seed): each arm's STS average minus the backbone arm's with its interval, one column
    per arm, and Banking77 of every arm; "-" where an arm is not scored at that budget and seed."""
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    others = [a for a in arms if a != "backbone"]
    by_key = {(r["budget"], r["seed"], r["arm"]): r for r in rows}
    lines = ["| steps | seed | " + " | ".join(f"{a} - backbone" for a in others) + " | Banking77: " + " / ".join(arms) + " |",
             "|---|---|" + "---|" * (len(others) + 1)]
    for budget, seed in sorted({(r["budget"], r["seed"]) for r in rows}):
        cells = []
        for arm in others:
            r = by_key.get((budget, seed, arm))
            cells.append("{:+.2f} [{:+.2f}, {:+.2f}]".format(*r["vs_backbone"]) if r and "vs_backbone" in r else "-")
        banking = [by_key.get((budget, seed, arm)) for arm in arms]
        cells.append(" / ".join(f"{r['banking77']:.2f}" if r else "-" for r in banking))
        lines.append(f"| {budget} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict], seeds: int = 2, points: float = 1.0, max_budget: int = 100) -> list[str]:
    """The issue's question per arm: at which budgets of ``max_budget`` steps or fewer does it lead the backbone arm by
    ``points`` STS-average points or more with its interval above zero at ``seeds`` seeds (or more)?"""
    lines = []
    for arm in [a for a in ARMS if a != "backbone" and any(r["arm"] == a for r in rows)]:
        compared = [r for r in rows if r["arm"] == arm and "vs_backbone" in r and r["budget"] <= max_budget]
        budgets = sorted({r["budget"] for r in compared})
        seeded = [b for b in budgets if len({r["seed"] for r in compared if r["budget"] == b}) >= seeds]
        pays = [b for b in seeded if all(r["vs_backbone"][0] >= points and r["vs_backbone"][1] > 0
                                         for r in compared if r["budget"] == b)]
        lines.append(f"- {arm}: +{points:.1f} or more with the interval above zero at {seeds} seeds at "
                     + (", ".join(f"{b} steps" for b in pays) if pays else "no budget")
                     + f" (budgets <= {max_budget} with {seeds} seeds scored: "
                     + (", ".join(map(str, seeded)) if seeded else "none") + ")")
    return lines


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    markers = "os^v"
    for ax, key, title in ((axes[0], "sts", "STS average"), (axes[1], "banking77", "Banking77 accuracy")):
        for i, arm in enumerate(sorted({r["arm"] for r in rows}, key=lambda a: ARMS.index(a) if a in ARMS else 9)):
            for j, seed in enumerate(sorted({r["seed"] for r in rows if r["arm"] == arm})):
                points = [(r["budget"], r[key]) for r in rows if r["arm"] == arm and r["seed"] == seed]
                ax.plot(*zip(*points), marker=markers[j % 4], color=f"C{i}", linestyle="-" if j == 0 else ":",
                        label=f"{arm} (seed {seed})")
        ax.set_xscale("log", base=2)
        budgets = sorted({r["budget"] for r in rows})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("supervised steps (32 NLI pairs each)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args) -> None:
    rows = collect(Path(args.scores))
    if not rows:
        sys.exit(f"nothing scored under {args.scores} yet")
    text = table(rows) + "\n\nBy budget and seed, against the backbone arm (STS average, paired 95% interval):\n\n" + pivot(rows)
    text += "\n\nDoes stage 1 pay?\n\n" + "\n".join(verdict(rows))
    (Path(args.scores) / "sample-efficiency.md").write_text(text + "\n")
    figure(rows, Path(args.figure))
    print(text)
    print(f"figure: {args.figure}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report", "pretext"):
        p = sub.add_parser(name)
        p.add_argument("--runs", default="runs/curve", help="training runs and their checkpoints")
        p.add_argument("--scores", default=str(SCORES), help="the scored checkpoints (kept in git)")
        p.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "sample-efficiency.png"))
        if name == "run":
            p.add_argument("--seeds", type=_ints, default=[42, 7])
            p.add_argument("--budgets", type=_ints, default=[25, 50, 100, 200])
            p.add_argument("--two-seed-max", type=int, default=100, help="the other seeds stop at this budget")
            p.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS))
            p.add_argument("--mntp-steps", type=int, default=300, help="MNTP's stage 1 (the compressor had 300)")
            p.add_argument("--long-steps", type=int, default=300, help="the long-text compressor's stage 1")
        if name in ("run", "pretext"):
            p.add_argument("--llm2comp", default="llm2comp", help="the CLI to call")
        if name == "pretext":
            p.add_argument("--starts", type=lambda s: s.split(","), default=list(PRETEXT_STARTS))
    args = parser.parse_args(argv)
    if args.command == "run":
        unknown = set(args.arms) - set(ARMS)
        if unknown:
            parser.error(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
        if "backbone" not in args.arms:
            parser.error("the backbone arm is the reference every other arm is compared with")
    {"run": run, "report": report, "pretext": pretext}[args.command](args)


if __name__ == "__main__":
    main()
