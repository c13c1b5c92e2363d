"""Pooling: from final hidden states to one vector per text. Each mode is one small function."""

from __future__ import annotations

import torch
from torch import nn

POOLING_MODES = ("memory", "mean", "last", "prompteol")
PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'


def check_pooling(mode: str) -> str:
    """`mode` if it is a pooling mode, else a ValueError naming the choices."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling '{mode}'; choose one of {', '.join(POOLING_MODES)}")
    return mode


def memory_states(hidden: torch.Tensor, memory_mask: torch.Tensor, num_memory_tokens: int) -> torch.Tensor:
    """(batch, k, d): the final states at the k memory positions of every row."""
    return hidden[memory_mask].view(hidden.shape[0], num_memory_tokens, hidden.shape[-1])


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """State of the last real token of each row (rows are right-padded)."""
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool(features: dict, mode: str, num_memory_tokens: int) -> torch.Tensor:
    hidden = features["token_embeddings"]
    if mode == "memory":
        states = memory_states(hidden, features["memory_mask"], num_memory_tokens)
        features["memory_states"] = states
        return states.mean(1)
    if mode == "mean":
        return mean_pool(hidden, features["attention_mask"])
    if check_pooling(mode) in ("last", "prompteol"):
        return last_token_pool(hidden, features["attention_mask"])


class Normalizer(nn.Module):
    """Per-dimension standardisation of sentence embeddings, (e - mean) / std, fitted once on a *training* corpus
    and saved with the model. A text embedding of an LLM shares a large common component and a few dominant
    dimensions; cosine similarity then measures those instead of the text. Fitting on the sentences being
    evaluated would leak test statistics: fit on training text only (`LLM2Comp.fit_normalizer`)."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        if mean.shape != scale.shape or mean.dim() != 1:
            raise ValueError(f"normalizer mean {tuple(mean.shape)} and scale {tuple(scale.shape)} must be equal 1-D shapes")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("scale", scale.detach().float().clone())

    @classmethod
    def fit(cls, embeddings: torch.Tensor, eps: float = 1e-6) -> Normalizer:
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if embeddings.dim() != 2 or embeddings.shape[0] < 2:
            raise ValueError(f"fitting a normalizer needs at least 2 embeddings, got shape {tuple(embeddings.shape)}")
        return cls(embeddings.mean(0), embeddings.std(0).clamp(min=eps))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return ((embeddings.float() - self.mean) / self.scale).to(embeddings.dtype)
