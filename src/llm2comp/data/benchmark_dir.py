"""Where the offline benchmark data lives (layout of ``../shared/data``: ``mteb/<Task>/...``).

One resolution order for evaluation and for the training pairs built from its train splits: an explicit
folder, else ``$LLM2COMP_DATA_DIR``, else ``../shared/data`` next to the working directory, else none.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_DIR = "LLM2COMP_DATA_DIR"


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
