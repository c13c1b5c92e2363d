"""Model selection on STS-B *validation* (never a test split): raw, centred and standardised cosine Spearman x 100.

    python scripts/validation_sts.py --pairs 400 smollm2-135m@pooling=prompteol runs/default/checkpoints/checkpoint-20 runs/default

A spec is a name for `LLM2Comp.from_pretrained` with optional ``@key=value,key=value`` keyword arguments
(``pooling=prompteol``, ``bidirectional=false``, ``memory_init= means in one word:"``). Centring / standardising
statistics come from *training* text only: 1,000 STS-B train sentences and 500 Banking77 train texts (seed 0).
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
from scipy.stats import spearmanr

from llm2comp import LLM2Comp
from llm2comp.data.builtin_pairs import data_dir
from llm2comp.data.corpus import read_jsonl


def _load(spec: str) -> LLM2Comp:
    name, _, options = spec.partition("@")
    kwargs = dict(option.split("=", 1) for option in options.split(",")) if options else {}
    kwargs = {k: (v == "true") if v in ("true", "false") else v for k, v in kwargs.items()}
    return LLM2Comp.from_pretrained(name, **kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_dir()
    rows = read_jsonl(root / "mteb" / "STSBenchmark" / "validation.jsonl")[: args.pairs]
    first, second, gold = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [r["score"] for r in rows]
    train = read_jsonl(root / "mteb" / "STSBenchmark" / "train.jsonl")
    banking = [r["text"] for r in read_jsonl(root / "mteb" / "Banking77Classification" / "train.jsonl")]
    rng = random.Random(0)
    fit = rng.sample(sorted({r["sentence1"] for r in train} | {r["sentence2"] for r in train}), 1000) + rng.sample(banking, 500)

    def score(a, b):
        return 100 * spearmanr(torch.cosine_similarity(a, b).numpy(), gold).statistic

    for spec in args.models:
        model = _load(spec)
        shipped = ""
        if model.normalizer is not None:  # as the model encodes: with its own fitted normalizer
            shipped = f" | with its own normalizer {score(model.encode(first, convert_to_tensor=True), model.encode(second, convert_to_tensor=True)):6.2f}"
        model.drop_normalizer()  # raw embeddings; the statistics below are fitted here
        a, b = model.encode(first, convert_to_tensor=True), model.encode(second, convert_to_tensor=True)
        stats = model.encode(fit, convert_to_tensor=True)
        mean, std = stats.mean(0), stats.std(0)
        print(f"{spec:60s} raw {score(a, b):6.2f} | centred {score(a - mean, b - mean):6.2f} | "
              f"standardised {score((a - mean) / std, (b - mean) / std):6.2f}{shipped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
