"""Reproduce the paper's pretext comparison (KL vs NLL vs RC vs MNTP) at small scale on the embedded default.

Same data, same order, same budget for every objective; then the offline MTEB suite and the paper's
diagnostics for each, written to docs/RESULTS.md.

    python scripts/reproduce_pretext.py train --steps 80           # ~1.5 h on a 2-core CPU; resumable
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
            output=str(output), max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
            save_steps=max(10, args.steps // 5),
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
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--limits", help='JSON {task: n} subsample sizes, e.g. \'{"SICK-R": 3000}\'')
    parser.add_argument("--data-dir")
    parser.add_argument("--results", default="docs/RESULTS.md")
    args = parser.parse_args()
    if args.phase in ("train", "all"):
        train_all(args)
    if args.phase in ("evaluate", "all"):
        evaluate_all(args)


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


if __name__ == "__main__":
    main()
