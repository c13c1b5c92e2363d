"""The fitted normalizer: standardisation fitted on training text, applied by encode, saved, exported, dropped
when the weights change."""

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.persistence import NORMALIZER_NAME
from llm2comp.pooling import Normalizer
from llm2comp.testing import SAMPLE_TEXT

FIT = SAMPLE_TEXT + [t.upper() for t in SAMPLE_TEXT] + [t[: len(t) // 2] for t in SAMPLE_TEXT]


def test_normalizer_fit_and_apply():
    x = torch.randn(50, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    norm = Normalizer.fit(x)
    y = norm(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(4), atol=1e-5, rtol=0)
    constant = Normalizer.fit(torch.ones(3, 2))  # zero variance: no division by zero
    assert torch.isfinite(constant(torch.ones(1, 2))).all()
    with pytest.raises(ValueError, match="at least 2"):
        Normalizer.fit(torch.ones(1, 2))


@pytest.mark.parametrize("pooling", ["memory", "prompteol"])
def test_encode_applies_it_and_save_load_keeps_it(tiny_dir, tmp_path, pooling):
    model = LLM2Comp.from_pretrained(tiny_dir, pooling=pooling)
    raw = model.encode(FIT)
    model.fit_normalizer(FIT, source="unit test")
    standardised = model.encode(FIT)
    np.testing.assert_allclose(standardised, (raw - raw.mean(0)) / raw.std(0, ddof=1), atol=1e-4)
    assert model.config.normalizer == {"source": "unit test", "texts": len(FIT)}
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / NORMALIZER_NAME).is_file()
    loaded = LLM2Comp.from_pretrained(tmp_path / "m")
    np.testing.assert_allclose(loaded.encode(SAMPLE_TEXT), model.encode(SAMPLE_TEXT), atol=1e-5)
    (tmp_path / "m" / NORMALIZER_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="normalizer"):
        LLM2Comp.from_pretrained(tmp_path / "m")


def test_training_further_drops_it(tiny_dir, tmp_path):
    model = LLM2Comp.from_pretrained(tiny_dir)
    raw = model.encode(SAMPLE_TEXT)
    model.fit_normalizer(FIT)
    model.add_lora(r=4, alpha=8)  # new weights: the statistics no longer describe them
    assert model.normalizer is None and model.config.normalizer is None
    np.testing.assert_allclose(model.encode(SAMPLE_TEXT), raw, atol=1e-5)  # fresh LoRA is a no-op
    model.save(tmp_path / "m")
    assert not (tmp_path / "m" / NORMALIZER_NAME).exists()


def test_export_keeps_it(tiny_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from llm2comp.export import export_sentence_transformers

    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=2, max_length=32)
    model.fit_normalizer(FIT)
    model.save(tmp_path / "run")
    expected = model.encode(SAMPLE_TEXT)
    out = export_sentence_transformers(tmp_path / "run", tmp_path / "st")
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu", local_files_only=True)
    np.testing.assert_allclose(st.encode(SAMPLE_TEXT), expected, atol=1e-4)


def test_cli_fit_normalizer_on_pairs(tiny_dir, tmp_path):
    import json

    from llm2comp.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"query": a, "positive": b, "instruction": "Find"}) for a, b in zip(FIT, FIT[1:])))
    assert main(["fit-normalizer", str(tiny_dir), "--data", str(data), "--output", str(tmp_path / "m"),
                 "--pooling", "mean", "--samples", "10", "--no-instructions"]) == 0
    model = LLM2Comp.from_pretrained(tmp_path / "m")
    assert model.config.pooling == "mean" and model.normalizer is not None
    assert model.config.normalizer["texts"] == 10
    assert main(["fit-normalizer", str(tiny_dir), "--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "x")]) == 2


def test_pca_rotation_keeps_cosines_and_orders_variance():
    x = torch.randn(200, 6) @ torch.randn(6, 6) + 3
    plain, rotated = Normalizer.fit(x), Normalizer.fit(x, pca=True)
    assert plain.rotation is None and rotated.rotation.shape == (6, 6)
    torch.testing.assert_close(rotated.rotation.T @ rotated.rotation, torch.eye(6), atol=1e-5, rtol=0)  # orthogonal
    a, b = plain(x), rotated(x)
    cos = lambda e: torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(e, dim=1).T  # noqa: E731
    torch.testing.assert_close(cos(a), cos(b), atol=1e-5, rtol=0)  # full-size similarities unchanged
    variances = b.var(0)
    assert (variances[:-1] >= variances[1:] - 1e-5).all() and variances[0] > 1.5 * variances[-1]  # largest first
    # the first n rotated dimensions carry at least as much variance as any n standardised ones
    assert variances[:2].sum() >= a.var(0).sort(descending=True).values[:2].sum() - 1e-4
    with pytest.raises(ValueError, match="rotation"):
        Normalizer(torch.zeros(3), torch.ones(3), torch.eye(2))


def test_pca_normalizer_saved_loaded_and_cut(tiny_dir, tmp_path):
    model = LLM2Comp.from_pretrained(tiny_dir)
    model.fit_normalizer(FIT)
    plain = model.encode(FIT, normalize_embeddings=True)
    model.fit_normalizer(FIT, source="unit test", pca=True)
    assert model.config.normalizer == {"source": "unit test", "texts": len(FIT), "rotation": "pca"}
    rotated = model.encode(FIT, normalize_embeddings=True)
    np.testing.assert_allclose(rotated @ rotated.T, plain @ plain.T, atol=1e-4)
    model.save(tmp_path / "m")
    loaded = LLM2Comp.from_pretrained(tmp_path / "m")
    assert loaded.normalizer.rotation is not None
    np.testing.assert_allclose(loaded.encode(SAMPLE_TEXT), model.encode(SAMPLE_TEXT), atol=1e-5)
    cut = loaded.encode(FIT, truncate_dim=4)
    full = loaded.encode(FIT)
    np.testing.assert_allclose(cut, full[:, :4], atol=1e-5)  # the cut keeps the leading principal axes
    assert cut.var(0).sum() >= np.sort(model.encode(FIT)[:, :4].var(0)).sum() - 1e-4


def test_training_config_fits_a_rotating_normalizer(tiny_dir, tmp_path):
    import json

    from llm2comp.training.config import TrainConfig
    from llm2comp.training.run import train

    with pytest.raises(ValueError, match="fit_normalizer too"):
        TrainConfig.from_dict({"stage": "supervised", "normalizer_pca": True, "warmup_steps": 0, "max_steps": 2})
    with pytest.raises(ValueError, match="normalizer_pca too"):
        TrainConfig.from_dict({"stage": "supervised", "fit_normalizer": 20, "normalizer_dims": [4], "warmup_steps": 0, "max_steps": 2})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"query": a, "positive": b}) for a, b in zip(FIT, FIT[1:])))
    cfg = TrainConfig.from_dict(dict(stage="supervised", model=str(tiny_dir), data=str(data), output=str(tmp_path / "run"),
                                     max_steps=1, batch_size=4, warmup_steps=0, save_steps=1, min_chars=0,
                                     num_memory_tokens=2, max_length=48, fit_normalizer=20, normalizer_pca=True,
                                     normalizer_dims=[4, 8, 4096]))
    model = LLM2Comp.from_pretrained(train(cfg))
    assert model.normalizer.rotation is not None and model.config.normalizer["rotation"] == "pca"
    assert model.config.matryoshka_dims == [8, 4]  # declared, so serve accepts dimensions 8 and 4; 4096 > tiny: left out


