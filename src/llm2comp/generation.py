"""Compress, then generate: the memory tokens as a compressed context for the frozen LLM.

A stage-1 model (KL, NLL or RC pre-training, `objectives/pretext.py`) trains its k memory tokens so that the frozen
LLM (adapter off, causal attention) can read the memory in place of the text. This module uses that memory:

* ``compress(model, texts) -> CompressedMemory``: each text's memory as the frozen decoder reads it (the memory
  states through the model's bridge where it has one), with the model it came from; saved and loaded as
  safetensors (metadata in the header, no pickle), refused by any other model.
* ``generate(model, prompts, memory=...)``: the frozen decoder continues ``[BOS, memory, prompt]`` (greedy or
  sampled, batched, left padded, with the KV cache of Hugging Face ``generate(inputs_embeds=...)``); without a
  memory it is the plain LLM on ``[BOS, prompt]``, the baseline.
* ``reconstruct(model, memory)``: for a model whose stage 1 was RC (reconstruction), the text back from its memory.

The decoder input is the one stage 1 trains and the compression probe scores (`evaluation/compression.py`):
``[BOS, m_1..m_k, continuation]``, the state at m_k predicting the first token after the compressed text. A model
whose stage 1 never trained a compressor (no kl/nll/rc stage, e.g. an embedding-only model or a bare backbone),
or whose compression stage was followed by other stages (they change the encoder and fold stage 1's adapter into
the decoder), is refused with a clear error: its memory is noise to the decoder. ``allow_untrained=True`` skips
that check, for research only.

``segment_tokens`` (optional) compresses a long text in consecutive segments of that many tokens, each into its own
k memory vectors, fed to the decoder one after another: closer to what stage 1 trained on (texts of tens of tokens)
than one memory for 500 tokens, but the decoder never saw several memories side by side in training.

Where the parts live: the memory object and its file in `compressed_memory.py`, which models compress and compressing
in `compressor.py`, generating and reconstructing here; `LLM2Comp` has ``compress``, ``generate`` and ``reconstruct``
as methods (`GenerationMixin`), and this module's functions of the same names take the model first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from .compressed_memory import FORMAT, FORMAT_VERSION, CompressedMemory, MemoryMismatchError, model_fingerprint
from .compressor import (COMPRESSION_OBJECTIVES, CompressorError, check_compressor, check_runs_on_torch, compress_token_ids,
                         compression_stage)
from .lm_head import decoder_bos

__all__ = ["COMPRESSION_OBJECTIVES", "FORMAT", "FORMAT_VERSION", "CompressedMemory", "CompressorError", "GenerationMixin",
           "MemoryMismatchError", "check_compressor", "compress", "compress_token_ids", "compression_stage", "generate",
           "generate_ids", "model_fingerprint", "reconstruct"]


# ---------------------------------------------------------------------------------------------- generate
def _start_ids(tokenizer, with_memory: bool) -> list[int]:
    """What precedes the memory (BOS, as stage 1 feeds it), or with no memory the start of a plain LM input: BOS, else
    EOS as a start token (the compression probe's choice)."""
    start = decoder_bos(tokenizer)
    if start or with_memory:
        return start
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return [fallback]


def _generation_config(tokenizer, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, top_k: int,
                       stop_at_eos: bool):
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
        raise ValueError(f"sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0 (got {temperature}, {top_p}, {top_k})")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}  # greedy: HF's defaults, unused
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1, **sampling,
        # without EOS stopping, EOS is never chosen (RC never trained one): exactly max_new_tokens tokens
        min_new_tokens=None if stop_at_eos else max_new_tokens,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id, use_cache=True,
    )


