"""LLM2Comp: a decoder-only LLM used as a text encoder through k memory tokens.

One backbone, two modes: as the *encoder* (LoRA on, bidirectional attention, text + memory tokens in, mean
of the memory states out) and as the frozen *decoder/teacher* of the pretext task (adapter off, causal
attention, a plain language model). See `decoder_mode`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .adapters import AdaptersMixin
from .attention import bidirectional
from .backbone import ALIASES, DEFAULT_MODEL, default_device, load_backbone
from .features import FeaturesMixin
from .generation import GenerationMixin
from .inference import InferenceMixin
from .memory import MemoryBridge, MemoryTokens
from .persistence import CONFIG_NAME, TRAINED_ALIASES, load_saved, save_model
from .pooling import PROMPTEOL_TEMPLATE, Normalizer, Pooling, get_pooling
from .prompts import check_prompts, prompts_property


@dataclasses.dataclass
class LLM2CompConfig:
    base_model: str = DEFAULT_MODEL
    num_memory_tokens: int = 8
    max_length: int = 512
    pooling: str = "memory"
    # None: the pooling's default (bidirectional for memory pooling, causal for the zero-shot baselines), resolved here only
    bidirectional: bool | None = None
    prompteol_template: str = PROMPTEOL_TEMPLATE
    normalizer: dict | None = None  # where the fitted embedding standardisation came from (normalizer.safetensors)
    memory_init: str | None = None  # None: mean input embedding + noise; a phrase: its token embeddings (MemoryTokens.from_text)
    stages: list[dict] = dataclasses.field(default_factory=list)
    adapters: list[str] = dataclasses.field(default_factory=list)
    merged_adapters: int = 0  # the first n adapters are folded into the weights on load
    trust_remote_code: bool = False
    memory_bridge: str | None = None  # stage 1: a MemoryBridge kind between memory states and the frozen decoder
    # sizes the embedding is made to be cut to (encode(truncate_dim=), serve's dimensions): Matryoshka-trained, or
    # recorded with a principal-axes normalizer (llm2comp fit-normalizer --pca --matryoshka-dims)
    matryoshka_dims: list[int] = dataclasses.field(default_factory=list)
    # sentence-transformers' prompts: name -> text put before each text (a template with "{text}" places it), e.g. the
    # query format a supervised stage trained with; encode(prompt_name=), encode_query / encode_document (inference.py)
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_prompt_name: str | None = None  # the prompt `encode` applies when given none

    def __post_init__(self):
        check_prompts(self.prompts, self.default_prompt_name)
        mode = get_pooling(self.pooling)
        if self.bidirectional is None:
            self.bidirectional = mode.bidirectional_default
        if self.num_memory_tokens < 1:
            raise ValueError(f"num_memory_tokens must be >= 1, got {self.num_memory_tokens}")
        reserved = mode.memory_slots(self)
        if self.max_length <= reserved:
            raise ValueError(f"max_length ({self.max_length}) must exceed the {reserved} memory tokens")


class LLM2Comp(FeaturesMixin, InferenceMixin, AdaptersMixin, GenerationMixin, nn.Module):
    """The encoder. Its methods come from here and from declared mixins: texts -> features (`FeaturesMixin`,
    features.py), encode (`InferenceMixin`, inference.py), what training changes (`AdaptersMixin`, adapters.py),
    compress and generate (`GenerationMixin`, generation.py)."""

    config_class = LLM2CompConfig
    backend = "torch"  # what runs the network (backends.py); a runtime choice, not saved
    body_runner = None  # set by an ONNX backend: runs in place of `body` (same call, same output)

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
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, *args, backend: str = "torch", **kwargs) -> LLM2Comp:
        """The model of `load` (same arguments), run for inference by ``backend`` (`backends.py`: torch, torch-int8,
        onnx, onnx-int8)."""
        if backend == "torch":
            return cls.load(name_or_path, *args, **kwargs)
        from .backends import check_backend, use_backend

        check_backend(backend)
        return use_backend(cls.load(name_or_path, *args, **kwargs), backend)

    @classmethod
    def load(
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
        base_model: str | None = None,
        **hf_kwargs,
    ) -> LLM2Comp:
        """Load a backbone (alias, hub id, directory, .gguf) or a directory written by `save`, in torch (what training
        builds on; `from_pretrained` adds an inference backend).

        ``device``: where the model runs; None: CUDA where available, else the CPU (as sentence-transformers).
        ``trust_remote_code``: the caller's word alone decides whether a backbone's own Python runs; a saved folder
        that needs it is refused without it. ``base_model``: for a saved folder, the backbone to load it on instead
        of the one its config names (a folder moved between machines)."""
        device = default_device() if device is None else device
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
            return load_saved(cls, saved.parent, overrides, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                              base_model=base_model, **hf_kwargs)
        if base_model is not None:
            raise ValueError("base_model= applies to a folder written by llm2comp; to load a backbone, name it first")
        local = Path(str(name_or_path)).expanduser()
        # a local backbone is recorded by its absolute path: a saved model never names a path relative to where it ran
        name = str(local.resolve()) if local.exists() and str(name_or_path) not in ALIASES else str(name_or_path)
        config = LLM2CompConfig(base_model=name, trust_remote_code=trust_remote_code, **overrides)
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

    # ------------------------------------------------------------------ tokenisation
    @property
    def pooling(self) -> Pooling:
        """The pooling mode object (`pooling.py`): input slots, template, truncation and the pooled vector."""
        return get_pooling(self.config.pooling)

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
            output = (self.body_runner or self.body)(inputs_embeds=embeds, attention_mask=features["attention_mask"],
                                                     use_cache=False, **attention_kwargs)
        features["token_embeddings"] = output.last_hidden_state
        embedding = self.pooling.pool(features, self.config)
        features["sentence_embedding"] = self.normalizer(embedding) if self.normalizer is not None else embedding
        return features

    # ------------------------------------------------------------------ fitted normalizer
    def fit_normalizer(self, texts: Sequence[str], source: str = "", batch_size: int = 32, show_progress_bar: bool | None = None,
                       pca: bool = False, standardise: bool = True) -> Normalizer:
        """Fit per-dimension standardisation of the embeddings on ``texts`` (training text, never the evaluation
        sentences); `encode` applies it from then on and `save` keeps it. Training the model further drops it.
        ``pca``: then rotate onto the principal axes of those texts' embeddings (full-size cosines unchanged; the
        first n dimensions keep the most variance, for ``encode(truncate_dim=n)``). ``standardise=False``: centre only."""
        self.drop_normalizer()
        texts = list(texts)
        embeddings = self.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar)
        self.normalizer = Normalizer.fit(embeddings, pca=pca, standardise=standardise).to(self.device)
        self.config = dataclasses.replace(self.config, normalizer={"source": source, "texts": len(texts),
                                                                   **({"rotation": "pca"} if pca else {}),
                                                                   **({} if standardise else {"scale": "none"})})
        self.clear_replicas()
        return self.normalizer

    def drop_normalizer(self) -> None:
        """Remove a fitted normalizer (its statistics describe the weights it was fitted with)."""
        if self.normalizer is not None:
            self.normalizer = None
            self.config = dataclasses.replace(self.config, normalizer=None)
            self.clear_replicas()

    # ------------------------------------------------------------------ inference (the rest in inference.py)
    prompts = prompts_property("prompts")  # the config's, as sentence-transformers' attributes (prompts.py)
    default_prompt_name = prompts_property("default_prompt_name")

    def clear_replicas(self) -> None:
        """Forget the inference copies `encode(devices=...)` made (called when the weights change)."""
        self.__dict__["_replica_cache"] = {}

    # mteb recognises an encoder by this attribute: `mteb.evaluate(model, tasks)` works on an LLM2Comp directly, as on
    # a SentenceTransformer (`MTEBEncoder` adds instructions and a display name)
    @property
    def mteb_model_meta(self):
        from .metadata import mteb_model_meta

        return mteb_model_meta(self)

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config JSON, memory tokens, every LoRA adapter (safetensors) and the tokenizer, atomically
        (`persistence.save_model`); `state_dict` supplies gathered tensors under ZeRO-3/FSDP."""
        return save_model(self, path, state_dict)
