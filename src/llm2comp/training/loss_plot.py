"""The loss plot of a run (matplotlib, imported only to draw): the loss per optimizer step (one series per batching
source when a run mixes sources of different loss scales), a running mean for long runs, and beside it the
compression probe's three losses (own, other, no memory) when stage 1 ran it."""

from __future__ import annotations

import json
import math
from pathlib import Path


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
