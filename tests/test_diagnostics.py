"""Diagnostics: singular-value spectrum numbers, memory-token correlation, PNG/JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.evaluation.diagnostics import (
    diagnose,
    dims_for_energy,
    effective_dimension,
    memory_correlation_from_states,
    memory_states,
    singular_spectrum,
    summary,
)
from llm2comp.testing import SAMPLE_TEXT, make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny")


def test_effective_dimension_and_energy_dims():
    assert effective_dimension(np.ones(16)) == pytest.approx(16.0)
    assert effective_dimension(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    s = np.array([3.0, 1.0, 1.0, 0.0])  # energy 9, 1, 1 of 11
    assert dims_for_energy(s, 0.8) == 1
    assert dims_for_energy(s, 0.9) == 2
    assert dims_for_energy(s, 0.99) == 3


def test_spectrum_of_collapsed_vs_isotropic_embeddings():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    collapsed = rng.normal(size=(200, 1)) * direction + 1e-6 * rng.normal(size=(200, 32))
    isotropic = rng.normal(size=(200, 32))
    low, high = singular_spectrum(collapsed), singular_spectrum(isotropic)
    assert low["dims_90"] == 1 and low["effective_dimension"] < 1.1
    assert high["dims_90"] > 20 and high["effective_dimension"] > 28
    assert len(high["normalized_spectrum"]) == 32 and sum(high["normalized_spectrum"]) == pytest.approx(1.0)
    assert high["cumulative_energy"][-1] == pytest.approx(1.0)
    # a shared offset is anisotropy: high mean cosine, removed by centring
    shifted = isotropic + 10
    assert singular_spectrum(shifted)["anisotropy"] > 0.9
    assert singular_spectrum(shifted, center=False)["top1_energy"] > 0.9
    assert singular_spectrum(shifted)["effective_dimension"] == pytest.approx(high["effective_dimension"], rel=0.05)
    with pytest.raises(ValueError):
        singular_spectrum(np.ones(5))


def test_memory_correlation_numbers():
    torch.manual_seed(0)
    same = torch.randn(5, 1, 16).repeat(1, 4, 1)
    result = memory_correlation_from_states(same)
    assert result["k"] == 4 and np.allclose(result["pearson"], 1.0) and result["mean_offdiag_cosine"] == pytest.approx(1.0)
    independent = memory_correlation_from_states(torch.randn(400, 3, 512))
    assert abs(independent["mean_offdiag_pearson"]) < 0.02
    assert np.allclose(np.diag(independent["cosine"]), 1.0)
    opposite = torch.randn(3, 1, 8)
    anti = memory_correlation_from_states(torch.cat([opposite, -opposite], 1))
    assert anti["cosine"][0][1] == pytest.approx(-1.0)


def test_diagnose_writes_numbers_and_plots(tiny_dir, tmp_path):
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=4, max_length=64)
    texts = SAMPLE_TEXT * 2
    states = memory_states(model, texts, batch_size=3)
    assert states.shape == (len(texts), 4, model.get_sentence_embedding_dimension())
    # the memory states are what the sentence embedding averages
    np.testing.assert_allclose(states.mean(1).numpy(), model.encode(texts), atol=1e-5)

    result = diagnose(model, texts, tmp_path / "diag", batch_size=5)
    assert result["spectrum"]["n"] == len(texts) and result["spectrum"]["dim"] == model.get_sentence_embedding_dimension()
    corr = result["memory_correlation"]
    assert np.asarray(corr["cosine"]).shape == (4, 4)
    for name in ("spectrum", "memory_correlation"):
        png = tmp_path / "diag" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    assert saved["spectrum"]["dims_90"] == result["spectrum"]["dims_90"]
    assert set(summary(result)) >= {"effective_dimension", "dims_90", "dims_99", "mean_offdiag_pearson"}


def test_diagnose_without_memory_pooling(tiny_dir, tmp_path):
    model = LLM2Comp.from_pretrained(str(tiny_dir), pooling="mean")
    result = diagnose(model, SAMPLE_TEXT, tmp_path)
    assert result["memory_correlation"] is None and (tmp_path / "spectrum.png").is_file()
    assert not (tmp_path / "memory_correlation.png").exists()
    with pytest.raises(ValueError):
        memory_states(model, SAMPLE_TEXT)


def _captured_figures(monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    original = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or original(fig))
    return figures


def test_memory_correlation_plot_is_one_readable_panel_naming_model_and_data(tmp_path, monkeypatch):
    from llm2comp.evaluation.diagnostics import memory_correlation_from_states, plot_memory_correlation

    figures = _captured_figures(monkeypatch)
    correlation = memory_correlation_from_states(torch.randn(20, 4, 16))
    plot_memory_correlation(correlation, tmp_path / "m.png", title="smollm2-135m: trained — 20 STS-B test sentences")
    (figure,) = figures
    heatmaps = [ax for ax in figure.axes if ax.images]
    assert len(heatmaps) == 1 and len(heatmaps[0].texts) == 16  # one panel, a number in every cell
    assert "smollm2-135m: trained" in figure._suptitle.get_text() and "mean over 20 texts" in figure._suptitle.get_text()


def test_loss_plot_has_whole_step_ticks(tmp_path, monkeypatch):
    import json

    from llm2comp.training.loss_plot import plot_losses

    figures = _captured_figures(monkeypatch)
    log = tmp_path / "loss.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    plot_losses(log, tmp_path / "loss.png", title="simcse: m on d")
    ticks = [t for t in figures[0].axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
