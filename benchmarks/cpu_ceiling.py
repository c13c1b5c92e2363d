"""How fast can any backend be on this CPU (issue 22)? The matrix products of a model's layers timed alone, per
kernel, side by side in one run, beside the model's own `encode`: the share of encode time the products take, the
GFLOP/s each kernel reaches, and the bound they put on a backend's speed-up over fp32 torch.

A backend that ran every product of the body at the fastest kernel's rate and spent no time on anything else (norms,
attention scores, activations, tokenising, pooling) would encode at ``products FLOPs / fastest rate`` per text; the
ratio of fp32 torch's measured encode time to that is the most any backend built on these kernels can gain here.

Kernels: fp32 torch (``x @ W.T``), fp32 ONNX Runtime (MatMul), ORT's dynamic int8 (what ``onnx-int8`` runs: weights
per channel, 7 bits where `int8_saturates`), PyTorch's dynamic int8 linear (what ``torch-int8`` runs).

    python benchmarks/cpu_ceiling.py                    # the shipped default's shapes, rows of one STS-B batch
    python benchmarks/cpu_ceiling.py --model tiny --rows 64 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

KERNELS = ("torch fp32", "onnx fp32", "onnx int8", "torch int8")


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """{product: (inputs, outputs)} of one decoder layer (Llama-style attention with grouped KV heads, gated MLP)."""
    hidden, inner = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", heads) * head_dim
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
            "down_proj": (inner, hidden)}


def _timed(call, min_seconds: float) -> float:
    """Seconds per call: the median over repeats that together last at least ``min_seconds``."""
    for _ in range(3):  # lazy kernel set-up, weight packing
        call()
    times = []
    while sum(times) < min_seconds or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Products:
    """Callables running one product (``rows`` x inputs, times the weight) on each kernel."""

    def __init__(self, inputs: int, outputs: int, rows: int, folder: Path, threads: int):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        from llm2comp.backends import _quiet_quantization
        from llm2comp.onnx_backend import int8_saturates

        generator = torch.Generator().manual_seed(inputs * 7 + outputs)
        weight = torch.randn(outputs, inputs, generator=generator) / inputs**0.5
        self.x = torch.randn(rows, inputs, generator=generator)
        self.weight = weight
        self.feed = {"x": self.x.numpy()}
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "product",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", inputs])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", outputs])],
            [numpy_helper.from_array(weight.T.contiguous().numpy(), "w")])
        fp32 = folder / f"{inputs}x{outputs}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
        int8 = folder / f"{inputs}x{outputs}-int8.onnx"
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], reduce_range=int8_saturates())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                         for name, path in (("onnx fp32", fp32), ("onnx int8", int8))}
        linear = torch.nn.Sequential(torch.nn.Linear(inputs, outputs, bias=False))
        linear[0].weight.data = weight
        with _quiet_quantization():
            self.quantized = torch.ao.quantization.quantize_dynamic(
                linear, {"0": torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)

    def call(self, kernel: str):
        if kernel == "torch fp32":
            return lambda: self.x @ self.weight.T
        if kernel == "torch int8":
            return lambda: self.quantized(self.x)
        session = self.sessions[kernel]
        return lambda: session.run(["y"], self.feed)


def encode_seconds_per_text(model, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    return (time.perf_counter() - start) / len(texts)


def main() -> None:
    from llm2comp import LLM2Comp
    from llm2comp.testing import make_tiny_model_dir

    sys.path.insert(0, str(Path(__file__).parent))
    from backends import sentences

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-sup", help="alias/path, or 'tiny'")
    parser.add_argument("--n", type=int, default=256, help="texts encoded by the model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=0, help="rows per product (default: tokens of one batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.3, help="per kernel and shape, per round")
    parser.add_argument("--targets", type=float, nargs="*", default=[2.5],
                        help="speed-ups over fp32 torch encode to price in GFLOP/s (issue 22: 2.5)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer suggests pre-processing, once per graph

    name = str(make_tiny_model_dir(tempfile.mkdtemp() + "/tiny")) if args.model == "tiny" else args.model
    model = LLM2Comp.from_pretrained(name)
    model.merge_and_unload()
    texts = sentences(args.n)
    tokens = statistics.mean(len(r) for r in model.token_ids(texts)) + model.pooling.memory_slots(model.config)
    rows = args.rows or round(tokens * args.batch_size)
    config = model.hf_model.config.get_text_config()
    shapes = layer_shapes(config)
    layers = config.num_hidden_layers
    flops_per_text = 2 * tokens * layers * sum(i * o for i, o in shapes.values())

    with tempfile.TemporaryDirectory() as folder:
        products = {p: Products(*shape, rows=rows, folder=Path(folder), threads=threads) for p, shape in shapes.items()}
        seconds = {(k, p): [] for k in KERNELS for p in shapes}
        encode = []
        model.encode(texts[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)
        for _ in range(args.rounds):
            encode.append(encode_seconds_per_text(model, texts, args.batch_size))
            for kernel in KERNELS:
                for product, runner in products.items():
                    seconds[kernel, product].append(_timed(runner.call(kernel), args.min_seconds))
    per_call = {key: statistics.median(v) for key, v in seconds.items()}
    encode_s = statistics.median(encode)

    print(f"{args.model}: {layers} layers, {tokens:.1f} tokens per text (memory tokens included), products of "
          f"{rows} rows (one batch of {args.batch_size}), {threads} threads, {args.rounds} interleaved rounds (median)")
    print(f"fp32 torch encode: {1 / encode_s:.1f} texts/s; the body's products: {flops_per_text / 1e9:.3f} GFLOP per "
          f"text, {flops_per_text / encode_s / 1e9:.1f} GFLOP/s achieved in encode\n")
    header = f"{'product':<10} {'in x out':>11}" + "".join(f" {k + ' GF/s':>16}" for k in KERNELS)
    print(header)
    for product, (i, o) in shapes.items():
        rates = [2 * rows * i * o / per_call[k, product] / 1e9 for k in KERNELS]
        print(f"{product:<10} {f'{i}x{o}':>11}" + "".join(f" {r:>16.1f}" for r in rates))
    print()
    print(f"{'kernel':<12} {'GFLOP/s':>8} {'products/text ms':>17} {'share of encode':>16} {'bound vs torch encode':>22}")
    bounds, rates = {}, {}
    for kernel in KERNELS:
        # every layer runs each product once per call of `rows` rows, i.e. rows / tokens texts
        per_text = layers * sum(per_call[kernel, p] for p in shapes) / (rows / tokens)
        bounds[kernel], rates[kernel] = encode_s / per_text, flops_per_text / per_text
        print(f"{kernel:<12} {rates[kernel] / 1e9:>8.2f} {per_text * 1e3:>17.2f} {100 * per_text / encode_s:>15.2f}% "
              f"{bounds[kernel]:>21.2f}x")
    best = max(bounds, key=bounds.get)
    print(f"\nceiling: a backend running every product at the {best} rate and nothing else would be "
          f"{bounds[best]:.2f}x fp32 torch encode on this CPU")
    for target in args.targets:
        print(f"{target:g}x fp32 torch encode ({target / encode_s:.1f} texts/s) needs the products alone at "
              f"{target * flops_per_text / encode_s / 1e9:.1f} GFLOP/s; the fastest kernel here: {rates[best] / 1e9:.2f}")


if __name__ == "__main__":
    main()
