"""Where the pairs of a supervised stage come from, read into one record format (query, positive, optional negative,
instruction, source, score): ``.jsonl`` files, E5-layout folders, the built-in pair sets (`builtin_pairs.py`), and
several of them joined with ``+``. The formats are described in `pairs.py`, which batches what is read here."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .benchmark_dir import split_folder_source
from .builtin_pairs import FOLDER_BUILDERS, NEWS_PAIRS, news_pairs
from .corpus import DataError, iter_jsonl
from .decontamination import Decontaminator
from .instructions import INSTRUCTIONS, instruction_for

logger = logging.getLogger(__name__)


def _pair(record: dict, where: str, source: str | None, row: int) -> dict:
    for name in ("query", "positive"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise DataError(f"{where}: a non-empty '{name}' field is required")
    negative = record.get("negative")
    if isinstance(negative, list):  # several hard negatives: the first one
        negative = negative[0] if negative else None
    source = record.get("source") or source
    instruction = record["instruction"] if record.get("instruction") is not None else instruction_for(source, row)
    pair = {"query": record["query"], "positive": record["positive"], "instruction": str(instruction), "source": source or "default"}
    if isinstance(negative, str) and negative.strip():
        pair["negative"] = negative
    for name in ("key", "negative_key"):
        if record.get(name) not in (None, ""):
            pair[name] = str(record[name])
    if record.get("score") is not None:
        score = record["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DataError(f"{where}: 'score' must be a finite number, got {score!r}")
        pair["score"] = float(score)
    return pair


def load_pair_jsonl(path: str | Path, source: str | None = None) -> list[dict]:
    """(query, positive[, negative]) records of a JSON Lines file; ``source`` names the file's source when the
    records carry none."""
    path = Path(path)
    pairs = []
    for where, record in iter_jsonl(path):
        pairs.append(_pair(record, where, source, len(pairs)))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def load_e5_dir(path: str | Path) -> list[dict]:
    """The E5 public-data layout: one ``<source>.jsonl`` per source (query, positive, negative)."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise DataError(f"{path}: no <source>.jsonl files (E5 layout: one file per source with query/positive/negative)")
    pairs = []
    for file in files:
        if file.stem not in INSTRUCTIONS and not instruction_for(file.stem):
            logger.warning("%s: unknown source '%s', its queries get no instruction", file, file.stem)
        pairs.extend(load_pair_jsonl(file, source=file.stem))
    return pairs


def load_pairs(source: str, seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """Pairs from a ``.jsonl`` file, an E5-layout directory, or ``builtin:shared-pairs[:DATA_DIR]`` (without a
    folder: the benchmark data directory that evaluation uses); with ``clean``, no record with an evaluation text."""
    if "+" in source and not Path(source).expanduser().exists():
        return [pair for part in source.split("+") for pair in load_pairs(part, seed=seed, clean=clean)]
    builtin = split_folder_source(source)
    if builtin is not None:
        name, folder = builtin
        return FOLDER_BUILDERS[name](folder, seed=seed, clean=clean)
    if source == NEWS_PAIRS:
        return news_pairs(seed=seed, clean=clean)
    path = Path(source).expanduser()
    if path.is_dir():
        pairs = load_e5_dir(path)
    elif path.is_file() and path.suffix == ".jsonl":
        pairs = load_pair_jsonl(path)
    else:
        pairs = None
    if pairs is not None:
        pairs = clean.clean_pairs(pairs) if clean is not None else pairs
        if not pairs:
            raise DataError(f"{source}: every pair shares a text with an evaluation split of {clean.folder} (decontaminate: off keeps them)")
        return pairs
    if not path.exists():
        raise DataError(f"pair data not found: {source} (a .jsonl file, an E5-layout directory, or one of "
                        f"{', '.join(sorted([*FOLDER_BUILDERS, NEWS_PAIRS]))})")
    raise DataError(f"unsupported pair data {source}: use a .jsonl file with query/positive[/negative] or an E5-layout directory")


def is_pair_source(source: str) -> bool:
    """Whether a data source holds (query, positive) pairs rather than sentences."""
    if "+" in source and not Path(source).expanduser().exists():
        return all(is_pair_source(part) for part in source.split("+"))
    if source == NEWS_PAIRS or split_folder_source(source) is not None:
        return True
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if path.is_file() and path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    try:
                        return "query" in json.loads(line)
                    except json.JSONDecodeError:
                        return False
    return False
