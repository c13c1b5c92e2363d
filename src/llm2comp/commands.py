"""What each `llm2comp` command does, once its arguments are parsed (`cli.py`); heavy imports stay inside."""

from __future__ import annotations

import sys
from pathlib import Path


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
    model.fit_normalizer(texts, source=f"{len(texts)} texts of {args.data}", show_progress_bar=True, pca=args.pca,
                         standardise=not args.centre_only)
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
        from .data.corpus import holdout_split, load_texts
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


def _compare(args) -> int:
    from .evaluation.cli import run_compare_cli

    return run_compare_cli(args)
