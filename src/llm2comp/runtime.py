"""Where the code runs: the process group (data parallelism) and the installed offline packages."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch.distributed as dist


def is_distributed() -> bool:
    """A process group of more than one process is up (DDP, torchrun, accelerate)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes of the run: the live process group's size, else what the launcher announced."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (also before the process group is up: the launcher's RANK), the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (the offline data and model packages are
    installed with --no-deps and only read); None when it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
