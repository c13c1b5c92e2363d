"""Matryoshka dimensions: the nested loss, training records the sizes, encode(truncate_dim=), serve's `dimensions`,
and the sentence-transformers export cut the same way."""

import json

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.objectives.contrastive import check_matryoshka_dims, info_nce, matryoshka_info_nce
from llm2comp.testing import SAMPLE_TEXT
from llm2comp.training.config import TrainConfig
from llm2comp.training.run import train


def test_nested_loss_is_the_mean_over_sizes():
    torch.manual_seed(0)
    q, c = torch.randn(6, 16), torch.randn(9, 16)
    expected = (info_nce(q, c, 0.05) + info_nce(q[:, :8], c[:, :8], 0.05) + info_nce(q[:, :4], c[:, :4], 0.05)) / 3
    assert matryoshka_info_nce(q, c, [4, 8], temperature=0.05).item() == pytest.approx(expected.item(), rel=1e-6)
    assert matryoshka_info_nce(q, c, [], temperature=0.05).item() == pytest.approx(info_nce(q, c, 0.05).item())
    # the first dimensions carry a gradient from every size, the last ones only from the full size
    q.requires_grad_(True)
    matryoshka_info_nce(q, c, [4], temperature=0.05).backward()
    plain = q.detach().clone().requires_grad_(True)
    (info_nce(plain, c, 0.05) / 2).backward()
    assert torch.allclose(q.grad[:, 4:], plain.grad[:, 4:], atol=1e-6)
    assert not torch.allclose(q.grad[:, :4], plain.grad[:, :4])
    assert check_matryoshka_dims([64, 256, 128, 128]) == [256, 128, 64]
    with pytest.raises(ValueError):
        check_matryoshka_dims([0])
    with pytest.raises(ValueError):
        check_matryoshka_dims([16], hidden_size=16)
    with pytest.raises(ValueError, match="contrastive"):
        TrainConfig.from_dict(dict(stage="pretrain", matryoshka_dims=[8]))


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mrl")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q {t}", "positive": t}) + "\n" for t in SAMPLE_TEXT * 2))
    output = train(TrainConfig.from_dict(dict(stage="supervised", model=str(tiny_dir), data=str(pairs), output=str(root / "sup"),
                                              max_steps=2, batch_size=4, save_steps=2, max_length=48, warmup_steps=0,
                                              num_memory_tokens=3, matryoshka_dims=[8, 16])))
    return LLM2Comp.from_pretrained(output), output


def test_training_records_the_sizes_and_encode_cuts(trained):
    model, _ = trained
    assert model.config.matryoshka_dims == [16, 8]
    full = model.encode(SAMPLE_TEXT[:4])
    cut = model.encode(SAMPLE_TEXT[:4], truncate_dim=8)
    np.testing.assert_allclose(cut, full[:, :8], atol=1e-6)
    unit = model.encode(SAMPLE_TEXT[:4], truncate_dim=8, normalize_embeddings=True)
    np.testing.assert_allclose(unit, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-5)
    assert model.encode(SAMPLE_TEXT[0], truncate_dim=16).shape == (16,)
    assert model.encode([], truncate_dim=8).shape == (0, 8)
    for bad in (0, model.get_sentence_embedding_dimension() + 1, 2.5, True):
        with pytest.raises(ValueError, match="truncate_dim"):
            model.encode(SAMPLE_TEXT[:1], truncate_dim=bad)


def test_serve_honours_the_trained_dimensions(trained):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from llm2comp.serving import create_app

    model, _ = trained
    with TestClient(create_app(model, "m")) as client:
        answer = client.post("/v1/embeddings", json={"input": SAMPLE_TEXT[:3], "dimensions": 8})
        assert answer.status_code == 200
        rows = np.array([d["embedding"] for d in answer.json()["data"]])
        np.testing.assert_allclose(rows, model.encode(SAMPLE_TEXT[:3], truncate_dim=8, normalize_embeddings=True), atol=1e-5)
        full = model.get_sentence_embedding_dimension()
        assert client.post("/v1/embeddings", json={"input": ["x"], "dimensions": full}).status_code == 200
        refused = client.post("/v1/embeddings", json={"input": ["x"], "dimensions": 12})
        assert refused.status_code == 400 and "16, 8" in refused.json()["error"]["message"]
        listed = client.get("/v1/models").json()["data"][0]
        assert listed["dimensions"] == [full, 16, 8] and listed["backend"] == "torch" and listed["threads"] >= 1


def test_sentence_transformers_export_cuts_the_same_way(trained, tmp_path):
    from sentence_transformers import SentenceTransformer

    from llm2comp.export import export_sentence_transformers

    model, output = trained
    out = export_sentence_transformers(output, tmp_path / "st")
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu", local_files_only=True, truncate_dim=8)
    np.testing.assert_allclose(st.encode(SAMPLE_TEXT[:3]), model.encode(SAMPLE_TEXT[:3], truncate_dim=8), atol=1e-5)
    assert "8" in (out / "README.md").read_text().split("Matryoshka")[1][:200]


def test_model_card_says_how_the_sizes_were_made():
    from llm2comp.model_card import model_card

    base = {"base_model": "smollm2-135m", "pooling": "memory", "num_memory_tokens": 8, "max_length": 512,
            "bidirectional": False, "matryoshka_dims": [128, 64], "stages": []}
    trained = model_card(base, 576)
    rotated = model_card({**base, "normalizer": {"source": "t", "texts": 10, "rotation": "pca"}}, 576)
    assert "trained to be cut to" in trained and "principal axes" not in trained
    assert "principal axes" in rotated and "truncate_dim=64" in rotated
    assert "Matryoshka" not in model_card({**base, "matryoshka_dims": []}, 576)
