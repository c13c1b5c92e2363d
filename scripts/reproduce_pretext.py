"""Reproduce the paper's pretext comparison (KL vs NLL vs RC vs MNTP) at small scale on the embedded default.

Same data, same order, same budget for every objective; then the offline MTEB suite and the paper's
diagnostics for each, written to docs/RESULTS.md.

    python scripts/reproduce_pretext.py train --steps 200          # hours on a 2-core CPU; resumable
    python scripts/reproduce_pretext.py evaluate                    # after training
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OBJECTIVES = ("kl", "nll", "rc", "mntp")
TASKS = ("STSBenchmark", "STS13", "STS14", "STS15", "SICK-R", "Banking77Classification", "SciFact")


def train_all(args) -> None:
    from llm2comp.training.config import TrainConfig
    from llm2comp.training.run import train

    for objective in args.objectives.split(","):
        output = Path(args.runs) / objective
        if (output / "llm2comp_config.json").is_file():
            print(f"[{objective}] done already: {output}")
            continue
        cfg = TrainConfig.from_yaml(
            Path(__file__).parent.parent / "configs" / "smollm2-135m" / f"pretrain-{objective}.yaml",
            output=str(output), max_steps=args.steps, batch_size=args.batch_size, save_steps=max(10, args.steps // 5),
            resume=(output / "checkpoints").is_dir() or None,
        )
        start = time.time()
        train(cfg)
        (output / "train_time.json").write_text(json.dumps({"seconds": time.time() - start}))
        print(f"[{objective}] trained in {time.time() - start:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "evaluate", "all"])
    parser.add_argument("--runs", default="runs/pretext")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--limit", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--results", default="docs/RESULTS.md")
    args = parser.parse_args()
    if args.phase in ("train", "all"):
        train_all(args)
    if args.phase in ("evaluate", "all"):
        evaluate_all(args)


def evaluate_all(args) -> None:
    raise NotImplementedError  # filled in once the evaluation suite lands


if __name__ == "__main__":
    main()
