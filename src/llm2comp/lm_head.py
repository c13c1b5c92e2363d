"""The frozen decoder's two ends, shared by stage 1 (`objectives/pretext.py`), the compression probe
(`evaluation/compression.py`) and generation from memory (`generation.py`): the token its input starts with (BOS,
before the memory) and the logits of its LM head, with the model's own final scaling and softcapping."""

from __future__ import annotations

import torch


def decoder_bos(tokenizer) -> list[int]:
    """What the frozen decoder's input starts with: the BOS token, or nothing for a tokenizer without one."""
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The causal LM's output logits for hidden states of ``model`` (an `LLM2Comp`), with the model's own final
    scaling/softcapping."""
    logits = model.hf_model.get_output_embeddings()(hidden).float()
    config = model.hf_model.config.get_text_config()
    for name in ("logit_scale", "logits_scaling"):
        scale = getattr(config, name, None)
        if scale:
            logits = logits * scale if name == "logit_scale" else logits / scale
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
