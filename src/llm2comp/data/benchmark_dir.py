"""Where the offline benchmark data lives (layout of ``../shared/data``: ``mteb/<Task>/...``).

One resolution order for evaluation and for the training pairs built from its train splits: an explicit
folder, else ``$LLM2COMP_DATA_DIR``, else ``../shared/data`` next to the working directory, else none. Also the
names of the built-in pair sets read from such a folder (``NAME[:DIR]``), which decontamination reads a folder from.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

ENV_DATA_DIR = "LLM2COMP_DATA_DIR"

# the built-in pair sets read from a benchmark folder's train splits (`builtin_pairs.py`), named NAME or NAME:DIR
SHARED_PAIRS = "builtin:shared-pairs"
STSB_SCORES = "builtin:stsb-scores"
NLI_PAIRS = "builtin:nli-pairs"
MSRP_PAIRS = "builtin:msrp-pairs"
FOLDER_SOURCES = (SHARED_PAIRS, STSB_SCORES, NLI_PAIRS, MSRP_PAIRS)


def split_folder_source(source: str) -> tuple[str, str | None] | None:
    """(name, folder or None) of a built-in pair set read from a benchmark folder (``NAME[:DIR]``); None otherwise."""
    for name in FOLDER_SOURCES:
        if source == name or source.startswith(name + ":"):
            return name, source[len(name) + 1 :] or None
    return None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder, or None (mteb then loads from the Hub).

    An explicit `data_dir` (or ``$LLM2COMP_DATA_DIR``) that does not exist raises FileNotFoundError: a typo must
    not silently fall back to the network.
    """
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data dir {path} does not exist")
        return path.resolve()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${ENV_DATA_DIR}={env} does not exist")
        return path.resolve()
    default = Path.cwd().parent / "shared" / "data"
    if default.is_dir():
        return default.resolve()
    return None


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels file (``query-id``, ``corpus-id``, ``score``, tab-separated, header optional): query -> doc -> score."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for index, row in enumerate(reader):
            if not row or (index == 0 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise ValueError(f"{path}: line {index + 1} has {len(row)} columns, expected query-id, corpus-id, score")
            qrels.setdefault(str(row[0]), {})[str(row[1])] = int(float(row[2]))
    return qrels
