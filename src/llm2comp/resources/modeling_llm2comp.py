"""Sentence-transformers input module for an LLM2Comp text-embedding model (written by `llm2comp export`). Load it with

    SentenceTransformer("path/or/hub-id", trust_remote_code=True)

Self-contained: it needs torch, transformers (>= 5) and sentence-transformers, nothing else; the ``llm2comp`` package
is used only when asked for one of its inference backends (``model_kwargs={"backend": "onnx"}``).

The folder next to this file holds everything the model needs: ``backbone/`` (the decoder-only LLM with every LoRA
adapter of training merged into its weights, a plain Hugging Face model), ``memory_tokens.safetensors`` (the k learned
memory-token embeddings), ``normalizer.safetensors`` (a fitted standardisation of the embedding, where the model has
one), ``llm2comp_config.json`` and the tokenizer. A text is embedded as ``LLM2Comp.encode`` embeds it: the text
(with its prompt, if any), truncated so that text and memory slots fit ``max_length``, followed by k memory slots;
one forward pass with the attention the model was trained with (``bidirectional`` in ``llm2comp_config.json``); the
mean of the final memory-token states (or the configured baseline pooling: mean, last, prompteol); the normalizer.
A prompt (``prompts`` in ``config_sentence_transformers.json``, ``encode(prompt_name=...)``, ``encode_query``) goes
before the text; a prompt with ``{text}`` is a template, the text goes there (the query format of training,
``"{instruction}: {text}\\n"``, ends after the text).

The functions below copy llm2comp's (pooling.py, features.py, memory.py, attention.py, data/instructions.py; its tests
keep them equal). This file is a copy of ``src/llm2comp/resources/modeling_llm2comp.py``: no model-specific values.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.util import load_dir_path
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

try:
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers 5.x
    from sentence_transformers.models import InputModule

CONFIG_NAME = "llm2comp_config.json"
MEMORY_NAME = "memory_tokens.safetensors"
NORMALIZER_NAME = "normalizer.safetensors"
BACKBONE_DIR = "backbone"
PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'


# ---------------------------------------------------------------------------------------------- texts -> features
def apply_prompt(prompt: str | None, text: str) -> str:
    """A prompt with ``{text}`` is a template (the text goes there); any other prompt goes before the text."""
    if not prompt:
        return text
    if "{text}" in prompt:
        head, tail = prompt.split("{text}", 1)
        return head + text + tail
    return prompt + text


def memory_slots(config: dict) -> int:
    return int(config["num_memory_tokens"]) if config["pooling"] == "memory" else 0


def token_ids(tokenizer, texts: list[str], config: dict) -> list[list[int]]:
    """Per-text token ids, cut so that the whole input (template, memory slots) fits ``max_length``."""
    if not texts:
        return []
    pooling, budget = config["pooling"], int(config["max_length"]) - memory_slots(config)
    if pooling == "prompteol":
        head, tail = (config.get("prompteol_template") or PROMPTEOL_TEMPLATE).split("{text}")
        head_ids = tokenizer(head, add_special_tokens=True)["input_ids"]
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        room = budget - len(head_ids) - len(tail_ids)
        if room < 1:
            raise ValueError(f"max_length {config['max_length']} leaves no room for text in the PromptEOL template")
        return [head_ids + ids[:room] + tail_ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
    if pooling == "memory":
        return ids
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return [row if row else [filler] for row in ids]  # an empty text: one token to pool


def collate(rows: list[list[int]], pad_id: int, k: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask; with memory pooling, k attended memory slots follow each text."""
    width = max(1, max((len(r) for r in rows), default=0) + k)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    memory_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row) + k] = 1
        memory_mask[i, len(row) : len(row) + k] = True
    features = {"input_ids": ids, "attention_mask": mask}
    return {**features, "memory_mask": memory_mask} if k else features


# ---------------------------------------------------------------------------------------------- attention
_SWITCH_LOCK = threading.Lock()
_MISSING = object()


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    seen: dict[int, PretrainedConfig] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            seen[id(config)] = config
            for sub in (getattr(config, name, None) for name in getattr(config, "sub_configs", {}) or {}):
                if isinstance(sub, PretrainedConfig):
                    seen[id(sub)] = sub
    return list(seen.values())


