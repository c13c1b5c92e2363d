"""Switch a decoder-only transformer between causal and bidirectional attention, per forward pass.

Architecture-agnostic: it relies only on transformers' masking utilities, which build a bidirectional mask
(padding still masked) whenever ``config.is_causal`` is False, and on the ``is_causal`` keyword that the
sdpa/flash attention integrations honour. No per-architecture model code is copied.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
from transformers import PretrainedConfig


def _configs(model: torch.nn.Module) -> list[PretrainedConfig]:
    cached = model.__dict__.get("_llm2comp_configs")
    if cached is None:
        cached = model.__dict__["_llm2comp_configs"] = _find_configs(model)
    return cached


def _find_configs(model: torch.nn.Module) -> list[PretrainedConfig]:
    seen: dict[int, PretrainedConfig] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            seen[id(config)] = config
            for sub_name in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, sub_name, None)
                if isinstance(sub, PretrainedConfig):
                    seen[id(sub)] = sub
    return list(seen.values())


_SWITCH_LOCK = threading.Lock()
# model -> [blocks open, the configs' is_causal before the first]: the switch is counted, so that overlapping blocks
# (threads encoding at once) keep the model bidirectional until the last one leaves, which restores the old state
_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def bidirectional(model: torch.nn.Module, enabled: bool = True) -> Iterator[dict]:
    """Within the block, forward passes of ``model`` attend bidirectionally.

    Yields the keyword arguments to pass to the model's forward (``is_causal=False``): they reach the
    attention functions, so that sdpa/flash never fall back to their causal kernels when no mask is
    materialised, also when gradient checkpointing recomputes a layer after the block has exited.

    Safe for overlapping blocks from several threads (counted: the first sets, the last restores). The switch is
    state on the model's configs, so a *causal* pass of the same model that runs while a bidirectional block is
    open in another thread would attend bidirectionally: training and the probe run their encoder and decoder
    passes in one thread.
    """
    if not enabled:
        yield {}
        return
    with _SWITCH_LOCK:
        state = _OPEN.get(model)
        if state is None:
            configs = _configs(model)
            state = _OPEN[model] = [0, [(c, c.__dict__.get("is_causal", _MISSING)) for c in configs]]
            for config in configs:
                config.is_causal = False
        state[0] += 1
    try:
        yield {"is_causal": False}
    finally:
        with _SWITCH_LOCK:
            state[0] -= 1
            if state[0] == 0:
                del _OPEN[model]
                for config, value in state[1]:
                    if value is _MISSING:
                        config.__dict__.pop("is_causal", None)
                    else:
                        config.is_causal = value


class _Missing:
    pass


_MISSING = _Missing()


def set_attention_dropout(model: torch.nn.Module, p: float) -> None:
    """Set attention-probability dropout on every attention module (used by SimCSE's dropout views)."""
    for module in model.modules():
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = float(p)
    for config in _configs(model):
        if hasattr(config, "attention_dropout"):
            config.attention_dropout = float(p)
