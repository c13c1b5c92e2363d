"""`llm2comp export --format sentence-transformers`: a portable folder that SentenceTransformer loads and that
embeds exactly like LLM2Comp.from_pretrained(DIR)."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.export import export_sentence_transformers, load_exported
from llm2comp.testing import SAMPLE_TEXT, make_tiny_model_dir, perturb_lora

TEXTS = SAMPLE_TEXT + ["", "   ", "word " * 60, "Short one.", "Ünïcödé — text ✓"]
STAGES = [
    {"stage": "pretrain", "objective": "kl", "data": "builtin:news", "samples": 123, "max_steps": 7, "batch_size": 4},
    {"stage": "simcse", "objective": "simcse", "data": "builtin:news-sentences", "samples": 456, "max_steps": 9, "batch_size": 32},
]


def _load_st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), trust_remote_code=True, device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A private tiny base, a two-stage 'trained' model (two perturbed LoRA adapters, perturbed memory tokens),
    its reference embeddings, and its export. The base and the training directory are deleted afterwards."""
    root = tmp_path_factory.mktemp("export")
    base = make_tiny_model_dir(root / "base", "llama", seed=3)
    model = LLM2Comp.from_pretrained(base, num_memory_tokens=4, max_length=24)
    model.add_lora(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj", "down_proj"))
    perturb_lora(model, 0)
    model.add_lora(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "o_proj"))  # stage 2: stage 1 merged
    perturb_lora(model, 1)
    model.config.stages = [dict(s) for s in STAGES]
    train_dir = root / "run" / "2-simcse"
    model.save(train_dir)
    (train_dir / "results.json").write_text(json.dumps({"STSBenchmark": 0.61234, "SciFact": None}))

    reference = LLM2Comp.from_pretrained(train_dir)
    assert len(reference.config.adapters) == 2 and reference.peft_model is not None
    expected = {
        "plain": reference.encode(TEXTS),
        "normalized": reference.encode(TEXTS, normalize_embeddings=True),
        "single": reference.encode(TEXTS[2]),
        "prompt": reference.encode(TEXTS, prompt="query: "),
    }
    # the adapters matter: without them (same memory tokens) the embeddings are far off
    untrained = LLM2Comp.from_pretrained(base, num_memory_tokens=4, max_length=24)
    with torch.no_grad():
        untrained.memory.weight.copy_(reference.memory.weight)
    assert np.abs(untrained.encode(TEXTS) - expected["plain"]).max() > 1e-2

    out = export_sentence_transformers(train_dir, root / "exported", scores={"MyTask": 0.5})
    shutil.rmtree(base)
    shutil.rmtree(train_dir)
    return {"root": root, "out": out, "expected": expected, "base": str(base)}


