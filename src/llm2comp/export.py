"""Export a trained LLM2Comp model as a self-contained sentence-transformers folder.

``export_sentence_transformers(DIR, OUT)`` writes::

    OUT/
      README.md                          model card: base model, memory tokens, pooling, stages, scores, usage
      modules.json                       one module: modeling_llm2comp.LLM2CompEncoder, saved in the root
      config_sentence_transformers.json  similarity cosine, the llm2comp requirement
      modeling_llm2comp.py               the sentence-transformers module (a copy of src/llm2comp/resources/...)
      llm2comp_config.json               the LLM2Comp config; base_model = "backbone", no adapters
      memory_tokens.safetensors          the k memory-token embeddings
      tokenizer.json, tokenizer_config.json, ...
      backbone/                          the LLM with every LoRA adapter merged: a plain HF model (safetensors)
        config.json, model.safetensors, generation_config.json, tokenizer files

Nothing in it refers to the original base model or to DIR: the folder can be moved, copied or uploaded.
``SentenceTransformer(OUT, trust_remote_code=True)`` loads it (the module imports the installed ``llm2comp``);
``load_exported(OUT)`` gives the `LLM2Comp` object. Both embed exactly like ``LLM2Comp.from_pretrained(DIR)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .atomic import staging_dir
from .model import LLM2Comp
from .persistence import CONFIG_NAME, MEMORY_NAME, save_normalizer
from .pooling import get_pooling
from .version import __version__

BACKBONE_DIR = "backbone"
MODULE_FILE = "modeling_llm2comp.py"
MODULE_CLASS = "LLM2CompEncoder"
RESULTS_NAME = "results.json"
EXPORT_KEY = "exported_from"  # extra key of the exported llm2comp_config.json (ignored by LLM2CompConfig)

# Hub ids of the backbones behind the built-in aliases (for the model card's `base_model`).
ALIAS_HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}



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
        dtype: store the backbone in this dtype (default: float32, as the model is loaded on CPU; lower
            precision halves the size, but the embeddings then differ slightly from the original).

    The folder is staged next to ``out`` and renamed into place once complete.
    """
    out = Path(out).expanduser()
    local_dir = Path(str(model_dir)).expanduser()
    _check_target(out, local_dir, overwrite)
    if _is_export(local_dir):  # re-export (e.g. new scores for the card): its base_model is relative
        model = load_exported(local_dir)
    else:
        model = LLM2Comp.from_pretrained(str(model_dir))
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
            json.dumps(_sentence_transformers_config(), indent=2), encoding="utf-8"
        )
        card = model_card(config, dimension=model.get_sentence_embedding_dimension(), scores=table, name=out.name)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _sentence_transformers_config() -> dict[str, Any]:
    import sentence_transformers
    import transformers

    return {
        "model_type": "SentenceTransformer",
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
            "llm2comp": __version__,
        },
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "requirements": {
            "llm2comp": {"specifier": f">={__version__}", "reason": "the model's module (modeling_llm2comp.py) runs on llm2comp."}
        },
    }


# ---------------------------------------------------------------------------------------------- scores
def _flat_scores(data: Any) -> dict[str, float | None] | None:
    if not isinstance(data, dict) or not data:
        return None
    if all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()):
        return {str(k): (None if v is None else float(v)) for k, v in data.items()}
    return None


def _score_rows(data: Any) -> dict[str, dict[str, float | None]]:
    """Normalise a results.json payload: {task: score}, {"scores": ...} or {label: {task: score}}."""
    if isinstance(data, dict) and "scores" in data:
        data = data["scores"]
    flat = _flat_scores(data)
    if flat is not None:
        return {"this model": flat}
    rows = {}
    if isinstance(data, dict):
        for label, value in data.items():
            flat = _flat_scores(value)
            if flat is not None:
                rows[str(label)] = flat
    return rows


