"""How a model scores on the STS test pairs that STS-B *train* holds (normalised for case and surrounding space)
against the rest, per task: a model trained on contaminated pairs is not measuring transfer on the first subset.

    python scripts/contamination_split.py runs/eval/default-clean-pred runs/eval/old-default-pred   # `evaluate --predictions` runs

Prints, per evaluation folder and STS task, Spearman x 100 on the overlapping pairs and on the rest, with their counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr

TASKS = ("STS13", "STS14", "STS15", "STSBenchmark")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def overlap_flags(root: Path, task: str) -> list[bool]:
    """Per test pair of `task` (file order, as mteb reads the injected split): whether STS-B train holds it."""
    train = {frozenset((_norm(r["sentence1"]), _norm(r["sentence2"])))
             for r in map(json.loads, (root / "mteb/STSBenchmark/train.jsonl").read_text().splitlines())}
    rows = [json.loads(line) for line in (root / "mteb" / task / "test.jsonl").read_text().splitlines()]
    return [frozenset((_norm(r["sentence1"]), _norm(r["sentence2"]))) in train for r in rows], [float(r["score"]) for r in rows]


def main() -> None:
    from llm2comp.data.benchmark_dir import resolve_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="folders written by `llm2comp evaluate --output DIR --predictions`")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    root = resolve_data_dir(args.data_dir)
    print("| run | task | pairs in STS-B train | Spearman on them | other pairs | Spearman on them |")
    print("|---|---|---|---|---|---|")
    for run in map(Path, args.runs):
        for task in TASKS:
            gold_path = run / "predictions" / "gold" / f"{task}.json"
            found = sorted((run / "predictions").glob(f"*/{task}_predictions.json"))
            if not gold_path.is_file() or not found:
                continue
            flags, scores = overlap_flags(root, task)
            gold = json.loads(gold_path.read_text())["scores"]
            if [round(g, 4) for g in gold] != [round(s, 4) for s in scores]:
                raise ValueError(f"{gold_path}: the gold order is not the file order of {task}")
            data = json.loads(found[0].read_text())
            (subset,) = [v for k, v in data.items() if k != "mteb_model_meta"]
            predicted = subset["test"]["cosine_scores"]
            for_split = {flag: ([g for g, f in zip(gold, flags) if f == flag], [p for p, f in zip(predicted, flags) if f == flag])
                         for flag in (True, False)}
            cells = []
            for flag in (True, False):
                g, p = for_split[flag]
                cells += [f"{len(g):,}", f"{100 * spearmanr(g, p).statistic:.1f}" if len(g) > 2 else "-"]
            print(f"| {run} | {task} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