@contextlib.contextmanager
def bidirectional(model: nn.Module, state: list, enabled: bool = True):
    """Within the block the model attends bidirectionally: transformers' masking builds a bidirectional mask (padding
    still masked) when ``config.is_causal`` is False, and ``is_causal=False`` reaches sdpa/flash. Counted in ``state``
    ([open blocks, saved values]) so that overlapping blocks from several threads restore the old values once."""
    if not enabled:
        yield {}
        return
    with _SWITCH_LOCK:
        if state[0] == 0:
            state[1] = [(c, c.__dict__.get("is_causal", _MISSING)) for c in _configs(model)]
            for config, _ in state[1]:
                config.is_causal = False
        state[0] += 1
    try:
        yield {"is_causal": False}
    finally:
        with _SWITCH_LOCK:
            state[0] -= 1
            if state[0] == 0:
                for config, value in state[1]:
                    if value is _MISSING:
                        config.__dict__.pop("is_causal", None)
                    else:
                        config.is_causal = value


# ---------------------------------------------------------------------------------------------- the encoder
class LLM2CompModel(nn.Module):
    """An exported LLM2Comp encoder without llm2comp: backbone, memory tokens, pooling, normalizer."""

    def __init__(self, hf_model: nn.Module, tokenizer, config: dict, memory: torch.Tensor, normalizer: dict | None = None):
        super().__init__()
        self.hf_model, self.tokenizer, self.config = hf_model, tokenizer, dict(config)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        device = hf_model.get_input_embeddings().weight.device
        self.register_buffer("memory", memory.detach().float().to(device))
        for name in ("mean", "scale", "rotation"):
            value = (normalizer or {}).get(name)
            self.register_buffer(name, None if value is None else value.detach().float().to(device))
        self._attention_state = [0, []]

    @classmethod
    def from_folder(cls, folder: str | Path, **model_kwargs) -> LLM2CompModel:
        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if config.get("adapters"):
            raise ValueError(f"{folder} lists LoRA adapters: it is an llm2comp training folder, not an export")
        if "torch_dtype" in model_kwargs and "dtype" not in model_kwargs:
            model_kwargs["dtype"] = model_kwargs.pop("torch_dtype")
        hf_model = AutoModelForCausalLM.from_pretrained(folder / config.get("base_model", BACKBONE_DIR), **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=model_kwargs.get("trust_remote_code", False))
        normalizer = load_file(folder / NORMALIZER_NAME) if config.get("normalizer") is not None else None
        return cls(hf_model.eval(), tokenizer, config, load_file(folder / MEMORY_NAME)["weight"], normalizer)

    def get_sentence_embedding_dimension(self) -> int:
        return self.hf_model.config.get_text_config().hidden_size

    def tokenize(self, texts: list[str], prompt: str | None = None) -> dict[str, torch.Tensor]:
        rows = token_ids(self.tokenizer, [apply_prompt(prompt, t) for t in texts], self.config)
        return collate(rows, self.tokenizer.pad_token_id, memory_slots(self.config))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embed = self.hf_model.get_input_embeddings()
        features = {k: v.to(embed.weight.device) for k, v in features.items()}
        embeds = embed(features["input_ids"])
        if "memory_mask" in features:  # the k memory embeddings written at the memory slots
            memory = self.memory.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1).reshape(-1, embeds.shape[-1])
            embeds = embeds.clone()
            embeds[features["memory_mask"]] = memory
        with bidirectional(self.hf_model, self._attention_state, bool(self.config.get("bidirectional"))) as kwargs:
            output = self.hf_model.get_decoder()(inputs_embeds=embeds, attention_mask=features["attention_mask"],
                                                 use_cache=False, **kwargs)
        hidden, mask = output.last_hidden_state, features["attention_mask"]
        features["token_embeddings"] = hidden
        pooling = self.config["pooling"]
        if pooling == "memory":
            states = hidden[features["memory_mask"]].view(hidden.shape[0], memory_slots(self.config), hidden.shape[-1])
            features["memory_states"] = states
            embedding = states.mean(1)
        elif pooling == "mean":
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            embedding = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:  # last, prompteol: the last attended position
            embedding = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1).long() - 1]
        if self.mean is not None:
            standardised = (embedding.float() - self.mean) / self.scale
            embedding = (standardised if self.rotation is None else standardised @ self.rotation).to(embedding.dtype)
        features["sentence_embedding"] = embedding
        return features

    def save(self, folder: str | Path) -> None:
        """The folder layout `from_folder` reads (``backbone/``, memory tokens, normalizer, tokenizer, config)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf_model.save_pretrained(folder / BACKBONE_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(folder / BACKBONE_DIR)
        self.tokenizer.save_pretrained(folder)
        save_file({"weight": self.memory.detach().float().cpu().contiguous()}, folder / MEMORY_NAME)
        if self.mean is not None:
            names = ("mean", "scale") if self.rotation is None else ("mean", "scale", "rotation")
            save_file({n: getattr(self, n).detach().cpu().contiguous() for n in names}, folder / NORMALIZER_NAME)
        config = {**self.config, "base_model": BACKBONE_DIR}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- sentence-transformers
def _llm2comp_export():
    """llm2comp's export module: only for its inference backends (``model_kwargs={"backend": "onnx"}``). The import
    is in a try block, so that transformers' check of this file's imports does not ask for llm2comp."""
    try:
        from llm2comp import export
    except ImportError as error:
        raise ImportError("an llm2comp inference backend (model_kwargs={'backend': ...}) needs the llm2comp package; "
                          "without it, load the model without 'backend'") from error
    return export


class LLM2CompEncoder(InputModule):
    """Tokenisation (text, then k memory slots) and the LLM2Comp forward pass, as one sentence-transformers module."""

    save_in_root = True

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model  # an LLM2CompModel (or, with an llm2comp backend, an llm2comp.LLM2Comp)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.model.tokenizer = value

    @property
    def max_seq_length(self) -> int:
        """Tokens per input, the k memory slots included (``max_length`` of ``llm2comp_config.json``)."""
        return int(self.model.config["max_length"] if isinstance(self.model.config, dict) else self.model.config.max_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if isinstance(self.model.config, dict):
            self.model.config["max_length"] = int(value)
        else:
            self.model.config.max_length = int(value)

    def get_embedding_dimension(self) -> int:
        return self.model.get_sentence_embedding_dimension()

    get_sentence_embedding_dimension = get_embedding_dimension  # sentence-transformers 5.x name

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        texts = list(inputs)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"inputs[{index}] is {type(text).__name__}; this LLM2Comp model embeds strings only")
        return self.model.tokenize([apply_prompt(prompt, t) for t in texts])  # LLM2CompModel or llm2comp's LLM2Comp

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        features = self.model.forward(features)
        features["sentence_embedding"] = features["sentence_embedding"].float()  # as LLM2Comp.encode returns it
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        if isinstance(self.model, LLM2CompModel):
            self.model.save(output_path)
        else:
            _llm2comp_export().write_bundle(self.model, output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict[str, Any] | None = None, **kwargs) -> LLM2CompEncoder:
        folder = load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                               revision=revision, local_files_only=local_files_only)
        if folder is None:
            raise FileNotFoundError(f"cannot find the LLM2Comp model files of {model_name_or_path!r}")
        model_kwargs = dict(model_kwargs or {})
        if model_kwargs.get("backend", "torch") != "torch":  # llm2comp's ONNX / int8 backends: llm2comp needed
            return cls(_llm2comp_export().load_exported(folder, **model_kwargs))
        model_kwargs.pop("backend", None)
        if kwargs.get("trust_remote_code"):  # a backbone with its own code runs it only when the caller said so
            model_kwargs.setdefault("trust_remote_code", True)
        return cls(LLM2CompModel.from_folder(folder, **model_kwargs))
