"""One place that knows every training objective: its name, its stage, what it needs from the encoder, and how to
build it and its data. Config validation, the CLI's choices and the training run read this registry.

Adding an objective: write its class (``collate(examples) -> batch``, ``__call__(model, batch) -> {"loss": ...}``)
next to its kin (``pretext.py`` or ``contrastive.py``) and register an `ObjectiveSpec` there; plus its test.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

# modules whose import registers objectives
_MODULES = ("llm2comp.objectives.pretext", "llm2comp.objectives.contrastive")
_REGISTRY: dict[tuple[str, str], ObjectiveSpec] = {}


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """What the trainer needs to know about an objective.

    name: ``--objective`` value (pretrain stage) or the stage's own name (contrastive stages).
    stage: ``pretrain``, ``simcse`` or ``supervised``.
    pooling: the pooling the objective trains (``"memory"``, ``"mean"``); None: the configured/loaded one.
    bidirectional: attention the objective requires (True for MNTP); None: the configured/loaded one.
    build: ``(ObjectiveSettings, model) -> objective``.
    dataset: ``(data.settings.DataSettings, model) -> torch Dataset`` of examples for the objective's ``collate``.
    compresses: the frozen decoder reads the memory it trains (kl, nll, rc): the model compresses, and the stage-1
    levers (memory bridge, contrast, probe) apply.
    defaults: TrainConfig settings of the recipe that differ for this stage (under whatever the user sets).
    """

    name: str
    stage: str
    build: Callable[[Any, Any], Any]
    dataset: Callable[[Any, Any], Any]
    pooling: str | None = None
    bidirectional: bool | None = None
    compresses: bool = False
    defaults: dict = dataclasses.field(default_factory=dict, hash=False)  # TrainConfig recipe defaults of the stage


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """The training settings that objectives are built with (`TrainConfig.objective_settings` makes them)."""

    seed: int
    loss_budget: int  # logits elements per chunk of the LM-head losses (loss_chunk_elements)
    split_margin: int  # compression: the prefix/continuation split keeps this many tokens on each side
    contrast_weight: float  # compression: the own-vs-other memory contrast
    temperature: float  # contrastive: InfoNCE
    cosent_scale: float  # supervised: graded pairs
    gradcache_chunk: int | None  # contrastive: GradCache chunk size (None: off)
    matryoshka_dims: tuple[int, ...]  # contrastive: nested sizes trained too


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    key = (spec.stage, spec.name)
    if key in _REGISTRY and _REGISTRY[key] != spec:
        raise ValueError(f"objective {spec.name!r} of stage {spec.stage!r} is registered twice")
    _REGISTRY[key] = spec
    return spec


def _load() -> dict[tuple[str, str], ObjectiveSpec]:
    for module in _MODULES:
        importlib.import_module(module)
    return _REGISTRY


def stages() -> tuple[str, ...]:
    order = ("pretrain", "simcse", "supervised")
    found = {stage for stage, _ in _load()}
    return tuple(sorted(found, key=lambda s: (order.index(s) if s in order else len(order), s)))


def pretext_objectives() -> tuple[str, ...]:
    return tuple(name for stage, name in _load() if stage == "pretrain")


def compression_objectives() -> tuple[str, ...]:
    """The pretrain objectives whose memory the frozen decoder reads."""
    return tuple(name for (stage, name), spec in _load().items() if stage == "pretrain" and spec.compresses)


def objective_spec(stage: str, objective: str | None = None) -> ObjectiveSpec:
    """The spec of a stage's objective (``objective`` matters for the pretrain stage only)."""
    registry = _load()
    if stage not in stages():
        raise ValueError(f"unknown stage '{stage}'; choose one of {', '.join(stages())}")
    name = objective if stage == "pretrain" else stage
    if (stage, name) not in registry:
        raise ValueError(f"unknown pretrain objective '{objective}'; choose one of {', '.join(pretext_objectives())}")
    return registry[(stage, name)]


def stage_defaults() -> dict[str, dict]:
    """{stage: recipe defaults that differ from TrainConfig's} (the same for every objective of a stage)."""
    return {stage: spec.defaults for (stage, _), spec in _load().items()}
