"""Inference backends: what runs the network of a loaded model. What is embedded (memory tokens, pooling, the fitted
normalizer, truncation) stays the model's own code path; a backend only changes how the transformer's layers run.

- ``torch``: the model as loaded (fp32 on CPU unless a dtype was asked for).
- ``torch-int8``: PyTorch's dynamic int8 quantisation of the linear layers of the transformer body (weights int8 per
  output channel, activations quantised per batch, fbgemm/onednn int8 matmul kernels on x86 CPUs), except the MLP's
  ``down_proj``, which stays fp32: its input carries the few huge activation dimensions of these LLMs, and one scale
  per tensor for them wipes out the rest (SmolLM2: cosine to fp32 0.77 with it quantised, 0.96 without;
  docs/results/benchmarks.md). The embedding table and the LM head stay as they are. LoRA adapters are merged first;
  a quantised model embeds but does not train.

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
``pip install 'llm2comp[onnx]'`` (onnx, onnxruntime, onnxscript); their export, quantisation and runner are
`onnx_backend.py`.

PyTorch marks its ``torch.ao.quantization`` API deprecated in favour of torchao, whose int8 path targets GPUs; its
own dynamic quantisation remains the fast CPU int8 path here, and its deprecation warnings are silenced for this call.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from torch import nn

from .names import BACKENDS
from .onnx_backend import OnnxBody, check_onnx_installed, onnx_file

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


def release_weight_file(model) -> None:
    """Give the weights a converted model still uses (embedding table, norms, fp32 layers) memory of their own.

    Loaded weights are views of the memory-mapped safetensors file, and one live view keeps the whole mapping: the
    pages of the layers just replaced stay resident, as anonymous memory where merging LoRA wrote to them (SmolLM2:
    about 400 MiB after the ONNX backends freed their torch layers; docs/results/benchmarks.md)."""
    import gc

    with torch.no_grad():
        for tensor in [*model.hf_model.parameters(), *model.hf_model.buffers()]:
            tensor.data = tensor.data.clone()
    gc.collect()


def return_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere a no-op, returns False).

    glibc keeps what a conversion freed: after an ONNX export in the same process, 1.6 GiB resident fell to 0.74 GiB
    with it (SmolLM2; docs/results/benchmarks.md)."""
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
        check_onnx_installed()
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


def quantized_linear_layers(model) -> int:
    """How many linear layers of the body run int8 kernels (0 for the torch backend)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in model.body.modules())
