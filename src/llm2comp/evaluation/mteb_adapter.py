"""A thin adapter that lets `mteb` (2.x) evaluate an `LLM2Comp` model: `mteb.evaluate(MTEBEncoder(model), tasks)`.

mteb hands the encoder a `DataLoader` of batches (`{"text": [...], ...}`), the task's metadata and a prompt type
(`query`, `document`, or None for symmetric tasks such as STS and classification). The adapter flattens the batches
in order, picks the prompt for the task and side, and calls `LLM2Comp.encode`, which batches by length internally
and returns rows in input order. Each distinct text is embedded once per call, and texts the previous call embedded
with the same prompt and the same weights (`model_fingerprint`) are reused (at float32 precision): STS tasks send the
same sentences on both sides (SICK-R's 19,854 sentences hold 6,077 distinct ones), so a full STS suite embeds 42%
fewer texts. Only the last call's rows are kept, so memory stays that of one call.

Prompts are mteb's own mechanism (`AbsEncoder`): `model_prompts` are the model's prompts (`model.prompts`, e.g. the
query format its supervised stage trained with), plus the `instructions` given here, each rendered with
`instruction_template` (default ``"{instruction}: {text}\n"``, the training format; a template without ``{text}`` is a
prefix); `AbsEncoder.get_prompt_name` picks one in mteb's order of keys: ``"{task name}-{prompt type}"``,
``"{task name}"``, ``"{task type}-{prompt type}"``, ``"{task type}"``, ``"{prompt type}"``. With
`use_task_instructions=True` a task without one gets the instruction mteb ships in its metadata
(`AbsEncoder.get_task_instruction`, e.g. Banking77: "Given a online banking query, find the corresponding intents").
Documents (prompt type ``document``) get the model's document prompt if it has one, but no instruction given here
unless `instruct_documents=True`. A side without any prompt gets what `LLM2Comp.encode_query` / `encode_document` /
`encode` would give (`llm2comp.prompts.mteb_prompt`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder, PromptSource, get_prompt_name
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType

from .. import metadata
from ..data.instructions import QUERY_TEMPLATE, query_prompt
from ..fingerprint import model_fingerprint
from ..inference import texts_of_batches
from ..model import LLM2Comp
from ..prompts import mteb_prompt

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION_TEMPLATE = QUERY_TEMPLATE  # "{instruction}: {text}\n", as the supervised stage trains


class MTEBEncoder(AbsEncoder):
    """mteb `EncoderProtocol` wrapper around an `LLM2Comp` model.

    Args:
        model: the LLM2Comp model (any pooling); its `prompts` are used (see the module docstring).
        batch_size: texts per forward pass; None uses the `batch_size` mteb passes in its encode kwargs.
        instructions: key -> instruction (see the module docstring for the keys); they win over the model's prompts.
        use_task_instructions: fall back to the instruction in mteb's task metadata when no prompt applies.
        instruction_template: how an instruction and a text are joined; must contain ``{instruction}``.
        instruct_documents: also give document-side texts (retrieval corpus) the instructions given here.
        name: the model name mteb records (``organization/name``); default ``llm2comp/<backbone>-<pooling>``.
        normalize_embeddings: L2-normalise the returned embeddings (cosine scores are unaffected).
    """

    prompt_priority = (PromptSource.DEFAULT_TASK_PROMPT,)  # get_task_instruction: the task's own (use_task_instructions)

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
        self.template = instruction_template
        self.instruction_template = self.format_prompt  # AbsEncoder's, as a callable: its string form cannot keep {text}
        self.instruct_documents = instruct_documents
        self.normalize_embeddings = normalize_embeddings
        self._meta: ModelMeta | None = None
        self._last_key: tuple[str, str | None] | None = None  # the previous call's (weights, prompt) and its rows
        self._last_rows: dict[str, np.ndarray] = {}
        name = name or metadata.display_name(model)
        self.name = name if "/" in name else f"llm2comp/{name}"

    # ------------------------------------------------------------------ metadata
    @property
    def mteb_model_meta(self) -> ModelMeta:  # type: ignore[override]
        """Fresh metadata on every access (the revision is a fingerprint of the current weights), unless mteb set it
        (`ModelMeta.load_model` does, on a model its `loader` made)."""
        if self._meta is not None:
            return self._meta
        return metadata.mteb_model_meta(self.model, self.name, loader=load_mteb_model,
                                        use_instructions=bool(self.model_prompts) or self.use_task_instructions)

    @mteb_model_meta.setter
    def mteb_model_meta(self, meta: ModelMeta | None) -> None:
        self._meta = meta

    # ------------------------------------------------------------------ prompts
    @property
    def model_prompts(self) -> dict[str, str]:  # type: ignore[override]
        """AbsEncoder's prompts: the model's, then the instructions given here as prompts (those win on equal keys)."""
        return {**self.model.prompts, **{key: self.format_prompt(text) for key, text in self.instructions.items()}}

    def format_prompt(self, instruction: str, prompt_type: PromptType | None = None) -> str:
        """An instruction as a prompt: `instruction_template` with it in place (``{text}`` kept for `encode`)."""
        return query_prompt(instruction, self.template)

    def prompt_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The prompt for this task and side ("" for none); None: the model's default prompt applies."""
        instructed = prompt_type != PromptType.document or self.instruct_documents
        name = self.get_prompt_name(task_metadata, prompt_type)
        if name is not None and name in self.instructions and not instructed:
            name = get_prompt_name(self.model.prompts, task_metadata, prompt_type)  # documents: the model's own only
        if name is not None:
            return self.model_prompts[name] if instructed else self.model.prompts[name]
        if self.use_task_instructions and instructed:
            return self.get_task_instruction(task_metadata, prompt_type) or None
        return mteb_prompt(self.model, task_metadata, prompt_type)

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
        texts = texts_of_batches(inputs)
        prompt = self.prompt_for(task_metadata, prompt_type)
        if prompt:
            logger.info("%s (%s): prompt %r", task_metadata.name, prompt_type, prompt)
        batch_size = self.batch_size or int(kwargs.get("batch_size") or 32)
        precision = kwargs.get("precision") or "float32"

        def embed(batch: list[str]) -> np.ndarray:
            embeddings = self.model.encode(
                batch,
                prompt=prompt,
                batch_size=batch_size,
                normalize_embeddings=self.normalize_embeddings,
                precision=precision,
                show_progress_bar=bool(kwargs.get("show_progress_bar", False)) and len(batch) >= 4 * batch_size,
            )
            return np.asarray(embeddings).reshape(len(batch), -1)

        if precision != "float32":  # int8/uint8 calibrate on the batch: embed it as given
            return embed(texts)
        key = (model_fingerprint(self.model, self.model.config), prompt)  # a training step in between: nothing reused
        known = self._last_rows if self._last_key == key else {}
        new = [t for t in dict.fromkeys(texts) if t not in known]
        rows = {t: known[t] for t in texts if t in known}
        if new:
            rows.update(zip(new, embed(new)))
        self._last_key, self._last_rows = key, rows
        if not texts:
            return embed(texts)
        return np.stack([rows[t] for t in texts])

    def __repr__(self) -> str:
        return f"MTEBEncoder({self.name}, batch_size={self.batch_size}, prompts={len(self.model_prompts)})"


