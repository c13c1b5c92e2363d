"""A short hash of a model's configuration and weights: the revision mteb records (`metadata.py`), so that mteb's result
cache never hands back results of other weights, and the key of the ONNX export cache (`backends.py`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import torch


def model_fingerprint(model: torch.nn.Module, config: Any = None, sample: int = 2048) -> str:
    """A short hash of a model's configuration and (a strided sample of) every parameter and buffer.

    Cheap even for billions of parameters (no full pass over the weights), yet any training step, merged or attached
    LoRA adapter, or different memory tokens changes it. Used as the mteb revision, so that mteb's own result cache
    (when someone calls `mteb.evaluate` with its default cache) can never hand back results of a different model.
    """
    digest = hashlib.sha1()
    if config is not None:
        try:
            payload = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
        except TypeError:
            payload = {"repr": repr(config)}
        digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    with torch.no_grad():
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, tensor in sorted(tensors, key=lambda item: item[0]):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // sample)
            picked = flat[::step][:sample].float().cpu().numpy()
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(np.ascontiguousarray(picked).tobytes())
    return digest.hexdigest()[:16]
