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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import LLM2Comp

logger = logging.getLogger(__name__)

COMPRESSION_OBJECTIVES = ("kl", "nll", "rc")
FORMAT = "llm2comp-compressed-memory"
FORMAT_VERSION = "1"


class CompressorError(ValueError):
    """The model's memory was never trained to be read by its frozen decoder (or no longer is)."""


class MemoryMismatchError(ValueError):
    """A compressed memory used with a model other than the one that made it."""


# ---------------------------------------------------------------------------------------------- which models compress
def compression_stage(model: LLM2Comp) -> dict | None:
    """The last stage recorded in ``model.config.stages`` that trained a compressor (kl, nll or rc), or None."""
    for stage in reversed(model.config.stages or []):
        if stage.get("stage") == "pretrain" and stage.get("objective") in COMPRESSION_OBJECTIVES:
            return stage
    return None


def _check_backend(model: LLM2Comp) -> None:
    if model.backend != "torch":
        raise CompressorError(f"a model on backend '{model.backend}' only embeds; load it with backend='torch' to compress or generate")


def check_compressor(model: LLM2Comp, allow_untrained: bool = False, objective: str | None = None) -> dict | None:
    """The model's compression stage; a `CompressorError` where its memory is not something its frozen decoder was
    trained to read (or, with ``objective``, was not trained with that objective). ``allow_untrained`` skips the
    checks on training (research: an untrained memory, a bare backbone), never the ones on how the model runs."""
    _check_backend(model)
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


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    # bfloat16 bytes: the same fingerprint whether the model was loaded in float32 or bfloat16
    data = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
    digest.update(data)


