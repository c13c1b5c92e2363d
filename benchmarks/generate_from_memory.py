"""What compressing the context saves (issue 44): generating after a long context from the full text vs from its
memory, side by side in one run.

For each of ``--contexts`` held-out news contexts of ``--context-tokens`` tokens (consecutive held-out paragraphs of
``--data``, never trained on), timed interleaved over ``--rounds`` after one warm-up of every arm, greedy,
``--new-tokens`` tokens (EOS never chosen, so every arm generates the same number), ``--batch-size`` contexts per call
(default 1: one request; more: what a server batching requests pays, where the full context's prefill grows with the
batch and a decode step over cached keys barely does):

* **full**: the frozen decoder reads [BOS, the whole context], then generates;
* **compress**: the encoder turns the context into k memory vectors (one forward pass over context + k);
* **memory**: the frozen decoder reads [BOS, the k vectors], then generates;
* with ``--segment-tokens N`` also **compress-seg** / **memory-seg**: the context in segments of N tokens, k vectors each;
* **full-prefill** / **memory-prefill**: the same inputs generating one token (the time to the first token).

Reported: medians, prefill tokens, KV-cache size at the end, the speed-up of memory over full with compression
excluded (the memory made once, reused) and included (compressed for this one generation), and the break-even
number of generations from one memory: the smallest n with compress + n * memory <= n * full.

    python benchmarks/generate_from_memory.py --model smollm2-135m-compressor --context-tokens 512 --new-tokens 32 \\
        --contexts 3 --rounds 2 --segment-tokens 64 --output docs/results-compress-generate
    python benchmarks/generate_from_memory.py --model tiny --context-tokens 64 --new-tokens 4 --contexts 2 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llm2comp.atomic import write_json_atomic, write_text_atomic


def break_even(compress_s: float, memory_s: float, full_s: float) -> int | None:
    """Smallest n >= 1 with compress + n * memory <= n * full (None: memory is never cheaper per generation)."""
    if memory_s >= full_s:
        return None
    return max(1, math.ceil(compress_s / (full_s - memory_s) - 1e-12))


def kv_bytes_per_position(hf_config, dtype_bytes: int) -> int:
    """Bytes of keys and values one position keeps in the KV cache, all layers."""
    config = hf_config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return config.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes


def contexts_from(tokenizer, data: str, holdout: int, count: int, length: int) -> list[list[int]]:
    """``count`` contexts of ``length`` tokens: the held-out paragraphs of ``data``, tokenized one after another."""
    from llm2comp.data.corpus import DataError, load_texts
    from llm2comp.evaluation.compression import holdout_split

    _, held = holdout_split(load_texts(data, unit="paragraph"), holdout)
    stream: list[int] = []
    for ids in tokenizer([" " + t for t in held], add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        if len(stream) >= count * length:
            break
    if len(stream) < count * length:
        raise DataError(f"{data}: the {len(held)} held-out paragraphs hold {len(stream)} tokens, fewer than {count} x {length}")
    return [stream[i * length : (i + 1) * length] for i in range(count)]


def run(model, contexts: list[list[int]], new_tokens: int, rounds: int, segment_tokens: int | None,
        allow_untrained: bool = False, batch_size: int = 1) -> dict:
    import torch

    from llm2comp.generation import _start_ids, compress_token_ids, generate_ids

    memories = {}
    if batch_size < 1 or len(contexts) % batch_size:
        raise ValueError(f"--contexts ({len(contexts)}) must be a multiple of --batch-size ({batch_size})")
    groups = [contexts[i : i + batch_size] for i in range(0, len(contexts), batch_size)]

    def arms(group_index: int) -> dict:
        ctx = groups[group_index]
        b = len(ctx)

        def compress(seg=None):
            memories[(group_index, seg)] = compress_token_ids(model, ctx, batch_size=b, segment_tokens=seg,
                                                              allow_untrained=allow_untrained).rows()

        def from_memory(seg=None, tokens=new_tokens):
            return generate_ids(model, [[]] * b, memories[(group_index, seg)], tokens, batch_size=b, stop_at_eos=False)

        table = {
            "full": lambda: generate_ids(model, ctx, [None] * b, new_tokens, batch_size=b, stop_at_eos=False),
            "compress": compress,
            "memory": from_memory,
            "full-prefill": lambda: generate_ids(model, ctx, [None] * b, 1, batch_size=b, stop_at_eos=False),
            "memory-prefill": lambda: from_memory(tokens=1),
        }
        if segment_tokens:
            table["compress-seg"] = lambda: compress(segment_tokens)
            table["memory-seg"] = lambda: from_memory(segment_tokens)
        return table

    times: dict[str, list[float]] = {}
    outputs = {}
    with torch.inference_mode():
        for i in range(len(groups)):  # warm-up, and the memories the memory arms read
            for name, fn in arms(i).items():
                outputs[(i, name)] = fn()
        for _ in range(rounds):
            for i in range(len(groups)):
                for name, fn in arms(i).items():
                    started = time.perf_counter()
                    fn()
                    times.setdefault(name, []).append(time.perf_counter() - started)
    k = model.config.num_memory_tokens
    start = len(_start_ids(model.tokenizer, True))
    context = len(contexts[0])
    segments = math.ceil(context / segment_tokens) if segment_tokens else 0
    prefill = {"full": len(_start_ids(model.tokenizer, False)) + context, "memory": start + k}
    if segment_tokens:
        prefill["memory-seg"] = start + k * segments
    medians = {name: statistics.median(v) for name, v in times.items()}
    per_position = kv_bytes_per_position(model.hf_model.config, torch.finfo(model.dtype).bits // 8)
    result = {"batch_size": batch_size, "seconds": medians, "all_seconds": times, "prefill_tokens": prefill,
              "kv_cache_mib": {name: (tokens + new_tokens) * per_position / 2**20 for name, tokens in prefill.items()},
              "encoder_tokens": {"compress": len(model.tokenizer("", add_special_tokens=True)["input_ids"]) + context + k}}
    comparisons = {}
    for suffix in ("", "-seg") if segment_tokens else ("",):
        memory, compress = medians[f"memory{suffix}"], medians[f"compress{suffix}"]
        comparisons[f"memory{suffix}"] = {
            "speedup_excluding_compress": medians["full"] / memory,
            "speedup_including_compress": medians["full"] / (memory + compress),
            "break_even_generations": break_even(compress, memory, medians["full"]),
        }
    result["comparisons"] = comparisons
    result["prefill_speedup"] = medians["full-prefill"] / medians["memory-prefill"]
    return result


def markdown(report: dict) -> str:
    r = report["result"]
    s, p = r["seconds"], r["prefill_tokens"]
    kv = r["kv_cache_mib"]
    lines = [
        f"# Generating after a {report['context_tokens']}-token context: full text vs memory ({report['model']})",
        "",
        f"{report['contexts']} held-out contexts x {report['rounds']} rounds, interleaved, batch {r.get('batch_size', 1)} "
        f"(seconds per call of that many), greedy, "
        f"{report['new_tokens']} new tokens, {report['torch_threads']} torch thread(s); medians. Command: `{report['command']}`",
        "",
        "| arm | prefill tokens (a context) | KV cache at the end (MiB, a context) | seconds | vs full |",
        "|---|---|---|---|---|",
        f"| full context | {p['full']} | {kv['full']:.1f} | {s['full']:.3f} | 1.00x |",
        f"| compress (encoder, {r['encoder_tokens']['compress']} tokens) | - | - | {s['compress']:.3f} | - |",
        f"| memory, compression excluded | {p['memory']} | {kv['memory']:.2f} | {s['memory']:.3f} | "
        f"**{r['comparisons']['memory']['speedup_excluding_compress']:.2f}x** |",
        f"| memory, compression included | {p['memory']} | {kv['memory']:.2f} | {s['memory'] + s['compress']:.3f} | "
        f"{r['comparisons']['memory']['speedup_including_compress']:.2f}x |",
    ]
    if "memory-seg" in r["comparisons"]:
        c = r["comparisons"]["memory-seg"]
        lines += [
            f"| memory in segments of {report['segment_tokens']}, compression excluded | {p['memory-seg']} | {kv['memory-seg']:.2f} | "
            f"{s['memory-seg']:.3f} | {c['speedup_excluding_compress']:.2f}x |",
            f"| memory in segments of {report['segment_tokens']}, compression included | {p['memory-seg']} | {kv['memory-seg']:.2f} | "
            f"{s['memory-seg'] + s['compress-seg']:.3f} | {c['speedup_including_compress']:.2f}x |",
        ]
    lines += [
        "",
        f"Time to the first token: full {s['full-prefill']:.3f} s, memory {s['memory-prefill']:.3f} s "
        f"({r['prefill_speedup']:.2f}x).",
    ]
    for name, c in r["comparisons"].items():
        n = c["break_even_generations"]
        lines.append(f"Break-even ({name}): {'never' if n is None else n} generation(s) from one memory "
                     f"(compress + n x memory <= n x full).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-compressor", help="a stage-1 llm2comp model, or 'tiny' (smoke run)")
    parser.add_argument("--data", default="builtin:news")
    parser.add_argument("--holdout", type=int, default=512)
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--contexts", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--segment-tokens", type=int, help="also compress in segments of N tokens (k vectors each)")
    parser.add_argument("--batch-size", type=int, default=1, help="contexts per call, every arm (--contexts a multiple of it)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device")
    parser.add_argument("--output", help="folder for benchmark.json and benchmark.md (default: print only)")
    args = parser.parse_args(argv)

    import torch

    from llm2comp.model import LLM2Comp

    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model
    allow_untrained = False
    if name == "tiny":  # a random model and a fake corpus: the mechanics only, numbers meaningless
        from llm2comp.testing import SAMPLE_TEXT, make_tiny_model_dir

        folder = Path(tempfile.mkdtemp())
        name = str(make_tiny_model_dir(folder / "tiny"))
        (folder / "corpus.txt").write_text("\n\n".join([" ".join(SAMPLE_TEXT[i:] + SAMPLE_TEXT[:i]) for i in range(8)] * 2))
        args.data, args.holdout, allow_untrained = str(folder / "corpus.txt"), 8, True
    model = LLM2Comp.from_pretrained(name, device=args.device, pooling="memory")
    k = model.config.num_memory_tokens
    room = args.context_tokens + k + 8
    if model.config.max_length < room:  # the context compressed whole, not cut at the model's max_length
        import dataclasses

        model.config = dataclasses.replace(model.config, max_length=room)
    contexts = contexts_from(model.tokenizer, args.data, args.holdout, args.contexts, args.context_tokens)
    result = run(model, contexts, args.new_tokens, args.rounds, args.segment_tokens, allow_untrained, args.batch_size)
    report = {"model": args.model, "context_tokens": args.context_tokens, "new_tokens": args.new_tokens,
              "contexts": args.contexts, "rounds": args.rounds, "segment_tokens": args.segment_tokens,
              "batch_size": args.batch_size,
              "torch_threads": torch.get_num_threads(), "device": str(model.device),
              "command": "python benchmarks/generate_from_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "result": result}
    text = markdown(report)
    print(text)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "benchmark.json", report)
        write_text_atomic(out / "benchmark.md", text)
        print(f"wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
