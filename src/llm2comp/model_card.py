"""The model card (README.md) of an export: what the model is, how it was trained, its scores, how to use it.

Scores come from the training run's ``results.json`` (as `llm2comp evaluate --output` writes it) or are given; the card
gives the command that measures them again on the exported folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .backbone import hub_id_of
from .persistence import EXPORT_KEY
from .pooling import get_pooling
from .version import __version__

RESULTS_NAME = "results.json"
FULL_RESULTS_NAME = "results_full.json"  # its settings (limit, seed) make the card's evaluation command


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
    """Rows of scores for the card ({label: {task: score}}) and where they came from (with the run's --limit/--seed)."""
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
                    settings = _settings(candidate.parent / FULL_RESULTS_NAME)
                    if settings:
                        source += " (" + ", ".join(f"{k} {v}" for k, v in settings.items()) + ")"
                    break
    if scores:
        given = _flat_scores(scores)
        if given is None:
            raise ValueError("scores must be a dict {task: score}")
        rows["this model"] = {**rows.get("this model", {}), **given}
        rows = {"this model": rows.pop("this model"), **rows}
    return rows, source


def _settings(path: Path) -> dict[str, Any]:
    """The evaluation settings that change scores (subsample size and seed) of a ``results_full.json``."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: settings[k] for k in ("limit", "seed") if settings.get(k) is not None and not isinstance(settings[k], dict)}


def evaluation_command(tasks: list[str], name: str, source: str | None) -> str:
    """The `llm2comp evaluate` command that scores the exported folder on ``tasks`` (with the run's --limit/--seed)."""
    options = dict(re.findall(r"(limit|seed) (\d+)", source or ""))
    extra = "".join(f" --{key} {value}" for key, value in options.items())
    return f"llm2comp evaluate --model path/to/{name} --tasks {','.join(tasks)}{extra} --output eval-{name}"


def _training_data_lines(config: dict[str, Any]) -> list[str]:
    """What the training data was, in mteb's names, and the licences mteb records for those that are mteb tasks."""
    from .metadata import training_datasets

    names = sorted(training_datasets(config))
    if not names:
        return []
    licences = {}
    try:
        import mteb

        for name in names:
            try:
                licences[name] = mteb.get_task(name).metadata.license
            except Exception:  # not an mteb task (SNLI, MNLI): no licence on record here
                licences[name] = None
    except ImportError:
        pass
    lines = ["", "Training data, in mteb's names (in-domain for these tasks; mteb's `training_datasets`):", "",
             "| dataset | licence (as mteb records it) |", "|---|---|"]
    lines += [f"| {name} | {_cell(licences.get(name)) if licences.get(name) else 'see the dataset'} |" for name in names]
    if any(stage.get("decontamination") for stage in config.get("stages") or []):
        lines += ["", "Training records sharing a text with an evaluation split were left out (decontamination)."]
    return lines


def _prompt_lines(config: dict[str, Any]) -> list[str]:
    prompts = config.get("prompts") or {}
    if not prompts:
        return []
    lines = ["", "## Prompts", "",
             "The model carries the prompts it was trained with (`config_sentence_transformers.json`); `encode_query` uses "
             '`"query"`. A prompt with `{text}` is a template: the text goes there (the query format of training, '
             '`"{instruction}: {text}\\n"`, ends after the text).', "", "| name | prompt |", "|---|---|"]
    lines += [f"| {_cell(name)} | `{_cell(json.dumps(text)[1:-1])}` |" for name, text in prompts.items()]
    if config.get("default_prompt_name"):
        lines += ["", f"`encode` applies `{config['default_prompt_name']}` unless given another prompt."]
    return lines


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
    lines += _training_data_lines(config)
    lines += _prompt_lines(config)
    if rows:
        lines += ["", "## Evaluation", ""]
        if source:
            lines += [f"Scores from {source}.", ""]
        lines += _score_table(rows)
        tasks = list(dict.fromkeys(task for row in rows.values() for task in row))
        lines += ["", "Measure them again on this folder (llm2comp installed, the mteb data offline or from the Hub):", "",
                  "```bash", evaluation_command(tasks, name, source), "```"]
    queries = bool((config.get("prompts") or {}).get("query"))
    lines += [
        "",
        "## Usage",
        "",
        "The folder loads with sentence-transformers alone: its module (`modeling_llm2comp.py`) needs torch, "
        "transformers (>= 5) and sentence-transformers, not llm2comp.",
        "",
        "```bash",
        "pip install sentence-transformers",
        "```",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("path/to/{name}", trust_remote_code=True)  # or its Hub id',
        'embeddings = model.encode(["The weather is lovely today.", "It is sunny outside."], normalize_embeddings=True)',
        "print(model.similarity(embeddings, embeddings))",
        "",
        "# retrieval: queries " + ("with the query prompt the model was trained with" if queries else "and documents alike (no prompts)"),
        'query = model.encode_query("How is the weather?")',
        'documents = model.encode_document(["It is sunny outside.", "Stocks rose sharply."])',
        "print(model.similarity(query, documents))",
        "```",
        "",
        "With llm2comp (its inference backends, `llm2comp serve`, evaluation):",
        "",
        "```python",
        "from llm2comp.export import load_exported",
        "",
        f'model = load_exported("path/to/{name}")  # an llm2comp.LLM2Comp, same embeddings, same prompts',
        'embeddings = model.encode_query(["How is the weather?"], normalize_embeddings=True)',
        "```",
        "",
        "## Files",
        "",
        "- `backbone/`: the LLM with all LoRA adapters merged, a plain Hugging Face model (safetensors) with its tokenizer",
        "- `memory_tokens.safetensors`: the learned memory-token embeddings, shape (k, hidden size)",
        *(["- `normalizer.safetensors`: the standardisation of the embedding fitted on training text"] if config.get("normalizer") else []),
        "- `llm2comp_config.json`: llm2comp settings (memory tokens, max length, pooling, attention, training stages, prompts)",
        "- `modeling_llm2comp.py`, `modules.json`, `config_sentence_transformers.json`: the sentence-transformers module "
        "(self-contained) and its settings (prompts, cosine similarity)",
        "",
        "## License",
        "",
        f"These weights are derived from {base_text}{' (fine-tuned)' if stages else ''}: the license and terms of use "
        "of that base model apply to this model. The terms of its training data (above) may restrict use further "
        "(e.g. a non-commercial licence). llm2comp itself, and `modeling_llm2comp.py`, are Apache-2.0.",
        "",
    ]
    return "\n".join(lines)
