"""Training on the Hugging Face Trainer: our objective inside, checkpoints/resume/logging around it.

What is ours: the model saved in our format (adapters + memory tokens, not the frozen weights), checkpoints
that count only once a completion marker is written, a NaN/inf guard, a JSONL loss log with the data order,
and a loss plot. Optimiser, schedule, distribution (torchrun, accelerate, DeepSpeed, FSDP) are the Trainer's.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..atomic import write_json_atomic, write_text_atomic
from ..model import LLM2Comp
from ..persistence import BRIDGE_NAME, CONFIG_NAME, MEMORY_NAME
from ..objectives.pretext import LOSS_ITEMS
from ..runtime import is_main_process
from .engine import any_rank_nonfinite

COMPLETE_MARKER = "checkpoint-complete.json"
LOSS_WEIGHT = "loss_weight"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteLossError(RuntimeError):
    pass


class TrainingModule(nn.Module):
    """What the Trainer (and DDP/DeepSpeed) wraps: the encoder plus the objective, so every pass goes
    through ``forward`` and distributed gradient hooks see it."""

    # the objectives normalise their own losses; the trainer's label counting and loss rescaling stay off
    accepts_loss_kwargs = False

    def __init__(self, encoder: LLM2Comp, objective):
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(self, **batch):
        return self.objective(self.encoder, batch)

    @property
    def _no_split_modules(self) -> list[str]:
        """The backbone's decoder-layer classes: what accelerate's FSDP ``TRANSFORMER_BASED_WRAP`` shards one by one
        (without them the whole model would be a single FSDP unit)."""
        return list(getattr(self.encoder.hf_model, "_no_split_modules", None) or [])

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        self.encoder.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.encoder.hf_model.enable_input_require_grads()


@contextlib.contextmanager
def peft_visible_to_trainer():
    """While open, the Trainer's PEFT test (``transformers.trainer._is_peft_model``) also recognises a `TrainingModule`
    with a LoRA adapter. Under DeepSpeed that test decides three things the Trainer does right for a PEFT model and
    wrong for one it does not recognise: checkpoints leave out the frozen weights (``exclude_frozen_parameters``),
    resuming loads them non-strictly, and the final ZeRO-3 save gathers the trainable tensors only (not a 16-bit
    copy of the whole backbone). Used under DeepSpeed only: its other uses (signature columns, label smoothing,
    FSDP's PEFT wrap policy) are not on that path."""
    import transformers.trainer as hf_trainer

    original = getattr(hf_trainer, "_is_peft_model", None)
    if original is None:
        raise RuntimeError("transformers.trainer._is_peft_model is gone in this transformers release: DeepSpeed "
                           "checkpoints would carry the frozen weights; pin a tested transformers (requirements-lock.txt)")

    def is_peft_model(model) -> bool:
        return original(model) or (isinstance(model, TrainingModule) and model.encoder.peft_model is not None)

    hf_trainer._is_peft_model = is_peft_model
    try:
        yield
    finally:
        hf_trainer._is_peft_model = original


# ------------------------------------------------------------------------------------------------ checkpoints
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


class LLM2CompTrainer(Trainer):
    def __init__(self, *args, save_limit: int | None = 2, record_path: Path | None = None, memory_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_limit = save_limit
        self.record_path = record_path
        self.memory_lr = memory_lr

    def create_optimizer(self, model=None):
        """The Trainer's optimiser; with ``memory_lr``, the memory tokens and the stage-1 bridge in a group of their own
        at that rate (new parameters learn faster than a LoRA update of old ones, as AutoCompressors and xRAG train them)."""
        if self.optimizer is None and self.memory_lr is not None:
            encoder = self.encoder
            fast = {id(p) for p in encoder.memory.parameters()}
            if encoder.memory_bridge is not None:
                fast |= {id(p) for p in encoder.memory_bridge.parameters()}
            params = [p for p in self.model.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if id(p) not in fast], "weight_decay": self.args.weight_decay},
                      {"params": [p for p in params if id(p) in fast], "weight_decay": self.args.weight_decay, "lr": self.memory_lr}]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return super().create_optimizer(model)

    @property
    def encoder(self) -> LLM2Comp:
        return self.model.encoder

    def train(self, *args, **kwargs):
        with peft_visible_to_trainer() if self.is_deepspeed_enabled else contextlib.nullcontext():
            return super().train(*args, **kwargs)

    def save_model(self, *args, **kwargs):
        with peft_visible_to_trainer() if self.is_deepspeed_enabled else contextlib.nullcontext():
            return super().save_model(*args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step. Where the objective counts its loss terms (pretext: target tokens),
        each micro-batch gets the weight that turns the trainer's mean over micro-batches into the mean over every
        term of the step, on every rank: accumulation then equals one large batch."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and all(LOSS_ITEMS in b for b in batches):
            counts = torch.stack([torch.as_tensor(b[LOSS_ITEMS], dtype=torch.float32) for b in batches]).to(device)
            if self.accelerator.num_processes > 1:  # the objective's own token mean is global per micro-batch
                counts = self.accelerator.reduce(counts, reduction="sum")
            weights = counts * len(batches) / counts.sum().clamp(min=1)
            for batch, weight in zip(batches, weights):
                batch[LOSS_WEIGHT] = weight
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop("index", None)
        inputs.pop(LOSS_ITEMS, None)
        weight = inputs.pop(LOSS_WEIGHT, None)
        outputs = model(**inputs)
        loss = outputs["loss"] if weight is None else outputs["loss"] * weight.to(outputs["loss"].device)
        if any_rank_nonfinite(loss):  # every rank stops together (one rank raising alone hangs the others)
            last = last_complete_checkpoint(self.args.output_dir, remove_partial=False)
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {self.state.global_step + 1}; training stopped. "
                f"Last good checkpoint: {last or 'none yet'}. Try a lower learning rate or check the data."
            )
        if self.record_path is not None and index is not None:
            index = self.accelerator.gather(index.to(loss.device))  # the global batch, in rank order
        if self.record_path is not None and index is not None and self.args.should_save:
            with self.record_path.open("a") as handle:
                handle.write(json.dumps({"step": self.state.global_step + 1, "index": index.tolist()}) + "\n")
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.args.should_save:
            if state_dict:  # gathered by the Trainer under ZeRO-3 / FSDP; keys of TrainingModule
                state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
            # a checkpoint is a model like the final one: saved with its encoding length, not the training length
            with encoding_length(self.encoder) as encoder:
                encoder.save(output_dir or self.args.output_dir, state_dict=state_dict or None)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_training_state(self.encoder, resume_from_checkpoint)

    def _save_checkpoint(self, model, trial) -> None:
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation happens below, after the marker
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            write_json_atomic(folder / COMPLETE_MARKER, {"step": self.state.global_step})
            complete = complete_checkpoints(folder.parent)
            if self.save_limit:
                for old in complete[: -self.save_limit]:
                    shutil.rmtree(old, ignore_errors=True)


