"""Pooling: from a text to one vector. Each mode is one class that owns everything the mode needs: the slots it
adds to the input (memory tokens), the template it wraps texts in (PromptEOL), how texts are truncated to fit,
how the final states become one vector, and how a model card describes it. Adding a pooling = one class here,
registered in POOLINGS, plus its test."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'


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


class Pooling:
    """A plain token pooling: the text as the tokenizer encodes it (special tokens included), truncated to
    max_length; an empty text gets one filler token so that there is something to pool."""

    name = ""
    description = ""
    bidirectional_default = False  # the zero-shot baselines are causal LMs

    def memory_slots(self, config) -> int:
        """Input positions after the text that hold memory tokens."""
        return 0

    def text_budget(self, config) -> int:
        """Tokens of the input left for the text (special tokens and template included)."""
        return config.max_length - self.memory_slots(config)

    def text_room(self, tokenizer, config) -> int:
        """Tokens left for the text itself (what truncation counts against)."""
        return self.text_budget(config)

    def token_ids(self, tokenizer, texts: Sequence[str], config) -> list[list[int]]:
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.text_budget(config))["input_ids"] if texts else []
        filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        return [row if row else [filler] for row in ids]

    def text_lengths(self, tokenizer, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, measured as `text_room` counts them."""
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def pool(self, features: dict, config) -> torch.Tensor:
        raise NotImplementedError


class MeanPooling(Pooling):
    name = "mean"
    description = "mean of the final hidden states of all tokens (zero-shot baseline pooling)"

    def pool(self, features: dict, config) -> torch.Tensor:
        return mean_pool(features["token_embeddings"], features["attention_mask"])


class LastTokenPooling(Pooling):
    name = "last"
    description = "final hidden state of the last token (zero-shot baseline pooling)"

    def pool(self, features: dict, config) -> torch.Tensor:
        return last_token_pool(features["token_embeddings"], features["attention_mask"])


class PromptEOLPooling(LastTokenPooling):
    """The last token of ``config.prompteol_template`` around the text (the text is cut, the template never is)."""

    name = "prompteol"
    description = "final hidden state of the last token of the PromptEOL template (zero-shot baseline pooling)"

    def _template_ids(self, tokenizer, config) -> tuple[list[int], list[int]]:
        head, tail = config.prompteol_template.split("{text}")
        return tokenizer(head, add_special_tokens=True)["input_ids"], tokenizer(tail, add_special_tokens=False)["input_ids"]

    def text_room(self, tokenizer, config) -> int:
        head, tail = self._template_ids(tokenizer, config)
        return self.text_budget(config) - len(head) - len(tail)

    def token_ids(self, tokenizer, texts: Sequence[str], config) -> list[list[int]]:
        head, tail = self._template_ids(tokenizer, config)
        room = self.text_budget(config) - len(head) - len(tail)
        if room < 1:
            raise ValueError(f"max_length {config.max_length} leaves no room for text in the PromptEOL template")
        bodies = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        return [head + ids[:room] + tail for ids in bodies]

    def text_lengths(self, tokenizer, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


class MemoryPooling(Pooling):
    """LLM2Comp: k memory slots follow the text; the embedding is the mean of their final states. The text is cut
    so that the slots always fit; an empty text is the memory tokens alone."""

    name = "memory"
    bidirectional_default = True  # the recipe's encoder
    description = "mean of the final hidden states of the {k} memory tokens appended after the text"

    def memory_slots(self, config) -> int:
        return config.num_memory_tokens

    def token_ids(self, tokenizer, texts: Sequence[str], config) -> list[list[int]]:
        return tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.text_budget(config))["input_ids"] if texts else []

    def pool(self, features: dict, config) -> torch.Tensor:
        states = memory_states(features["token_embeddings"], features["memory_mask"], config.num_memory_tokens)
        features["memory_states"] = states
        return states.mean(1)


POOLINGS: dict[str, Pooling] = {p.name: p for p in (MemoryPooling(), MeanPooling(), LastTokenPooling(), PromptEOLPooling())}


def pooling_modes() -> tuple[str, ...]:
    """Every registered mode, built-in or added to POOLINGS (the CLI's choices)."""
    return tuple(POOLINGS)


def check_pooling(mode: str) -> str:
    """`mode` if it is a pooling mode, else a ValueError naming the choices."""
    if mode not in POOLINGS:
        raise ValueError(f"unknown pooling '{mode}'; choose one of {', '.join(pooling_modes())}")
    return mode


def get_pooling(mode: str) -> Pooling:
    return POOLINGS[check_pooling(mode)]


class Normalizer(nn.Module):
    """Per-dimension standardisation of sentence embeddings, (e - mean) / std, fitted once on a *training* corpus
    and saved with the model. A text embedding of an LLM shares a large common component and a few dominant
    dimensions; cosine similarity then measures those instead of the text. Fitting on the sentences being
    evaluated would leak test statistics: fit on training text only (`LLM2Comp.fit_normalizer`).

    With ``rotation`` (``fit(..., pca=True)``), the standardised embedding is then turned onto the principal axes of
    the training embeddings, largest variance first. The rotation is orthogonal, so cosine similarities (and
    distances) of the full embedding do not change; what changes is that its first n dimensions hold the n
    directions of largest variance, so that cutting it (``encode(truncate_dim=n)``) keeps as much as n dimensions can."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, rotation: torch.Tensor | None = None):
        super().__init__()
        if mean.shape != scale.shape or mean.dim() != 1:
            raise ValueError(f"normalizer mean {tuple(mean.shape)} and scale {tuple(scale.shape)} must be equal 1-D shapes")
        if rotation is not None and tuple(rotation.shape) != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"normalizer rotation {tuple(rotation.shape)} must be {mean.shape[0]} x {mean.shape[0]}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("rotation", None if rotation is None else rotation.detach().float().clone())

    @classmethod
    def fit(cls, embeddings: torch.Tensor, eps: float = 1e-6, pca: bool = False, standardise: bool = True) -> Normalizer:
        """``standardise=False``: centre only (scale 1), for models whose cosines lose by weighting every dimension
        alike; with ``pca`` the centred embedding is still turned onto its principal axes for cutting."""
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if embeddings.dim() != 2 or embeddings.shape[0] < 2:
            raise ValueError(f"fitting a normalizer needs at least 2 embeddings, got shape {tuple(embeddings.shape)}")
        mean = embeddings.mean(0)
        scale = embeddings.std(0).clamp(min=eps) if standardise else torch.ones_like(mean)
        rotation = None
        if pca:
            standardised = ((embeddings - mean) / scale).double()
            variances, axes = torch.linalg.eigh(standardised.T @ standardised / (len(standardised) - 1))
            rotation = axes[:, variances.argsort(descending=True)].float()  # columns: principal axes, largest first
        return cls(mean, scale, rotation)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        standardised = (embeddings.float() - self.mean) / self.scale
        if self.rotation is not None:
            standardised = standardised @ self.rotation
        return standardised.to(embeddings.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """What `normalizer.safetensors` holds."""
        names = ("mean", "scale") if self.rotation is None else ("mean", "scale", "rotation")
        return {name: getattr(self, name).cpu().contiguous() for name in names}
