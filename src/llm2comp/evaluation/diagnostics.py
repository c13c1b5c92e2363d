"""Embedding diagnostics: singular-value spectrum (dimensional collapse) and memory-token correlation.

* `singular_spectrum(embeddings)`: singular values of the (by default mean-centred) n x d embedding matrix, the
  normalised spectrum p_i = s_i / sum(s), the effective dimension exp(H(p)) (Roy & Vetterli's effective rank), the
  number of dimensions that hold 90% / 99% of the energy (s_i^2), and the anisotropy (mean cosine similarity of
  distinct uncentred embeddings).
* `memory_correlation(model, texts)`: for every text the k x k cosine similarity (and Pearson correlation, i.e.
  cosine after centring each state over its d features) between its k memory-token states, averaged over texts.
  Off-diagonal values near 1 mean the k tokens carry the same information.
* `diagnose(model, texts, output_dir)`: both, as numbers (returned and written to ``diagnostics.json``) and PNGs
  (``spectrum.png``, ``memory_correlation.png``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _as_matrix(embeddings) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().float().cpu().numpy()
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, d) matrix, got shape {matrix.shape}")
    if matrix.shape[0] < 2:
        raise ValueError("need at least 2 embeddings")
    if not np.isfinite(matrix).all():
        raise ValueError("embeddings contain NaN or inf")
    return matrix


def dims_for_energy(singular_values: np.ndarray, fraction: float) -> int:
    """Smallest number of leading dimensions whose squared singular values reach `fraction` of the total."""
    energy = np.asarray(singular_values, dtype=np.float64) ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    cumulative = np.cumsum(energy) / total
    return int(min(np.searchsorted(cumulative, fraction - 1e-12) + 1, len(energy)))


def effective_dimension(singular_values: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values (1 for rank one, d for a flat spectrum)."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def singular_spectrum(embeddings, center: bool = True) -> dict[str, Any]:
    """Numbers describing how many directions the embeddings use (see the module docstring)."""
    matrix = _as_matrix(embeddings)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.clip(norms, 1e-12, None)
    n = unit.shape[0]
    gram = unit @ unit.T
    anisotropy = float((gram.sum() - np.trace(gram)) / (n * (n - 1)))
    centred = matrix - matrix.mean(0, keepdims=True) if center else matrix
    singular = np.linalg.svd(centred, compute_uv=False)
    total = singular.sum()
    normalised = singular / total if total > 0 else singular
    energy = singular**2
    cumulative = np.cumsum(energy) / energy.sum() if energy.sum() > 0 else np.zeros_like(energy)
    return {
        "n": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "centered": center,
        "rank": int(min(matrix.shape)),
        "singular_values": singular.tolist(),
        "normalized_spectrum": normalised.tolist(),
        "cumulative_energy": cumulative.tolist(),
        "effective_dimension": effective_dimension(singular),
        "dims_90": dims_for_energy(singular, 0.90),
        "dims_99": dims_for_energy(singular, 0.99),
        "top1_energy": float(cumulative[0]) if cumulative.size else 0.0,
        "anisotropy": anisotropy,
    }


@torch.inference_mode()
def memory_states(model, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(n, k, d) final memory-token states of an LLM2Comp model with memory pooling, in input order."""
    if getattr(model.config, "pooling", None) != "memory":
        raise ValueError(f"memory-token diagnostics need pooling='memory', the model uses '{model.config.pooling}'")
    texts = list(texts)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(texts), batch_size):
            features = model.tokenize(texts[start : start + batch_size])
            chunks.append(model.forward(features)["memory_states"].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks, 0)


def memory_correlation_from_states(states) -> dict[str, Any]:
    """Mean over texts of the k x k cosine and Pearson matrices between the k memory states of each text."""
    states = torch.as_tensor(np.asarray(states) if not isinstance(states, torch.Tensor) else states).double()
    if states.ndim != 3:
        raise ValueError(f"memory states must be (n, k, d), got {tuple(states.shape)}")
    k = states.shape[1]
    unit = torch.nn.functional.normalize(states, dim=-1)
    cosine = (unit @ unit.transpose(1, 2)).mean(0)
    centred = states - states.mean(-1, keepdim=True)
    unit_c = torch.nn.functional.normalize(centred, dim=-1)
    pearson = (unit_c @ unit_c.transpose(1, 2)).mean(0)
    off = ~torch.eye(k, dtype=torch.bool)
    return {
        "k": int(k),
        "n": int(states.shape[0]),
        "cosine": cosine.tolist(),
        "pearson": pearson.tolist(),
        "mean_offdiag_cosine": float(cosine[off].mean()) if k > 1 else None,
        "mean_offdiag_pearson": float(pearson[off].mean()) if k > 1 else None,
        "max_offdiag_pearson": float(pearson[off].max()) if k > 1 else None,
    }


