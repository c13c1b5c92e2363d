"""`llm2comp evaluate`: its arguments and the glue from them to `evaluate_model`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from ..names import BACKENDS, DEFAULT_TASKS, POOLING_MODES
from ..names import DEFAULT_EVAL_SEED as DEFAULT_SEED


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the `evaluate` options on a (sub)parser; pair with `run_evaluate_cli`."""
    parser.add_argument("--model", default=None, help="LLM2Comp dir, backbone alias/dir, sentence-transformers dir or 'minilm'")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated mteb task names")
    parser.add_argument("--data-dir", default=None, help="local data dir (default $LLM2COMP_DATA_DIR or ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="deterministic subsample per task (rows / queries)")
    parser.add_argument("--corpus-limit", type=int, default=None, help="retrieval corpus size under --limit (default 10*limit)")
    parser.add_argument("--output", default=None, help="output dir for results.json")
    parser.add_argument("--pooling", default=None, choices=POOLING_MODES, help="pooling of the main model (default: as saved)")
    parser.add_argument("--attention", default=None, choices=["causal", "bidirectional"],
                        help="attention mask of the main model (default: as saved)")
    parser.add_argument("--baselines", default="", help="comma-separated: mean,last,prompteol,minilm,<st dir>")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--instructions", default=None, help="JSON file or string: {task or task type or 'query': instruction}")
    parser.add_argument("--task-instructions", action="store_true", help="use mteb's task instructions on the query side")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... for models loaded by name")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    parser.add_argument("--backend", default="torch", choices=list(BACKENDS),
                        help="what runs the main model's network (backends.py; default torch)")
    parser.add_argument("--predictions", action="store_true",
                        help="keep per-item predictions and gold values (STS, classification) under --output/predictions, for `llm2comp compare`")
    return parser


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the `compare` options; pair with `run_compare_cli`."""
    parser.add_argument("eval_a", help="an `llm2comp evaluate --predictions --output` folder (the reference)")
    parser.add_argument("eval_b", help="another one, evaluated on the same test items")
    parser.add_argument("--tasks", default=None, help="comma-separated STS or classification tasks (default: all with predictions in both)")
    parser.add_argument("--label-a", default=None, help="which model of A's table (default: its main model)")
    parser.add_argument("--label-b", default=None, help="which model of B's table (default: its main model)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_compare_cli(args) -> int:
    """Entry point for `llm2comp compare`: a paired bootstrap of B minus A over the same test items."""
    from .significance import compare_evaluations, format_comparison

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        rows = compare_evaluations(args.eval_a, args.eval_b, tasks, label_a=args.label_a, label_b=args.label_b,
                                   resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"A = {args.eval_a}\nB = {args.eval_b}\nscores x 100 on the same test items; paired bootstrap, {args.resamples} resamples "
          "(test-set sampling noise only, not seed noise)\n")
    print(format_comparison(rows, confidence=args.confidence))
    return 0


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
    from .runner import evaluate_model

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
            attention=get("attention"),
            backend=get("backend") or "torch",
            save_predictions=bool(get("predictions", False)),
        )
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