def test_layout_is_self_contained(trained):
    out = trained["out"]
    for name in ("modules.json", "config_sentence_transformers.json", "modeling_llm2comp.py", "README.md",
                 "llm2comp_config.json", "memory_tokens.safetensors", "tokenizer.json",
                 "backbone/config.json", "backbone/model.safetensors", "backbone/tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "adapters").exists()
    modules = json.loads((out / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "modeling_llm2comp.LLM2CompEncoder"}]
    config = json.loads((out / "llm2comp_config.json").read_text())
    assert config["base_model"] == "backbone" and config["adapters"] == [] and config["merged_adapters"] == 0
    assert config["exported_from"]["base_model"] == trained["base"]
    assert config["stages"] == STAGES
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "cosine"
    backbone = json.loads((out / "backbone/config.json").read_text())
    assert "lora" not in json.dumps(backbone).lower()
    assert not list(out.parent.glob(".exported.tmp-*"))  # no staging leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable like any folder, not mkdtemp's owner-only 0700


def test_sentence_transformers_round_trip(trained):
    st = _load_st(trained["out"])
    expected = trained["expected"]
    d = expected["plain"].shape[1]
    assert st.get_embedding_dimension() == d and st.max_seq_length == 24
    np.testing.assert_allclose(st.encode(TEXTS), expected["plain"], atol=1e-5)
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(st.encode(TEXTS, batch_size=batch_size), expected["plain"], atol=1e-5)
    normalized = st.encode(TEXTS, normalize_embeddings=True, batch_size=4)
    np.testing.assert_allclose(normalized, expected["normalized"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    single = st.encode(TEXTS[2])
    assert single.shape == (d,)
    np.testing.assert_allclose(single, expected["single"], atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS, prompt="query: "), expected["prompt"], atol=1e-5)
    tensor = st.encode(TEXTS[:3], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), expected["plain"][:3], atol=1e-5)
    features = st.preprocess(["word " * 100, "short"])
    assert features["input_ids"].shape[1] == 24 and features["memory_mask"].sum(1).tolist() == [4, 4]
    with pytest.raises(TypeError):
        st.encode([("a", "b")])


def test_load_exported_matches(trained):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export's own extra key (exported_from) is no "unknown key"
        model = load_exported(trained["out"])
    np.testing.assert_allclose(model.encode(TEXTS), trained["expected"]["plain"], atol=1e-5)


def test_moved_folder_loads(trained, tmp_path):
    copy = tmp_path / "somewhere" / "else"
    shutil.copytree(trained["out"], tmp_path / "first")
    shutil.move(tmp_path / "first", copy)
    np.testing.assert_allclose(_load_st(copy).encode(TEXTS), trained["expected"]["plain"], atol=1e-5)


def test_reexport_of_an_export(trained, tmp_path):
    out = export_sentence_transformers(trained["out"], tmp_path / "again", scores={"NewTask": 0.7})
    assert "| NewTask | 0.7000 |" in (out / "README.md").read_text()
    np.testing.assert_allclose(_load_st(out).encode(TEXTS), trained["expected"]["plain"], atol=1e-5)


def test_sentence_transformers_save_round_trip(trained, tmp_path):
    st = _load_st(trained["out"])
    st.save(str(tmp_path / "resaved"))
    config = json.loads((tmp_path / "resaved" / "llm2comp_config.json").read_text())
    assert config["base_model"] == "backbone" and config["exported_from"]["base_model"] == trained["base"]
    np.testing.assert_allclose(_load_st(tmp_path / "resaved").encode(TEXTS), trained["expected"]["plain"], atol=1e-5)


def test_model_card(trained):
    card = (trained["out"] / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers")
    assert trained["base"] in card
    assert "| memory tokens | 4 |" in card and "| pooling | memory" in card and "bidirectional" in card
    for stage in STAGES:
        assert f"| {stage['stage']} | {stage['objective']} | {stage['data']} | {stage['samples']} | {stage['max_steps']} |" in card
    assert "| 1 | pretrain |" in card and "| 2 | simcse |" in card
    assert "| STSBenchmark | 0.6123 |" in card and "| MyTask | 0.5000 |" in card and "| SciFact | – |" in card
    assert 'SentenceTransformer("path/to/exported", trust_remote_code=True)' in card
    assert "pip install llm2comp " not in card and "pypi.org" not in card  # not on PyPI: the card must not send users there
    assert "pip install sentence-transformers" in card and "not llm2comp" in card and "load_exported" in card
    assert "encode_query" in card and "encode_document" in card
    # what it scores, with the command that measures it on the folder
    assert "llm2comp evaluate --model path/to/exported --tasks STSBenchmark,SciFact,MyTask --output eval-exported" in card
    assert "license" in card.lower() and "base model apply" in card and "training data" in card.lower()


def test_overwrite_refused_and_allowed(trained, tmp_path):
    source = trained["out"]  # an export is no training dir; use a fresh zero-shot save as the source
    model_dir = tmp_path / "model"
    load_exported(source).save(model_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        export_sentence_transformers(model_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]  # nothing staged, nothing left
    with pytest.raises(ValueError):
        export_sentence_transformers(model_dir, model_dir, overwrite=True)
    with pytest.raises(ValueError):
        export_sentence_transformers(model_dir, tmp_path, overwrite=True)
    assert (model_dir / "llm2comp_config.json").is_file()

    export_sentence_transformers(model_dir, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "modules.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_sentence_transformers(model_dir, empty) == empty and (empty / "modules.json").is_file()
    np.testing.assert_allclose(_load_st(out).encode(TEXTS), trained["expected"]["plain"], atol=1e-5)


@pytest.mark.parametrize("pooling,max_length", [("mean", 20), ("prompteol", 64)])
def test_baseline_pooling_export(tiny_dir, tmp_path, pooling, max_length):
    model = LLM2Comp.from_pretrained(tiny_dir, pooling=pooling, max_length=max_length)
    model.save(tmp_path / "model")
    expected = LLM2Comp.from_pretrained(tmp_path / "model").encode(TEXTS)
    out = export_sentence_transformers(tmp_path / "model", tmp_path / "st")
    st = _load_st(out)
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=5), expected, atol=1e-5)
    features = st.preprocess(TEXTS)
    assert "memory_mask" not in features and features["input_ids"].shape[1] == max_length
    card = (out / "README.md").read_text()
    assert f"| pooling | {pooling}" in card and "No training stage" in card


def test_cli_export(trained, tmp_path):
    from llm2comp.cli import main

    model_dir = tmp_path / "model"
    load_exported(trained["out"]).save(model_dir)
    assert main(["export", str(model_dir), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "modules.json").is_file()
    assert main(["export", str(model_dir), str(tmp_path / "out")]) == 2  # refuses to overwrite



def test_llm2comp_from_pretrained_loads_export(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = LLM2Comp.from_pretrained(trained["out"])
    np.testing.assert_allclose(model.encode(TEXTS), trained["expected"]["plain"], atol=1e-5)


def test_scores_from_results_json_next_to_the_run(tmp_path):
    from llm2comp.model_card import collect_scores, model_card

    run = tmp_path / "2-simcse"
    run.mkdir()
    (tmp_path / "results.json").write_text(json.dumps(
        {"scores": {"base model": {"STS12": 0.1}, "+ SimCSE": {"STS12": 0.3}}, "minutes": 3.0}))
    rows, source = collect_scores(run, None)
    assert rows == {"base model": {"STS12": 0.1}, "+ SimCSE": {"STS12": 0.3}} and "results.json" in source
    rows, _ = collect_scores(run, {"Extra": 0.9})
    assert list(rows) == ["this model", "base model", "+ SimCSE"]
    config = {"num_memory_tokens": 8, "pooling": "memory", "max_length": 512, "bidirectional": True,
              "stages": [], "exported_from": {"base_model": "smollm2-135m"}}
    card = model_card(config, dimension=576, scores=(rows, source), name="my-model")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "| task | this model | base model | + SimCSE |" in card and "| STS12 | – | 0.1000 | 0.3000 |" in card


def test_export_in_lower_precision(tiny_dir, tmp_path):
    from safetensors import safe_open

    LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=2, max_length=24).save(tmp_path / "model")
    expected = LLM2Comp.from_pretrained(tmp_path / "model").encode(TEXTS)
    out = export_sentence_transformers(tmp_path / "model", tmp_path / "bf16", dtype="bfloat16")
    with safe_open(out / "backbone" / "model.safetensors", "pt") as weights:
        assert weights.get_tensor(next(iter(weights.keys()))).dtype == torch.bfloat16
    np.testing.assert_allclose(_load_st(out).encode(TEXTS), expected, atol=0.1)


@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
                    reason="onnx / onnxruntime / onnxscript not installed")
def test_sentence_transformers_load_on_the_onnx_backend(trained, tmp_path, monkeypatch):
    # SentenceTransformer(..., model_kwargs={"backend": ...}) runs the exported model on an llm2comp backend
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    st = SentenceTransformer(str(trained["out"]), trust_remote_code=True, device="cpu", local_files_only=True,
                             model_kwargs={"backend": "onnx"})
    assert st[0].model.backend == "onnx"
    np.testing.assert_allclose(st.encode(TEXTS), trained["expected"]["plain"], atol=2e-5, rtol=1e-4)


def test_card_gives_the_evaluation_command_the_training_data_and_the_prompts(tmp_path):
    from llm2comp.model_card import collect_scores, model_card

    run = tmp_path / "sup"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"STSBenchmark": 0.7, "SciFact": 0.3}))
    (run / "results_full.json").write_text(json.dumps({"settings": {"limit": 200, "seed": 3, "batch_size": 32}}))
    config = {"num_memory_tokens": 8, "pooling": "memory", "max_length": 512, "bidirectional": True,
              "exported_from": {"base_model": "smollm2-135m"},
              "stages": [{"stage": "supervised", "objective": "supervised", "data": "builtin:shared-pairs+builtin:nli-pairs",
                          "decontamination": {"per_source": {"stsb": {"checked": 5, "dropped": 1}}}}],
              "prompts": {"query": "Retrieve semantically similar text: {text}\n"}}
    card = model_card(config, dimension=576, scores=collect_scores(run, None), name="sup-model")
    assert "llm2comp evaluate --model path/to/sup-model --tasks STSBenchmark,SciFact --limit 200 --seed 3" in card
    assert "| SciFact | cc-by-nc-4.0 |" in card and "| SNLI | see the dataset |" in card and "decontamination" in card
    assert "## Prompts" in card and "| query | `Retrieve semantically similar text: {text}\\n` |" in card
    assert "queries with the query prompt the model was trained with" in card


def test_export_on_a_gpu_machine_writes_float32_from_the_cpu(tiny_dir, tmp_path, monkeypatch):
    """On a CUDA machine models load on the GPU in bf16 by default; the export still merges and writes float32 (what
    it documents), on the CPU: the device and the written dtype are checked, not only a dtype on the side."""
    from safetensors import safe_open

    from llm2comp.testing import record_backbone_moves

    LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=2, max_length=24).save(tmp_path / "model")
    moves = record_backbone_moves(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert LLM2Comp.from_pretrained(tmp_path / "model").dtype == torch.bfloat16 and moves == ["cuda:0"]  # the default
    moves.clear()
    out = export_sentence_transformers(tmp_path / "model", tmp_path / "exported")
    assert moves == ["cpu"]
    with safe_open(out / "backbone" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}
