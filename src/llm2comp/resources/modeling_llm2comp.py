"""Sentence-transformers input module for an LLM2Comp text-embedding model (written by `llm2comp export`).

The folder next to this file holds everything the model needs: ``backbone/`` (the decoder-only LLM with every
LoRA adapter of training merged into its weights, a plain Hugging Face model), ``memory_tokens.safetensors``
(the k learned memory-token embeddings), ``llm2comp_config.json`` and the tokenizer. This module loads them
with the ``llm2comp`` package (installed from its source tree; it is not on PyPI) and embeds texts exactly like
``LLM2Comp.encode``: the text, truncated so that text and memory slots fit ``max_length``, followed by k memory
slots; one forward pass with the attention the model was trained with (``bidirectional`` in
``llm2comp_config.json``: causal for the shipped default); the mean of the final memory-token states as the
embedding (or the configured baseline pooling: mean, last, prompteol). Load it with

    SentenceTransformer("path/to/this/folder", trust_remote_code=True)

This file is a copy of ``src/llm2comp/resources/modeling_llm2comp.py``; it carries no model-specific values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llm2comp.export import load_exported, write_bundle

try:
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers 5.x
    from sentence_transformers.models import InputModule

from sentence_transformers.util import load_dir_path


class LLM2CompEncoder(InputModule):
    """Tokenisation (text, then k memory slots) and the LLM2Comp forward pass, as one sentence-transformers module."""

    save_in_root = True

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model  # an llm2comp.LLM2Comp (its backbone carries no adapter)

    # ------------------------------------------------------------------ properties used by sentence-transformers
    @property
    def tokenizer(self):
        return self.model.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.model.tokenizer = value

    @property
    def max_seq_length(self) -> int:
        """Tokens per input, the k memory slots included (``LLM2CompConfig.max_length``)."""
        return self.model.config.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.config = dataclasses.replace(self.model.config, max_length=int(value))

    def get_embedding_dimension(self) -> int:
        return self.model.get_sentence_embedding_dimension()

    get_sentence_embedding_dimension = get_embedding_dimension  # sentence-transformers 5.x name

    # ------------------------------------------------------------------ inference
    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        texts = list(inputs)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"inputs[{index}] is {type(text).__name__}; this LLM2Comp model embeds strings only")
        return self.model.tokenize(texts, prompt=prompt)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        features = self.model.forward(features)
        features["sentence_embedding"] = features["sentence_embedding"].float()  # as LLM2Comp.encode returns it
        return features

    # ------------------------------------------------------------------ persistence
    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        write_bundle(self.model, output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> LLM2CompEncoder:
        folder = load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        if folder is None:
            raise FileNotFoundError(f"cannot find the LLM2Comp model files of {model_name_or_path!r}")
        return cls(load_exported(folder, **(model_kwargs or {})))
