"""Which models compress, and compressing: a stage-1 model's encoder turns texts into the memory its frozen decoder
reads (`CompressedMemory`). A model whose stage 1 never trained a compressor (no kl/nll/rc stage), or whose
compression stage was followed by other stages, is refused (`CompressorError`); ``allow_untrained=True`` skips that
check, for research only. The module docstring of `generation.py` tells the whole story.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .compressed_memory import CompressedMemory, model_fingerprint
from .features import special_prefix

logger = logging.getLogger(__name__)

# the stage-1 objectives whose memory the frozen decoder reads: objectives/pretext.py registers one objective for each
# (`ObjectiveSpec.compresses`), which config validation and the training run read from the registry
COMPRESSION_OBJECTIVES = ("kl", "nll", "rc")


class CompressorError(ValueError):
    """The model's memory was never trained to be read by its frozen decoder (or no longer is)."""


# ---------------------------------------------------------------------------------------------- which models compress
def compression_stage(model) -> dict | None:
    """The last stage recorded in ``model.config.stages`` that trained a compressor (kl, nll or rc), or None."""
    for stage in reversed(model.config.stages or []):
        if stage.get("stage") == "pretrain" and stage.get("objective") in COMPRESSION_OBJECTIVES:
            return stage
    return None


def check_runs_on_torch(model) -> None:
    if model.backend != "torch":
        raise CompressorError(f"a model on backend '{model.backend}' only embeds; load it with backend='torch' to compress or generate")


def check_compressor(model, allow_untrained: bool = False, objective: str | None = None) -> dict | None:
    """The model's compression stage; a `CompressorError` where its memory is not something its frozen decoder was
    trained to read (or, with ``objective``, was not trained with that objective). ``allow_untrained`` skips the
    checks on training (research: an untrained memory, a bare backbone), never the ones on how the model runs."""
    check_runs_on_torch(model)
    if model.config.pooling != "memory":
        raise CompressorError(f"compression needs memory-token pooling; this model uses '{model.config.pooling}' pooling")
    stage = compression_stage(model)
    if allow_untrained:
        return stage
    stages = model.config.stages or []
    name = model.config.base_model
    if stage is None:
        trained = ", ".join(s.get("objective") or s.get("stage", "?") for s in stages) or "none"
        raise CompressorError(
            f"this model's stage 1 never trained a compressor (stages recorded: {trained}; a compressor needs a kl, nll "
            f"or rc pre-training stage): its memory tokens were never trained to be read by the frozen {name}, so "
            "generating from them gives noise. Use a stage-1 model (e.g. smollm2-135m-compressor), or pass "
            "allow_untrained=True (CLI: --allow-untrained) to try anyway (research)")
    if stages and stages[-1] is not stage:
        later = ", ".join(s.get("objective") or s.get("stage", "?") for s in stages[stages.index(stage) + 1:])
        raise CompressorError(
            f"this model's compression stage ({stage['objective']}) was followed by other stages ({later}): they changed "
            "the encoder and folded stage 1's adapter into the decoder, so the memory is no longer what the frozen LLM "
            "was trained to read. Use the stage-1 model itself, or pass allow_untrained=True (research)")
    if model.peft_model is None and model._merged:
        raise CompressorError(
            "the compression stage's adapter is merged into the weights (merge_and_unload), so the decoder is no longer "
            "the frozen LLM (adapter off); load the model again without merging it")
    if objective is not None and stage.get("objective") != objective:
        raise CompressorError(
            f"this needs a model whose stage 1 trained '{objective}' (its memory then reconstructs the text); this one "
            f"trained '{stage.get('objective')}' (its memory predicts what follows the text: use generate). Pass "
            "allow_untrained=True to try anyway")
    return stage


# ---------------------------------------------------------------------------------------------- compress
def _encoder_rows(model, token_rows: Sequence[Sequence[int]], segment_tokens: int | None
                  ) -> tuple[list[list[int]], list[int], list[int], int]:
    """(encoder rows: special prefix + text tokens, as stage 1 feeds its encoder; text index of each row; text tokens
    compressed per text; texts cut)."""
    head = special_prefix(model.tokenizer)
    budget = model.raw_text_budget()
    if segment_tokens is not None and not 1 <= segment_tokens <= budget:
        raise ValueError(f"segment_tokens must be between 1 and {budget} (what one encoder input holds), got {segment_tokens}")
    rows, owner, counts, cut = [], [], [], 0
    for i, body in enumerate(token_rows):
        body = list(body)
        if not segment_tokens:
            cut += len(body) > budget
            body = body[:budget]
            pieces = [body]
        else:
            pieces = [body[s : s + segment_tokens] for s in range(0, len(body), segment_tokens)] or [[]]
        counts.append(len(body))
        for piece in pieces:
            rows.append(head + piece)
            owner.append(i)
    return rows, owner, counts, cut


@torch.no_grad()
def compress_token_ids(model, token_rows: Sequence[Sequence[int]], batch_size: int = 16,
                       segment_tokens: int | None = None, allow_untrained: bool = False,
                       show_progress_bar: bool = False) -> CompressedMemory:
    """`compress` for texts already tokenized (token ids without special tokens, e.g. a passage cut at a token)."""
    from tqdm.auto import tqdm

    stage = check_compressor(model, allow_untrained)
    if not token_rows:
        raise ValueError("nothing to compress: no texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows, owner, counts, truncated = _encoder_rows(model, token_rows, segment_tokens)
    if truncated:
        logger.warning("%d of %d texts are longer than max_length=%d less %d memory slots and were cut; pass segment_tokens "
                       "to compress them whole", truncated, len(token_rows), model.config.max_length, model.config.num_memory_tokens)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
    states: list[torch.Tensor | None] = [None] * len(rows)
    with model._evaluating():
        for start in tqdm(range(0, len(order), batch_size), desc="compress", disable=not show_progress_bar):
            chunk = order[start : start + batch_size]
            memory = model.decoder_memory(model(model.collate([rows[i] for i in chunk]))["memory_states"])
            for i, m in zip(chunk, memory.float().cpu()):
                states[i] = m
    k, width = model.config.num_memory_tokens, model.get_sentence_embedding_dimension()
    per_text: list[list[torch.Tensor]] = [[] for _ in token_rows]
    for i, m in zip(owner, states):
        per_text[i].append(m)
    lengths = torch.tensor([k * len(p) for p in per_text])
    vectors = torch.zeros(len(token_rows), int(lengths.max()), width)
    for i, parts in enumerate(per_text):
        vectors[i, : lengths[i]] = torch.cat(parts)
    info = {"objective": stage.get("objective") if stage else None, "memory_bridge": model.config.memory_bridge,
            "truncated": truncated}
    return CompressedMemory(vectors, lengths, torch.tensor(counts), model.config.base_model, model_fingerprint(model),
                            k, segment_tokens, info)
