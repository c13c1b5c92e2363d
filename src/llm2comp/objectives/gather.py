"""The global batch of the contrastive loss across ``torch.distributed`` ranks.

Every rank computes the *same* loss over the gathered global batch; the backward of the gather sums the gradient
of the gathered tensor over ranks (each rank contributes dL/dx for every shard), so a rank's local shard receives
``world_size * dL/dx_local``, and DDP's averaging over ``world_size`` then gives exactly the single-process gradient
of the global batch. The loss therefore needs no extra scaling, and the logged loss on every rank is the
global-batch loss. ``gather_parts`` gathers queries, positives and negatives (whose counts may differ per rank,
zero included) in one collective, so that every rank runs the same collectives in backward.

The gather with gradient is torch's own (`torch.distributed.nn.functional.all_gather`, whose backward is that sum);
it needs the same shape on every rank, so rows are padded to the largest rank's count and trimmed after.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..runtime import is_distributed as _distributed


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _padded(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    return padded.contiguous()


def _trimmed(parts: Sequence[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _all_gather_padded(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather tensors whose first dimension differs per rank (padded to the largest, then trimmed); no gradient."""
    padded = _padded(t, sizes)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return _trimmed(parts, sizes)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (first dimension may differ per rank) over all ranks, in rank order.

    The local shard keeps its gradient; the backward sums the gathered tensor's gradient over ranks (see
    the module docstring for why this makes DDP's averaged gradient exact). Identity when not distributed.
    """
    if not _distributed():
        return t
    from torch.distributed.nn.functional import all_gather

    sizes = _gather_sizes(t.shape[0], t.device)
    return _trimmed(all_gather(_padded(t, sizes)), sizes)


def gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (ids, keys); identity when not distributed."""
    if not _distributed():
        return t
    return _all_gather_padded(t.detach(), _gather_sizes(t.shape[0], t.device))


def gather_parts(parts: Sequence[torch.Tensor], grad: bool = True) -> list[torch.Tensor]:
    """Gather several local tensors (sizes may differ per rank) with a single collective; returns each part
    concatenated over ranks, in rank order. One collective, so the backward runs the same one collective on every
    rank (with separate gathers, a rank whose part needs no gradient would skip a collective the others run)."""
    parts = list(parts)
    if not _distributed():
        return parts
    local = torch.cat(parts)
    counts = torch.tensor([p.shape[0] for p in parts], dtype=torch.long, device=local.device)
    counts = gather_tensor(counts).view(dist.get_world_size(), len(parts)).tolist()
    gathered = gather_with_grad(local) if grad else gather_tensor(local)
    pieces: list[list[torch.Tensor]] = [[] for _ in parts]
    offset = 0
    for rank_counts in counts:
        for k, n in enumerate(rank_counts):
            pieces[k].append(gathered[offset : offset + n])
            offset += n
    return [torch.cat(p) for p in pieces]
