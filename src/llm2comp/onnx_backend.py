"""The ONNX backends' machinery (`backends.py` switches a model to them): the transformer body (input embeddings +
attention mask -> last hidden states, LoRA merged, the model's attention mode baked in) exported once with
``torch.onnx.export``, cached under ``$LLM2COMP_CACHE/onnx/<model fingerprint>/``, optionally quantised by ONNX
Runtime's dynamic int8 quantisation (``down_proj`` kept fp32; 7-bit weights on x86 CPUs without VNNI:
`int8_saturates`), and run by ONNX Runtime's CPU provider without its memory arena (`OnnxBody`). Needs
``pip install 'llm2comp[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


class _Body(nn.Module):
    """What the ONNX graph holds: the body of ``model`` under its own attention mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from .attention import bidirectional

        with bidirectional(self.model.hf_model, self.model.config.bidirectional) as attention_kwargs:
            return self.model.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False,
                                   **attention_kwargs).last_hidden_state


def export_onnx(model, folder: str | Path) -> Path:
    """Export the body of ``model`` (LoRA merged) to ``folder/model.onnx`` (+ external data), atomically; returns the
    file. Inputs ``inputs_embeds`` (batch, tokens, hidden) float32 and ``attention_mask`` (batch, tokens) int64, both
    axes dynamic; output ``last_hidden_state``."""
    from .atomic import publish_dir, staging_dir

    folder = Path(folder)
    staging = staging_dir(folder)  # one per process: concurrent exporters of one model never share it
    body = _Body(model).eval()
    features = model.tokenize(["a short text", "another text, a little longer than the first one"])
    embeds = model.embed_inputs(features).detach().float()
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(body, (embeds, features["attention_mask"]), str(staging / "model.onnx"), dynamo=True,
                          input_names=["inputs_embeds", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_shapes={"inputs_embeds": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}},
                          external_data=True)
    _forget_rewriter_matches()
    publish_dir(staging, folder, "model.onnx")  # first complete export wins; a later one of the same model is dropped
    return folder / "model.onnx"


def _forget_rewriter_matches() -> None:
    """Drop the exported graph that onnxscript's pattern matchers keep after optimising it.

    onnxscript's rewrite rules are module-level objects whose matchers hold their last graph and match (onnxscript
    0.7), and that graph's initializers are the exported model's torch weights: without this, every layer stays alive
    in the process that exported, until the next export (tested: the weight file is no longer mapped)."""
    import gc

    try:
        from onnxscript.rewriter._matcher import PatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to forget
        return
    for matcher in [obj for obj in gc.get_objects() if isinstance(obj, PatternMatcher)]:
        for attribute in ("_graph", "_match", "_current_node"):
            if hasattr(matcher, attribute):
                setattr(matcher, attribute, None)


def int8_saturates(cpuinfo: str | None = None) -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels can overflow on this CPU: on x86-64 without VNNI they multiply with
    VPMADDUBSW, whose pairwise sums saturate at int16, and a full-range int8 weight times a large activation does
    (a tiny model's embeddings fell to cosine 0.37 to fp32 on such a CPU, 0.98 on one with VNNI). Weights in 7 bits
    (``reduce_range``) cannot saturate there. ARM CPUs and x86 with AVX-VNNI / AVX512-VNNI accumulate in int32.
    ``cpuinfo``: the text of /proc/cpuinfo (read when not given; an x86 CPU whose flags cannot be read counts as
    saturating, the safe side)."""
    import platform

    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = set(re.findall(r"\b[a-z0-9_]+\b", " ".join(line for line in cpuinfo.splitlines() if line.startswith("flags"))))
    if not flags:
        return True
    return not flags & {"avx512_vnni", "avx_vnni", "avx10_1", "amx_int8"}


def quantize_onnx(source: Path, target: Path, intermediate_size: int, reduce_range: bool = False) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of ``source``'s matrix products into ``target`` (weights per
    channel), leaving out the MLP's down projections (their weight has the MLP width as input dimension).
    ``reduce_range``: weights in 7 bits, for CPUs where 8 bits saturate (`int8_saturates`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    down = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
            and shapes.get(n.input[1], (0,))[0] == intermediate_size]
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(staging), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=down, op_types_to_quantize=["MatMul"], use_external_data_format=False,
                         reduce_range=reduce_range)
    staging.rename(target)
    return target


def session_options(threads: int | None = None):
    """The ONNX Runtime session options of the ONNX backends (``threads``: intra-op threads, default torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no CPU arena: it keeps the largest batch's buffers for good (texts vary in length, so it only grows);
    # docs/results/benchmarks.md: the session alone -58 MiB (fp32) / -70 MiB (int8) after a few batches, end to end
    # -26 to -43 MiB for int8; the speed cost within the noise
    options.enable_cpu_mem_arena = False
    return options


class OnnxBody:
    """Runs an exported body in ONNX Runtime (CPU); called like the torch body, returns ``.last_hidden_state``.
    ``InferenceSession.run`` is thread-safe, so threads encoding at once share one session."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])

    def __call__(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **ignored) -> SimpleNamespace:
        feed = {"inputs_embeds": inputs_embeds.detach().float().cpu().numpy(),
                "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64)}
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))

    def __deepcopy__(self, memo):  # replicas share the (thread-safe) session
        return self


def onnx_file(model, int8: bool) -> Path:
    """The cached ONNX file of ``model`` (exported, and quantised for int8, on first use)."""
    from .backbone import cache_dir
    from .fingerprint import model_fingerprint

    folder = cache_dir() / "onnx" / model_fingerprint(model, model.config)
    fp32 = folder / "fp32" / "model.onnx"
    if not fp32.is_file():
        started = time.perf_counter()
        export_onnx(model, fp32.parent)
        logger.info("exported the model to ONNX in %.0f s: %s", time.perf_counter() - started, fp32)
    if not int8:
        return fp32
    reduce_range = int8_saturates()
    quantized = folder / ("int8-7bit-weights" if reduce_range else "int8") / "model.onnx"
    if not quantized.is_file():
        quantized.parent.mkdir(parents=True, exist_ok=True)
        quantize_onnx(fp32, quantized, model.hf_model.config.get_text_config().intermediate_size, reduce_range)
    return quantized


def check_onnx_installed() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"the ONNX backends need {', '.join(missing)}: pip install 'llm2comp[onnx]'")


def onnx_int8_products(model) -> tuple[int, int]:
    """(int8 matrix products, fp32 ones) in the graph an ONNX backend runs ((0, 0) for the others)."""
    runner = getattr(model, "body_runner", None)
    if runner is None:
        return 0, 0
    import onnx

    nodes = onnx.load(str(runner.path), load_external_data=False).graph.node
    return (sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in nodes),
            sum(n.op_type == "MatMul" for n in nodes))