def load_mteb_model(model_name: str, revision: str | None = None, *, model_name_or_path: str | None = None,
                    device: str | None = None, batch_size: int | None = None, **load_kwargs) -> MTEBEncoder:
    """mteb's `ModelMeta.loader` of an llm2comp model: the `MTEBEncoder` of ``model_name_or_path`` (else
    ``model_name`` read as a path or alias), recorded under ``model_name``; a ``revision`` (the fingerprint the
    metadata was made with) that the loaded weights do not match is logged as a warning."""
    source = model_name_or_path or model_name
    model = LLM2Comp.from_pretrained(source, device=device, **load_kwargs)
    model.name_or_path = str(source)
    if revision and model_fingerprint(model, model.config) != revision:
        logger.warning("%s: the weights at %s are not those the metadata (revision %s) describes", model_name, source, revision)
    model.merge_and_unload()
    return MTEBEncoder(model, batch_size=batch_size, name=model_name)


def register_mteb_model(model_name_or_path: str, name: str | None = None, **load_kwargs) -> ModelMeta:
    """Load the model at ``model_name_or_path`` and put its `ModelMeta` into mteb's registry (under ``name``, default
    ``llm2comp/<backbone>-<pooling>``): then `mteb.get_model_meta(name)` returns it, with its training datasets, and
    `mteb.get_model(name)` / `mteb.evaluate(mteb.get_model_meta(name), tasks)` load the model through its loader."""
    from mteb.models.model_implementations import MODEL_REGISTRY

    model = LLM2Comp.from_pretrained(model_name_or_path, device="cpu", **load_kwargs)
    model.name_or_path = str(model_name_or_path)
    meta = metadata.mteb_model_meta(model, name, loader=load_mteb_model, loader_kwargs=load_kwargs)
    MODEL_REGISTRY[meta.name] = meta
    return meta
