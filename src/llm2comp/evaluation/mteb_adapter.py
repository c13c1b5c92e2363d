"""A thin adapter that lets `mteb` (2.x) evaluate an `LLM2Comp` model: `mteb.evaluate(MTEBEncoder(model), tasks)`.

mteb hands the encoder a `DataLoader` of batches (`{"text": [...], ...}`), the task's metadata and a prompt type
(`query`, `document`, or None for symmetric tasks such as STS and classification). The adapter flattens the batches
in order, puts the task instruction (if any) in front of each *query-side* text, and calls `LLM2Comp.encode`, which
batches by length internally and returns rows in input order. Nothing is cached between calls.

Instructions: `instructions` maps keys to instruction strings; keys are looked up in mteb's order of precedence:
``"{task name}-{prompt type}"``, ``"{task name}"``, ``"{task type}-{prompt type}"``, ``"{task type}"``,
``"{prompt type}"``. With `use_task_instructions=True` a task without an entry falls back to the instruction mteb
ships in the task metadata (e.g. Banking77: "Given a online banking query, find the corresponding intents").
Documents (prompt type ``document``) never get an instruction unless `instruct_documents=True`. The instruction is
rendered with `instruction_template` (default ``"{instruction}: {text}\\n"``, the training format; a template without ``{text}`` is a
prefix).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType

from ..data.instructions import QUERY_TEMPLATE
from .. import metadata

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

    from ..model import LLM2Comp

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION_TEMPLATE = QUERY_TEMPLATE  # "{instruction}: {text}\n", as the supervised stage trains


class MTEBEncoder(AbsEncoder):
    """mteb `EncoderProtocol` wrapper around an `LLM2Comp` model.

    Args:
        model: the LLM2Comp model (any pooling).
        batch_size: texts per forward pass; None uses the `batch_size` mteb passes in its encode kwargs.
        instructions: key -> instruction (see the module docstring for the keys).
        use_task_instructions: fall back to the instruction in mteb's task metadata when `instructions` has none.
        instruction_template: how an instruction and a text are joined; must contain ``{instruction}``.
        instruct_documents: also give document-side texts (retrieval corpus) an instruction.
        name: the model name mteb records (``organization/name``); default ``llm2comp/<backbone>-<pooling>``.
        normalize_embeddings: L2-normalise the returned embeddings (cosine scores are unaffected).
    """

    def __init__(
        self,
        model: LLM2Comp,
        batch_size: int | None = None,
        instructions: Mapping[str, str] | None = None,
        *,
        use_task_instructions: bool = False,
        instruction_template: str = DEFAULT_INSTRUCTION_TEMPLATE,
        instruct_documents: bool = False,
        name: str | None = None,
        normalize_embeddings: bool = False,
    ) -> None:
        if "{instruction}" not in instruction_template:
            raise ValueError("instruction_template must contain '{instruction}'")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.instructions = dict(instructions or {})
        self.use_task_instructions = use_task_instructions
        self.instruction_template = instruction_template
        self.instruct_documents = instruct_documents
        self.normalize_embeddings = normalize_embeddings
        name = name or metadata.display_name(model)
        self.name = name if "/" in name else f"llm2comp/{name}"

    # ------------------------------------------------------------------ metadata
    @property
    def mteb_model_meta(self) -> ModelMeta:  # type: ignore[override]
        """Fresh metadata on every access; the revision is a fingerprint of the current weights."""
        return metadata.mteb_model_meta(self.model, self.name, use_instructions=bool(self.instructions) or self.use_task_instructions)

    # ------------------------------------------------------------------ instructions
    def instruction_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The raw instruction for this task and side, or None (documents get none unless `instruct_documents`)."""
        if prompt_type == PromptType.document and not self.instruct_documents:
            return None
        pt = prompt_type.value if prompt_type is not None else None
        keys = []
        if pt:
            keys.append(f"{task_metadata.name}-{pt}")
        keys.append(task_metadata.name)
        if pt:
            keys.append(f"{task_metadata.type}-{pt}")
        keys.append(task_metadata.type)
        if pt:
            keys.append(pt)
        for key in keys:
            if key in self.instructions:
                return self.instructions[key] or None
        if self.use_task_instructions:
            return self.get_instruction(task_metadata, prompt_type) or None
        return None

    def format_texts(self, texts: list[str], instruction: str | None) -> list[str]:
        if not instruction:
            return texts
        template = self.instruction_template
        if "{text}" in template:
            # format the instruction first, then place the text (texts may contain braces)
            head, tail = template.split("{text}", 1)
            head = head.format(instruction=instruction)
            tail = tail.format(instruction=instruction)
            return [head + t + tail for t in texts]
        prefix = template.format(instruction=instruction)
        return [prefix + t for t in texts]

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            batch_texts = batch["text"]
            if isinstance(batch_texts, str):
                batch_texts = [batch_texts]
            texts.extend(str(t) if t is not None else "" for t in batch_texts)
        instruction = self.instruction_for(task_metadata, prompt_type)
        if instruction:
            logger.info("%s (%s): instruction %r", task_metadata.name, prompt_type, instruction)
        batch_size = self.batch_size or int(kwargs.get("batch_size") or 32)
        embeddings = self.model.encode(
            self.format_texts(texts, instruction),
            batch_size=batch_size,
            normalize_embeddings=self.normalize_embeddings,
            convert_to_numpy=True,
            show_progress_bar=bool(kwargs.get("show_progress_bar", False)) and len(texts) >= 4 * batch_size,
        )
        return np.asarray(embeddings, dtype=np.float32).reshape(len(texts), -1)

    def __repr__(self) -> str:
        return f"MTEBEncoder({self.name}, batch_size={self.batch_size}, instructions={len(self.instructions)})"
