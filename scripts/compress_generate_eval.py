"""Compress, then generate, measured (issue 44): does the frozen LLM continue a text from its memory as it does from
the text itself, and what does an RC model's memory give back?

On the compression probe's held-out passages (the last ``--holdout`` paragraphs of ``--data``, which stage 1 leaves
out of its training data; the first ``--passages`` with 64 tokens), each passage's first 32 tokens are compressed
into the model's k memory vectors and the frozen decoder (adapter off, causal) continues greedily for 32 tokens from

* **full**: [BOS, the 32 tokens themselves] (the uncompressed context: the reference),
* **own**: [BOS, the passage's own memory],
* **other**: [BOS, the next passage's memory] (the probe's derangement),
* **none**: [BOS] (no context at all; the same output for every passage).

Each continuation is scored against the full-context continuation and against the true next 32 tokens: ROUGE-L F1
(LCS over lowercased words, computed here) and token agreement (the share of the 32 positions with the same token).
EOS is never chosen (every continuation has 32 tokens). Reconstruction (``--rc-model``, or the model itself when its
stage 1 was RC): passages of 32/64/128 tokens compressed whole, decoded back greedily, token accuracy (same token at
the same position) and ROUGE-L, own memory and another passage's.

    python scripts/compress_generate_eval.py --model smollm2-135m-compressor --passages 64 \\
        --output docs/results-compress-generate
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

from llm2comp.atomic import write_json_atomic, write_text_atomic

CONDITIONS = ("own", "other", "none")


# ---------------------------------------------------------------------------------------------- metrics
def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def words(text: str) -> list[str]:
    """ROUGE's tokens: lowercased runs of letters and digits (rouge-score's default tokenizer, without stemming)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_l(candidate, reference) -> float:
    """ROUGE-L F1 of two texts (compared as `words`) or two token sequences: LCS-based precision and recall, their
    harmonic mean (0 when either is empty)."""
    if isinstance(candidate, str):
        candidate, reference = words(candidate), words(reference)
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_agreement(candidate, reference) -> float:
    """Share of positions holding the same token, over the longer of the two (a missing position disagrees)."""
    longest = max(len(candidate), len(reference))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(candidate, reference)) / longest


def per_passage(candidates: list[list[int]], references: list[list[int]], decode) -> dict[str, list[float]]:
    """ROUGE-L (words of the decoded texts) and token agreement of each candidate against its reference."""
    return {"rouge_l": [rouge_l(decode(c), decode(r)) for c, r in zip(candidates, references)],
            "token_agreement": [token_agreement(c, r) for c, r in zip(candidates, references)]}


