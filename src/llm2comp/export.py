"""Export a trained LLM2Comp model as a self-contained sentence-transformers folder.

``export_sentence_transformers(DIR, OUT)`` writes::

    OUT/
      README.md                          model card: base model, memory tokens, pooling, stages, scores, usage
      modules.json                       one module: modeling_llm2comp.LLM2CompEncoder, saved in the root
      config_sentence_transformers.json  similarity cosine, the model's prompts, the version requirements
      modeling_llm2comp.py               the sentence-transformers module (a copy of src/llm2comp/resources/...):
                                         self-contained, it needs torch, transformers and sentence-transformers only
      llm2comp_config.json               the LLM2Comp config; base_model = "backbone", no adapters
      memory_tokens.safetensors          the k memory-token embeddings
      tokenizer.json, tokenizer_config.json, ...
      backbone/                          the LLM with every LoRA adapter merged: a plain HF model (safetensors)
        config.json, model.safetensors, generation_config.json, tokenizer files

Nothing in it refers to the original base model or to DIR: the folder can be moved, copied or uploaded.
``SentenceTransformer(OUT, trust_remote_code=True)`` loads it without llm2comp installed (the module carries the few
functions it needs), with the model's prompts (``encode_query`` uses the query format the model trained with);
``load_exported(OUT)`` gives the `LLM2Comp` object. Both embed exactly like ``LLM2Comp.from_pretrained(DIR)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .atomic import staging_dir
from .model import LLM2Comp
from .persistence import CONFIG_NAME, EXPORT_KEY, MEMORY_NAME, save_normalizer
from .model_card import collect_scores, model_card
from .version import __version__

BACKBONE_DIR = "backbone"
MODULE_FILE = "modeling_llm2comp.py"
MODULE_CLASS = "LLM2CompEncoder"


# ---------------------------------------------------------------------------------------------- loading
def load_exported(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    **hf_kwargs,
) -> LLM2Comp:
    """Load a folder written by `export_sentence_transformers` (or `write_bundle`) as an `LLM2Comp` model.

    A relative ``base_model`` in its config (``"backbone"``) is resolved against the folder, so the folder can
    be moved. ``torch_dtype`` is accepted as an alias of ``dtype`` (sentence-transformers' ``model_kwargs``).
    """
    if dtype is None:
        dtype = hf_kwargs.pop("torch_dtype", None)
    hf_kwargs.pop("torch_dtype", None)
    path = Path(path).expanduser().resolve()
    data = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    if data.get("adapters"):
        raise ValueError(f"{path} lists LoRA adapters: it is a training directory; load it with LLM2Comp.from_pretrained")
    if not (path / data["base_model"] / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the bundled backbone {path / data['base_model']} is missing (no config.json)")
    model = LLM2Comp.from_pretrained(path, device=device, dtype=dtype, **hf_kwargs)
    model.exported_from = data.get(EXPORT_KEY) or {}
    model.name_or_path = str(path)  # mteb's loader reloads it from here (metadata.mteb_model_meta)
    return model.eval()


# ---------------------------------------------------------------------------------------------- writing
def write_bundle(model: LLM2Comp, folder: str | os.PathLike) -> dict[str, Any]:
    """Write the model part of an export into ``folder``: ``backbone/`` (adapters merged), memory tokens,
    tokenizer and ``llm2comp_config.json`` (base_model ``"backbone"``). Returns the config written.

    An attached LoRA adapter is merged into ``model`` first (in place). Used by the export and by the
    sentence-transformers module's ``save`` (``SentenceTransformer.save`` of a loaded export).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model.peft_model is not None:
        model.merge_and_unload()
    backbone = folder / BACKBONE_DIR
    model.hf_model.save_pretrained(backbone, safe_serialization=True)
    model.tokenizer.save_pretrained(backbone)  # backbone/ on its own is a complete HF model directory
    model.tokenizer.save_pretrained(folder)
    save_file({"weight": model.memory.weight.detach().float().cpu().contiguous()}, folder / MEMORY_NAME)
    save_normalizer(model, folder)
    origin = dict(getattr(model, "exported_from", None) or {"base_model": model.config.base_model})
    config = dataclasses.replace(model.config, base_model=BACKBONE_DIR, adapters=[], merged_adapters=0)
    payload = dataclasses.asdict(config) | {EXPORT_KEY: origin, "llm2comp_version": __version__}
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return payload


def module_source() -> str:
    """The sentence-transformers module file copied into every export."""
    return (resources.files("llm2comp") / "resources" / MODULE_FILE).read_text(encoding="utf-8")


def _is_export(path: Path) -> bool:
    try:
        data = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return EXPORT_KEY in data and not data.get("adapters")


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_target(out: Path, model_dir: Path | None, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if _is_nonempty_dir(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    if model_dir is not None and model_dir.exists():
        source, target = model_dir.resolve(), out.resolve()
        if source == target or target in source.parents:
            raise ValueError(f"refusing to export {model_dir} into {out}: the export would replace its own source")


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the fully written staging directory to ``out`` (renames only)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        try:
            os.rename(staging, out)
            return
        except OSError:
            if not _is_nonempty_dir(out):
                raise
    if not overwrite:  # created meanwhile by someone else
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    trash = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, trash)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(trash, out)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def export_sentence_transformers(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    scores: dict | None = None,
    *,
    overwrite: bool = False,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write a sentence-transformers folder for the model in ``model_dir`` (anything `LLM2Comp.from_pretrained`
    loads, normally a directory written by `LLM2Comp.save`). Returns ``out``.

    Args:
        scores: {task: score} shown in the model card; a ``results.json`` in ``model_dir`` or next to it
            (its parent directory) is read as well (explicit scores win).
        overwrite: replace an existing non-empty ``out``; without it such an ``out`` raises FileExistsError.
        dtype: store the backbone in this dtype (default: float32, on any machine; lower
            precision halves the size, but the embeddings then differ slightly from the original).

    The folder is staged next to ``out`` and renamed into place once complete.
    """
    out = Path(out).expanduser()
    local_dir = Path(str(model_dir)).expanduser()
    _check_target(out, local_dir, overwrite)
    # on the CPU in float32 whatever the machine (a GPU host would load bf16 on the GPU): the merge and the written
    # weights are exact, and float32 is what the folder documents unless `dtype` asks for less
    if _is_export(local_dir):  # re-export (e.g. new scores for the card): its base_model is relative
        model = load_exported(local_dir, device="cpu", dtype=torch.float32)
    else:
        model = LLM2Comp.from_pretrained(str(model_dir), device="cpu", dtype=torch.float32)
    model.merge_and_unload()
    if dtype is not None:
        model.hf_model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    table = collect_scores(local_dir if local_dir.is_dir() else None, scores)

    staging = staging_dir(out)
    try:
        config = write_bundle(model, staging)
        (staging / MODULE_FILE).write_text(module_source(), encoding="utf-8")
        modules = [{"idx": 0, "name": "0", "path": "", "type": f"{Path(MODULE_FILE).stem}.{MODULE_CLASS}"}]
        (staging / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
        (staging / "config_sentence_transformers.json").write_text(
            json.dumps(sentence_transformers_config(model), indent=2), encoding="utf-8"
        )
        card = model_card(config, dimension=model.get_sentence_embedding_dimension(), scores=table, name=out.name)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def sentence_transformers_config(model: LLM2Comp) -> dict[str, Any]:
    """``config_sentence_transformers.json`` of an export: the model's prompts and default prompt, cosine similarity,
    version requirements. ``query`` and ``document`` are always there (empty unless the model has them; a model with
    only a ``passage`` or ``corpus`` prompt gets it as ``document``), as sentence-transformers 6 saves them, so that its
    ``encode_query`` / ``encode_document`` choose what `LLM2Comp.encode_query` / `encode_document` choose."""
    import sentence_transformers
    import transformers

    from .prompts import DOCUMENT_PROMPTS

    prompts = dict(model.prompts)
    prompts.setdefault("query", "")
    prompts.setdefault("document", next((prompts[n] for n in DOCUMENT_PROMPTS if n in prompts), ""))
    return {
        "model_type": "SentenceTransformer",
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
            "llm2comp": __version__,
        },
        "prompts": prompts,
        "default_prompt_name": model.default_prompt_name,
        "similarity_fn_name": "cosine",
        "requirements": {
            "transformers": {"specifier": ">=5.0", "reason": "the module switches attention through transformers 5's masking"},
            "sentence-transformers": {"specifier": ">=5.0", "reason": "the module takes prompts in preprocess"},
        },
    }
