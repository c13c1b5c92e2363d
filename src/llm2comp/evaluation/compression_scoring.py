"""The compression probe's scoring: the frozen decoder (adapter off, causal) reading [start, memory, target] or the
whole text (the teacher), and the per-passage losses of its next-token predictions (see `compression`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lm_head import decoder_bos, lm_logits
from ..model import LLM2Comp


def _token_losses(model: LLM2Comp, hidden: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None,
                  budget: int = 1 << 24) -> dict[str, torch.Tensor]:
    """Per-position CE of ``targets`` and KL(teacher || student) for hidden states (B, T, d); sums per row (B,)."""
    batch, length, width = hidden.shape
    flat, flat_targets = hidden.reshape(-1, width), targets.reshape(-1)
    flat_teacher = teacher.reshape(-1, width) if teacher is not None else None
    rows = max(1, budget // max(1, model.vocab_size))
    ce, kl = [], []
    for start in range(0, flat.shape[0], rows):
        logp = F.log_softmax(lm_logits(model, flat[start : start + rows]), dim=-1)
        ce.append(-logp.gather(1, flat_targets[start : start + rows, None])[:, 0])
        if flat_teacher is not None:
            teacher_logp = F.log_softmax(lm_logits(model, flat_teacher[start : start + rows]), dim=-1)
            kl.append((teacher_logp.exp() * (teacher_logp - logp)).sum(-1))
    out = {"ce": torch.cat(ce).view(batch, length).sum(1)}
    if kl:
        out["kl"] = torch.cat(kl).view(batch, length).sum(1)
    return out


def _decode(model: LLM2Comp, lm, start: list[int], memory: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """Final hidden states of the frozen decoder at the positions that predict ``targets`` (B, C) from
    [start, memory, targets]."""
    embed = model.hf_model.get_input_embeddings()
    batch = targets.shape[0]
    parts = []
    if start:
        parts.append(embed(torch.tensor(start, device=targets.device).expand(batch, -1)))
    if memory is not None:
        parts.append(memory.to(parts[0].dtype if parts else embed.weight.dtype))
    parts.append(embed(targets))
    inputs = torch.cat(parts, 1)
    hidden = lm.get_decoder()(inputs_embeds=inputs, attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device),
                              use_cache=False).last_hidden_state
    first = inputs.shape[1] - targets.shape[1] - 1  # the position before the first target token
    return hidden[:, first : first + targets.shape[1]]


def _teacher(model: LLM2Comp, lm, tokenizer, rows: torch.Tensor, prefix: int) -> torch.Tensor:
    """The frozen decoder reading [BOS, whole text], at the positions that predict the text after ``prefix``
    (as the ``kl`` objective's teacher reads it)."""
    start = decoder_bos(tokenizer)
    ids = torch.cat([torch.tensor(start, dtype=torch.long, device=rows.device).expand(rows.shape[0], -1), rows], 1)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
    first = len(start) + prefix - 1
    return hidden[:, first : first + rows.shape[1] - prefix]


def _none_start(tokenizer) -> list[int]:
    """With no memory the decoder still needs a position before the first target: BOS, else EOS as a start token."""
    start = decoder_bos(tokenizer)
    if start:
        return start
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return [fallback]
