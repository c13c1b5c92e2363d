"""Training on the Hugging Face Trainer: our objective inside, checkpoints/resume/logging around it.

What is ours: the model saved in our format (adapters + memory tokens, not the frozen weights), checkpoints
that count only once a completion marker is written (`checkpoints.py`), a NaN/inf guard, the data order logged, a
faster learning rate for the memory tokens, and the micro-batch weights that make gradient accumulation exact. The
trainer also owns what surrounds the steps: the training length (`checkpoints.py`), the engine check (`engine.py`),
the run's logs and probe (`callbacks.RunLogs`) and the loss plot when training ends. Optimiser, schedule,
distribution (torchrun, accelerate, DeepSpeed, FSDP) are the Trainer's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from ..atomic import write_json_atomic
from ..model import LLM2Comp
from ..objectives.pretext import LOSS_ITEMS
from .callbacks import EngineReport, RunLogs
from .checkpoints import (COMPLETE_MARKER, complete_checkpoints, encoding_length, end_training_length,
                          last_complete_checkpoint, load_training_state)
from .engine import any_rank_nonfinite, check_engine

LOSS_WEIGHT = "loss_weight"


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


class LLM2CompTrainer(Trainer):
    """The Trainer of an encoder and its objective (wrapped in a `TrainingModule`; batches by the objective's collate).
    ``logs``: the run's log files (loss, data order, probe; the loss plot at the end). The encoder is saved at its
    encoding length, and left at it after training (`checkpoints.set_training_length`);
    ``gradcache_chunk`` / ``reads_decoder``: checked against the engine before the first step (`engine.check_engine`);
    ``stage``: this run's entry in the encoder's ``config.stages``: every save records in it the optimizer step it was
    saved at (``steps``), so that a checkpoint says how far it was trained, not only the run's ``max_steps``.
    A dataset that says ``sequential = True`` is read in order (its batches are built that way, data/pairs.py)."""

    def __init__(self, encoder: LLM2Comp, objective, args, *, logs: RunLogs | None = None, save_limit: int | None = 2,
                 memory_lr: float | None = None, gradcache_chunk: int | None = None, reads_decoder: bool = False,
                 stage: dict | None = None, **kwargs):
        if getattr(kwargs.get("train_dataset"), "sequential", False):
            args.train_sampling_strategy = "sequential"
        super().__init__(TrainingModule(encoder, objective), args, data_collator=objective.collate, **kwargs)
        self.save_limit, self.memory_lr, self.logs, self.stage = save_limit, memory_lr, logs, stage
        self.record_path = logs.data_order if logs is not None else None
        check_engine(self.accelerator, gradcache_chunk, reads_decoder=reads_decoder)
        for callback in logs.callbacks(self.encoder) if logs is not None else []:
            self.add_callback(callback)
        self.add_callback(EngineReport(self))

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
            result = super().train(*args, **kwargs)
        end_training_length(self.encoder)
        if self.logs is not None and self.args.should_save:
            self.logs.draw(self.train_dataset)
        return result

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
            if self.stage is not None:
                self.stage["steps"] = self.state.global_step
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
