"""Which linear layers int8 can take (issue 22): the cosine between each text's fp32 embedding and its embedding with
dynamic int8 quantisation of the body's linear layers, per set of layers kept in fp32 (weights per output channel).

    python benchmarks/int8_layers.py                               # the shipped default, 96 STS-B test sentences
    python benchmarks/int8_layers.py --model tiny --n 8            # smoke run

What `backends.py`'s torch-int8 keeps in fp32 (`FP32_LAYERS`) comes from this table (docs/results/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

KEPT = {"none": (), "down_proj": ("down_proj",), "down_proj, o_proj": ("down_proj", "o_proj"),
        "the MLP (attention only int8)": ("down_proj", "up_proj", "gate_proj")}


def embed(model, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(model.tokenize(texts[i : i + 32]))["sentence_embedding"] for i in range(0, len(texts), 32)]).float()


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from backends import sentences

    from llm2comp import LLM2Comp
    from llm2comp.backends import int8_layers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="model dir or alias; 'tiny': a random tiny Llama")
    parser.add_argument("--n", type=int, default=96)
    args = parser.parse_args()
    if args.model == "tiny":
        import tempfile

        from llm2comp.testing import make_tiny_model_dir

        args.model = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny"))
    texts = sentences(args.n)
    load = lambda: LLM2Comp.from_pretrained(args.model).merge_and_unload().eval()  # noqa: E731
    reference = embed(load(), texts)
    print(f"{len(texts)} texts; cosine of each text's int8 embedding to its fp32 one\n")
    print("| kept in fp32 | int8 layers | cosine mean | minimum |\n|---|---|---|---|")
    for label, kept in KEPT.items():
        model = load()
        layers = int8_layers(model.body, kept)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(model.body, layers, dtype=torch.qint8, inplace=True)
        cosine = torch.nn.functional.cosine_similarity(embed(model, texts), reference)
        print(f"| {label} | {len(layers)} | {cosine.mean():.4f} | {cosine.min():.4f} |")


if __name__ == "__main__":
    main()
