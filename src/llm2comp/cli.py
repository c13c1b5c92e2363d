"""Command line: thin parsing, then a call into the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .backbone import DEFAULT_ENCODER, DEFAULT_MODEL
from .backends import BACKENDS
from .pooling import pooling_modes
from .serving import LIMITS


def _common(parser: argparse.ArgumentParser, model_default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=model_default, help="alias (smollm2-135m), hub id, model directory, .gguf file or llm2comp directory")
    parser.add_argument("--config", help="YAML file of settings; command-line flags override it")
    parser.add_argument("--output", help="output path")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _trust_flag(parser)


def _trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let transformers run the model's own Python code (off unless given; a saved folder never turns it on)")


def _encode(args) -> int:
    import numpy as np

    from .data.corpus import read_lines
    from .model import LLM2Comp

    texts = read_lines(args.input)  # before the model: a bad input file fails in a second, not after loading
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = LLM2Comp.from_pretrained(args.model, device=args.device, pooling=args.pooling, max_length=args.max_length,
                                     backend=args.backend, trust_remote_code=args.trust_remote_code)
    if args.skip_empty:
        texts = [t for t in texts if t.strip()]
    model.merge_and_unload()
    embeddings = model.encode(texts, batch_size=args.batch_size, prompt=args.prompt, normalize_embeddings=args.normalize,
                              show_progress_bar=True, truncate_dim=args.truncate_dim)
    output = Path(args.output or "embeddings.npy")
    np.save(output, embeddings)
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1] if embeddings.ndim == 2 else 0} embeddings to {output}")
    return 0


def _fit_normalizer(args) -> int:
    from .data.pairs import source_texts
    from .model import LLM2Comp

    texts = source_texts(args.data, args.samples, seed=args.seed, max_pairs_per_source=args.max_pairs_per_source,
                         query_instructions=not args.no_instructions, decontaminate=args.decontaminate)
    model = LLM2Comp.from_pretrained(args.model, device=args.device, pooling=args.pooling)
    model.fit_normalizer(texts, source=f"{len(texts)} texts of {args.data}", show_progress_bar=True, pca=args.pca)
    if args.matryoshka_dims:
        from .objectives.contrastive import check_matryoshka_dims

        model.config.matryoshka_dims = check_matryoshka_dims([int(d) for d in args.matryoshka_dims.split(",")],
                                                             model.get_sentence_embedding_dimension())
    model.save(args.output)
    print(f"fitted on {len(texts)} texts of {args.data}; wrote {args.output} (load it with LLM2Comp.from_pretrained)")
    return 0


def _train(args) -> int:
    from .training.config import TrainConfig
    from .training.run import train
    from .runtime import is_main_process
    from .training.trainer import NonFiniteLossError

    flags = {
        "stage": args.stage, "objective": args.objective, "model": args.model, "data": args.data, "output": args.output,
        "max_steps": args.max_steps, "batch_size": args.batch_size, "global_batch_size": args.global_batch_size, "max_length": args.max_length,
        "save_steps": args.save_steps, "learning_rate": args.learning_rate, "num_memory_tokens": args.num_memory_tokens,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_samples": args.max_samples,
        "gradcache_chunk": args.gradcache_chunk, "pooling": args.pooling, "min_chars": args.min_chars, "seed": args.seed,
        "gradient_checkpointing": args.gradient_checkpointing or None, "memory_init": args.memory_init,
        "fit_normalizer": args.fit_normalizer, "truncate_long": False if args.drop_long else None,
        "bidirectional": None if args.attention is None else args.attention == "bidirectional", "resume": args.resume or None,
        "decontaminate": args.decontaminate, "memory_bridge": args.memory_bridge, "memory_lr": args.memory_lr,
        "probe_steps": args.probe_steps, "contrast_weight": args.contrast_weight,
        "matryoshka_dims": [int(d) for d in args.matryoshka_dims.split(",")] if args.matryoshka_dims else None,
        "cosent_scale": args.cosent_scale, "trust_remote_code": args.trust_remote_code or None,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    cfg = TrainConfig.from_yaml(args.config, **flags) if args.config else TrainConfig.from_dict(flags)
    try:
        output = train(cfg)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if is_main_process():  # once, not per process under torchrun / accelerate
        print(f"model saved to {output} (loss log {output / 'loss.jsonl'}, plot {output / 'loss.png'})")
    return 0


def _serve(args) -> int:
    from .serving import ServeLimits, serve

    limits = ServeLimits(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_items=args.max_items,
                         max_body_bytes=int(args.max_body_mb * 2**20), max_concurrent_requests=args.max_concurrent_requests)
    serve(args.model, args.host, args.port, device=args.device, name=args.name, limits=limits, api_key=args.api_key,
          backend=args.backend, threads=args.threads, trust_remote_code=args.trust_remote_code)
    return 0


def _evaluate(args) -> int:
    from .evaluation import run_evaluate_cli

    return run_evaluate_cli(args) or 0


def _export(args) -> int:
    from .export import export_sentence_transformers

    out = export_sentence_transformers(args.model_dir, args.out, overwrite=args.overwrite, dtype=args.dtype)
    print(f"sentence-transformers model written to {out}")
    return 0


def _probe(args) -> int:
    import json

    from .evaluation.compression import CompressionProbe, ceiling, format_report, probe_passages
    from .model import LLM2Comp

    kwargs = {"bidirectional": args.attention == "bidirectional"} if args.attention else {}
    model = LLM2Comp.from_pretrained(args.model, device=args.device, pooling="memory", num_memory_tokens=args.num_memory_tokens,
                                     memory_init=args.memory_init, **kwargs)
    passages = probe_passages(model.tokenizer, args.data, args.passages, args.text_tokens, args.holdout)
    probe = CompressionProbe(passages, args.task, args.metric)
    if args.memory_bridge:  # an untrained bridge fitted on training paragraphs (never the held-out ones)
        if model.memory_bridge is not None:
            raise ValueError(f"{args.model} has its own memory bridge ({model.memory_bridge.kind}); drop --memory-bridge")
        from .data.corpus import load_texts
        from .evaluation.compression import holdout_split
        from .features import special_prefix

        train_texts, _ = holdout_split(load_texts(args.data, unit="paragraph"), args.holdout)
        rows = model.tokenizer(train_texts[:64], add_special_tokens=False)["input_ids"]
        model.add_memory_bridge(args.memory_bridge, [special_prefix(model.tokenizer) + r[: probe.prefix_tokens] for r in rows])
    if args.ceiling_passages:
        probe.ceiling = ceiling(model, probe, passages=args.ceiling_passages, steps=args.ceiling_steps)
    report = probe.run(model)
    report["model"] = args.model
    print(format_report(report))
    if args.output:
        from .atomic import write_json_atomic

        write_json_atomic(Path(args.output), report)
        print(f"wrote {args.output}")
    else:
        print(json.dumps({k: report[k] for k in ("gain", "specificity")}))
    return 0


def _quickstart(args) -> int:
    from .quickstart import run_quickstart

    return run_quickstart(args) or 0


def _defaults(name: str) -> str:
    """'default: X' for a TrainConfig setting, with the stages whose recipe differs (train --help)."""
    from .objectives.registry import stage_defaults
    from .training.config import TrainConfig

    default = TrainConfig.__dataclass_fields__[name].default
    return f"default: {default}" + "".join(f", {stage}: {values[name]}" for stage, values in stage_defaults().items()
                                          if values.get(name, default) != default)


def build_parser() -> argparse.ArgumentParser:
    from .objectives.registry import pretext_objectives, stages

    parser = argparse.ArgumentParser(prog="llm2comp", description="Turn a decoder-only LLM into a text-embedding model (LLM2Comp).")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="embed texts (one per line, from a file or stdin) into a .npy file")
    _common(p, model_default=DEFAULT_ENCODER)
    p.add_argument("input", nargs="?", help="text file, one text per line ('-' or nothing: stdin)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int)
    p.add_argument("--pooling", choices=pooling_modes())
    p.add_argument("--prompt", help="text put before every input (an instruction)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS), help="what runs the network (default torch: fp32)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, the number of cores)")
    p.add_argument("--truncate-dim", type=int, help="keep the first N dimensions (a Matryoshka-trained model's sizes lose little)")
    p.add_argument("--skip-empty", action="store_true", help="drop empty lines (by default each line, empty too, gets a row)")
    p.set_defaults(func=_encode)

    p = sub.add_parser("train", help="train one stage: pretrain (kl|nll|rc|mntp), simcse, supervised")
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
    p.add_argument("--pooling", choices=pooling_modes(),
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
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="MTEB evaluation (offline data dir or the hub), with baselines side by side")
    from .evaluation.cli import add_evaluate_arguments

    add_evaluate_arguments(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("compare", help="is B better than A? paired bootstrap over the STS pairs of two `evaluate --predictions` runs")
    from .evaluation.cli import add_compare_arguments, run_compare_cli

    add_compare_arguments(p)
    p.set_defaults(func=run_compare_cli)

    p = sub.add_parser("export", help="write a sentence-transformers folder from a trained model directory")
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--format", default="sentence-transformers", choices=["sentence-transformers"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    p.add_argument("--dtype", help="store the merged backbone as float32 (default), bfloat16 or float16")
    p.set_defaults(func=_export)

    p = sub.add_parser("fit-normalizer", help="fit per-dimension standardisation of a model's embeddings on training text; save the model with it")
    p.add_argument("model", help="alias, hub id, directory or llm2comp directory")
    p.add_argument("--data", required=True, help="training text: pairs (builtin:shared-pairs[:DIR], .jsonl with query/positive) or sentences (.txt/.jsonl)")
    p.add_argument("--output", required=True, help="directory for the model with its normalizer")
    p.add_argument("--samples", type=int, default=4000, help="distinct texts to fit on (default 4000)")
    p.add_argument("--pooling", choices=pooling_modes(), help="pooling of a backbone (default: memory, or the saved model's)")
    p.add_argument("--max-pairs-per-source", type=int, help="pairs: at most this many per source (as in training)")
    p.add_argument("--no-instructions", action="store_true", help="pairs: bare queries, without their task instruction")
    p.add_argument("--decontaminate", default="auto", metavar="auto|DIR|off", help="as in train (default: auto)")
    p.add_argument("--pca", action="store_true", help="then rotate onto the texts' principal axes (cosines unchanged; "
                   "the first n dimensions keep the most variance, for --truncate-dim / serve's dimensions)")
    p.add_argument("--matryoshka-dims", metavar="N,N,...", help="record these sizes as the ones to cut to "
                   "(serve's dimensions field accepts them); measure them first (scripts/matryoshka_sizes.py)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device")
    p.set_defaults(func=_fit_normalizer)

    p = sub.add_parser("serve", help="OpenAI-compatible embeddings server (POST /v1/embeddings) with dynamic batching")
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
    p.set_defaults(func=_serve)

    p = sub.add_parser("probe", help="compression probe: does the memory carry the text? (own vs another text's vs no memory, and the ceiling)")
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
    p.set_defaults(func=_probe)

    p = sub.add_parser("quickstart", help="the main job on the embedded default: zero-shot poolings -> the default recipe -> evaluation before/after")
    _common(p)
    p.add_argument("--data-dir")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget")
    p.add_argument("--pretrain", action="store_true",
                   help="run KL compression pre-training (stage 1, causal encoder) before the default recipe's stage")
    p.set_defaults(func=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
