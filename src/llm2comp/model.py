"""LLM2Comp: a decoder-only LLM used as a text encoder through k memory tokens.

One backbone, two modes: as the *encoder* (LoRA on, bidirectional attention, text + memory tokens in, mean
of the memory states out) and as the frozen *decoder/teacher* of the pretext task (adapter off, causal
attention, a plain language model). See `decoder_mode`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .attention import bidirectional
from .backbone import DEFAULT_MODEL, load_backbone
from .memory import MemoryBridge, MemoryTokens
from .persistence import CONFIG_NAME, NORMALIZER_NAME, TRAINED_ALIASES, quiet_peft, load_saved, save_model
from .pooling import PROMPTEOL_TEMPLATE, Normalizer, Pooling, get_pooling
from . import inference

logger = logging.getLogger(__name__)

# A fast tokenizer's truncation is state on the tokenizer (each call with truncation=True/False sets it, then
# encodes), so two threads tokenizing at once, one truncating and one measuring full lengths, can each get the
# other's setting: rows longer than max_length, or cut token counts. Every tokenizer call of the encode path takes
# this lock (one for all models: a lock on the module would break deepcopy/pickle; tokenizing is the cheap part).
_TOKENIZER_LOCK = threading.RLock()


DEFAULT_LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class LLM2CompConfig:
    base_model: str = DEFAULT_MODEL
    num_memory_tokens: int = 8
    max_length: int = 512
    pooling: str = "memory"
    bidirectional: bool | None = None  # None: bidirectional for memory pooling, causal for the zero-shot baselines
    prompteol_template: str = PROMPTEOL_TEMPLATE
    normalizer: dict | None = None  # where the fitted embedding standardisation came from (normalizer.safetensors)
    memory_init: str | None = None  # None: mean input embedding + noise; a phrase: its token embeddings (MemoryTokens.from_text)
    stages: list[dict] = dataclasses.field(default_factory=list)
    adapters: list[str] = dataclasses.field(default_factory=list)
    merged_adapters: int = 0  # the first n adapters are folded into the weights on load
    trust_remote_code: bool = False
    memory_bridge: str | None = None  # stage 1: a MemoryBridge kind between memory states and the frozen decoder
    matryoshka_dims: list[int] = dataclasses.field(default_factory=list)  # trained sizes for encode(truncate_dim=)

    def __post_init__(self):
        mode = get_pooling(self.pooling)
        if self.bidirectional is None:
            self.bidirectional = mode.bidirectional_default
        if self.num_memory_tokens < 1:
            raise ValueError(f"num_memory_tokens must be >= 1, got {self.num_memory_tokens}")
        reserved = mode.memory_slots(self)
        if self.max_length <= reserved:
            raise ValueError(f"max_length ({self.max_length}) must exceed the {reserved} memory tokens")


class LLM2Comp(nn.Module):
    config_class = LLM2CompConfig
    backend = "torch"  # what runs the network (backends.py); a runtime choice, not saved

    def __init__(self, hf_model: nn.Module, tokenizer, config: LLM2CompConfig, memory: MemoryTokens | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.hf_model = hf_model
        self.memory = (memory or self._initial_memory()).to(self.device)
        self.normalizer: Normalizer | None = None
        self.memory_bridge: MemoryBridge | None = None
        self.__dict__["_peft"] = None  # the PeftModel wrapper; its layers live inside hf_model (not registered twice)
        self._merged: list[tuple[dict, dict[str, torch.Tensor]]] = []  # adapters already folded into the weights

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        num_memory_tokens: int | None = None,
        max_length: int | None = None,
        pooling: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        bidirectional: bool | None = None,
        trust_remote_code: bool = False,
        memory_init: str | None = None,
        backend: str = "torch",
        **hf_kwargs,
    ) -> LLM2Comp:
        """Load a backbone (alias, hub id, directory, .gguf) or a directory written by `save`; ``backend`` picks what
        runs the network for inference (`backends.py`: torch, torch-int8)."""
        if backend != "torch":
            from .backends import check_backend, use_backend

            check_backend(backend)
            return use_backend(cls.from_pretrained(name_or_path, num_memory_tokens, max_length, pooling, device, dtype,
                                                   bidirectional, trust_remote_code, memory_init, **hf_kwargs), backend)
        overrides = {
            k: v
            for k, v in dict(num_memory_tokens=num_memory_tokens, max_length=max_length, pooling=pooling,
                             bidirectional=bidirectional, memory_init=memory_init).items()
            if v is not None
        }
        if str(name_or_path) in TRAINED_ALIASES:
            name_or_path = TRAINED_ALIASES[str(name_or_path)]()
        saved = Path(str(name_or_path)).expanduser() / CONFIG_NAME
        if saved.is_file():
            return load_saved(cls, saved.parent, overrides, device=device, dtype=dtype, **hf_kwargs)
        if "bidirectional" not in overrides and overrides.get("pooling", "memory") != "memory":
            overrides["bidirectional"] = None
        config = LLM2CompConfig(base_model=str(name_or_path), trust_remote_code=trust_remote_code, **overrides)
        hf_model, tokenizer = load_backbone(
            config.base_model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **hf_kwargs
        )
        return cls(hf_model, tokenizer, config)

    def _initial_memory(self) -> MemoryTokens:
        embedding, k = self.hf_model.get_input_embeddings(), self.config.num_memory_tokens
        if self.config.memory_init:
            ids = self.tokenizer(self.config.memory_init, add_special_tokens=False)["input_ids"]
            return MemoryTokens.from_text(k, embedding, ids)
        return MemoryTokens.from_embeddings(k, embedding, self.vocab_size)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.hf_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.get_input_embeddings().weight.dtype

    @property
    def vocab_size(self) -> int:
        # the module's attribute, not its weight's shape (a ZeRO-3 partitioned weight is empty outside forward)
        embedding = self.hf_model.get_input_embeddings()
        rows = getattr(embedding, "num_embeddings", None)
        return int(rows if rows is not None else self.hf_model.config.get_text_config().vocab_size)

    @property
    def peft_model(self):
        return self.__dict__["_peft"]

    @property
    def body(self) -> nn.Module:
        """The transformer without its LM head (LoRA layers, when attached, are inside it)."""
        return self.hf_model.get_decoder()

    def get_sentence_embedding_dimension(self) -> int:
        return self.hf_model.config.get_text_config().hidden_size

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
                 train_memory: bool = True):
        """Attach a fresh LoRA adapter; an adapter already attached is merged first (stage chaining).

        `train_memory=False` freezes the memory tokens, for stages that never read them (mean/last/PromptEOL
        pooling, MNTP): a trainable parameter without a gradient breaks DDP and wastes optimizer state.
        """
        from peft import LoraConfig, get_peft_model

        if self.backend != "torch":
            raise ValueError(f"a model on backend '{self.backend}' embeds but does not train; load it with backend='torch'")
        if self.peft_model is not None:
            self.merge_and_unload()
        present = {name.rsplit(".", 1)[-1] for name, _ in self.hf_model.named_modules()}
        missing = [t for t in target_modules if t not in present]
        if missing:
            raise ValueError(f"LoRA target modules {missing} not found in {type(self.hf_model).__name__}")
        self.clear_replicas()
        self.drop_normalizer()
        lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
        with quiet_peft():
            self.__dict__["_peft"] = get_peft_model(self.hf_model, lora)
        self.memory.weight.requires_grad_(train_memory)
        return self

    def merge_and_unload(self) -> LLM2Comp:
        """Fold the attached LoRA into the weights (the memory tokens stay); a no-op without an adapter."""
        from peft import get_peft_model_state_dict

        peft_model = self.peft_model
        if peft_model is None:
            return self
        self.clear_replicas()
        adapter_config = peft_model.peft_config["default"].to_dict()
        state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
        self._merged.append((adapter_config, state))
        self.hf_model = peft_model.merge_and_unload()
        self.__dict__["_peft"] = None
        return self

    # ------------------------------------------------------------------ stage 1: what the frozen decoder reads
    def add_memory_bridge(self, kind: str, token_rows: Sequence[Sequence[int]] | None = None) -> MemoryBridge:
        """Attach a stage-1 `MemoryBridge` fitted on the memory states of ``token_rows`` (encoder inputs of training
        texts, as `collate` takes them); one of that kind already there is kept as it is (a resumed or continued run)."""
        if self.memory_bridge is None or self.memory_bridge.kind != kind:
            if not token_rows:
                raise ValueError("a new memory bridge is fitted on training texts: pass token_rows")
            with torch.no_grad(), self._evaluating():
                states = torch.cat([self(self.collate(token_rows[i : i + 16]))["memory_states"] for i in range(0, len(token_rows), 16)])
            bridge = MemoryBridge(kind, self.get_sentence_embedding_dimension()).to(self.device)
            self.memory_bridge = bridge.fit(states, self.hf_model.get_input_embeddings(), self.vocab_size)
        self.config = dataclasses.replace(self.config, memory_bridge=kind)
        return self.memory_bridge

    def drop_memory_bridge(self) -> None:
        self.memory_bridge = None
        self.config = dataclasses.replace(self.config, memory_bridge=None)

    def decoder_memory(self, memory_states: torch.Tensor) -> torch.Tensor:
        """The memory as the frozen decoder receives it in stage 1 (and in the compression probe): the memory
        states, through the bridge where one is trained. The embedding never goes through it."""
        return self.memory_bridge(memory_states) if self.memory_bridge is not None else memory_states

    @contextlib.contextmanager
    def decoder_mode(self) -> Iterator[nn.Module]:
        """The frozen LLM: the active adapter switched off, causal attention. Yields the causal LM.

        (Adapters of earlier stages, already merged, are part of the frozen weights.) Under layer-wise gradient
        checkpointing the layers stay checkpointed, but their recomputation during backward, which runs after this
        block has exited, switches the adapter off again (torch's non-reentrant `context_fn`); where that is not
        available (reentrant checkpointing) checkpointing is paused inside the block.
        """
        adapter_off = self.peft_model.disable_adapter if self.peft_model is not None else contextlib.nullcontext
        changed = []
        for module in self.hf_model.modules():
            if getattr(module, "gradient_checkpointing", False) is not True:
                continue
            func = getattr(module, "_gradient_checkpointing_func", None)
            changed.append((module, func))
            if _non_reentrant(func):
                module._gradient_checkpointing_func = functools.partial(
                    func, context_fn=lambda: (contextlib.nullcontext(), adapter_off())
                )
            else:
                module.gradient_checkpointing = False
        try:
            with adapter_off():
                yield self.hf_model
        finally:
            for module, func in changed:
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = func

    # ------------------------------------------------------------------ tokenisation
    @property
    def pooling(self) -> Pooling:
        """The pooling mode object (`pooling.py`): input slots, template, truncation and the pooled vector."""
        return get_pooling(self.config.pooling)

    def _text_budget(self) -> int:
        return self.pooling.text_budget(self.config)

    def token_ids(self, texts: Sequence[str], prompt: str | None = None) -> list[list[int]]:
        """Per-text token ids, truncated so that the whole input (template, memory slots) fits max_length.
        Safe to call from several threads (see `_TOKENIZER_LOCK`)."""
        if prompt:
            texts = [prompt + t for t in texts]
        with _TOKENIZER_LOCK:
            return self.pooling.token_ids(self.tokenizer, texts, self.config)

    def count_truncated(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]], prompt: str | None = None) -> tuple[int, int]:
        """(how many of `texts` `token_ids` cut to fit max_length, the longest one's token count); only rows at the
        full length are tokenized again."""
        candidates = [(prompt or "") + texts[i] for i, row in enumerate(token_ids) if len(row) >= self._text_budget()]
        if not candidates:
            return 0, 0
        with _TOKENIZER_LOCK:
            room = self.pooling.text_room(self.tokenizer, self.config)
            lengths = self.pooling.text_lengths(self.tokenizer, candidates)
        longer = [n for n in lengths if n > room]
        return len(longer), max(longer, default=0)

    def _report_truncation(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]], prompt: str | None) -> None:
        count, longest = self.count_truncated(texts, token_ids, prompt)
        if count:
            logger.warning("%d of %d texts are longer than max_length=%d and were truncated (the longest has %d tokens); "
                           "pass a larger max_length or split long texts", count, len(texts), self.config.max_length, longest)

    def raw_text_budget(self) -> int:
        """Text tokens (without the special prefix) that fit one encoder input with its memory slots: the one
        truncation budget of the pretext objectives and of contrastive token rows."""
        return self._text_budget() - len(special_prefix(self.tokenizer))

    def collate(self, token_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token rows into tensors; with memory pooling, k memory slots follow each text."""
        k = self.pooling.memory_slots(self.config)
        input_ids, attention_mask = right_pad(token_ids, self.tokenizer.pad_token_id, trailing=k)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if k:
            memory_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
            for i, row in enumerate(token_ids):
                memory_mask[i, len(row) : len(row) + k] = True
            features["memory_mask"] = memory_mask
        return features

    def tokenize(self, texts: Sequence[str], prompt: str | None = None) -> dict[str, torch.Tensor]:
        return self.collate(self.token_ids(texts, prompt))

    # ------------------------------------------------------------------ forward
    def embed_inputs(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        embeds = self.hf_model.get_input_embeddings()(features["input_ids"])
        if "memory_mask" in features:
            embeds = self.memory(embeds, features["memory_mask"])
        return embeds

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """features (from `tokenize`) -> the same dict plus token_embeddings, sentence_embedding (and memory_states)."""
        features = {k: v.to(self.device) for k, v in features.items()}
        embeds = self.embed_inputs(features)
        with bidirectional(self.hf_model, self.config.bidirectional) as attention_kwargs:
            output = self.body(inputs_embeds=embeds, attention_mask=features["attention_mask"], use_cache=False, **attention_kwargs)
        features["token_embeddings"] = output.last_hidden_state
        embedding = self.pooling.pool(features, self.config)
        features["sentence_embedding"] = self.normalizer(embedding) if self.normalizer is not None else embedding
        return features

    # ------------------------------------------------------------------ fitted normalizer
    def fit_normalizer(self, texts: Sequence[str], source: str = "", batch_size: int = 32, show_progress_bar: bool | None = None) -> Normalizer:
        """Fit per-dimension standardisation of the embeddings on ``texts`` (training text, never the evaluation
        sentences); `encode` applies it from then on and `save` keeps it. Training the model further drops it."""
        self.drop_normalizer()
        texts = list(texts)
        embeddings = self.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar)
        self.normalizer = Normalizer.fit(embeddings).to(self.device)
        self.config = dataclasses.replace(self.config, normalizer={"source": source, "texts": len(texts)})
        self.clear_replicas()
        return self.normalizer

    def drop_normalizer(self) -> None:
        """Remove a fitted normalizer (its statistics describe the weights it was fitted with)."""
        if self.normalizer is not None:
            self.normalizer = None
            self.config = dataclasses.replace(self.config, normalizer=None)
            self.clear_replicas()

    def save_normalizer(self, folder: Path) -> None:
        if self.normalizer is not None:
            stats = {"mean": self.normalizer.mean.cpu().contiguous(), "scale": self.normalizer.scale.cpu().contiguous()}
            save_file(stats, folder / NORMALIZER_NAME)

    # ------------------------------------------------------------------ inference (inference.py)
    encode = inference.encode
    encode_token_ids = inference.encode_token_ids
    _evaluating = inference.evaluating

    def clear_replicas(self) -> None:
        """Forget the inference copies `encode(devices=...)` made (called when the weights change)."""
        self.__dict__["_replica_cache"] = {}

    # mteb recognises an encoder by this attribute: `mteb.evaluate(model, tasks)` works on an LLM2Comp directly, as on
    # a SentenceTransformer (`MTEBEncoder` adds instructions and a display name)
    @property
    def mteb_model_meta(self):
        from .evaluation.mteb_adapter import MTEBEncoder

        return MTEBEncoder(self).mteb_model_meta

    similarity = staticmethod(inference.similarity)
    similarity_pairwise = staticmethod(inference.similarity_pairwise)  # with `mteb_model_meta`: mteb's EncoderProtocol

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config JSON, memory tokens, every LoRA adapter (safetensors) and the tokenizer, atomically
        (`persistence.save_model`); `state_dict` supplies gathered tensors under ZeRO-3/FSDP."""
        return save_model(self, path, state_dict)


def special_prefix(tokenizer) -> list[int]:
    """What the tokenizer puts before a text (e.g. BOS for Llama; nothing for GPT-2-style tokenizers)."""
    return tokenizer("", add_special_tokens=True)["input_ids"]


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, trailing: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token rows padded on the right; `trailing` extra attended positions after each row
    (the memory slots, filled with `pad_id` ids and replaced by the memory embeddings)."""
    width = max(1, max((len(r) for r in rows), default=0) + trailing)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row) + trailing] = 1
    return ids, mask


def _non_reentrant(func) -> bool:
    """Whether a layer's checkpoint function is torch's non-reentrant checkpoint (which accepts `context_fn`)."""
    from torch.utils.checkpoint import checkpoint

    keywords = getattr(func, "keywords", None)
    return (getattr(func, "func", None) is checkpoint and keywords.get("use_reentrant") is False
            and "context_fn" not in keywords)
