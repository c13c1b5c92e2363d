"""What mteb records about a model: a display name, a revision that fingerprints the current weights, its size.

Built here, outside both the model and the evaluation package, so that `LLM2Comp.mteb_model_meta` (mteb recognises
an encoder by that attribute: `mteb.evaluate(model, tasks)` takes an LLM2Comp as it takes a SentenceTransformer) and
the evaluation side's `MTEBEncoder` share it without the model importing evaluation code. mteb is imported only when
the metadata is asked for.
"""

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


def display_name(model) -> str:
    """``llm2comp/<backbone>-<pooling>``, the name mteb records unless one is given."""
    base = str(model.config.base_model).rstrip("/").replace("\\", "/").split("/")[-1] or "model"
    return f"llm2comp/{base}-{model.config.pooling}"


def mteb_model_meta(model, name: str | None = None, use_instructions: bool = False):
    """mteb's `ModelMeta` of ``model`` as it is now (fresh on every call: the revision follows the weights)."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    config = getattr(model, "config", None)
    return ModelMeta.create_empty(
        overwrites=dict(
            name=name or display_name(model),
            revision=model_fingerprint(model, config),
            n_parameters=sum(p.numel() for p in model.parameters()),
            embed_dim=model.get_sentence_embedding_dimension(),
            max_tokens=getattr(config, "max_length", None),
            similarity_fn_name=ScoringFunction.COSINE,
            framework=["PyTorch"],
            use_instructions=use_instructions,
            open_weights=True,
        )
    )
