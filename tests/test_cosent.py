"""Graded pairs (a 'score' each) train with CoSENT: the loss, the data that carries scores, and a training run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from llm2comp import LLM2Comp
from llm2comp.data.corpus import DataError, read_jsonl
from llm2comp.data.decontamination import Decontaminator, evaluation_texts, normalise
from llm2comp.data.pair_sources import load_pair_jsonl, load_pairs
from llm2comp.data.pairs import PairDataset
from llm2comp.objectives.contrastive import SupervisedObjective, cosent, matryoshka
from llm2comp.testing import SAMPLE_TEXT, make_tiny_benchmark_dir
from llm2comp.training.config import TrainConfig

from test_decontamination import _contaminated_dir


def test_cosent_by_hand():
    # two pairs: pair 0 scored higher, so loss = log(1 + exp(scale (cos_1 - cos_0)))
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    second = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # cos 0.7071 and 0
    loss = cosent(first, second, torch.tensor([4.0, 1.0]), scale=2.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(2 * (0.0 - 2 ** -0.5))), rel=1e-5)
    swapped = cosent(first, second, torch.tensor([1.0, 4.0]), scale=2.0)  # wrong order: larger loss
    assert swapped.item() == pytest.approx(math.log1p(math.exp(2 * 2 ** -0.5)), rel=1e-5)
    assert cosent(first, second, torch.tensor([2.0, 2.0])).item() == 0.0  # equal scores: nothing to order


def test_cosent_matches_an_explicit_sum_and_sentence_transformers():
    torch.manual_seed(0)
    a, b, scores = torch.randn(7, 12), torch.randn(7, 12), torch.tensor([0.0, 1.2, 5.0, 3.3, 3.3, 2.0, 4.1])
    cos = F.cosine_similarity(a, b) * 20
    terms = [cos[j] - cos[i] for i in range(7) for j in range(7) if scores[i] > scores[j]]
    expected = torch.log(1 + torch.exp(torch.stack(terms)).sum())
    torch.testing.assert_close(cosent(a, b, scores), expected)
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    reference = losses.CoSENTLoss.__new__(losses.CoSENTLoss)
    torch.nn.Module.__init__(reference)
    from sentence_transformers.util import pairwise_cos_sim

    reference.scale, reference.similarity_fct = 20.0, pairwise_cos_sim
    torch.testing.assert_close(cosent(a, b, scores), reference.compute_loss_from_embeddings([a, b], scores))
    # nested over Matryoshka sizes: the mean of the full and the cut losses
    nested = matryoshka(cosent, a, b, [4], scores=scores)
    torch.testing.assert_close(nested, (cosent(a, b, scores) + cosent(a[:, :4], b[:, :4], scores)) / 2)


def _scored(n=6):
    return [{"query": SAMPLE_TEXT[i % 8], "positive": SAMPLE_TEXT[(i + 1) % 8], "negative": SAMPLE_TEXT[(i + 3) % 8],
             "score": float(i % 5), "source": "g", "index": i} for i in range(n)]


def test_a_graded_batch_trains_cosent_on_query_and_positive(tiny_dir):
    torch.manual_seed(0)
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=3, max_length=128).eval()
    objective = SupervisedObjective(model, cosent_scale=10.0)
    pairs = _scored()
    batch = objective.collate(pairs)
    assert batch["score"].tolist() == [p["score"] for p in pairs]
    assert "negative_input_ids" not in batch  # CoSENT compares pairs with each other: no hard negatives encoded
    loss = objective(model, batch)["loss"]
    with torch.no_grad():
        queries = model.encode([p["query"] for p in pairs], convert_to_tensor=True, normalize_embeddings=False)
        positives = model.encode([p["positive"] for p in pairs], convert_to_tensor=True, normalize_embeddings=False)
    assert loss.item() == pytest.approx(cosent(queries, positives, batch["score"], scale=10.0).item(), rel=1e-4)
    with pytest.raises(ValueError, match="mixes graded"):
        objective.collate([*pairs[:2], {k: v for k, v in pairs[2].items() if k != "score"}])


def test_scores_in_pair_files_and_their_checks(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": "b", "score": 3}) + "\n" + json.dumps({"query": "c", "positive": "d", "score": 0.5}) + "\n")
    assert [p["score"] for p in load_pair_jsonl(path)] == [3.0, 0.5]
    for bad in ("high", float("nan"), True):
        path.write_text(json.dumps({"query": "a", "positive": "b", "score": bad}) + "\n")
        with pytest.raises(DataError, match="score"):
            load_pair_jsonl(path)
    mixed = [{"query": "a", "positive": "b", "source": "s", "score": 1.0}, {"query": "c", "positive": "d", "source": "s"}]
    with pytest.raises(DataError, match="some pairs have a 'score'"):
        PairDataset(mixed, group_size=1)
    # graded and ungraded sources side by side are fine (each batch holds one source)
    PairDataset([mixed[0], {**mixed[1], "source": "t"}], group_size=1)


def test_builtin_stsb_scores_keep_every_clean_train_row_with_its_score(tmp_path):
    folder, _ = _contaminated_dir(tmp_path / "bench")
    rows = read_jsonl(folder / "mteb/STSBenchmark/train.jsonl")
    dirty = load_pairs(f"builtin:stsb-scores:{folder}")
    assert len(dirty) == len(rows)
    assert sorted(p["score"] for p in dirty) == sorted(float(r["score"]) for r in rows)
    clean = Decontaminator.from_folder(folder)
    pairs = load_pairs(f"builtin:stsb-scores:{folder}", clean=clean)
    texts = set().union(*evaluation_texts(folder).values())
    assert pairs and not any(normalise(p[k]) in texts for p in pairs for k in ("query", "positive"))
    assert clean.report()["per_source"]["stsb-scores"]["dropped"] == 5
    by_pair = {frozenset((r["sentence1"], r["sentence2"])): float(r["score"]) for r in rows}
    assert all(by_pair[frozenset((p["query"], p["positive"]))] == p["score"] for p in pairs)
    assert {p["source"] for p in pairs} == {"stsb-scores"}


def test_train_with_graded_and_ungraded_sources(tiny_dir, tmp_path, monkeypatch):
    from llm2comp.training.run import train

    folder = make_tiny_benchmark_dir(tmp_path / "bench")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(folder))
    cfg = TrainConfig.from_dict(dict(
        stage="supervised", model=str(tiny_dir), data="builtin:shared-pairs+builtin:stsb-scores", output=str(tmp_path / "run"),
        max_steps=4, batch_size=2, save_steps=4, max_length=128, num_memory_tokens=3, lora_r=4, lora_alpha=8,
        learning_rate=1e-3, warmup_steps=0, cosent_scale=20.0))
    output = train(cfg)
    records = [json.loads(line) for line in (output / "loss.jsonl").read_text().splitlines() if line.strip()]
    assert [r for r in records if "loss" in r] and all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert json.loads((output / "train_config.json").read_text())["cosent_scale"] == 20.0
    # the loss plot draws one curve per source (InfoNCE and CoSENT losses differ in scale)
    from llm2comp.data.pairs import build_contrastive_dataset
    from llm2comp.training.loss_plot import loss_series, plot_losses, step_sources_of

    sources = step_sources_of(build_contrastive_dataset(cfg.stage, cfg.data_settings()), output / "data_order.jsonl")
    assert sorted(sources) == [1, 2, 3, 4] and set(sources.values()) <= {"stsb", "stsb-scores", "banking77", "scifact"}
    points = [(r["step"], r["loss"]) for r in records if "loss" in r]
    series = loss_series(points, sources)
    assert sum(len(v) for v in series.values()) == 4 and all(sources[step] == name for name, part in series.items() for step, _ in part)
    assert loss_series(points, {step: "one" for step in sources}) == {"loss": points} and loss_series(points) == {"loss": points}
    assert plot_losses(output / "loss.jsonl", tmp_path / "per-source.png", step_sources=sources).is_file()
    assert LLM2Comp.from_pretrained(str(output)).config.stages[-1]["decontamination"]["per_source"]["stsb-scores"]["checked"] > 0
    with pytest.raises(ValueError, match="cosent_scale"):
        TrainConfig.from_dict(dict(stage="supervised", cosent_scale=0))
