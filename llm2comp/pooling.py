"""Pooling: from final hidden states to one vector per text. Each mode is one small function."""

from __future__ import annotations

import torch

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
