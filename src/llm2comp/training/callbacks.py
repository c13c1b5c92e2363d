"""The Trainer callbacks of a run and the files they write: the JSONL loss log (and its cut back to a resumed step),
the report of how the run is distributed, the compression probe during stage 1, and `RunLogs`, the run's log files
with the callbacks that write them and the loss plot drawn from them."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """The compression probe of a stage-1 run: ``passages`` held-out paragraphs of ``source`` cut to ``text_tokens``
    tokens (the last ``holdout`` paragraphs, which training leaves out), run every ``every`` steps."""

    source: str
    field: str
    passages: int
    text_tokens: int
    holdout: int
    every: int
    task: str = "continuation"
    metric: str = "kl"


class ProbeCallback(TrainerCallback):
    """The compression probe (evaluation/compression.py) before training and every ``settings.every`` steps, appended
    to ``probe.jsonl``. Its passages are read and tokenized when training begins. Every process runs it (a sharded
    model needs all ranks in its forward passes); the main process writes it."""

    def __init__(self, encoder: LLM2Comp, settings: ProbeSettings, path: Path):
        self.encoder, self.settings, self.path = encoder, settings, path
        self.probe = None

    def _make_probe(self):
        from ..evaluation.compression import CompressionProbe, probe_passages

        s = self.settings
        passages = probe_passages(self.encoder.tokenizer, s.source, s.passages, s.text_tokens, s.holdout, s.field)
        return CompressionProbe(passages, s.task, s.metric)

    def _run(self, state) -> None:
        self.probe = self.probe or self._make_probe()
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
        if state.global_step % self.settings.every == 0 or state.global_step == state.max_steps:
            self._run(state)


def truncate_log(path: Path, last_step: int) -> None:
    """Drop records beyond ``last_step`` (steps that will be redone after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class RunLogs:
    """The log files of a run beside its checkpoints (``loss.jsonl``, ``data_order.jsonl``, ``probe.jsonl``), the
    callbacks that write them, and ``loss.png`` drawn from them when training ends."""

    def __init__(self, output: Path, title: str = "training loss", probe: ProbeSettings | None = None):
        self.losses, self.data_order = output / "loss.jsonl", output / "data_order.jsonl"
        self.probes, self.plot = output / "probe.jsonl", output / "loss.png"
        self.title, self.probe = title, probe

    def truncate(self, last_step: int) -> None:
        """Records beyond ``last_step`` dropped from every log (steps a resumed run does again)."""
        for path in (self.losses, self.data_order, self.probes):
            truncate_log(path, last_step)

    def callbacks(self, encoder: LLM2Comp) -> list[TrainerCallback]:
        found = [LossLog(self.losses)]
        if self.probe is not None:
            found.append(ProbeCallback(encoder, self.probe, self.probes))
        return found

    def draw(self, dataset) -> Path | None:
        """The loss curve (per batching source where ``dataset`` has sources) with the probe's panel, as ``loss.png``."""
        from .loss_plot import plot_losses, step_sources_of

        return plot_losses(self.losses, self.plot, title=self.title, probe_path=self.probes,
                           step_sources=step_sources_of(dataset, self.data_order))
