"""Encode throughput (texts/s), measured side by side in one process, interleaved over rounds:

1. `LLM2Comp.encode` against a bare `AutoModel` forward over the very same token batches (the overhead of
   tokenisation, memory-token splicing, pooling and bookkeeping; target <= 10%);
2. length-sorted against unsorted batching on mixed-length texts;
3. for a model with a fitted normalizer (the shipped default), encode with and without it (target: no cost).

    python benchmarks/encode_throughput.py                        # the shipped default (smollm2-135m-sup), merged
    python benchmarks/encode_throughput.py --model tiny --n 64    # smoke run
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    from llm2comp.testing import SAMPLE_TEXT

    rng = random.Random(seed)
    words = " ".join(SAMPLE_TEXT).split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([4, 8, 16, 48, 96]))) for _ in range(n)]


def bare_forward(model, batches) -> None:
    """The same token batches through the plain transformer, no llm2comp code in the loop."""
    body = model.hf_model.get_decoder()
    with torch.inference_mode():
        for input_ids, attention_mask in batches:
            body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def unsorted_encode(model, texts, batch_size) -> None:
    """Encode in input order (what a naive loop does): mixed lengths pad every batch to its longest text."""
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            model.forward(model.tokenize(texts[start : start + batch_size]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    from llm2comp import LLM2Comp
    from llm2comp.testing import make_tiny_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="alias/path, or 'tiny'")
    parser.add_argument("--n", type=int, default=256, help="number of texts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    name = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny")) if args.model == "tiny" else args.model
    model = LLM2Comp.from_pretrained(name).eval()
    model.merge_and_unload()  # as `llm2comp encode` and `serve` run it: LoRA folded into the weights
    texts = mixed_texts(args.n)

    # the exact batches encode() runs: token rows sorted by length, collated the same way
    token_ids = model.token_ids(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))
    batches = []
    for start in range(0, len(order), args.batch_size):
        features = model.collate([token_ids[i] for i in order[start : start + args.batch_size]])
        batches.append((features["input_ids"], features["attention_mask"]))

    model.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    runs = {"encode": [], "bare": [], "unsorted": []}
    normalizer = model.normalizer
    if normalizer is not None:
        runs["no normalizer"] = []
    for _ in range(args.rounds):
        runs["encode"].append(timed(lambda: model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)))
        runs["bare"].append(timed(lambda: bare_forward(model, batches)))
        runs["unsorted"].append(timed(lambda: unsorted_encode(model, texts, args.batch_size)))
        if normalizer is not None:
            model.normalizer = None
            runs["no normalizer"].append(timed(lambda: model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)))
            model.normalizer = normalizer
    median = {k: statistics.median(v) for k, v in runs.items()}
    print(f"model={args.model}, {args.n} mixed-length texts, batch {args.batch_size}, {args.rounds} interleaved rounds (median)")
    print(f"{'path':<44}{'texts/s':>10}")
    print(f"{'bare AutoModel forward (same token batches)':<44}{args.n / median['bare']:>10.1f}")
    print(f"{'LLM2Comp.encode (length-sorted)':<44}{args.n / median['encode']:>10.1f}")
    print(f"{'unsorted batching (input order)':<44}{args.n / median['unsorted']:>10.1f}")
    print(f"encode overhead over bare forward: {100 * (median['encode'] / median['bare'] - 1):+.1f}% (target <= +10%)")
    print(f"length-sorted speed-up over unsorted: {median['unsorted'] / median['encode']:.2f}x")
    if normalizer is not None:
        print(f"fitted normalizer: encode with / without it: {median['encode'] / median['no normalizer']:.3f}x time (target ~1.00)")


if __name__ == "__main__":
    main()
