"""Command line: thin parsing, then a call into the library (`commands.py`).

Only the chosen command's arguments are built, and nothing heavy is imported to build them (except `train`, whose
choices come from the objective registry): `llm2comp --help` and an argument error answer at once."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .generation_cli import COMPRESS_HELP, GENERATE_HELP, compress_arguments, generate_arguments
from .names import BACKENDS, DEFAULT_ENCODER, DEFAULT_MODEL, POOLING_MODES


def _common(parser: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=model_default, help="alias (smollm2-135m), hub id, model directory, .gguf file or llm2comp directory")
    parser.add_argument("--config", help="YAML file of settings; command-line flags override it")
    parser.add_argument("--output", help="output path")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _trust_flag(parser)


def _trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let transformers run the model's own Python code (off unless given; a saved folder never turns it on)")


def _defaults(name: str) -> str:
    """'default: X' for a TrainConfig setting, with the stages whose recipe differs (train --help)."""
    from .objectives.registry import stage_defaults
    from .training.config import TrainConfig

    default = TrainConfig.__dataclass_fields__[name].default
    return f"default: {default}" + "".join(f", {stage}: {values[name]}" for stage, values in stage_defaults().items()
                                          if values.get(name, default) != default)


def _args_encode(p: argparse.ArgumentParser) -> None:
    _common(p, model_default=DEFAULT_ENCODER)
    p.add_argument("input", nargs="?", help="text file, one text per line ('-' or nothing: stdin)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int)
    p.add_argument("--pooling", choices=POOLING_MODES)
    p.add_argument("--prompt", help="text put before every input (an instruction)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS), help="what runs the network (default torch: fp32)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, the number of cores)")
    p.add_argument("--truncate-dim", type=int, help="keep the first N dimensions (a Matryoshka-trained model's sizes lose little)")
    p.add_argument("--skip-empty", action="store_true", help="drop empty lines (by default each line, empty too, gets a row)")


def _args_train(p: argparse.ArgumentParser) -> None:
    from .objectives.registry import pretext_objectives, stages

    _common(p, model_default=None)
    p.add_argument("--stage", choices=stages())
    p.add_argument("--objective", choices=pretext_objectives(), help="the pretrain stage's pretext objective; " + _defaults("objective"))
    p.add_argument("--data", help="file (.txt/.jsonl/.parquet), directory, builtin:news, builtin:news-sentences, builtin:shared-pairs[:DATA_DIR], hf:NAME[:CONFIG[:SPLIT]]")
    p.add_argument("--max-steps", type=int, help=_defaults("max_steps"))
    p.add_argument("--batch-size", type=int, help="per device; " + _defaults("batch_size"))
    p.add_argument("--global-batch-size", type=int, help="the batch of one optimizer step over all processes (batch size is then derived per device)")
    p.add_argument("--gradient-accumulation-steps", type=int, help=_defaults("gradient_accumulation_steps"))
    p.add_argument("--max-length", type=int, help="tokens per training input, memory tokens included; " + _defaults("max_length"))
    p.add_argument("--num-memory-tokens", type=int, help=_defaults("num_memory_tokens"))
    p.add_argument("--learning-rate", type=float, help=_defaults("learning_rate"))
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps; " + _defaults("save_steps"))
    p.add_argument("--max-samples", type=int, help="use at most this many texts, a seeded random draw (default: all)")
    p.add_argument("--min-chars", type=int, help="drop texts shorter than this (the paper's stage 1: 1000); " + _defaults("min_chars"))
    p.add_argument("--drop-long", action="store_true",
                   help="drop texts over --max-length instead of truncating them (the paper's filter)")
    p.add_argument("--gradcache-chunk", type=int, help="supervised: encode in chunks of this size (default: whole batch)")
    p.add_argument("--pooling", choices=POOLING_MODES,
                   help="contrastive stages: the pooling to train (default: the loaded model's, memory for a backbone)")
    p.add_argument("--attention", choices=["bidirectional", "causal"],
                   help="encoder attention (default: as loaded; bidirectional for a backbone, as in the recipe)")
    p.add_argument("--seed", type=int, help=_defaults("seed"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--memory-init", help="a fresh model's memory tokens from this phrase's token embeddings (default: mean embedding)")
    p.add_argument("--fit-normalizer", type=int, metavar="N", help="contrastive stages: fit embedding standardisation on N training texts")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --output")
    p.add_argument("--memory-bridge", choices=["affine", "linear"], help="stage 1: a bridge between memory states and the frozen decoder, fitted to token-embedding statistics")
    p.add_argument("--memory-lr", type=float, help="learning rate of the memory tokens (and the bridge); default: --learning-rate")
    p.add_argument("--contrast-weight", type=float, help="stage 1: weight of the own-vs-other memory contrast term (default 0)")
    p.add_argument("--probe-steps", type=int, help="stage 1: run the compression probe every N steps (probe.jsonl, loss.png); 0: off")
    p.add_argument("--matryoshka-dims", metavar="N,N,...", help="contrastive stages: also train these leading sizes of the embedding (e.g. 256,128,64)")
    p.add_argument("--cosent-scale", type=float, help="supervised: scale of CoSENT on graded pairs (a 'score' each); default 20")
    p.add_argument("--decontaminate", metavar="auto|DIR|off",
                   help="contrastive stages: leave out pairs/sentences sharing a text (case and space folded) with an "
                        "evaluation split of a benchmark folder; auto: the folder evaluation uses; default: auto")


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    from .evaluation.cli import add_evaluate_arguments

    add_evaluate_arguments(p)


def _args_compare(p: argparse.ArgumentParser) -> None:
    from .evaluation.cli import add_compare_arguments

    add_compare_arguments(p)


def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--format", default="sentence-transformers", choices=["sentence-transformers"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    p.add_argument("--dtype", help="store the merged backbone as float32 (default), bfloat16 or float16")


def _args_fit_normalizer(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="alias, hub id, directory or llm2comp directory")
    p.add_argument("--data", required=True, help="training text: pairs (builtin:shared-pairs[:DIR], .jsonl with query/positive) or sentences (.txt/.jsonl)")
    p.add_argument("--output", required=True, help="directory for the model with its normalizer")
    p.add_argument("--samples", type=int, default=4000, help="distinct texts to fit on (default 4000)")
    p.add_argument("--pooling", choices=POOLING_MODES, help="pooling of a backbone (default: memory, or the saved model's)")
    p.add_argument("--max-pairs-per-source", type=int, help="pairs: at most this many per source (as in training)")
    p.add_argument("--no-instructions", action="store_true", help="pairs: bare queries, without their task instruction")
    p.add_argument("--decontaminate", default="auto", metavar="auto|DIR|off", help="as in train (default: auto)")
    p.add_argument("--pca", action="store_true", help="then rotate onto the texts' principal axes (cosines unchanged; "
                   "the first n dimensions keep the most variance, for --truncate-dim / serve's dimensions)")
    p.add_argument("--centre-only", action="store_true", help="subtract the mean, do not divide by each dimension's "
                   "spread (choose on validation: python scripts/validation_sts.py compares raw / centred / standardised)")
    p.add_argument("--matryoshka-dims", metavar="N,N,...", help="record these sizes as the ones to cut to "
                   "(serve's dimensions field accepts them); measure them first (scripts/matryoshka_sizes.py)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device")


def _args_serve(p: argparse.ArgumentParser) -> None:
    from .serving import LIMITS

    p.add_argument("model", nargs="?", default=DEFAULT_ENCODER, help=f"what to serve (default: {DEFAULT_ENCODER})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="the model id clients send and /v1/models lists (default: MODEL as given)")
    p.add_argument("--max-batch-size", type=int, default=LIMITS.max_batch_size, help=f"texts per model batch (default {LIMITS.max_batch_size})")
    p.add_argument("--max-wait-ms", type=float, default=LIMITS.max_wait_ms,
                   help=f"how long a batch waits for more requests (default {LIMITS.max_wait_ms:g})")
    p.add_argument("--api-key", default=os.environ.get("LLM2COMP_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLM2COMP_API_KEY; none: open)")
    p.add_argument("--max-items", type=int, default=LIMITS.max_items, help=f"texts per request (default {LIMITS.max_items}, as OpenAI)")
    p.add_argument("--max-body-mb", type=float, default=LIMITS.max_body_bytes / 2**20,
                   help=f"request body limit in MiB (default {LIMITS.max_body_bytes / 2**20:g})")
    p.add_argument("--max-concurrent-requests", type=int, default=LIMITS.max_concurrent_requests,
                   help=f"embedding requests admitted at once; more are answered 429 with Retry-After (default {LIMITS.max_concurrent_requests})")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS), help="what runs the network (default torch: fp32)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's); /v1/models reports it")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _trust_flag(p)


def _args_probe(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="a trained llm2comp model, or a backbone (untrained memory)")
    p.add_argument("--data", default="builtin:news", help="corpus whose last --holdout paragraphs hold the probe passages (default builtin:news)")
    p.add_argument("--passages", type=int, default=256, help="passages (default 256)")
    p.add_argument("--text-tokens", type=int, default=64, help="tokens per passage (default 64; continuation: half compressed, half predicted)")
    p.add_argument("--holdout", type=int, default=512, help="the last N paragraphs of --data, which stage 1 leaves out (default 512)")
    p.add_argument("--task", choices=["continuation", "reconstruction"], default="continuation")
    p.add_argument("--metric", choices=["kl", "ce"], help="what gain and specificity are computed on (default: kl; ce for reconstruction)")
    p.add_argument("--ceiling-passages", type=int, default=32, help="passages of the ceiling (free vectors per passage; 0: no ceiling)")
    p.add_argument("--ceiling-steps", type=int, default=200)
    p.add_argument("--attention", choices=["bidirectional", "causal"], help="encoder attention (default: as saved)")
    p.add_argument("--num-memory-tokens", type=int, help="a backbone's untrained memory: k (default 8)")
    p.add_argument("--memory-init", help="a backbone's untrained memory: start from this phrase's token embeddings")
    p.add_argument("--memory-bridge", choices=["affine", "linear"],
                   help="feed the memory through an untrained bridge fitted on 64 training paragraphs (a model without one)")
    p.add_argument("--output", help="write the report as JSON")
    p.add_argument("--device")


def _args_quickstart(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--data-dir")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget")
    p.add_argument("--pretrain", action="store_true",
                   help="run KL compression pre-training (stage 1, causal encoder) before the default recipe's stage")


COMMANDS = {  # name: (help, what builds its arguments, the handler in commands.py, or None: the builder sets it)
    "encode": ("embed texts (one per line, from a file or stdin) into a .npy file",
        _args_encode, "_encode"),
    "train": ("train one stage: pretrain (kl|nll|rc|mntp), simcse, supervised",
        _args_train, "_train"),
    "evaluate": ("MTEB evaluation (offline data dir or the hub), with baselines side by side",
        _args_evaluate, "_evaluate"),
    "compare": ("is B better than A? paired bootstrap over the STS pairs of two `evaluate --predictions` runs",
        _args_compare, "_compare"),
    "export": ("write a sentence-transformers folder from a trained model directory",
        _args_export, "_export"),
    "fit-normalizer": ("fit per-dimension standardisation of a model's embeddings on training text; save the model with it",
        _args_fit_normalizer, "_fit_normalizer"),
    "serve": ("OpenAI-compatible embeddings server (POST /v1/embeddings) with dynamic batching",
        _args_serve, "_serve"),
    "probe": ("compression probe: does the memory carry the text? (own vs another text's vs no memory, and the ceiling)",
        _args_probe, "_probe"),
    "quickstart": ("the main job on the embedded default: zero-shot poolings -> the default recipe -> evaluation before/after",
        _args_quickstart, "_quickstart"),
    "compress": (COMPRESS_HELP, compress_arguments, None),
    "generate": (GENERATE_HELP, generate_arguments, None),
}


def _run(handler: str):
    def run(args) -> int:
        from . import commands

        return getattr(commands, handler)(args)

    return run


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: build the arguments of that command alone ('' for none: the list of commands)."""
    parser = argparse.ArgumentParser(prog="llm2comp", description="Turn a decoder-only LLM into a text-embedding model (LLM2Comp).")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if handler is not None:
            p.set_defaults(func=_run(handler))
        if only is None or only == name:
            add_arguments(p)  # compress/generate set their own handler (generation_cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command if command in COMMANDS else "").parse_args(argv)
    hang_report = os.environ.get("LLM2COMP_DUMP_STACKS_AFTER")  # diagnosing a stuck run: every thread's stack on stderr
    if hang_report:
        import faulthandler

        faulthandler.dump_traceback_later(float(hang_report), exit=False)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .backbone import BackboneError
    from .data.corpus import DataError

    try:
        return args.func(args)
    except (BackboneError, DataError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