def _decoder_inputs(model, rows: list[tuple[list[int], torch.Tensor | None, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input embeddings and attention mask of rows (start ids, memory (m, d) or None, prompt ids)."""
    embed = model.hf_model.get_input_embeddings()
    device, dtype = model.device, model.dtype
    pieces = []
    for start, memory, prompt in rows:
        parts = [embed(torch.tensor(start, dtype=torch.long, device=device))] if start else []
        if memory is not None:
            parts.append(memory.to(device=device, dtype=parts[0].dtype if parts else dtype))
        if prompt:
            parts.append(embed(torch.tensor(prompt, dtype=torch.long, device=device)))
        pieces.append(torch.cat(parts))
    width = max(p.shape[0] for p in pieces)
    inputs = pieces[0].new_zeros(len(pieces), width, pieces[0].shape[-1])
    mask = torch.zeros(len(pieces), width, dtype=torch.long, device=device)
    for i, p in enumerate(pieces):
        inputs[i, width - p.shape[0]:] = p
        mask[i, width - p.shape[0]:] = 1
    return inputs, mask


def _seeded(seed: int | None, device: torch.device):
    if seed is None:
        return contextlib.nullcontext()
    devices = [device] if device.type == "cuda" else []
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(seed)
    return stack


@torch.no_grad()
def generate_ids(model, prompt_ids: Sequence[Sequence[int]], memories: Sequence[torch.Tensor | None],
                 max_new_tokens: int | Sequence[int] = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, batch_size: int = 8, seed: int | None = None,
                 stop_at_eos: bool = True, show_progress_bar: bool = False) -> list[list[int]]:
    """New token ids per row of the frozen decoder continuing [BOS, memory, prompt] (memory None: [BOS, prompt]).
    The low-level form of `generate`: no checks of where the memory came from. ``max_new_tokens`` may differ per
    row (each row cut to its own; a batch generates its longest)."""
    from tqdm.auto import tqdm

    tok = model.tokenizer
    n = len(prompt_ids)
    if len(memories) != n:
        raise ValueError(f"{n} prompts and {len(memories)} memories")
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"{n} prompts and {len(limits)} max_new_tokens")
    if any(x < 1 for x in limits):
        raise ValueError(f"max_new_tokens must be >= 1, got {min(limits)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = [(_start_ids(tok, m is not None), m, list(p)) for m, p in zip(memories, prompt_ids)]
    for start, m, p in rows:
        if not start and m is None and not p:
            raise ValueError("an empty prompt needs a memory (or a tokenizer with BOS/EOS) to start from")
    lengths = [len(s) + (m.shape[0] if m is not None else 0) + len(p) for s, m, p in rows]
    order = sorted(range(n), key=lambda i: (lengths[i], limits[i]))  # similar lengths together: less padding
    out: list[list[int] | None] = [None] * n
    eos = tok.eos_token_id
    with model._evaluating(), model.decoder_mode() as lm, _seeded(seed, model.device):
        for begin in tqdm(range(0, n, batch_size), desc="generate", disable=not show_progress_bar):
            chunk = order[begin : begin + batch_size]
            inputs, mask = _decoder_inputs(model, [rows[i] for i in chunk])
            config = _generation_config(tok, max(limits[i] for i in chunk), do_sample, temperature, top_p, top_k, stop_at_eos)
            generated = lm.generate(inputs_embeds=inputs, attention_mask=mask, generation_config=config)
            if generated.shape[1] > config.max_new_tokens:  # a version that returns the (empty) prompt ids as well
                generated = generated[:, -config.max_new_tokens:]
            for i, ids in zip(chunk, generated.tolist()):
                ids = ids[: limits[i]]
                if stop_at_eos and eos is not None and eos in ids:
                    ids = ids[: ids.index(eos)]
                out[i] = ids
    return out


# ---------------------------------------------------------------------------------------------- the methods


class GenerationMixin:
    """Compress, then generate, as methods of `LLM2Comp` (which mixes this class in)."""

    def compress(self, texts: str | Sequence[str], batch_size: int = 16, segment_tokens: int | None = None,
                 allow_untrained: bool = False, show_progress_bar: bool = False) -> CompressedMemory:
        """Each text's memory as the frozen decoder reads it (see the module docstring): the encoder reads the text as
        stage 1 fed it (the tokenizer's special prefix, the text, the k memory slots). Texts longer than the model's
        ``max_length`` less the k slots are cut, with a warning, unless ``segment_tokens`` splits them."""
        check_compressor(self, allow_untrained)  # before tokenizing: an unfit model fails at once
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return compress_token_ids(self, rows, batch_size, segment_tokens, allow_untrained, show_progress_bar)

    def generate(self, prompts: str | Sequence[str] | None = None, memory: CompressedMemory | None = None,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 batch_size: int = 8, seed: int | None = None, stop_at_eos: bool = True, return_token_ids: bool = False,
                 allow_untrained: bool = False, show_progress_bar: bool = False):
        """Continue each prompt with the frozen LLM reading the memory first: ``[BOS, memory_i, prompt_i]``.

        ``memory``: from `compress` with this model (one per prompt, or one for every prompt); None: the plain LLM, no
        memory (the baseline). ``prompts``: None or "" continues the memory itself (what follows the compressed text).
        Greedy by default; ``do_sample`` with ``temperature``/``top_p``/``top_k`` (0: off) and an optional ``seed``.
        Returns the continuation text (a str for a str prompt, else a list), or token ids with ``return_token_ids``;
        generation stops at EOS unless ``stop_at_eos=False`` (then EOS is never chosen)."""
        single = isinstance(prompts, str)
        if memory is not None:
            check_compressor(self, allow_untrained)
            memory.check(self)
            if prompts is None:
                prompts = [""] * len(memory)
        if prompts is None:
            raise ValueError("generate needs prompts, a memory, or both")
        prompts = [prompts] if single else list(prompts)
        if memory is not None:
            if len(memory) == 1 and len(prompts) > 1:
                memories = memory.rows() * len(prompts)
            elif len(memory) == len(prompts):
                memories = memory.rows()
            else:
                raise ValueError(f"{len(prompts)} prompts and {len(memory)} memories: give one memory per prompt, or one for all")
        else:
            check_runs_on_torch(self)  # no memory: the plain LLM, whatever the model's training
            memories = [None] * len(prompts)
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        ids = generate_ids(self, prompt_ids, memories, max_new_tokens, do_sample, temperature, top_p, top_k, batch_size, seed,
                           stop_at_eos, show_progress_bar)
        result = ids if return_token_ids else [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        return result[0] if single else result

    def reconstruct(self, memory: CompressedMemory, max_new_tokens: int | None = None, batch_size: int = 8,
                    return_token_ids: bool = False, allow_untrained: bool = False, show_progress_bar: bool = False):
        """The texts back from their memory, greedily, for a model whose stage 1 trained reconstruction (rc): each
        segment decoded from its own k vectors, as many tokens as it compressed (``max_new_tokens`` caps that)."""
        check_compressor(self, allow_untrained, objective="rc")
        memory.check(self)
        k = memory.num_memory_tokens
        pieces, limits, owner = [], [], []
        for i, row in enumerate(memory.rows()):
            for j, count in enumerate(memory.segments(i)):
                if count == 0:
                    continue
                pieces.append(row[j * k : (j + 1) * k])
                limits.append(count if max_new_tokens is None else min(count, max_new_tokens))
                owner.append(i)
        texts: list[list[int]] = [[] for _ in range(len(memory))]
        if pieces:
            ids = generate_ids(self, [[] for _ in pieces], pieces, limits, batch_size=batch_size, stop_at_eos=False,
                               show_progress_bar=show_progress_bar)
            for i, row in zip(owner, ids):
                texts[i].extend(row)
        if max_new_tokens is not None:
            texts = [row[:max_new_tokens] for row in texts]
        return texts if return_token_ids else [self.tokenizer.decode(row, skip_special_tokens=True) for row in texts]


# the methods as functions of a model (`generation.compress(model, texts)`, as before they were methods)
compress = GenerationMixin.compress
generate = GenerationMixin.generate
reconstruct = GenerationMixin.reconstruct
