"""What cutting the embedding costs: STS Spearman x 100 of each model at each embedding size, one encoding pass.

    python scripts/matryoshka_sizes.py runs/default-clean runs/default-v2 --dims 256,128,64 --output runs/eval/matryoshka.json

Every test sentence of the STS tasks (STS-B, STS13-15, SICK-R, as far as the data folder has them) is embedded once
at full size; each size d then scores the cosine of the first d dimensions, renormalised (what
`encode(truncate_dim=d)` and serve's `dimensions` return), as mteb's STS evaluator does: Spearman of cosine against
the gold scores, test split. At full size this is `llm2comp evaluate`'s number (tests/test_scripts.py checks it). For a model whose normalizer
rotates onto principal axes (`llm2comp fit-normalizer --pca`), a second row cuts the same embeddings before that
rotation: what the rotation buys, from the same encoding pass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

TASKS = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R")


def sts_rows(root: Path, task: str) -> list[dict] | None:
    from llm2comp.data.corpus import read_jsonl

    path = root / "mteb" / task / "test.jsonl"
    return read_jsonl(path) if path.is_file() else None


def size_scores(model, root: Path, dims: list[int], batch_size: int = 32, tasks=TASKS) -> dict[str, dict[str, float]]:
    """{str(size): {task: Spearman x 100, "STS avg": ...}} for the full size and every size in ``dims``."""
    return score_sizes(*sts_embeddings(model, root, batch_size, tasks), dims)


def sts_embeddings(model, root: Path, batch_size: int = 32, tasks=TASKS) -> tuple[dict, dict, np.ndarray]:
    """(test rows per task, row of each sentence, the full embedding of every sentence), one encoding pass."""
    data = {task: rows for task in tasks if (rows := sts_rows(root, task))}
    texts = sorted({r[k] for rows in data.values() for r in rows for k in ("sentence1", "sentence2")})
    full = np.asarray(model.encode(texts, batch_size=batch_size, show_progress_bar=True), dtype=np.float64)
    return data, {t: i for i, t in enumerate(texts)}, full


def score_sizes(data: dict, row_of: dict, full: np.ndarray, dims: list[int]) -> dict[str, dict[str, float]]:
    out = {}
    for size in [full.shape[1], *dims]:
        cut = full[:, :size]
        cut = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
        scores = {}
        for task, rows in data.items():
            a = cut[[row_of[r["sentence1"]] for r in rows]]
            b = cut[[row_of[r["sentence2"]] for r in rows]]
            scores[task] = 100 * spearmanr((a * b).sum(1), [float(r["score"]) for r in rows])[0]
        scores["STS avg"] = float(np.mean(list(scores.values())))
        out[str(size)] = scores
    return out


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    tasks = [t for t in (*TASKS, "STS avg") if any(t in s for sizes in results.values() for s in sizes.values())]
    lines = ["| model | size | " + " | ".join(tasks) + " | vs full |", "|---|---|" + "---|" * (len(tasks) + 1)]
    for model, sizes in results.items():
        full = next(iter(sizes.values()))["STS avg"]
        for size, scores in sizes.items():
            cells = [f"{scores[t]:.2f}" if t in scores else "–" for t in tasks]
            lines.append(f"| {model} | {size} | " + " | ".join(cells) + f" | {scores['STS avg'] - full:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    from llm2comp import LLM2Comp
    from llm2comp.data.benchmark_dir import resolve_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories or aliases")
    parser.add_argument("--dims", default="256,128,64")
    parser.add_argument("--tasks", default=",".join(TASKS), help="a subset of " + ",".join(TASKS))
    parser.add_argument("--data-dir")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", help="JSON file for the scores")
    args = parser.parse_args()
    root = resolve_data_dir(args.data_dir)
    if root is None:
        raise SystemExit("no benchmark data folder: pass --data-dir or set LLM2COMP_DATA_DIR")
    dims = [int(d) for d in args.dims.split(",") if d]
    results = {}
    for name in args.models:
        model = LLM2Comp.from_pretrained(name).merge_and_unload()
        data, row_of, full = sts_embeddings(model, root, args.batch_size, tasks=args.tasks.split(","))
        results[name] = score_sizes(data, row_of, full, dims)
        rotation = getattr(model.normalizer, "rotation", None)
        if rotation is not None:  # the same embeddings before the orthogonal turn onto the principal axes
            results[f"{name} (not rotated)"] = score_sizes(data, row_of, full @ rotation.double().numpy().T, dims)
    print(markdown(results))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
