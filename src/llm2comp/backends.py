"""Inference backends: what runs the network of a loaded model. What is embedded (memory tokens, pooling, the fitted
normalizer, truncation) stays the model's own code path; a backend only changes how the transformer's layers run.

- ``torch``: the model as loaded (fp32 on CPU unless a dtype was asked for).
- ``torch-int8``: PyTorch's dynamic int8 quantisation of the linear layers of the transformer body (weights int8 per
  output channel, activations quantised per batch, fbgemm/onednn int8 matmul kernels on x86 CPUs), except the MLP's
  ``down_proj``, which stays fp32: its input carries the few huge activation dimensions of these LLMs, and one scale
  per tensor for them wipes out the rest (SmolLM2: cosine to fp32 0.77 with it quantised, 0.96 without; RESULTS 6).
  The embedding table and the LM head stay as they are. LoRA adapters are merged first; a quantised model embeds
  but does not train.

PyTorch marks its ``torch.ao.quantization`` API deprecated in favour of torchao, whose int8 path targets GPUs; its
own dynamic quantisation remains the fast CPU int8 path here, and its deprecation warnings are silenced for this call.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

BACKENDS = ("torch", "torch-int8")
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


def use_backend(model, name: str):
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
    model.backend = name
    return model


def quantized_linear_layers(model) -> int:
    """How many linear layers of the body run int8 kernels (0 for the torch backend)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in model.body.modules())
