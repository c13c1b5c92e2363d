"""The k learnable memory tokens and the construction of encoder inputs (text, then memory slots).

The memory tokens are a trainable (k, d) block of input embeddings spliced after the text, rather than new
rows in the tokenizer's vocabulary. This is equivalent to trainable token rows, but leaves the vocabulary,
the (often tied) output head and the decoder's softmax untouched, so the frozen decoder/teacher sees exactly
the original model, and nothing needs resizing under ZeRO-3/FSDP sharding.
"""

from __future__ import annotations

import torch
from torch import nn


class MemoryTokens(nn.Module):
    def __init__(self, num_tokens: int, hidden_size: int, init: torch.Tensor | None = None):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_memory_tokens must be >= 1, got {num_tokens}")
        weight = torch.empty(num_tokens, hidden_size)
        if init is None:
            nn.init.normal_(weight, std=0.02)
        else:
            weight.copy_(init.detach().float())
        self.weight = nn.Parameter(weight)
        self._num_tokens = num_tokens  # not the weight's shape: a ZeRO-3 partitioned weight is empty outside forward

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    @classmethod
    def from_embeddings(cls, num_tokens: int, embedding: nn.Module, vocab_size: int, seed: int = 0) -> MemoryTokens:
        """Initialise every memory token at the mean input embedding plus small noise (the usual init for new tokens).

        The embedding module is called (not its weight read), so architectures that scale embeddings (Gemma)
        get memory tokens on the same scale as real tokens.
        """
        with torch.no_grad():
            device = next(embedding.parameters()).device
            ids = torch.arange(vocab_size, device=device)
            mean = torch.stack([embedding(chunk).float().mean(0) for chunk in ids.split(8192)]).mean(0)
            std = embedding(ids[: min(vocab_size, 8192)]).float().std().item()
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(num_tokens, mean.shape[0], generator=generator) * (0.1 * std)
            return cls(num_tokens, mean.shape[0], init=mean.cpu() + noise)

    @classmethod
    def from_text(cls, num_tokens: int, embedding: nn.Module, token_ids: list[int]) -> MemoryTokens:
        """Initialise the k memory tokens from the input embeddings of a phrase's tokens (spread evenly over the
        phrase; repeated when it is shorter than k). With a phrase such as ' means in one word:"' a causal
        encoder's memory states start where PromptEOL's last-token state is, instead of at an uninformative mean."""
        if not token_ids:
            raise ValueError("memory_init phrase has no tokens")
        with torch.no_grad():
            device = next(embedding.parameters()).device
            rows = embedding(torch.tensor(token_ids, device=device)).float().cpu()
            n = len(token_ids)
            pick = torch.linspace(0, n - 1, num_tokens).round().long() if n >= num_tokens else torch.arange(num_tokens) % n
            return cls(num_tokens, rows.shape[1], init=rows[pick])

    def forward(self, inputs_embeds: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Return ``inputs_embeds`` with the k memory embeddings written at the positions of ``memory_mask``.

        The weight is read only here, inside the module's own forward: ZeRO-3 gathers a partitioned parameter
        for the forward of the module that owns it, and only then."""
        batch = inputs_embeds.shape[0]
        memory = self.weight.to(inputs_embeds.dtype).unsqueeze(0).expand(batch, -1, -1).reshape(-1, inputs_embeds.shape[-1])
        out = inputs_embeds.clone()
        out[memory_mask] = memory
        return out


class MemoryBridge(nn.Module):
    """Stage 1 only: how the memory states enter the frozen decoder. The encoder's memory states are final-layer
    outputs (norm ~44 on SmolLM2-135M, a few dimensions far larger than the rest); fed as they are, or merely
    rescaled, the frozen decoder does *worse* than with no memory at all (docs/results/pretext.md 3.5). The bridge
    maps each dimension of the states onto the statistics of the decoder's token embeddings, fitted on the memory
    states of training texts (`fit`): ``affine`` (one gain and offset per dimension) or ``linear`` (a full matrix,
    starting as that affine map). Untrained, this alone turns the memory from harmful into useful. The bridge is not
    part of the embedding (the pooled memory states are), and the contrastive stages drop it."""

    KINDS = ("affine", "linear")

    def __init__(self, kind: str, hidden_size: int):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown memory bridge '{kind}'; choose one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(hidden_size) if kind == "affine" else torch.eye(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    @torch.no_grad()
    def fit(self, states: torch.Tensor, embedding: nn.Module, vocab_size: int) -> MemoryBridge:
        """Per dimension: states standardised with their own mean/std (``states``: (..., d) memory states of training
        texts), then given the mean/std of the token embeddings as the embedding module returns them (Gemma's
        scaling included)."""
        device = next(embedding.parameters()).device
        tokens = torch.cat([embedding(ids).float() for ids in torch.arange(vocab_size, device=device).split(8192)])
        states = states.reshape(-1, states.shape[-1]).float().to(self.bias.device)
        gain = tokens.std(0).to(states.device) / (states.std(0) + 1e-3)
        offset = tokens.mean(0).to(states.device) - states.mean(0) * gain
        self.weight.copy_(gain if self.kind == "affine" else torch.diag(gain))
        self.bias.copy_(offset)
        return self

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x = states.to(self.weight.dtype)
        y = x * self.weight if self.kind == "affine" else x @ self.weight.T
        return (y + self.bias).to(states.dtype)