def test_cli_fit_normalizer_pca_records_cut_sizes(tiny_dir, tmp_path):
    import json

    from llm2comp.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"query": a, "positive": b}) for a, b in zip(FIT, FIT[1:])))
    assert main(["fit-normalizer", str(tiny_dir), "--data", str(data), "--output", str(tmp_path / "m"),
                 "--samples", "20", "--pca", "--matryoshka-dims", "4,8"]) == 0
    model = LLM2Comp.from_pretrained(tmp_path / "m")
    assert model.normalizer.rotation is not None and model.config.matryoshka_dims == [8, 4]


def test_centre_only_keeps_each_dimension_s_spread_and_the_centred_cosines():
    x = torch.randn(200, 6) * torch.tensor([1.0, 10.0, 0.1, 3.0, 2.0, 0.5]) + 5
    centred = Normalizer.fit(x, standardise=False)
    torch.testing.assert_close(centred.scale, torch.ones(6))
    torch.testing.assert_close(centred(x), x - x.mean(0), atol=1e-5, rtol=0)  # no dimension reweighted
    cos = lambda e: torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(e, dim=1).T  # noqa: E731
    rotated = Normalizer.fit(x, standardise=False, pca=True)
    torch.testing.assert_close(cos(rotated(x)), cos(x - x.mean(0)), atol=1e-5, rtol=0)
    variances = rotated(x).var(0)
    assert (variances[:-1] >= variances[1:] - 1e-4).all()  # still cut-ready: largest variance first


def test_cli_fit_normalizer_centre_only_is_recorded_and_travels(tiny_dir, tmp_path):
    import json

    from llm2comp.cli import main
    from llm2comp.training.config import TrainConfig

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"query": a, "positive": b}) for a, b in zip(FIT, FIT[1:])))
    assert main(["fit-normalizer", str(tiny_dir), "--data", str(data), "--output", str(tmp_path / "m"),
                 "--samples", "20", "--pca", "--centre-only"]) == 0
    model = LLM2Comp.from_pretrained(tmp_path / "m")
    assert model.config.normalizer["scale"] == "none" and model.config.normalizer["rotation"] == "pca"
    torch.testing.assert_close(model.normalizer.scale, torch.ones_like(model.normalizer.scale))
    fitted = model.normalizer
    model.normalizer = None
    raw = model.encode(SAMPLE_TEXT, convert_to_tensor=True)
    model.normalizer = fitted
    torch.testing.assert_close(model.encode(SAMPLE_TEXT, convert_to_tensor=True),
                               (raw - fitted.mean) @ fitted.rotation, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="fit_normalizer too"):
        TrainConfig.from_dict({"stage": "supervised", "normalizer_standardise": False, "warmup_steps": 0, "max_steps": 2})
