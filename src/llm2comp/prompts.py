"""Prompts, as sentence-transformers has them: ``model.prompts`` (name -> text put before each text, or a template
with ``{text}``, see `data.instructions.apply_prompt`), ``model.default_prompt_name``, and how `encode`,
`encode_query`, `encode_document` and mteb pick one. They live in the model's config (`LLM2CompConfig.prompts`), so
they are saved with it and written into an export's ``config_sentence_transformers.json``."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # encode_document's prompt: the first of these the model has


def resolve_prompt(prompts: dict[str, str], default_name: str | None, prompt: str | None, prompt_name: str | None) -> str | None:
    """sentence-transformers' choice: ``prompt``, else ``prompts[prompt_name]``, else the default prompt's, else none."""
    if prompt is not None:
        if prompt_name is not None:
            logger.warning("encode: both prompt and prompt_name given; prompt=%r is used", prompt)
        return prompt
    if prompt_name is not None:
        if prompt_name not in prompts:
            known = ", ".join(repr(name) for name in prompts) or "none"
            raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts ({known})")
        return prompts[prompt_name]
    return prompts.get(default_name) if default_name is not None else None


def mteb_prompt(model, task_metadata, prompt_type) -> str | None:
    """The model's prompt for an mteb task and side, found as mteb finds a model's prompts (task-prompt type, task,
    task type-prompt type, task type, prompt type: `mteb.models.abs_encoder.get_prompt_name`); a query or document
    side without one gets what `encode_query` / `encode_document` would give; None leaves the default prompt."""
    from mteb.models.abs_encoder import get_prompt_name

    name = get_prompt_name(model.prompts, task_metadata, prompt_type) if model.prompts else None
    if name is not None:
        return model.prompts[name]
    side = getattr(prompt_type, "value", prompt_type)
    if side == "query":
        return model.prompts.get("query", "")
    if side == "document":
        return next((model.prompts[n] for n in DOCUMENT_PROMPTS if n in model.prompts), "")
    return None


def check_prompts(prompts: dict, default_prompt_name: str | None) -> None:
    """A config's prompts: str names to str texts; the default prompt's name, if any, among them."""
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"prompts must map names to prompt texts (str -> str), got {prompts!r}")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of the prompts ({', '.join(prompts) or 'none'})")


def prompts_property(name: str) -> property:
    """``model.prompts`` / ``model.default_prompt_name``: the config's field, readable and settable on the model as on a
    SentenceTransformer (and saved with it)."""

    def get(model):
        return getattr(model.config, name)

    def set_(model, value) -> None:
        prompts = dict(value) if name == "prompts" else model.config.prompts
        default = value if name == "default_prompt_name" else model.config.default_prompt_name
        check_prompts(prompts, default)
        setattr(model.config, name, prompts if name == "prompts" else default)

    return property(get, set_, doc=f"The model's {name} (sentence-transformers' attribute), kept in its config.")
