"""The Trainer callbacks of a run: the JSONL loss log (and its cut back to a resumed step), the report of how the run
is distributed, and the compression probe during stage 1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..atomic import write_text_atomic
from ..model import LLM2Comp


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
