"""Behaviour frozen across refactors: a model saved by release 0.1.0's code loads and embeds as it did, and the
shipped default embeds 100 fixed news sentences as it did (fixtures written by tests/fixtures/make_fixtures.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llm2comp import LLM2Comp
from llm2comp.testing import SAMPLE_TEXT, alias_installed

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


@pytest.mark.parametrize("name,fixture", [("gemma3-270m-nli", "gemma3-270m-nli-100.npz"), ("smollm2-135m-sup", "default-100.npz"),
                                          ("smollm2-135m-nli", "smollm2-135m-nli-100.npz")])
def test_the_shipped_encoders_embed_100_fixed_sentences_as_before(name, fixture):
    if not alias_installed(name):
        pytest.skip(f"the backbone packages of {name} are not installed")
    reference = np.load(FIXTURES / fixture)
    model = LLM2Comp.from_pretrained(name)
    embeddings = model.encode(list(reference["texts"]))
    assert model.similarity_pairwise(embeddings, reference["embeddings"]).min() > 0.99999
    # the absolute tolerance on the embeddings' own scale (Gemma's are ~3x SmolLM2's): kernels differ between CPUs
    scale = np.abs(reference["embeddings"]).max() / 10
    np.testing.assert_allclose(embeddings, reference["embeddings"], atol=1e-4 * scale, rtol=1e-4)
