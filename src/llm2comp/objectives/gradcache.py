"""GradCache (``gradcache_chunk=c``): the gradient of a large contrastive batch in the memory of a chunk.

Inside the objective's ``__call__``, a custom autograd function encodes the batch without a graph, in chunks of c,
remembering the RNG state before each chunk. Its backward re-encodes one chunk at a time with a graph (RNG state
and autocast restored, so dropout masks and precision match the first pass), pulls the cached embedding gradient
through it with ``torch.autograd.grad`` and returns the summed parameter gradients as the function's own input
gradients. Peak memory is one chunk's graph, the gradient equals the plain large-batch gradient, and each
parameter's gradient is accumulated exactly once per backward, so DDP's hooks (``find_unused_parameters=False``),
``no_sync`` under gradient accumulation and the Trainer's own ``accelerator.backward(loss)`` work unchanged.
(Not for DeepSpeed ZeRO-3 / FSDP, which shard the parameters that the backward differentiates; ZeRO-1/2 and DDP
are fine.) The RNG capture is activation checkpointing's (`torch.utils.checkpoint.get_device_states`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

if TYPE_CHECKING:
    from ..model import LLM2Comp


def _rows(features: dict[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    """Rows [start, end) of a right-padded feature dict, padding columns beyond the longest row dropped."""
    part = {k: v[start:end] for k, v in features.items()}
    width = int(part["attention_mask"].sum(1).max().item()) if part["attention_mask"].numel() else 0
    return {k: v[:, : max(1, width)] for k, v in part.items()}


def split_features(features: dict[str, torch.Tensor], chunk: int) -> list[dict[str, torch.Tensor]]:
    n = features["input_ids"].shape[0]
    return [_rows(features, start, min(n, start + chunk)) for start in range(0, n, chunk)]


def _get_rng(device: torch.device):
    """The CPU generator and the model device's generator (any accelerator: CUDA, XPU, MPS, ...), as
    activation checkpointing captures them."""
    return torch.get_rng_state(), get_device_states(torch.empty(0, device=device))


def _set_rng(device: torch.device, state) -> None:
    cpu, (device_ids, device_states) = state
    torch.set_rng_state(cpu)
    if device_ids:
        set_device_states(device_ids, device_states, device_type=device.type)


def _autocast_state(device_type: str) -> dict:
    return {
        "device_type": device_type,
        "enabled": torch.is_autocast_enabled(device_type),
        "dtype": torch.get_autocast_dtype(device_type),
        "cache_enabled": torch.is_autocast_cache_enabled(),
    }


class _CachedEncode(torch.autograd.Function):
    """Embeddings of feature chunks, encoded without a graph; backward re-encodes chunk by chunk."""

    @staticmethod
    def forward(ctx, encode: Callable, chunks: list, device: torch.device, *params: torch.Tensor) -> torch.Tensor:
        ctx.encode, ctx.chunks, ctx.device, ctx.params = encode, chunks, device, params
        ctx.autocast = _autocast_state(device.type)
        ctx.rng, outputs = [], []
        for features in chunks:
            ctx.rng.append(_get_rng(device))
            outputs.append(encode(features).float())
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        params = ctx.params
        totals: list[torch.Tensor | None] = [None] * len(params)
        offset = 0
        with torch.random.fork_rng(devices=ctx.rng[0][1][0] if ctx.rng else [], device_type=ctx.device.type):
            for features, state in zip(ctx.chunks, ctx.rng):
                _set_rng(ctx.device, state)
                with torch.enable_grad(), torch.autocast(**ctx.autocast):
                    embeddings = ctx.encode(features).float()
                part = grad[offset : offset + embeddings.shape[0]]
                offset += embeddings.shape[0]
                grads = torch.autograd.grad(embeddings, params, part, allow_unused=True)
                for i, g in enumerate(grads):
                    if g is not None:
                        totals[i] = g if totals[i] is None else totals[i] + g
                del embeddings, grads
        totals = [torch.zeros_like(p) if g is None else g for p, g in zip(params, totals)]
        return (None, None, None, *totals)


def embed_features(
    model: LLM2Comp, feature_list: Sequence[dict[str, torch.Tensor]], chunk: int | None = None
) -> list[torch.Tensor]:
    """Sentence embeddings (float32) for several feature dicts, with GradCache when ``chunk`` is set.

    Without ``chunk``: one plain forward per feature dict. With ``chunk``: every dict is cut into chunks of
    that many rows; gradients are exact (see ``_CachedEncode``); memory is that of one chunk.
    """

    def encode(features):
        return model(features)["sentence_embedding"]

    if not chunk or not torch.is_grad_enabled():
        return [encode(f).float() for f in feature_list]
    if chunk < 1:
        raise ValueError(f"gradcache_chunk must be >= 1, got {chunk}")
    chunks, sizes = [], []
    for features in feature_list:
        parts = split_features(features, chunk)
        chunks.extend(parts)
        sizes.append(features["input_ids"].shape[0])
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return [encode(f).float() for f in feature_list]
    embeddings = _CachedEncode.apply(encode, chunks, model.device, *params)
    return list(torch.split(embeddings, sizes))
