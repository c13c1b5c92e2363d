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