class LossLog(TrainerCallback):
    """Appends every log record to a JSONL file (main process only), with the seconds since training began
    (``elapsed_s``) and, on CUDA, the peak GPU memory allocated so far (``peak_gpu_gib``)."""

    def __init__(self, path: Path):
        self.path = path
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args: TrainingArguments, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            if self.started is not None:
                record["elapsed_s"] = round(time.perf_counter() - self.started, 3)
            if torch.cuda.is_available():
                record["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


class EngineReport(TrainerCallback):
    """Prints, once the engine has wrapped the model, how the run is distributed (`engine.describe_engine`)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        from .engine import describe_engine

        if state.is_world_process_zero:
            print(describe_engine(self.trainer.accelerator, self.trainer.model_wrapped), flush=True)


class ProbeCallback(TrainerCallback):
    """The compression probe (evaluation/compression.py) before training and every ``every`` steps, appended to
    ``probe.jsonl``. Every process runs it (a sharded model needs all ranks in its forward passes); the main
    process writes it."""

    def __init__(self, encoder: LLM2Comp, probe, path: Path, every: int):
        self.encoder, self.probe, self.path, self.every = encoder, probe, path, every

    def _run(self, state) -> None:
        import time

        started = time.perf_counter()
        report = self.probe.run(self.encoder)
        if state.is_world_process_zero:
            record = {"step": state.global_step, "seconds": round(time.perf_counter() - started, 2),
                      **{k: report[k] for k in ("metric", "gain", "specificity", "loss", "passages")}}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self._run(state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._run(state)


def truncate_log(path: Path, last_step: int) -> None:
    """Drop records beyond ``last_step`` (steps that will be redone after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _read_jsonl(path: Path | None) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path is not None and path.is_file() else []


def smoothing_window(points: int) -> int:
    """Steps averaged in the loss plot's running mean: about a tenth of the run, 1 (none) for short runs."""
    return max(1, min(50, points // 10)) if points >= 20 else 1


def running_mean(values, window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what there is)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_series(points: list[tuple[int, float]], step_sources: dict[int, str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """The loss points per batching source (one series per source when batches come from several: their losses
    differ in scale, InfoNCE vs CoSENT, so one line would zigzag between them), else one series."""
    sources = {step_sources.get(step) for step, _ in points} if step_sources else set()
    if len(sources) < 2 or None in sources:
        return {"loss": points}
    series: dict[str, list[tuple[int, float]]] = {}
    for step, loss in points:
        series.setdefault(step_sources[step], []).append((step, loss))
    return dict(sorted(series.items()))


def step_sources_of(dataset, order_path: Path) -> dict[int, str] | None:
    """{optimizer step: batching source} of a source-grouped run, from its data-order log (None for other data)."""
    if not hasattr(dataset, "sources"):
        return None
    sources = dataset.sources()
    out = {}
    for record in _read_jsonl(order_path):
        if record.get("index"):
            out[record["step"]] = sources[record["index"][0]]
    return out or None


def plot_losses(log_path: Path, png_path: Path, title: str = "training loss", probe_path: Path | None = None,
                step_sources: dict[int, str] | None = None) -> Path | None:
    """The loss curve (one per batching source with ``step_sources``); with a probe log, a second panel: the frozen
    decoder's loss with the own memory, another text's memory and none, per probe step (the run compresses where
    'own' falls below 'none' and 'other')."""
    points = [(r["step"], r["loss"]) for r in _read_jsonl(log_path) if "loss" in r and math.isfinite(r["loss"])]
    probes = _read_jsonl(probe_path)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(11 if probes else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    series = loss_series(points, step_sources)
    several = len(series) > 1  # one colour per source, named in the legend
    for index, (name, part) in enumerate(series.items()):
        steps, losses = zip(*part)
        window = smoothing_window(len(part))
        style = {"color": f"C{index}", "marker": ("." if window > 1 else "o") if several else None}
        if window == 1:
            style["markersize"] = 3
        if window > 1:  # the raw points faint, their running mean on top
            ax.plot(steps, losses, linewidth=0.6, alpha=0.3, label=None if several else "per step", **style)
            ax.plot(steps, running_mean(losses, window), linewidth=1.5, color=style["color"],
                    label=f"{name}, running mean of {window}" if several else f"running mean of {window} steps")
        else:
            ax.plot(steps, losses, linewidth=1, label=name if several else None, **style)
    if several or smoothing_window(len(points)) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.grid(alpha=0.3)
    if probes:
        ax = axes[0][1]
        steps = [r["step"] for r in probes]
        for name, style in (("own", "-o"), ("other", "--s"), ("none", ":^")):
            ax.plot(steps, [r["loss"][name] for r in probes], style, markersize=3, label=f"{name} memory" if name != "none" else "no memory")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"frozen decoder {probes[-1]['metric']} (nats/token)")
        last = probes[-1]
        ax.set_title(f"compression probe, {last['passages']} held-out passages: gain {last['gain']:.2f}, "
                     f"specificity {last['specificity']:.2f}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path
