"""Stage-1 training: CLI + YAML, outputs that load, resume after kill -9, the NaN guard."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm2comp import LLM2Comp
from llm2comp.data.corpus import DataError, TokenizedTexts
from llm2comp.testing import SAMPLE_TEXT
from llm2comp.training.config import TrainConfig
from llm2comp.training.run import train
from llm2comp.training.checkpoints import COMPLETE_MARKER, last_complete_checkpoint
from llm2comp.training.trainer import NonFiniteLossError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    paragraphs = [f"{a} {b}" for a in SAMPLE_TEXT for b in SAMPLE_TEXT]
    path.write_text("\n\n".join(paragraphs))
    return path


def _config(tiny_dir, corpus, output, **overrides):
    values = dict(stage="pretrain", objective="kl", model=str(tiny_dir), data=str(corpus), output=str(output),
                  max_steps=4, batch_size=2, save_steps=2, min_chars=0, max_length=96, num_memory_tokens=3, split_margin=3)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stage: pretrain\nobjective: nll\nmax_steps: 7\nlearning_rate: 0.001\n")
    cfg = TrainConfig.from_yaml(path, max_steps=3)
    assert (cfg.objective, cfg.max_steps, cfg.learning_rate) == ("nll", 3, 0.001)
    path.write_text("stage: pretrain\nnot_a_setting: 1\n")
    with pytest.raises(ValueError, match="not_a_setting"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="objective"):
        TrainConfig.from_dict({"objective": "xyz"})
    assert TrainConfig.from_dict({"stage": "simcse"}).learning_rate == 3e-5
    with pytest.warns(UserWarning, match="never reaches"):  # the supervised default warmup (200) on a short run
        TrainConfig.from_dict({"stage": "supervised", "max_steps": 20})
    assert TrainConfig.from_dict({"stage": "supervised", "pooling": "mean"}).pooling == "mean"
    with pytest.raises(ValueError, match="unknown pooling"):
        TrainConfig.from_dict({"stage": "simcse", "pooling": "cls"})
    with pytest.raises(ValueError, match="contrastive stages"):
        TrainConfig.from_dict({"stage": "pretrain", "pooling": "mean"})


def test_recipe_base_overrides_and_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("stage: pretrain\nobjective: nll\nmax_steps: 7\nlearning_rate: 0.001\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "variant.yaml").write_text("base: ../base.yaml\nmax_steps: 9\n")
    cfg = TrainConfig.from_yaml(tmp_path / "sub" / "variant.yaml", learning_rate=0.01)
    assert (cfg.objective, cfg.max_steps, cfg.learning_rate) == ("nll", 9, 0.01)  # base < variant < overrides
    (tmp_path / "base.yaml").write_text("base: sub/variant.yaml\nstage: pretrain\n")
    with pytest.raises(ValueError, match="cycle"):
        TrainConfig.from_yaml(tmp_path / "sub" / "variant.yaml")
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ValueError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "lost.yaml")


def test_recipe_variants_differ_from_the_default_only_where_they_say():
    recipes = Path(__file__).parent.parent / "src" / "llm2comp" / "resources" / "recipes"
    default = TrainConfig.from_yaml(recipes / "smollm2-135m-default.yaml").to_dict()
    unrotated = {"normalizer_pca", "normalizer_dims"}  # measured before the default's normalizer was rotated
    for name, changed in [("smollm2-135m-default-matryoshka.yaml", {"output", "matryoshka_dims", *unrotated}),
                          ("gemma3-270m-default.yaml", {"output", "model", *unrotated})]:
        variant = TrainConfig.from_yaml(recipes / name).to_dict()
        assert {k for k in default if default[k] != variant[k]} == changed, name


def test_shipped_configs_parse():
    root = Path(__file__).parent.parent / "configs"
    recipes = root.parent / "src" / "llm2comp" / "resources" / "recipes"
    configs = sorted([*root.glob("paper/*.yaml"), *root.glob("smollm2-135m/*.yaml"), *recipes.glob("*.yaml")])
    assert configs
    for path in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a shipped config must not trip its own sanity warnings
            TrainConfig.from_yaml(path)


@pytest.mark.parametrize("objective", ["kl", "nll", "rc", "mntp"])
def test_train_writes_a_loadable_model(tiny_dir, corpus, tmp_path, objective):
    output = train(_config(tiny_dir, corpus, tmp_path / objective, objective=objective))
    for name in ("llm2comp_config.json", "memory_tokens.safetensors", "loss.jsonl", "loss.png", "data_order.jsonl"):
        assert (output / name).is_file(), name
    assert [p.name for p in sorted((output / "checkpoints").iterdir())] == ["checkpoint-2", "checkpoint-4"]
    assert all((p / COMPLETE_MARKER).is_file() for p in (output / "checkpoints").iterdir())
    model = LLM2Comp.from_pretrained(output)
    assert model.config.stages[-1]["objective"] == objective
    assert model.config.pooling == ("mean" if objective == "mntp" else "memory")
    assert model.config.max_length == 512  # the training length (96) bounded training inputs only
    emb = model.encode(SAMPLE_TEXT[:2])
    assert emb.shape == (2, model.get_sentence_embedding_dimension()) and np.isfinite(emb).all()
    base = LLM2Comp.from_pretrained(tiny_dir, pooling=model.config.pooling, bidirectional=True, num_memory_tokens=3)
    assert not np.allclose(base.encode(SAMPLE_TEXT[:2]), emb, atol=1e-6)  # training changed something
    losses = [json.loads(line) for line in (output / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2, 3, 4]


def test_causal_encoder_option(tiny_dir, corpus, tmp_path):
    # `bidirectional: false` (CLI --attention causal) trains and saves a causal encoder; the default is the recipe's
    causal = train(_config(tiny_dir, corpus, tmp_path / "causal", max_steps=1, bidirectional=False))
    recipe = train(_config(tiny_dir, corpus, tmp_path / "recipe", max_steps=1))
    assert LLM2Comp.from_pretrained(causal).config.bidirectional is False
    assert LLM2Comp.from_pretrained(recipe).config.bidirectional is True

    def first_loss(output):
        return next(json.loads(line)["loss"] for line in (output / "loss.jsonl").read_text().splitlines() if '"loss"' in line)

    assert first_loss(causal) != pytest.approx(first_loss(recipe), rel=1e-4)  # same weights, data and seed: only the mask differs
    with pytest.raises(ValueError, match="mntp needs bidirectional"):
        TrainConfig.from_dict({"objective": "mntp", "bidirectional": False})


def test_stages_that_never_read_the_memory_leave_it_frozen_at_its_init(tiny_dir, corpus, tmp_path):
    # MNTP and mean-pooling contrastive stages train no memory tokens (a parameter without gradient breaks DDP),
    # yet a fresh model still gets the configured init, so a later memory-pooling stage starts from it
    phrase = " means in one word"
    fresh = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, memory_init=phrase).memory.weight.detach()
    mntp = train(_config(tiny_dir, corpus, tmp_path / "mntp", objective="mntp", max_steps=2, memory_init=phrase))
    simcse = train(_config(tiny_dir, corpus, tmp_path / "simcse", stage="simcse", pooling="mean", max_steps=2,
                           memory_init=phrase))
    kl = train(_config(tiny_dir, corpus, tmp_path / "kl", max_steps=2, memory_init=phrase))
    saved = {run.name: load_file(run / "memory_tokens.safetensors")["weight"] for run in (mntp, simcse, kl)}
    torch.testing.assert_close(saved["mntp"], fresh, rtol=0, atol=0)
    torch.testing.assert_close(saved["simcse"], fresh, rtol=0, atol=0)
    assert not torch.allclose(saved["kl"], fresh)  # a memory objective does train them
    # an MNTP model keeps the mean pooling it was trained with unless a later stage asks for its memory tokens
    assert LLM2Comp.load(mntp).config.pooling == "mean"
    read = LLM2Comp.load(mntp, pooling="memory")
    assert read.config.pooling == "memory"
    torch.testing.assert_close(read.memory.weight.detach(), fresh, rtol=0, atol=0)


def test_ordinary_long_paragraphs_train_by_default_and_the_data_is_reported(tiny_dir, tmp_path, capsys):
    # the README's case: paragraphs of 1,000+ characters, a short --max-length; nothing set about filtering
    long = tmp_path / "paragraphs.txt"
    long.write_text("\n\n".join(" ".join(SAMPLE_TEXT * 4)[i:] for i in range(6)))
    cfg = TrainConfig.from_dict(dict(model=str(tiny_dir), data=str(long), output=str(tmp_path / "run"), max_steps=1,
                                     batch_size=2, max_length=64, num_memory_tokens=3, split_margin=3))
    train(cfg)
    assert "data " + str(long) + ": kept 6 of 6 texts; 6 truncated to 60 tokens" in capsys.readouterr().err
    # the paper's filter (drop what is too long) on the same file: a clear error naming the flags
    with pytest.raises(DataError, match="6 dropped for exceeding 60 tokens.*--max-length"):
        train(TrainConfig.from_dict({**cfg.to_dict(), "truncate_long": False, "output": str(tmp_path / "paper")}))
    short = TokenizedTexts(["a", "one two three four", "x" * 30], _tokenizer(tiny_dir), min_chars=2)
    assert short.counts == {"read": 3, "under_min_chars": 1, "under_min_tokens": 0, "over_max_tokens_dropped": 0,
                            "truncated": 0, "kept": 2}


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_a_checkpoint_loads_like_the_final_model(tiny_dir, corpus, tmp_path):
    output = train(_config(tiny_dir, corpus, tmp_path / "run", max_steps=4, save_steps=2, max_length=40))
    checkpoint = LLM2Comp.from_pretrained(output / "checkpoints" / "checkpoint-4")
    final = LLM2Comp.from_pretrained(output)
    assert checkpoint.config.max_length == final.config.max_length == 512  # not the training length (40)
    long_text = " ".join(SAMPLE_TEXT)
    np.testing.assert_allclose(checkpoint.encode([long_text]), final.encode([long_text]), atol=1e-5)
    # each says how far it was trained, beside the run's plan
    earlier = LLM2Comp.from_pretrained(output / "checkpoints" / "checkpoint-2").config.stages[-1]
    assert (earlier["steps"], earlier["max_steps"]) == (2, 4)
    assert (final.config.stages[-1]["steps"], final.config.stages[-1]["max_steps"]) == (4, 4)


def test_resume_without_a_complete_checkpoint_restarts_the_logs(tiny_dir, corpus, tmp_path):
    output = train(_config(tiny_dir, corpus, tmp_path / "run", max_steps=2, save_steps=2))
    # as if killed while the first checkpoint was half written: logs of steps 1-2, no complete checkpoint
    (output / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER).unlink()
    (output / "llm2comp_config.json").unlink()
    train(_config(tiny_dir, corpus, output, max_steps=2, save_steps=2, resume=True))
    losses = [json.loads(line) for line in (output / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2]
    assert [json.loads(line)["step"] for line in (output / "data_order.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("objective", ["kl", "nll", "rc", "mntp"])
def test_gradient_accumulation_equals_one_large_batch(tiny_dir, corpus, tmp_path, objective):
    # 2 micro-batches of 2 with accumulation == 1 batch of 4: same loss and the same gradient (grad_norm before
    # clipping; Adam's first step is scale-free, so the weights alone would not show a wrong gradient scale)
    def run(name, batch_size, accumulation):
        output = train(_config(tiny_dir, corpus, tmp_path / name, objective=objective, max_steps=2, save_steps=2,
                               batch_size=batch_size, gradient_accumulation_steps=accumulation, lora_dropout=0.0))
        return [json.loads(line) for line in (output / "loss.jsonl").read_text().splitlines() if '"loss"' in line]

    large, accumulated = run("large", 4, 1), run("accumulated", 2, 2)
    for a, b in zip(large, accumulated, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)


def test_refuses_to_overwrite_a_run(tiny_dir, corpus, tmp_path):
    train(_config(tiny_dir, corpus, tmp_path / "run", max_steps=2))
    with pytest.raises(FileExistsError):
        train(_config(tiny_dir, corpus, tmp_path / "run", max_steps=2))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dir, corpus, tmp_path, monkeypatch):
    from llm2comp.objectives import pretext

    real = pretext.CompressionObjective.__call__
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        out = real(self, model, batch)
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(pretext.CompressionObjective, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="checkpoint-2"):
        train(_config(tiny_dir, corpus, tmp_path / "nan", max_steps=6))
    assert last_complete_checkpoint(tmp_path / "nan" / "checkpoints").name == "checkpoint-2"


def _cli(tiny_dir, corpus, output, *extra):
    return [sys.executable, "-m", "llm2comp", "train", "--stage", "pretrain", "--objective", "kl",
            "--model", str(tiny_dir), "--data", str(corpus), "--output", str(output), "--max-steps", "24",
            "--batch-size", "2", "--save-steps", "2", "--min-chars", "0", "--max-length", "96",
            "--num-memory-tokens", "3", *extra]


def _order(path):
    records = {}
    for line in (path / "data_order.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record["index"]
    return records


def test_resume_after_kill_reaches_the_same_result(tiny_dir, corpus, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    reference = tmp_path / "reference"
    subprocess.run(_cli(tiny_dir, corpus, reference), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli(tiny_dir, corpus, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (killed / "checkpoints" / "checkpoint-6" / COMPLETE_MARKER).exists():
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "llm2comp_config.json").exists()
    resumed_from = last_complete_checkpoint(killed / "checkpoints")
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) < 24

    subprocess.run(_cli(tiny_dir, corpus, killed, "--resume"), check=True, env=env, capture_output=True)
    assert _order(killed) == _order(reference)
    assert len(_order(reference)) == 24
    for name in ("memory_tokens.safetensors", "adapters/0/adapter_model.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    state = json.loads((killed / "checkpoints" / "checkpoint-24" / "trainer_state.json").read_text())
    assert state["global_step"] == 24


def test_no_library_noise_and_no_network_lookup_when_training_and_saving(tiny_dir, corpus, tmp_path, monkeypatch):
    import peft.utils.save_and_load as peft_save

    lookups = []
    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", lambda *a, **k: lookups.append(a) or None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        output = train(_config(tiny_dir, corpus, tmp_path / "run", max_steps=1))
        adapter_config = output / "adapters" / "0" / "adapter_config.json"  # as shipped: trained on another machine
        adapter_config.write_text(adapter_config.read_text().replace(json.dumps(str(tiny_dir)), '"/elsewhere/backbone"'))
        assert "/elsewhere/backbone" in adapter_config.read_text()
        model = LLM2Comp.from_pretrained(output)
        model.merge_and_unload()
        model.save(tmp_path / "merged")
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]
    assert lookups == []  # peft's "did the vocabulary change?" hub lookup: we never resize the vocabulary


def test_a_bf16_run_loads_the_frozen_backbone_in_bf16(tiny_dir, corpus, tmp_path, monkeypatch):
    import llm2comp.training.run as run

    monkeypatch.setattr(run, "_use_bf16", lambda setting: True)  # as on a bf16-capable GPU
    model = run.build_model(_config(tiny_dir, corpus, tmp_path / "run"))
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert trainable and set(trainable.values()) == {torch.float32}  # LoRA and memory tokens train in fp32
    assert any("lora" in name for name in trainable) and any("memory" in name for name in trainable)
    assert np.isfinite(model.encode(["a short text", "another one"])).all()  # mixed dtypes run


@pytest.mark.parametrize("objective,trains_memory", [("kl", True), ("mntp", False)])
def test_the_memory_tokens_train_where_the_embedding_reads_them(tiny_dir, corpus, tmp_path, objective, trains_memory):
    # frozen otherwise: DDP needs a gradient for every trainable parameter
    import llm2comp.training.run as run

    model = run.build_model(_config(tiny_dir, corpus, tmp_path / "run", objective=objective))
    assert model.config.pooling == ("memory" if trains_memory else "mean")
    assert all(p.requires_grad == trains_memory for p in model.memory.parameters())


def test_the_final_model_is_written_from_the_trainers_gathered_weights(tiny_dir, corpus, tmp_path, monkeypatch):
    # a stand-in for ZeRO-3 / FSDP: at the final save the live trainable tensors are empty shards, and only the
    # state dict the Trainer gathers holds the trained values; the saved model must be made from the latter
    from llm2comp.training.trainer import LLM2CompTrainer

    gathered = {}

    def sharded_save_model(self, output_dir=None, _internal_call=False):
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if not _internal_call:
            gathered.update(state)
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.requires_grad:
                        p.zero_()
        self._save(output_dir, state_dict=state)

    monkeypatch.setattr(LLM2CompTrainer, "save_model", sharded_save_model)
    output = train(_config(tiny_dir, corpus, tmp_path / "run", max_steps=1, save_steps=5))
    assert gathered, "the final save did not go through Trainer.save_model"
    adapter = load_file(output / "adapters" / "0" / "adapter_model.safetensors")
    lora_b = [k for k in adapter if "lora_B" in k]
    assert lora_b and all(adapter[k].abs().sum() > 0 for k in lora_b)  # trained values, not the zeroed shards
    memory = load_file(output / "memory_tokens.safetensors")["weight"]
    torch.testing.assert_close(memory, gathered["encoder.memory.weight"].float())


def test_loss_plot_running_mean():
    from llm2comp.training.loss_plot import running_mean, smoothing_window

    assert running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smoothing_window(10) == 1 and smoothing_window(160) == 16 and smoothing_window(5000) == 50


def test_global_batch_size_means_the_same_at_any_world_size(monkeypatch):
    cfg = TrainConfig.from_dict(dict(stage="supervised", global_batch_size=1024, gradient_accumulation_steps=2, max_steps=400))
    assert cfg.per_device().batch_size == 512
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert cfg.per_device().batch_size == 64  # 8 processes x 2 accumulation steps x 64 = the paper's 1,024
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="does not divide"):
        cfg.per_device()
    assert TrainConfig.from_dict(dict(stage="pretrain", batch_size=6)).per_device().batch_size == 6  # unset: as given
    paper = TrainConfig.from_yaml(Path(__file__).parent.parent / "configs" / "paper" / "llama2-7b-supervised.yaml")
    assert paper.global_batch_size == 1024


def test_fsdp_transformer_wrap_finds_every_decoder_layer(tiny_dir):
    # accelerate's TRANSFORMER_BASED_WRAP reads `_no_split_modules` of the module the Trainer gets: one FSDP unit per layer
    from types import SimpleNamespace

    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from llm2comp import LLM2Comp
    from llm2comp.training.trainer import TrainingModule

    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=2, max_length=32)
    module = TrainingModule(model, objective=None)
    assert module._no_split_modules == list(model.hf_model._no_split_modules)
    plugin = SimpleNamespace(auto_wrap_policy=transformer_auto_wrap_policy, transformer_cls_names_to_wrap=None)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, module)
    wrapped = [name for name, m in module.named_modules() if policy(m)]
    assert len(wrapped) == model.hf_model.config.num_hidden_layers