def collect_scores(model_dir: Path | None, scores: dict | None) -> tuple[dict[str, dict[str, float | None]], str | None]:
    """Rows of scores for the card ({label: {task: score}}) and where they came from."""
    rows: dict[str, dict[str, float | None]] = {}
    source = None
    if model_dir is not None:
        for candidate in (model_dir / RESULTS_NAME, model_dir.parent / RESULTS_NAME):
            if candidate.is_file():
                try:
                    rows = _score_rows(json.loads(candidate.read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    rows = {}
                if rows:
                    source = f"`{candidate.relative_to(model_dir.parent)}` of the training run"
                    break
    if scores:
        given = _flat_scores(scores)
        if given is None:
            raise ValueError("scores must be a dict {task: score}")
        rows["this model"] = {**rows.get("this model", {}), **given}
        rows = {"this model": rows.pop("this model"), **rows}
    return rows, source


# ---------------------------------------------------------------------------------------------- model card
def _hub_id(base_model: str) -> str | None:
    name = ALIAS_HUB_IDS.get(base_model, base_model)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not Path(name).expanduser().exists():
        return name
    return None


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _stage_rows(stages: list[dict]) -> list[str]:
    lines = ["| # | stage | objective | data | samples | steps | batch size |", "|---|---|---|---|---|---|---|"]
    for index, stage in enumerate(stages, 1):
        steps = stage.get("steps", stage.get("max_steps"))
        cells = [stage.get("stage"), stage.get("objective"), stage.get("data"), stage.get("samples"), steps, stage.get("batch_size")]
        lines.append(f"| {index} | " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _score_table(rows: dict[str, dict[str, float | None]]) -> list[str]:
    tasks = list(dict.fromkeys(task for row in rows.values() for task in row))
    if list(rows) == ["this model"]:
        lines = ["| task | score |", "|---|---|"]
        lines += [f"| {_cell(task)} | {_cell(rows['this model'][task])} |" for task in tasks]
        return lines
    labels = list(rows)
    lines = ["| task | " + " | ".join(_cell(label) for label in labels) + " |", "|---|" + "---|" * len(labels)]
    for task in tasks:
        lines.append(f"| {_cell(task)} | " + " | ".join(_cell(rows[label].get(task)) for label in labels) + " |")
    return lines


def model_card(config: dict[str, Any], dimension: int, scores=({}, None), name: str = "llm2comp-model") -> str:
    """The README.md of an export, from the exported llm2comp config."""
    rows, source = scores if isinstance(scores, tuple) else (scores or {}, None)
    base = (config.get(EXPORT_KEY) or {}).get("base_model") or "unknown"
    hub_id = _hub_id(base)
    k, pooling = config["num_memory_tokens"], config["pooling"]
    stages = config.get("stages") or []
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    front += [f"- {tag}" for tag in ("sentence-transformers", "feature-extraction", "sentence-similarity", "llm2comp")]
    if hub_id:
        front.append(f"base_model: {hub_id}")
    front.append("---")

    described = get_pooling(pooling).description.format(k=k)
    base_text = f"[{base}](https://huggingface.co/{hub_id})" if hub_id and hub_id == base else f"`{base}`"
    if hub_id and hub_id != base:
        base_text += f" ([{hub_id}](https://huggingface.co/{hub_id}))"
    lines = front + [
        "",
        f"# {name}",
        "",
        f"A text-embedding model made from the decoder-only LLM {base_text} with "
        "llm2comp (LLM2Comp: context-compression pre-training through "
        "memory tokens, then contrastive learning). It maps a text to one "
        f"{dimension}-dimensional vector; compare vectors with cosine similarity.",
        "",
        "## Model details",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base_text} |",
        f"| memory tokens | {k if pooling == 'memory' else f'{k} (unused by this pooling)'} |",
        f"| pooling | {pooling}: {described} |",
        f"| attention | {'bidirectional' if config.get('bidirectional') else 'causal'} |",
        f"| max sequence length | {config['max_length']} tokens"
        + (f" (the text is truncated to {config['max_length'] - k}, then the {k} memory tokens follow)" if pooling == "memory" else "")
        + " |",
        f"| embedding dimension | {dimension} |",
        *([f"| Matryoshka dimensions | {', '.join(str(d) for d in config['matryoshka_dims'])} (trained to be cut to; "
           f"`SentenceTransformer(..., truncate_dim={config['matryoshka_dims'][-1]})`) |"] if config.get("matryoshka_dims") else []),
        "| similarity | cosine |",
        f"| llm2comp version | {__version__} |",
        "",
        "## Training",
        "",
    ]
    if stages:
        lines += [f"{len(stages)} training stage{'s' if len(stages) != 1 else ''}, in order (each trains a LoRA adapter, "
                  "merged into the weights before the next stage and in this export):", ""]
        lines += _stage_rows(stages)
    else:
        lines.append("No training stage is recorded: this is the base model with llm2comp pooling (zero-shot).")
    if rows:
        lines += ["", "## Evaluation", ""]
        if source:
            lines += [f"Scores from {source}.", ""]
        lines += _score_table(rows)
    lines += [
        "",
        "## Usage",
        "",
        "The model runs custom code (`modeling_llm2comp.py` in this folder) that needs the llm2comp package "
        f"(exported with llm2comp {config.get('llm2comp_version', __version__)}). llm2comp is not on PyPI: install it "
        "from its source tree, then sentence-transformers:",
        "",
        "```bash",
        "pip install /path/to/llm2comp-source   # a clone or unpacked source archive of llm2comp",
        "pip install sentence-transformers",
        "```",
        "",
        "With sentence-transformers:",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("path/to/{name}", trust_remote_code=True)',
        'embeddings = model.encode(["The weather is lovely today.", "It is sunny outside."], normalize_embeddings=True)',
        "print(model.similarity(embeddings, embeddings))",
        "```",
        "",
        "With llm2comp:",
        "",
        "```python",
        "from llm2comp.export import load_exported",
        "",
        f'model = load_exported("path/to/{name}")  # an llm2comp.LLM2Comp',
        'embeddings = model.encode(["The weather is lovely today.", "It is sunny outside."], normalize_embeddings=True)',
        "```",
        "",
        "## Files",
        "",
        "- `backbone/`: the LLM with all LoRA adapters merged, a plain Hugging Face model (safetensors) with its tokenizer",
        "- `memory_tokens.safetensors`: the learned memory-token embeddings, shape (k, hidden size)",
        "- `llm2comp_config.json`: llm2comp settings (memory tokens, max length, pooling, attention, training stages)",
        "- `modeling_llm2comp.py`, `modules.json`, `config_sentence_transformers.json`: the sentence-transformers wrapper",
        "",
        "## License",
        "",
        f"These weights are derived from {base_text}{' (fine-tuned)' if stages else ''}: the license and terms of use "
        "of that base model apply to this model. llm2comp itself is Apache-2.0.",
        "",
    ]
    return "\n".join(lines)