def model_fingerprint(model: LLM2Comp) -> str:
    """What decides a model's memory and how its decoder reads it, hashed (16 hex digits): a slice of the backbone's
    input embeddings, the memory tokens, the bridge, the adapters (live and merged), k and the encoder's attention.
    Independent of the dtype the model was loaded in (weights hashed at bfloat16 precision) and of the device."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"k": model.config.num_memory_tokens, "bidirectional": model.config.bidirectional,
                              "bridge": model.config.memory_bridge}, sort_keys=True).encode())
    embedding = model.hf_model.get_input_embeddings().weight
    _hash_tensor(digest, "embedding", embedding[:64])
    _hash_tensor(digest, "memory", model.memory.weight)
    if model.memory_bridge is not None:
        for name, tensor in sorted(model.memory_bridge.state_dict().items()):
            _hash_tensor(digest, f"bridge.{name}", tensor)
    for index, (_, state) in enumerate(model._merged):
        for name, tensor in sorted(state.items()):
            _hash_tensor(digest, f"merged{index}.{name}", tensor)
    for name, tensor in sorted((n, p) for n, p in model.hf_model.named_parameters() if "lora_" in n):
        _hash_tensor(digest, f"live.{name}", tensor)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- the memory object
@dataclass
class CompressedMemory:
    """Memory vectors as the frozen decoder reads them, per text: ``vectors`` (n, L, d), float32 on the CPU, text i
    holding the first ``lengths[i]`` rows (k per segment); ``text_tokens[i]``: the text tokens compressed (special
    prefix excluded; after truncation). ``base_model`` and ``fingerprint`` (`model_fingerprint`) name the model."""

    vectors: torch.Tensor
    lengths: torch.Tensor
    text_tokens: torch.Tensor
    base_model: str
    fingerprint: str
    num_memory_tokens: int
    segment_tokens: int | None = None
    info: dict = field(default_factory=dict)  # objective, memory_bridge, hidden_size, truncated: for the reader

    def __post_init__(self):
        self.lengths = torch.as_tensor(self.lengths, dtype=torch.long)
        self.text_tokens = torch.as_tensor(self.text_tokens, dtype=torch.long)
        if self.vectors.ndim != 3 or self.lengths.shape != (self.vectors.shape[0],) or self.text_tokens.shape != self.lengths.shape:
            raise ValueError(f"inconsistent compressed memory: vectors {tuple(self.vectors.shape)}, lengths "
                             f"{tuple(self.lengths.shape)}, text_tokens {tuple(self.text_tokens.shape)}")
        if len(self.lengths) and int(self.lengths.max()) > self.vectors.shape[1]:
            raise ValueError("inconsistent compressed memory: a length exceeds the vectors stored")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, index) -> CompressedMemory:
        """The memories of some texts (an int, a slice or a sequence of indices), as a CompressedMemory."""
        if isinstance(index, int):
            index = [index]
        index = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        lengths = self.lengths[index]
        width = int(lengths.max()) if len(lengths) else 0
        return CompressedMemory(self.vectors[index, :width].clone(), lengths, self.text_tokens[index], self.base_model,
                                self.fingerprint, self.num_memory_tokens, self.segment_tokens, dict(self.info))

    def rows(self) -> list[torch.Tensor]:
        """Each text's memory, (lengths[i], d)."""
        return [self.vectors[i, : int(n)] for i, n in enumerate(self.lengths)]

    @property
    def hidden_size(self) -> int:
        return self.vectors.shape[-1]

    def segments(self, i: int) -> list[int]:
        """Text tokens in each of text i's segments (one segment without ``segment_tokens``)."""
        total = int(self.text_tokens[i])
        if not self.segment_tokens:
            return [total]
        counts = [self.segment_tokens] * (total // self.segment_tokens)
        if total % self.segment_tokens or not counts:
            counts.append(total % self.segment_tokens)
        return counts

    def check(self, model: LLM2Comp) -> None:
        """A `MemoryMismatchError` unless ``model`` is the one this memory was made with."""
        mine = model_fingerprint(model)
        if mine != self.fingerprint or self.hidden_size != model.get_sentence_embedding_dimension():
            raise MemoryMismatchError(
                f"this memory was compressed by another model (base {self.base_model}, fingerprint {self.fingerprint}, "
                f"width {self.hidden_size}) than the one given (base {model.config.base_model}, fingerprint {mine}, "
                f"width {model.get_sentence_embedding_dimension()}); a decoder reads only the memory of its own compressor: "
                "compress the texts again with this model")

    # -------------------------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "base_model": self.base_model, "fingerprint": self.fingerprint,
                "num_memory_tokens": str(self.num_memory_tokens), "segment_tokens": str(self.segment_tokens or 0),
                "info": json.dumps(self.info, sort_keys=True)}

    def save(self, path: str | Path) -> Path:
        """Write a .safetensors file (tensors vectors, lengths, text_tokens; the rest in its header), atomically."""
        import os

        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tensors = {"vectors": self.vectors.detach().float().cpu().contiguous(), "lengths": self.lengths.cpu().contiguous(),
                   "text_tokens": self.text_tokens.cpu().contiguous()}
        save_file(tensors, str(tmp), metadata=self.metadata())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, model: LLM2Comp | None = None) -> CompressedMemory:
        """Read a file written by `save`; with ``model``, a `MemoryMismatchError` unless it is the model that made it."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"compressed memory not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a compressed memory written by llm2comp (no '{FORMAT}' header)")
                if meta.get("version") != FORMAT_VERSION:
                    raise ValueError(f"{path}: compressed memory format version {meta.get('version')}, this llm2comp reads {FORMAT_VERSION}")
                tensors = {name: handle.get_tensor(name) for name in ("vectors", "lengths", "text_tokens")}
        except ValueError:
            raise
        except Exception as exc:  # a truncated or foreign file
            raise ValueError(f"{path}: not a readable compressed memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        memory = cls(tensors["vectors"], tensors["lengths"], tensors["text_tokens"], meta["base_model"], meta["fingerprint"],
                     int(meta["num_memory_tokens"]), int(meta.get("segment_tokens") or 0) or None, json.loads(meta.get("info") or "{}"))
        if model is not None:
            memory.check(model)
        return memory


# ---------------------------------------------------------------------------------------------- compress
def _encoder_rows(model: LLM2Comp, token_rows: Sequence[Sequence[int]], segment_tokens: int | None
                  ) -> tuple[list[list[int]], list[int], list[int], int]:
    """(encoder rows: special prefix + text tokens, as stage 1 feeds its encoder; text index of each row; text tokens
    compressed per text; texts cut)."""
    from .features import special_prefix

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
def compress_token_ids(model: LLM2Comp, token_rows: Sequence[Sequence[int]], batch_size: int = 16,
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


def compress(model: LLM2Comp, texts: str | Sequence[str], batch_size: int = 16, segment_tokens: int | None = None,
             allow_untrained: bool = False, show_progress_bar: bool = False) -> CompressedMemory:
    """Each text's memory as the frozen decoder reads it (see the module docstring): the encoder reads the text as
    stage 1 fed it (the tokenizer's special prefix, the text, the k memory slots). Texts longer than the model's
    ``max_length`` less the k slots are cut, with a warning, unless ``segment_tokens`` splits them."""
    check_compressor(model, allow_untrained)  # before tokenizing: an unfit model fails at once
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    rows = model.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return compress_token_ids(model, rows, batch_size, segment_tokens, allow_untrained, show_progress_bar)


# ---------------------------------------------------------------------------------------------- generate
def _start_ids(tokenizer, with_memory: bool) -> list[int]:
    """What precedes the memory (BOS, as stage 1 feeds it), or with no memory the start of a plain LM input: BOS, else
    EOS as a start token (the compression probe's choice)."""
    from .lm_head import decoder_bos

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


def _decoder_inputs(model: LLM2Comp, rows: list[tuple[list[int], torch.Tensor | None, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
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
def generate_ids(model: LLM2Comp, prompt_ids: Sequence[Sequence[int]], memories: Sequence[torch.Tensor | None],
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


def generate(model: LLM2Comp, prompts: str | Sequence[str] | None = None, memory: CompressedMemory | None = None,
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
        check_compressor(model, allow_untrained)
        memory.check(model)
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
        _check_backend(model)  # no memory: the plain LLM, whatever the model's training
        memories = [None] * len(prompts)
    prompt_ids = model.tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    ids = generate_ids(model, prompt_ids, memories, max_new_tokens, do_sample, temperature, top_p, top_k, batch_size, seed,
                       stop_at_eos, show_progress_bar)
    result = ids if return_token_ids else [model.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return result[0] if single else result


def reconstruct(model: LLM2Comp, memory: CompressedMemory, max_new_tokens: int | None = None, batch_size: int = 8,
                return_token_ids: bool = False, allow_untrained: bool = False, show_progress_bar: bool = False):
    """The texts back from their memory, greedily, for a model whose stage 1 trained reconstruction (rc): each
    segment decoded from its own k vectors, as many tokens as it compressed (``max_new_tokens`` caps that)."""
    check_compressor(model, allow_untrained, objective="rc")
    memory.check(model)
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
        ids = generate_ids(model, [[] for _ in pieces], pieces, limits, batch_size=batch_size, stop_at_eos=False,
                           show_progress_bar=show_progress_bar)
        for i, row in zip(owner, ids):
            texts[i].extend(row)
    if max_new_tokens is not None:
        texts = [row[:max_new_tokens] for row in texts]
    return texts if return_token_ids else [model.tokenizer.decode(row, skip_special_tokens=True) for row in texts]
