"""The compression probe: does a model's memory carry its text for the frozen decoder?

On a fixed slice of held-out passages (each cut to ``text_tokens`` tokens; the *continuation* task compresses the
first half and predicts the second, *reconstruction* compresses and regenerates the whole text), the frozen decoder
(adapter off, causal) scores the target tokens given

* **own**: [BOS, the passage's own memory, target],
* **other**: [BOS, another passage's memory, target] (a fixed derangement: passage i gets passage i+1's memory),
* **none**: [BOS, target] (no memory at all),

and, for the continuation task, the **teacher**: the decoder reading the full, uncompressed text. Reported per target
token: the KL from the teacher's next-token distribution (what the ``kl`` objective trains) and the cross-entropy of
the true tokens (what ``nll``/``rc`` train). From the chosen metric: *compression gain* ``1 - own / none`` (0: the
memory is useless; 1: it replaces the text) and *specificity* ``other / own`` (1: any text's memory helps as much
as its own, so nothing of the text is in it).

The **ceiling** optimises k free input vectors per passage against the same frozen decoder (no encoder; Adam, as
Kuratov et al. 2025 do): what any encoder could reach on these passages at this length and k. A run's gain reads
as a share of it. Ceilings are cached by passages, task and settings (`LLM2COMP_CACHE`), as they cost minutes.

Passages are the last ``holdout`` paragraphs of a corpus (the first ``passages`` of them long enough); the pretext
stage leaves those paragraphs out of its training data (``probe_holdout``), so training never sees them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.corpus import DEFAULT_HOLDOUT, DataError, holdout_split, load_texts
from ..features import special_prefix
from ..lm_head import decoder_bos
from ..model import LLM2Comp
from .compression_scoring import _decode, _none_start, _teacher, _token_losses

logger = logging.getLogger(__name__)

TASKS = ("continuation", "reconstruction")
METRICS = ("kl", "ce")
CONDITIONS = ("own", "other", "none")


# ---------------------------------------------------------------------------------------------- passages
def probe_passages(tokenizer, source: str = "builtin:news", passages: int = 256, text_tokens: int = 64,
                   holdout: int = DEFAULT_HOLDOUT, field: str = "text") -> list[list[int]]:
    """Token rows of exactly ``text_tokens`` tokens: the first ``passages`` held-out paragraphs that are long enough."""
    _, held = holdout_split(load_texts(source, unit="paragraph", field=field), holdout)
    ids = tokenizer(held, add_special_tokens=False)["input_ids"] if held else []
    rows = [row[:text_tokens] for row in ids if len(row) >= text_tokens][:passages]
    if len(rows) < 2:
        raise DataError(f"{source}: {len(rows)} of the {len(held)} held-out paragraphs have {text_tokens} tokens; the probe "
                        "needs at least 2 (lower text_tokens or raise holdout)")
    if len(rows) < passages:
        logger.warning("compression probe: only %d of %d passages have %d tokens", len(rows), passages, text_tokens)
    return rows


@dataclass
class CompressionProbe:
    """The probe on fixed passages (token rows of equal length). `run(model)` returns the report (module docstring)."""

    passages: list[list[int]]
    task: str = "continuation"
    metric: str | None = None  # default: kl for continuation, ce for reconstruction
    batch_size: int = 16
    ceiling: dict | None = field(default=None)  # from `ceiling()`, reported beside the run's numbers

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown probe task '{self.task}'; choose one of {', '.join(TASKS)}")
        self.metric = self.metric or ("kl" if self.task == "continuation" else "ce")
        if self.metric not in METRICS or (self.metric == "kl" and self.task != "continuation"):
            raise ValueError(f"metric '{self.metric}' does not fit task '{self.task}' (kl needs the continuation task's teacher)")
        lengths = {len(p) for p in self.passages}
        if len(self.passages) < 2 or len(lengths) != 1 or min(lengths) < 2:
            raise ValueError("the probe needs at least 2 passages of one length (>= 2 tokens)")

    @property
    def text_tokens(self) -> int:
        return len(self.passages[0])

    @property
    def prefix_tokens(self) -> int:
        return self.text_tokens if self.task == "reconstruction" else self.text_tokens // 2

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the encoder compresses, what the decoder predicts)."""
        return rows[:, : self.prefix_tokens], rows if self.task == "reconstruction" else rows[:, self.prefix_tokens :]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps([self.task, self.passages]).encode()).hexdigest()
        return digest[:16]

    @torch.no_grad()
    def memories(self, model: LLM2Comp) -> torch.Tensor:
        """(n, k, d): each passage's memory as the decoder receives it."""
        head = special_prefix(model.tokenizer)
        rows = torch.tensor(self.passages)
        prefixes, _ = self.split(rows)
        out = []
        for start in range(0, len(self.passages), self.batch_size):
            features = model.collate([head + p.tolist() for p in prefixes[start : start + self.batch_size]])
            out.append(model.decoder_memory(model(features)["memory_states"]).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def per_passage(self, model: LLM2Comp) -> dict[str, dict[str, torch.Tensor]]:
        """{metric: {condition: (n,) summed loss per passage}}; conditions own, other, none (and teacher for ce)."""
        was_training = model.training
        model.eval()
        try:
            memory = self.memories(model)
            other = memory.roll(-1, dims=0)  # passage i reads passage i+1's memory: no passage keeps its own
            rows = torch.tensor(self.passages)
            tok = model.tokenizer
            sums: dict[str, dict[str, list]] = {m: {} for m in METRICS}
            device = model.device
            with model.decoder_mode() as lm:
                for start in range(0, len(rows), self.batch_size):
                    part = rows[start : start + self.batch_size].to(device)
                    _, targets = self.split(part)
                    teacher = None
                    if self.task == "continuation":
                        teacher = _teacher(model, lm, tok, part, self.prefix_tokens)
                        sums["ce"].setdefault("teacher", []).append(_token_losses(model, teacher, targets, None)["ce"].cpu())
                    conditions = {"own": memory[start : start + len(part)], "other": other[start : start + len(part)], "none": None}
                    for name, mem in conditions.items():
                        start_ids = decoder_bos(tok) if mem is not None else _none_start(tok)
                        hidden = _decode(model, lm, start_ids, mem.to(device) if mem is not None else None, targets)
                        for metric, values in _token_losses(model, hidden, targets, teacher).items():
                            sums[metric].setdefault(name, []).append(values.cpu())
        finally:
            model.train(was_training)
        return {m: {c: torch.cat(v) for c, v in by.items()} for m, by in sums.items() if by}

    def run(self, model: LLM2Comp) -> dict:
        per = self.per_passage(model)
        targets = self.text_tokens - (0 if self.task == "reconstruction" else self.prefix_tokens)
        per_token = {m: {c: float(v.sum()) / (len(self.passages) * targets) for c, v in by.items()} for m, by in per.items()}
        chosen = per_token[self.metric]
        report = {
            "task": self.task, "metric": self.metric, "passages": len(self.passages), "text_tokens": self.text_tokens,
            "prefix_tokens": self.prefix_tokens, "target_tokens": targets, "memory_tokens": model.config.num_memory_tokens,
            "fingerprint": self.fingerprint(), "loss": chosen, **{f"{m}_per_token": v for m, v in per_token.items()},
            "gain": gain(chosen["own"], chosen["none"]), "specificity": _ratio(chosen["other"], chosen["own"]),
        }
        if self.ceiling:
            subset = self.ceiling["passages"]
            own = float(per[self.metric]["own"][:subset].sum())
            none = float(per[self.metric]["none"][:subset].sum())
            run_gain = gain(own, none)
            report["ceiling"] = {**self.ceiling, "run_gain_on_these": run_gain,
                                 "share": _ratio(run_gain, self.ceiling["gain"]) if self.ceiling["gain"] > 0 else None}
        return report


def gain(own: float, none: float) -> float:
    """Compression gain: 1 - own / none (negative: the memory makes the decoder worse than no memory)."""
    return 1.0 - own / none if none > 0 else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- ceiling
def _cache_dir() -> Path:
    return Path(os.environ.get("LLM2COMP_CACHE", Path.home() / ".cache" / "llm2comp")) / "probe-ceilings"


def ceiling(model: LLM2Comp, probe: CompressionProbe, passages: int = 32, steps: int = 200, lr: float = 1e-2,
            seed: int = 0, cache: bool = True, show_progress_bar: bool = True) -> dict:
    """Optimise k free input vectors per passage (the first ``passages`` of the probe) against the frozen decoder;
    the best loss per passage over the steps is what an ideal encoder could give it. Cached (see module docstring)."""
    k = model.config.num_memory_tokens
    subset = CompressionProbe(probe.passages[: max(2, min(passages, len(probe.passages)))], probe.task, probe.metric, probe.batch_size)
    settings = {"base_model": model.config.base_model, "merged_adapters": model.config.merged_adapters, "k": k,
                "steps": steps, "lr": lr, "seed": seed, "metric": subset.metric, "passages": len(subset.passages),
                "fingerprint": subset.fingerprint()}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    path = _cache_dir() / f"{key}.json"
    if cache and path.is_file():
        return json.loads(path.read_text())
    from tqdm.auto import tqdm

    tok = model.tokenizer
    rows = torch.tensor(subset.passages, device=model.device)
    _, targets = subset.split(rows)
    embed = model.hf_model.get_input_embeddings()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scale = embed(torch.arange(min(model.vocab_size, 8192), device=model.device)).float().std().item()
    vectors = (torch.randn(len(subset.passages), k, model.get_sentence_embedding_dimension(), generator=generator) * scale).to(model.device)
    vectors.requires_grad_(True)
    optimiser = torch.optim.Adam([vectors], lr=lr)
    best = torch.full((len(subset.passages),), float("inf"))
    was_training = model.training
    model.eval()
    try:
        with model.decoder_mode() as lm:
            with torch.no_grad():
                teacher = None
                if subset.task == "continuation":
                    teacher = _teacher(model, lm, tok, rows, subset.prefix_tokens)
                none = _token_losses(model, _decode(model, lm, _none_start(tok), None, targets), targets, teacher)[subset.metric]
            for _ in tqdm(range(steps), desc="probe ceiling (free memory vectors)", disable=not show_progress_bar):
                hidden = _decode(model, lm, decoder_bos(tok), vectors, targets)
                losses = _token_losses(model, hidden, targets, teacher)[subset.metric]
                best = torch.minimum(best, losses.detach().cpu())
                (grad,) = torch.autograd.grad(losses.sum(), vectors)
                vectors.grad = grad
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    result = {**settings, "own": float(best.sum()) / targets.numel(), "none": float(none.sum()) / targets.numel(),
              "vector_norm": float(vectors.detach().norm(dim=-1).mean())}
    result["gain"] = gain(result["own"], result["none"])
    if cache:
        from ..atomic import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    return result


# ---------------------------------------------------------------------------------------------- report
def format_report(report: dict) -> str:
    """A small table of one probe result."""
    metric, loss = report["metric"], report["loss"]
    lines = [
        f"compression probe: {report['passages']} held-out passages of {report['text_tokens']} tokens, task {report['task']} "
        f"({report['prefix_tokens']} tokens compressed into {report['memory_tokens']} memory tokens, {report['target_tokens']} predicted)",
        f"| condition | {metric} nats/token |" + (" ce nats/token |" if metric != "ce" else ""),
        "|---|---|" + ("---|" if metric != "ce" else ""),
    ]
    for name in (*CONDITIONS, "teacher"):
        value = loss.get(name)
        ce = report.get("ce_per_token", {}).get(name)
        if value is None and ce is None:
            continue
        cells = [f"{value:.4f}" if value is not None else ("0" if name == "teacher" else "-")]
        if metric != "ce":
            cells.append(f"{ce:.4f}" if ce is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"compression gain 1 - own/none = {report['gain']:.3f}; specificity other/own = {report['specificity']:.3f}")
    if "ceiling" in report:
        c = report["ceiling"]
        share = f"{c['share']:.1%}" if c.get("share") is not None and math.isfinite(c["share"]) else "-"
        lines.append(f"ceiling (k={c['k']} free vectors per passage, {c['steps']} Adam steps, first {c['passages']} passages): "
                     f"own {c['own']:.4f} vs none {c['none']:.4f}, gain {c['gain']:.3f}; this model's gain there "
                     f"{c['run_gain_on_these']:.3f} = {share} of the ceiling")
    return "\n".join(lines)
