"""Writes that a kill never leaves half done: a file or a folder is written next to its target and renamed
into place (a rename within one filesystem is atomic)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent))


def staging_dir(target: str | os.PathLike) -> Path:
    """An empty folder next to `target` to write into before renaming it into place, with the permissions a
    plain mkdir would give (mkdtemp's are owner-only: a published model must be readable like any folder)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging
