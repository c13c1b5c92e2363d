"""Checkpoints of a training run: complete only once their marker is written (a kill mid-save leaves none that
counts), the newest complete one found and half-written ones removed, the trainable weights loaded back for a resume
(FSDP shards included), and the model saved at its encoding length rather than the training length."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..model import LLM2Comp
from ..persistence import BRIDGE_NAME, CONFIG_NAME, MEMORY_NAME
from ..runtime import is_main_process

COMPLETE_MARKER = "checkpoint-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def set_training_length(encoder: LLM2Comp, length: int) -> None:
    """Bound the training inputs at ``length`` tokens; the model keeps its own encoding length (default 512) for
    every save and for after training (`encoding_length`, `end_training_length`)."""
    encoder.encode_max_length, encoder.config.max_length = encoder.config.max_length, length


@contextlib.contextmanager
def encoding_length(encoder: LLM2Comp):
    """Inside: the encoder with its encoding length, as a checkpoint or the final model is saved."""
    training_length = encoder.config.max_length
    encoder.config.max_length = getattr(encoder, "encode_max_length", training_length)
    try:
        yield encoder
    finally:
        encoder.config.max_length = training_length


def end_training_length(encoder: LLM2Comp) -> None:
    encoder.config.max_length = getattr(encoder, "encode_max_length", encoder.config.max_length)


def resumed_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint was saved at (0 for none: a fresh start)."""
    if checkpoint is None:
        return 0
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint directories with a completion marker, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def last_complete_checkpoint(folder: str | Path, remove_partial: bool | None = None) -> Path | None:
    """The newest checkpoint that was completely written; half-written ones (a kill mid-save) are removed, by the
    main process only (default: when this is the main process; other ranks of a run on a shared filesystem only
    read; without a shared filesystem each node's checkpoints are its own, as the Trainer writes them). Not
    transformers' `get_last_checkpoint`: it returns the highest-numbered folder, also one a kill left half-written."""
    folder = Path(folder)
    complete = complete_checkpoints(folder)
    if remove_partial is None:
        remove_partial = is_main_process()
    if remove_partial and folder.is_dir():
        for path in folder.iterdir():
            if _CHECKPOINT.match(path.name) and path not in complete:
                shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


def _like(target, full: torch.Tensor):
    """``full`` as ``target`` holds it: sharded the same way where ``target`` is an FSDP2 DTensor shard (every rank
    passes the same full tensor), else as is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        return distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements)
    return full


def load_training_state(encoder: LLM2Comp, checkpoint: str | Path) -> None:
    """Load the trainable weights (active adapter, memory tokens) of a checkpoint into ``encoder``. Under FSDP (the
    Trainer loads after wrapping) the parameters are shards: the full tensors of the checkpoint are sharded like them."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint / CONFIG_NAME).read_text())
    with torch.no_grad():
        encoder.memory.weight.copy_(_like(encoder.memory.weight, load_file(checkpoint / MEMORY_NAME)["weight"]))
        if encoder.memory_bridge is not None and (checkpoint / BRIDGE_NAME).is_file():
            bridge = encoder.memory_bridge.state_dict()
            encoder.memory_bridge.load_state_dict({k: _like(bridge[k], v) for k, v in load_file(checkpoint / BRIDGE_NAME).items()})
    if encoder.peft_model is not None and config["adapters"]:
        state = load_file(checkpoint / config["adapters"][-1] / "adapter_model.safetensors")
        live = get_peft_model_state_dict(encoder.peft_model, save_embedding_layers=False)  # same keys, live tensors
        state = {k: _like(live[k], v) if k in live else v for k, v in state.items()}
        result = set_peft_model_state_dict(encoder.peft_model, state)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint {checkpoint} does not match the model: unexpected {result.unexpected_keys[:3]}")
