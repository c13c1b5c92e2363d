"""Writes that a kill never leaves half done: a file or a folder is written next to its target and renamed
into place (a rename within one filesystem is atomic)."""

from __future__ import annotations

import errno
import json
import os
import shutil
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


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike, complete: str) -> bool:
    """Rename a fully written ``staging`` folder to ``target``, never removing another process's work: where
    ``target`` already holds ``complete`` (another process published the same content first), ours is dropped and
    theirs kept; a ``target`` without it (left by a crash of an older version) is moved aside first. True when
    ours was published."""
    staging, target = Path(staging), Path(target)
    for _ in range(2):
        try:
            os.rename(staging, target)  # a folder onto a non-empty folder fails: no one's export is replaced
            return True
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if (target / complete).is_file():
            shutil.rmtree(staging, ignore_errors=True)
            return False
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        try:
            os.replace(target, aside / target.name)
        except FileNotFoundError:  # someone else moved it aside first
            pass
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not publish {staging} as {target}")
