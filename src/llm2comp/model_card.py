"""The model card (README.md) of an export: what the model is, how it was trained, its scores, how to use it.

Scores come from the training run's ``results.json`` (as `llm2comp evaluate --output` writes it) or are given.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .backbone import hub_id_of
from .pooling import get_pooling
from .version import __version__

RESULTS_NAME = "results.json"
EXPORT_KEY = "exported_from"  # extra key of the exported llm2comp_config.json (ignored by LLM2CompConfig)


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
    name = hub_id_of(base_model)
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
        *([f"| Matryoshka dimensions | {', '.join(str(d) for d in config['matryoshka_dims'])} ("
           + ("the normalizer turns the embedding onto principal axes of training text, largest first"
              if (config.get("normalizer") or {}).get("rotation") else "trained to be cut to")
           + f"; `SentenceTransformer(..., truncate_dim={config['matryoshka_dims'][-1]})`) |"] if config.get("matryoshka_dims") else []),
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