def score(candidates: list[list[int]], references: list[list[int]], decode) -> dict:
    """Mean ROUGE-L and token agreement of candidates against references."""
    return {metric: statistics.fmean(values) for metric, values in per_passage(candidates, references, decode).items()}


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def bootstrap_ratio(a: list[float], b: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of mean(a) / mean(b) over passages resampled with replacement (paired)."""
    import random

    rng = random.Random(seed)
    n = len(a)
    values = []
    for _ in range(resamples):
        pick = [rng.randrange(n) for _ in range(n)]
        denominator = sum(b[i] for i in pick)
        if denominator > 0:
            values.append(sum(a[i] for i in pick) / denominator)
    if len(values) < resamples // 2:
        return None
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


# ---------------------------------------------------------------------------------------------- the runs
def continuation(model, rows: list[list[int]], context: int, new_tokens: int, batch_size: int) -> dict:
    """Greedy continuations under each condition (token ids) and their scores; rows hold context + true tokens."""
    from llm2comp.generation import compress_token_ids, generate_ids

    contexts = [r[:context] for r in rows]
    truth = [r[context : context + new_tokens] for r in rows]
    timings = {}
    started = time.perf_counter()
    memory = compress_token_ids(model, contexts, batch_size=batch_size)
    timings["compress"] = time.perf_counter() - started
    own = memory.rows()
    other = own[1:] + own[:1]  # passage i reads passage i+1's memory
    arms = {"full": (contexts, [None] * len(rows)), "own": ([[]] * len(rows), own), "other": ([[]] * len(rows), other),
            "none": ([[]] * len(rows), [None] * len(rows))}
    generated = {}
    for name, (prompts, memories) in arms.items():
        started = time.perf_counter()
        if name == "none":  # the same input for every passage: generated once
            one = generate_ids(model, prompts[:1], memories[:1], new_tokens, stop_at_eos=False)
            generated[name] = one * len(rows)
        else:
            generated[name] = generate_ids(model, prompts, memories, new_tokens, batch_size=batch_size, stop_at_eos=False)
        timings[name] = time.perf_counter() - started
    decode = model.tokenizer.decode
    passages = {
        "vs_full": {name: per_passage(generated[name], generated["full"], decode) for name in CONDITIONS},
        "vs_true": {name: per_passage(generated[name], truth, decode) for name in ("full", *CONDITIONS)},
    }
    scores = {ref: {name: {m: statistics.fmean(v) for m, v in by.items()} for name, by in arms.items()}
              for ref, arms in passages.items()}
    ratios, intervals = {}, {}
    for reference in ("vs_full", "vs_true"):
        for metric in ("rouge_l", "token_agreement"):
            p = passages[reference]
            for other in ("none", "other"):
                key = f"{reference}.{metric}.own/{other}"
                ratios[key] = ratio(statistics.fmean(p["own"][metric]), statistics.fmean(p[other][metric]))
                intervals[key] = bootstrap_ratio(p["own"][metric], p[other][metric])
    return {"scores": scores, "ratios": ratios, "ratio_intervals_95": intervals, "per_passage": passages,
            "seconds": timings, "generated": generated, "truth": truth, "contexts": contexts,
            "memory_vectors": int(memory.lengths[0])}


def reconstruction(model, tokenizer, args, lengths: list[int]) -> dict:
    """Token accuracy and ROUGE-L of `reconstruct` from the own memory and from another passage's, per length."""
    from llm2comp.evaluation.compression import probe_passages
    from llm2comp.generation import compress_token_ids, reconstruct

    out = {}
    decode = tokenizer.decode
    for length in lengths:
        rows = probe_passages(tokenizer, args.data, args.passages, length, args.holdout)
        memory = compress_token_ids(model, rows, batch_size=args.batch_size)
        own = reconstruct(model, memory, batch_size=args.batch_size, return_token_ids=True)
        other = reconstruct(model, memory[list(range(1, len(rows))) + [0]], batch_size=args.batch_size, return_token_ids=True)
        other = [o[: len(r)] for o, r in zip(other, rows)]
        out[str(length)] = {"passages": len(rows), "own": score(own, rows, decode), "other": score(other, rows, decode),
                            "example": {"text": decode(rows[0]), "reconstructed": decode(own[0])}}
    return out


# ---------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    c = report["continuation"]
    s, r = c["scores"], c["ratios"]
    k = c["memory_vectors"]
    lines = [
        f"# Compress, then generate: {report['model']}",
        "",
        f"{report['passages']} held-out passages of `{report['data']}` (the last {report['holdout']} paragraphs, never "
        f"trained on); the first {report['context_tokens']} tokens compressed into {k} memory vectors, "
        f"{report['new_tokens']} tokens generated greedily by the frozen decoder. Command: `{report['command']}`",
        "",
        "## Continuation",
        "",
        "| decoder input | ROUGE-L vs full-context continuation | token agreement vs full | ROUGE-L vs true text | token agreement vs true |",
        "|---|---|---|---|---|",
        f"| full context ({report['context_tokens']} tokens) | 1 | 1 | {s['vs_true']['full']['rouge_l']:.3f} | {s['vs_true']['full']['token_agreement']:.3f} |",
    ]
    labels = {"own": f"own memory ({k} vectors)", "other": "another passage's memory", "none": "no memory ([BOS] only)"}
    for name in CONDITIONS:
        lines.append(f"| {labels[name]} | {s['vs_full'][name]['rouge_l']:.3f} | {s['vs_full'][name]['token_agreement']:.3f} | "
                     f"{s['vs_true'][name]['rouge_l']:.3f} | {s['vs_true'][name]['token_agreement']:.3f} |")

    intervals = c.get("ratio_intervals_95", {})

    def fmt(key, bold=False):
        x = r.get(key)
        if x is None:
            return "-"
        text = f"**{x:.2f}x**" if bold else f"{x:.2f}x"
        ci = intervals.get(key)
        return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    lines += [
        "",
        f"ROUGE-L vs full: own/none {fmt('vs_full.rouge_l.own/none', True)} (target 1.5x), own/other "
        f"{fmt('vs_full.rouge_l.own/other', True)} (target 1.3x); vs true: own/none {fmt('vs_true.rouge_l.own/none')}, "
        f"own/other {fmt('vs_true.rouge_l.own/other')}" + (" (95% bootstrap intervals over passages)." if intervals else "."),
        "",
    ]
    if report.get("reconstruction"):
        lines += ["## Reconstruction", "", f"RC model: {report['reconstruction_model']}", "",
                  "| passage tokens | token accuracy (own memory) | ROUGE-L (own) | token accuracy (other's memory) | ROUGE-L (other) |",
                  "|---|---|---|---|---|"]
        for length, v in report["reconstruction"].items():
            lines.append(f"| {length} | {v['own']['token_agreement']:.3f} | {v['own']['rouge_l']:.3f} | "
                         f"{v['other']['token_agreement']:.3f} | {v['other']['rouge_l']:.3f} |")
        lines.append("")
    else:
        lines += ["## Reconstruction", "", report.get("reconstruction_note", "not measured"), ""]
    ex = report["example"]
    lines += ["## Example (passage 0)", "", f"- **context** ({report['context_tokens']} tokens, compressed): {ex['context']!r}",
              f"- **true continuation**: {ex['true']!r}"]
    for name in ("full", *CONDITIONS):
        lines.append(f"- **{name}**: {ex[name]!r}")
    lines += ["", f"Seconds (whole run, {report['passages']} passages): "
              + ", ".join(f"{k} {v:.1f}" for k, v in c["seconds"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-compressor", help="a stage-1 llm2comp model")
    parser.add_argument("--rc-model", help="an RC-trained model for the reconstruction measurement (default: the model, if RC)")
    parser.add_argument("--data", default="builtin:news")
    parser.add_argument("--holdout", type=int, default=512)
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--context-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rc-lengths", default="32,64,128")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device")
    parser.add_argument("--allow-untrained", action="store_true", help="research: a model without a compression stage")
    parser.add_argument("--output", help="folder for eval.json and eval.md (default: print only)")
    args = parser.parse_args(argv)

    import torch

    from llm2comp.evaluation.compression import probe_passages
    from llm2comp.generation import check_compressor, compression_stage
    from llm2comp.model import LLM2Comp

    if args.threads:
        torch.set_num_threads(args.threads)
    model = LLM2Comp.from_pretrained(args.model, device=args.device)
    check_compressor(model, args.allow_untrained)
    tok = model.tokenizer
    rows = probe_passages(tok, args.data, args.passages, args.context_tokens + args.new_tokens, args.holdout)
    started = time.perf_counter()
    cont = continuation(model, rows, args.context_tokens, args.new_tokens, args.batch_size)
    decode = tok.decode
    example = {"context": decode(cont["contexts"][0]), "true": decode(cont["truth"][0]),
               **{name: decode(cont["generated"][name][0]) for name in ("full", *CONDITIONS)}}
    report = {"model": args.model, "data": args.data, "holdout": args.holdout, "passages": len(rows),
              "context_tokens": args.context_tokens, "new_tokens": args.new_tokens,
              "command": "python scripts/compress_generate_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "stage": compression_stage(model), "torch_threads": torch.get_num_threads(),
              "continuation": {k: v for k, v in cont.items() if k not in ("generated", "truth", "contexts")},
              "example": example,
              "texts": [{"context": decode(cont["contexts"][i]), "true": decode(cont["truth"][i]),
                         **{name: decode(cont["generated"][name][i]) for name in ("full", *CONDITIONS)}}
                        for i in range(len(rows))]}
    rc_name = args.rc_model or (args.model if (compression_stage(model) or {}).get("objective") == "rc" else None)
    if rc_name:
        rc = model if rc_name == args.model else LLM2Comp.from_pretrained(rc_name, device=args.device)
        lengths = [int(x) for x in args.rc_lengths.split(",") if x]
        report["reconstruction_model"] = rc_name
        report["reconstruction"] = reconstruction(rc, rc.tokenizer, args, lengths)
    else:
        report["reconstruction_note"] = (f"not measured: {args.model} was trained with '{(report['stage'] or {}).get('objective')}', "
                                         "not reconstruction (rc), and no RC-trained model is shipped (pass --rc-model)")
    report["seconds"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "eval.json", report)
        write_text_atomic(out / "eval.md", text)
        print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