def memory_correlation(model, texts: Sequence[str], batch_size: int = 32) -> dict[str, Any]:
    return memory_correlation_from_states(memory_states(model, texts, batch_size))


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_spectrum(spectrum: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    plt = _pyplot()
    # n centred embeddings span at most n - 1 dimensions: the values beyond are zero, not a collapse; not drawn
    rank = max(1, int((np.asarray(spectrum["normalized_spectrum"]) > 1e-9).sum()))
    values = np.asarray(spectrum["normalized_spectrum"])[:rank]
    cumulative = np.asarray(spectrum["cumulative_energy"])[:rank]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ranks = np.arange(1, len(values) + 1)
    ax1.semilogy(ranks, np.clip(values, 1e-12, None))
    ax1.set_xlabel("index")
    ax1.set_ylabel("s_i / sum(s)")
    ax1.set_title(f"normalised singular values (eff. dim {spectrum['effective_dimension']:.1f})")
    ax2.plot(ranks, cumulative)
    for fraction, key in ((0.9, "dims_90"), (0.99, "dims_99")):
        ax2.axhline(fraction, color="grey", lw=0.5, ls="--")
        ax2.axvline(spectrum[key], color="grey", lw=0.5, ls=":")
    ax2.set_xlabel("dimensions")
    ax2.set_ylabel("cumulative energy")
    ax2.set_title(f"90%: {spectrum['dims_90']} dims, 99%: {spectrum['dims_99']} dims")
    shape = f"{spectrum['n']} embeddings x {spectrum['dim']} dims{' (centred)' if spectrum['centered'] else ''}, rank {rank}"
    import textwrap

    # long titles (model path, stage, data) wrap instead of running off the figure
    fig.suptitle("\n".join(textwrap.wrap(f"{title}: {shape}" if title else shape, width=110)), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_memory_correlation(correlation: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """One k x k heatmap of the Pearson correlation between a text's memory states, averaged over the texts
    (the cosine matrix is all but identical for hidden states of this size: it is given as a number only)."""
    plt = _pyplot()
    matrix = np.asarray(correlation["pearson"])
    k = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title(f"mean off-diagonal: Pearson {correlation['mean_offdiag_pearson'] or 0:.3f}, "
                 f"cosine {correlation['mean_offdiag_cosine'] or 0:.3f}", fontsize=10)
    ax.set_xlabel("memory token")
    ax.set_ylabel("memory token")
    if k <= 16:
        ax.set_xticks(range(k), [str(i + 1) for i in range(k)])
        ax.set_yticks(range(k), [str(i + 1) for i in range(k)])
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=10 if k <= 8 else 8,
                        color="white" if abs(matrix[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="Pearson correlation")
    what = f"correlation between the {k} memory-token states of a text, mean over {correlation['n']} texts"
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- entry point
def diagnose(
    model,
    texts: Sequence[str],
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    center: bool = True,
    prefix: str = "",
    title: str = "",
    data: str = "",
) -> dict[str, Any]:
    """Spectrum of ``model.encode(texts)`` and, for memory pooling, the memory-token correlation.

    Returns ``{"spectrum": {...}, "memory_correlation": {...} | None, "files": {...}}``; with `output_dir`, also
    writes ``{prefix}diagnostics.json``, ``{prefix}spectrum.png`` and ``{prefix}memory_correlation.png`` there.
    """
    texts = list(texts)
    title = f"{title} — {len(texts)} {data}" if data and title else title or data  # model, stage and texts named
    embeddings = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    result: dict[str, Any] = {"spectrum": singular_spectrum(embeddings, center=center), "memory_correlation": None, "files": {}}
    if getattr(getattr(model, "config", None), "pooling", None) == "memory":
        result["memory_correlation"] = memory_correlation(model, texts, batch_size=batch_size)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        result["files"]["spectrum"] = str(plot_spectrum(result["spectrum"], out / f"{prefix}spectrum.png", title=title))
        if result["memory_correlation"] is not None:
            result["files"]["memory_correlation"] = str(
                plot_memory_correlation(result["memory_correlation"], out / f"{prefix}memory_correlation.png", title=title)
            )
        result["files"]["json"] = str(out / f"{prefix}diagnostics.json")
        Path(result["files"]["json"]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of `diagnose` (no per-dimension lists)."""
    spectrum = result["spectrum"]
    out = {k: spectrum[k] for k in ("n", "dim", "effective_dimension", "dims_90", "dims_99", "top1_energy", "anisotropy")}
    mem = result.get("memory_correlation")
    if mem:
        out.update({k: mem[k] for k in ("k", "mean_offdiag_cosine", "mean_offdiag_pearson", "max_offdiag_pearson")})
    return out
