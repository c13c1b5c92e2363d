"""Zero-shot pooling from an early layer: the backbone cut after its first N layers, mean pooling of those states
(as `output_hidden_states[N]`: without the final norm, which belongs to the last layer), optionally standardised on training text; evaluated with `llm2comp evaluate`'s own path.

    python scripts/layer_baseline.py --layers 1 --tasks STSBenchmark,STS13,STS14,STS15,SICK-R,Banking77Classification --output runs/eval/mean-layer1

The per-layer STS curves of scripts/diagnose_embeddings.py show the mean of the *first* layers' states ordering
STS pairs far better than the last layer's; this measures that baseline on full test sets, so the shipped model is
compared with the strongest zero-shot pooling we know of, not only with the usual ones.
"""

from __future__ import annotations

import argparse
import sys

import torch

from llm2comp import LLM2Comp
from llm2comp.evaluation import evaluate_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--tasks", default="STSBenchmark,STS13,STS14,STS15,SICK-R,Banking77Classification")
    parser.add_argument("--standardise-on", default=None, help="fit a normalizer on these training texts (e.g. builtin:shared-pairs)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    model = LLM2Comp.from_pretrained(args.model, pooling="mean")
    body = model.body
    if not 1 <= args.layers < len(body.layers):
        raise SystemExit(f"--layers must be in 1..{len(body.layers) - 1} (the last layer is plain mean pooling)")
    body.layers = torch.nn.ModuleList(list(body.layers)[: args.layers])
    body.norm = torch.nn.Identity()  # the states of an intermediate layer, as output_hidden_states gives them
    model.hf_model.config.get_text_config().num_hidden_layers = args.layers
    if args.standardise_on:
        from llm2comp.data.pairs import source_texts

        texts = source_texts(args.standardise_on, 4000, seed=42, max_pairs_per_source=3000, query_instructions=False)
        model.fit_normalizer(texts, source=f"{len(texts)} texts of {args.standardise_on}")
    evaluate_model(model, tasks=args.tasks, output_dir=args.output, num_threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
