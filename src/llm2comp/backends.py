"""Inference backends: what runs the network of a loaded model. What is embedded (memory tokens, pooling, the fitted
normalizer, truncation) stays the model's own code path; a backend only changes how the transformer's layers run.

- ``torch``: the model as loaded (fp32 on CPU unless a dtype was asked for).
- ``torch-int8``: PyTorch's dynamic int8 quantisation of the linear layers of the transformer body (weights int8 per
  output channel, activations quantised per batch, fbgemm/onednn int8 matmul kernels on x86 CPUs), except the MLP's
  ``down_proj``, which stays fp32: its input carries the few huge activation dimensions of these LLMs, and one scale
  per tensor for them wipes out the rest (SmolLM2: cosine to fp32 0.77 with it quantised, 0.96 without; RESULTS 6).
  The embedding table and the LM head stay as they are. LoRA adapters are merged first; a quantised model embeds
  but does not train.

- ``onnx``: the transformer body (input embeddings + attention mask -> last hidden states, LoRA merged, the model's
  attention mode baked in) exported once with ``torch.onnx.export`` and run by ONNX Runtime's CPU provider; the
  embedding lookup, memory tokens, pooling and normalizer stay in PyTorch, so what is embedded is the same code.
  The export is cached under ``$LLM2COMP_CACHE/onnx/<model fingerprint>/`` (about a minute for 135M parameters).
- ``onnx-int8``: that export with ONNX Runtime's dynamic int8 quantisation of its matrix products (weights int8 per
  channel), ``down_proj`` kept fp32 for the reason above (found by shape: the products whose input is the MLP width).
  On x86 CPUs without VNNI the weights take 7 bits (`int8_saturates`: ORT's kernels there would overflow with 8),
  cached apart from the 8-bit file.

The torch layers of an ONNX model are freed (the embedding table and the final norm stay), what stays is copied out
of the memory-mapped weight file (`release_weight_file`; torch-int8 too), the heap's freed pages go back to the OS,
and ONNX Runtime runs without its CPU memory arena. Both ONNX backends need
``pip install 'llm2comp[onnx]'`` (onnx, onnxruntime, onnxscript).

PyTorch marks its ``torch.ao.quantization`` API deprecated in favour of torchao, whose int8 path targets GPUs; its
own dynamic quantisation remains the fast CPU int8 path here, and its deprecation warnings are silenced for this call.
"""

from __future__ import annotations

import contextlib
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

from .names import BACKENDS

logger = logging.getLogger(__name__)

FP32_LAYERS = ("down_proj",)  # linear layers torch-int8 keeps in fp32 (see the module docstring)


def int8_layers(body: nn.Module, fp32_layers: tuple[str, ...] = FP32_LAYERS) -> dict:
    """{layer name: per-channel dynamic qconfig} for every linear layer of ``body`` not named in ``fp32_layers``."""
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    return {name: qconfig for name, module in body.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in fp32_layers}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def _quiet_quantization():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantize_per_tensor|quantization).*deprecat.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        yield


# ---------------------------------------------------------------------------------------------- ONNX Runtime
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
    # RESULTS 6: the session alone -58 MiB (fp32) / -70 MiB (int8) after a few batches, end to end -26 to -43 MiB
    # for int8; the speed cost within the noise
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


def _check_onnx_installed() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"the ONNX backends need {', '.join(missing)}: pip install 'llm2comp[onnx]'")


def release_weight_file(model) -> None:
    """Give the weights a converted model still uses (embedding table, norms, fp32 layers) memory of their own.

    Loaded weights are views of the memory-mapped safetensors file, and one live view keeps the whole mapping: the
    pages of the layers just replaced stay resident, as anonymous memory where merging LoRA wrote to them (SmolLM2:
    about 400 MiB after the ONNX backends freed their torch layers; RESULTS 6)."""
    import gc

    with torch.no_grad():
        for tensor in [*model.hf_model.parameters(), *model.hf_model.buffers()]:
            tensor.data = tensor.data.clone()
    gc.collect()


def return_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere a no-op, returns False).

    glibc keeps what a conversion freed: after an ONNX export in the same process, 1.6 GiB resident fell to 0.74 GiB
    with it (SmolLM2; RESULTS 6)."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def use_backend(model, name: str, threads: int | None = None):
    """Switch a loaded `LLM2Comp` to backend ``name`` in place (returns it). From ``torch`` only; irreversible."""
    check_backend(name)
    current = getattr(model, "backend", "torch")
    if name == current:
        return model
    if current != "torch":
        raise ValueError(f"the model already runs on backend '{current}'; load it again for '{name}'")
    if name == "torch-int8":
        if model.device.type != "cpu":
            raise ValueError("torch-int8 runs on CPU; load the model with device='cpu'")
        model.merge_and_unload()
        model.float()
        with _quiet_quantization():
            torch.ao.quantization.quantize_dynamic(model.body, int8_layers(model.body), dtype=torch.qint8, inplace=True)
        model.clear_replicas()
        release_weight_file(model)
    if name in ("onnx", "onnx-int8"):
        _check_onnx_installed()
        if model.device.type != "cpu":
            raise ValueError(f"{name} runs on CPU (ONNX Runtime's CPU provider); load the model with device='cpu'")
        model.merge_and_unload()
        model.float()
        path = onnx_file(model, int8=name == "onnx-int8")
        model.body.layers = nn.ModuleList()  # the graph holds them now: free the torch copy
        model.clear_replicas()
        release_weight_file(model)
        model.body_runner = OnnxBody(path, threads=threads)
    return_freed_memory()
    model.backend = name
    return model


def onnx_int8_products(model) -> tuple[int, int]:
    """(int8 matrix products, fp32 ones) in the graph an ONNX backend runs ((0, 0) for the others)."""
    runner = getattr(model, "body_runner", None)
    if runner is None:
        return 0, 0
    import onnx

    nodes = onnx.load(str(runner.path), load_external_data=False).graph.node
    return (sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in nodes),
            sum(n.op_type == "MatMul" for n in nodes))


def quantized_linear_layers(model) -> int:
    """How many linear layers of the body run int8 kernels (0 for the torch backend)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in model.body.modules())
