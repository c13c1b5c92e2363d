"""Texts -> features, the model's input dict: tokenisation within the length budget, truncation reports, collation.

The budget is the pooling mode's (`pooling.py`: the template and the memory slots share `max_length` with the
text); every path that turns text into encoder input (encode, the pretext objectives, contrastive batches, serve)
goes through these functions (`FeaturesMixin`, methods of `LLM2Comp`), so they all cut texts in the same place.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

# A fast tokenizer's truncation is state on the tokenizer (each call with truncation=True/False sets it, then
# encodes), so two threads tokenizing with one tokenizer, one truncating and one measuring full lengths, can each get
# the other's setting. Rather than one lock that queues every request behind the largest (serve), each thread uses
# its own tokenizer: the first thread to tokenize with a tokenizer uses it, every other thread a deep copy made once.
_OWN_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (owner thread id, threading.local)
_COPIES_LOCK = threading.Lock()


def thread_tokenizer(tokenizer):
    """This thread's tokenizer for ``tokenizer``: the tokenizer itself for the first thread that asks, a copy of
    it (made once per thread) for any other, so that concurrent calls never share truncation state."""
    with _COPIES_LOCK:
        entry = _OWN_COPIES.get(tokenizer)
        if entry is None:
            entry = _OWN_COPIES[tokenizer] = (threading.get_ident(), threading.local())
    owner, local = entry
    if owner == threading.get_ident():
        return tokenizer
    if getattr(local, "tokenizer", None) is None:
        local.tokenizer = copy.deepcopy(tokenizer)
    return local.tokenizer


def special_prefix(tokenizer) -> list[int]:
    """What the tokenizer puts before a text (e.g. BOS for Llama; nothing for GPT-2-style tokenizers)."""
    return tokenizer("", add_special_tokens=True)["input_ids"]


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, trailing: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded on the right; `trailing` extra attended positions after each row
    (the memory slots, filled with `pad_id` ids and replaced by the memory embeddings). Not `tokenizer.pad`: that
    masks every padded position, and the memory slots must be attended; labels pad with -100, not a token id."""
    width = max(1, max((len(r) for r in rows), default=0) + trailing)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row) + trailing] = 1
    return ids, mask


class FeaturesMixin:
    """Texts -> features, as methods of `LLM2Comp` (which mixes this class in): what they read of the model is its
    ``tokenizer``, ``config`` and ``pooling``."""

    def text_budget(self) -> int:
        """Tokens of one text (with the special prefix) that fit max_length beside the template and memory slots."""
        return self.pooling.text_budget(self.config)

    def raw_text_budget(self) -> int:
        """Text tokens (without the special prefix) that fit one encoder input with its memory slots: the one
        truncation budget of the pretext objectives and of contrastive token rows."""
        return self.text_budget() - len(special_prefix(self.tokenizer))

    def token_ids(self, texts: Sequence[str], prompt: str | None = None) -> list[list[int]]:
        """Per-text token ids, truncated so that the whole input (template, memory slots) fits max_length.
        Safe to call from several threads at once, none waiting for another (`thread_tokenizer`)."""
        if prompt:
            texts = [prompt + t for t in texts]
        return self.pooling.token_ids(thread_tokenizer(self.tokenizer), texts, self.config)

    def count_truncated(self, texts: Sequence[str], rows: Sequence[Sequence[int]],
                        prompt: str | None = None) -> tuple[int, int]:
        """(how many of `texts` `rows` (their token ids) cut to fit max_length, the longest one's token count); only rows
        at the full length are tokenized again."""
        candidates = [(prompt or "") + texts[i] for i, row in enumerate(rows) if len(row) >= self.text_budget()]
        if not candidates:
            return 0, 0
        tokenizer = thread_tokenizer(self.tokenizer)
        room = self.pooling.text_room(tokenizer, self.config)
        lengths = self.pooling.text_lengths(tokenizer, candidates)
        longer = [n for n in lengths if n > room]
        return len(longer), max(longer, default=0)

    def report_truncation(self, texts: Sequence[str], rows: Sequence[Sequence[int]], prompt: str | None) -> None:
        count, longest = self.count_truncated(texts, rows, prompt)
        if count:
            logger.warning("%d of %d texts are longer than max_length=%d and were truncated (the longest has %d tokens); "
                           "pass a larger max_length or split long texts", count, len(texts), self.config.max_length, longest)

    def collate(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token rows into tensors; with memory pooling, k memory slots follow each text."""
        k = self.pooling.memory_slots(self.config)
        input_ids, attention_mask = right_pad(rows, self.tokenizer.pad_token_id, trailing=k)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if k:
            memory_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
            for i, row in enumerate(rows):
                memory_mask[i, len(row) : len(row) + k] = True
            features["memory_mask"] = memory_mask
        return features

    def tokenize(self, texts: Sequence[str], prompt: str | None = None) -> dict[str, torch.Tensor]:
        return self.collate(self.token_ids(texts, prompt))
