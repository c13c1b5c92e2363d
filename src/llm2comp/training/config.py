"""Training configuration: one dataclass, loadable from YAML, overridable from the command line."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import yaml

from ..data.settings import DataSettings
from ..names import DEFAULT_LORA_TARGETS
from ..objectives.registry import ObjectiveSettings, compression_objectives, objective_spec, stage_defaults


@dataclasses.dataclass
class TrainConfig:
    # what to train
    stage: str = "pretrain"
    objective: str = "kl"  # pretrain: kl | nll | rc | mntp
    model: str = "smollm2-135m"
    data: str = "builtin:news"
    output: str = "runs/pretrain-kl"
    # model
    num_memory_tokens: int = 8
    memory_init: str | None = None  # a fresh model's memory tokens: None = mean embedding; a phrase = its token embeddings
    max_length: int = 512
    dtype: str | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # data
    data_field: str = "text"
    min_chars: int = 0  # the paper's stage-1 filter is 1000 (configs/paper)
    truncate_long: bool = True  # texts over max_length are cut; false: dropped, as the paper does
    max_samples: int | None = None  # stage 1: a seeded random draw of this many texts (corpus order kept)
    split_margin: int = 10
    query_instructions: bool = True  # supervised: "{instruction}: {query}\n" on the query side; false: bare queries
    max_pairs_per_source: int | None = None  # supervised: cap each source (seeded draw), so one large source cannot dominate
    # contrastive stages: leave out training records that share a text with an evaluation split: "auto" (the
    # benchmark folder evaluation uses, when present), a folder to check against, or "off" (data/decontamination.py)
    decontaminate: str | None = "auto"
    # optimisation (recipe defaults, stage 1)
    max_steps: int = 1000
    batch_size: int = 4  # per device (one process); see global_batch_size
    # the batch of one optimizer step over all processes and accumulation steps; when set, batch_size is derived
    # (global / (world size x gradient_accumulation_steps)), so a config means the same at any world size
    global_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    max_grad_norm: float = 2.0
    bf16: str | bool = "auto"  # auto: on where the hardware supports it
    gradient_checkpointing: bool = False
    seed: int = 42
    # contrastive stages
    temperature: float = 0.05
    cosent_scale: float = 20.0  # supervised: graded pairs (a 'score' each) train with CoSENT at this scale
    attention_dropout: float = 0.2  # simcse dropout views
    gradcache_chunk: int | None = None  # supervised: encode in chunks of this size (GradCache)
    # contrastive stages: also train the first n dimensions of the embedding for each n here (Matryoshka), so that
    # `encode(truncate_dim=n)` loses little; e.g. [256, 128, 64]
    matryoshka_dims: list[int] | None = None
    pooling: str | None = None  # contrastive stages: train this pooling (mean, last, prompteol, memory); default as loaded
    # encoder attention; None: as loaded (a backbone's memory-pooling encoder is bidirectional, as in the recipe)
    bidirectional: bool | None = None
    # after training: fit per-dimension standardisation of the embeddings on up to this many of the stage's own
    # training texts (contrastive stages), saved with the model; 0 = none
    fit_normalizer: int = 0
    # with fit_normalizer: also rotate the standardised embedding onto the principal axes of those texts' embeddings
    # (full-size cosines unchanged; its first n dimensions then hold the most variance, for encode(truncate_dim=n))
    normalizer_pca: bool = False
    # with fit_normalizer: false = centre only (no per-dimension scaling), where validation says scaling costs
    normalizer_standardise: bool = True
    # with normalizer_pca: the sizes the rotated embedding declares it can be cut to (config.matryoshka_dims: serve's
    # `dimensions`, the model card), chosen by measuring the cuts (scripts/matryoshka_sizes.py), not trained; sizes
    # >= the embedding size (the recipe on a smaller backbone) are left out with a warning
    normalizer_dims: list[int] | None = None
    # stage 1 levers (docs/results/pretext.md 3.5): a bridge between memory states and the frozen decoder
    # (affine | linear; stage 1 only), and a learning rate of its own for the memory tokens and the bridge
    # (None: learning_rate)
    memory_bridge: str | None = None
    memory_lr: float | None = None
    contrast_weight: float = 0.0  # kl/nll/rc: + w * softplus(loss with own memory - loss with another example's)
    # compression probe during stage 1 (evaluation/compression.py): every probe_steps steps (0: off) on probe_passages
    # of the last probe_holdout paragraphs of the data, which training then leaves out (0: train on all)
    probe_steps: int = 0
    probe_passages: int = 64
    probe_text_tokens: int = 64
    probe_holdout: int = 512
    # reliability / logging
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 1
    resume: bool = False
    loss_chunk_elements: int = 1 << 24

    def __post_init__(self):
        spec = self.spec  # unknown stage or objective: ValueError naming the choices
        if self.pooling is not None:
            from ..pooling import check_pooling

            check_pooling(self.pooling)
            if self.stage == "pretrain":
                raise ValueError("pooling is a setting of the contrastive stages (pre-training trains the memory tokens)")
        if spec.bidirectional and self.bidirectional is False:
            raise ValueError(f"{spec.name} needs bidirectional attention; drop bidirectional: false")
        if self.fit_normalizer and self.stage == "pretrain":
            raise ValueError("fit_normalizer fits on a contrastive stage's texts; fit a pre-trained model with LLM2Comp.fit_normalizer")
        stage1_only = self.memory_bridge is not None or self.probe_steps or self.contrast_weight
        if stage1_only and not spec.compresses:
            raise ValueError("memory_bridge, contrast_weight and probe_steps are settings of compression pre-training "
                             f"(stage pretrain, {'/'.join(compression_objectives())})")
        if self.memory_bridge is not None:
            from ..memory import MemoryBridge

            if self.memory_bridge not in MemoryBridge.KINDS:
                raise ValueError(f"memory_bridge must be one of {', '.join(MemoryBridge.KINDS)}, got {self.memory_bridge!r}")
        if self.probe_steps < 0 or self.probe_holdout < 0:
            raise ValueError("probe_steps and probe_holdout must be >= 0")
        if self.matryoshka_dims:
            from ..objectives.contrastive import check_matryoshka_dims

            if self.stage == "pretrain":
                raise ValueError("matryoshka_dims is a setting of the contrastive stages")
            check_matryoshka_dims(self.matryoshka_dims)
        if self.cosent_scale <= 0:
            raise ValueError(f"cosent_scale must be > 0, got {self.cosent_scale}")
        if self.fit_normalizer < 0:
            raise ValueError(f"fit_normalizer must be >= 0, got {self.fit_normalizer}")
        if self.normalizer_pca and not self.fit_normalizer:
            raise ValueError("normalizer_pca rotates the fitted normalizer: set fit_normalizer too")
        if not self.normalizer_standardise and not self.fit_normalizer:
            raise ValueError("normalizer_standardise: false describes the fitted normalizer: set fit_normalizer too")
        if self.normalizer_dims:
            from ..objectives.contrastive import check_matryoshka_dims

            if not self.normalizer_pca:
                raise ValueError("normalizer_dims are cut sizes of the rotated normalizer: set normalizer_pca too")
            check_matryoshka_dims(self.normalizer_dims)
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
        for name in ("max_steps", "batch_size", "save_steps", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps >= self.max_steps:
            warnings.warn(
                f"warmup_steps ({self.warmup_steps}) >= max_steps ({self.max_steps}): the learning rate never reaches "
                f"{self.learning_rate:g}; lower warmup_steps for a short run", UserWarning, stacklevel=3,
            )

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Settings from a YAML recipe; ``base: other.yaml`` (a path relative to the recipe) starts from another recipe's
        settings, which this one's keys then override, so that a variant states only what it changes."""
        data = read_recipe(Path(path))
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        return cls(**{**stage_defaults().get(data.get("stage", "pretrain"), {}), **data})

    def per_device(self) -> TrainConfig:
        """This config with ``batch_size`` derived from ``global_batch_size`` for the current world size (itself when
        that is unset); an error when the global batch does not divide into equal per-device batches."""
        if self.global_batch_size is None:
            return self
        from ..runtime import world_size

        share = world_size() * self.gradient_accumulation_steps
        if self.global_batch_size % share:
            raise ValueError(f"global_batch_size {self.global_batch_size} does not divide into {world_size()} processes x "
                             f"{self.gradient_accumulation_steps} accumulation steps")
        return dataclasses.replace(self, batch_size=self.global_batch_size // share)

    @property
    def spec(self):
        """The stage's objective as the registry declares it (`objectives/registry.py`)."""
        return objective_spec(self.stage, self.objective)

    def objective_settings(self) -> ObjectiveSettings:
        """What the stage's objective is built with (`ObjectiveSpec.build`)."""
        return ObjectiveSettings(
            seed=self.seed, loss_budget=self.loss_chunk_elements, split_margin=self.split_margin,
            contrast_weight=self.contrast_weight, temperature=self.temperature, cosent_scale=self.cosent_scale,
            gradcache_chunk=self.gradcache_chunk, matryoshka_dims=tuple(self.matryoshka_dims or ()),
        )

    def data_settings(self) -> DataSettings:
        """What the stage's data is read with (`ObjectiveSpec.dataset`); pairs are grouped in global batches (per-device
        batch x world size x gradient accumulation)."""
        from ..runtime import world_size

        return DataSettings(
            source=self.data, field=self.data_field, min_chars=self.min_chars, truncate_long=self.truncate_long,
            max_samples=self.max_samples, seed=self.seed, probe_holdout=self.probe_holdout, probe=bool(self.probe_steps),
            decontaminate=self.decontaminate, max_pairs_per_source=self.max_pairs_per_source,
            query_instructions=self.query_instructions,
            group_size=self.batch_size * world_size() * self.gradient_accumulation_steps,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_recipe(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A recipe's settings with its ``base:`` chain resolved (later files override earlier ones)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a YAML mapping of training settings is expected")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    chain = (*_chain, path.resolve())
    if base_path in chain:
        raise ValueError(f"{path}: recipe base cycle ({' -> '.join(p.name for p in (*chain, base_path))})")
    if not base_path.is_file():
        raise ValueError(f"{path}: base recipe {base} not found (looked for {base_path})")
    return {**read_recipe(base_path, chain), **data}

