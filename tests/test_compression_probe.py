"""The compression probe: own / other / none kept apart, equal to the training objective, the ceiling, the
training-time probe and the stage-1 levers (memory bridge, memory learning rate)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llm2comp import LLM2Comp
from llm2comp.evaluation.compression import CompressionProbe, ceiling, format_report, holdout_split, probe_passages
from llm2comp.objectives.pretext import CompressionObjective
from llm2comp.testing import SAMPLE_TEXT
from llm2comp.training.config import TrainConfig
from llm2comp.training.run import train

LENGTH = 12


def _model(tiny_dir, **kwargs):
    torch.manual_seed(0)
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, max_length=64, bidirectional=False, **kwargs)
    model.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.hf_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model


def _passages(model, n=6):
    rows = model.tokenizer([" ".join(SAMPLE_TEXT[i:] + SAMPLE_TEXT[:i]) for i in range(n)], add_special_tokens=False)["input_ids"]
    return [r[:LENGTH] for r in rows]


def test_own_other_and_none_are_what_they_say(tiny_dir):
    """Give every passage a memory optimised for its own continuation: own must beat none (gain > 0) and the
    derangement's other (specificity > 1); a probe that fed everyone the same memory, or memory in the 'none' arm,
    would show neither."""
    model = _model(tiny_dir)
    from llm2comp.evaluation import compression as c

    probe = CompressionProbe(_passages(model), "continuation")
    vectors = {}

    def fake_memories(m):  # each passage's own optimised vectors, in passage order
        return vectors["v"]

    tok = model.tokenizer
    rows = torch.tensor(probe.passages)
    _, targets = probe.split(rows)
    v = torch.zeros(len(rows), 3, model.get_sentence_embedding_dimension(), requires_grad=True)
    opt = torch.optim.Adam([v], lr=5e-2)
    with model.decoder_mode() as lm:
        with torch.no_grad():
            teacher = c._teacher(model, lm, tok, rows, probe.prefix_tokens)
        for _ in range(80):
            loss = c._token_losses(model, c._decode(model, lm, c.decoder_bos(tok), v, targets), targets, teacher)["kl"].sum()
            (g,) = torch.autograd.grad(loss, v)
            v.grad = g
            opt.step()
    vectors["v"] = v.detach()
    probe.memories = fake_memories
    report = probe.run(model)
    assert report["loss"]["own"] < report["loss"]["none"] and report["gain"] > 0.1
    assert report["specificity"] > 1.2
    # other = passage i+1's memory: the same numbers as own after rolling the memories
    per = probe.per_passage(model)
    vectors["v"] = v.detach().roll(-1, dims=0)
    rolled = probe.per_passage(model)
    assert torch.allclose(per["kl"]["other"], rolled["kl"]["own"], atol=1e-5)
    assert torch.allclose(per["kl"]["none"], rolled["kl"]["none"])  # no memory: whatever the memories are
    assert "teacher" in per["ce"] and "teacher" not in per["kl"]
    assert "own memory" not in format_report(report) and "specificity" in format_report(report)


@pytest.mark.parametrize("kind", ["kl", "nll", "rc"])
def test_own_memory_loss_equals_the_training_objective(tiny_dir, kind, monkeypatch):
    """With the objective's split point fixed at half the text, the probe's own-memory loss is the objective's loss."""
    from llm2comp.objectives import pretext

    monkeypatch.setattr(pretext, "split_point", lambda length, rng, margin=10: length // 2)
    model = _model(tiny_dir).eval()
    passages = _passages(model, n=4)
    task = "reconstruction" if kind == "rc" else "continuation"
    probe = CompressionProbe(passages, task, "kl" if kind == "kl" else "ce", batch_size=3)  # batches of 3 and 1
    objective = CompressionObjective(model, kind=kind)
    batch = objective.collate([{"input_ids": p, "index": i} for i, p in enumerate(passages)])
    with torch.no_grad():
        expected = objective(model, batch)["loss"].item()
    assert probe.run(model)["loss"]["own"] == pytest.approx(expected, rel=1e-4)


def test_ceiling_is_cached_and_reported(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2COMP_CACHE", str(tmp_path))
    model = _model(tiny_dir)
    probe = CompressionProbe(_passages(model), "continuation")
    first = ceiling(model, probe, passages=4, steps=20, lr=5e-2, show_progress_bar=False)
    assert first["passages"] == 4 and first["own"] < first["none"] and 0 < first["gain"] <= 1
    assert len(list((tmp_path / "probe-ceilings").glob("*.json"))) == 1
    monkeypatch.setattr(torch.optim, "Adam", None)  # a cached ceiling optimises nothing
    assert ceiling(model, probe, passages=4, steps=20, lr=5e-2, show_progress_bar=False) == first
    probe.ceiling = first
    report = probe.run(model)
    assert report["ceiling"]["run_gain_on_these"] < first["gain"]
    assert "of the ceiling" in format_report(report)


def test_probe_validation():
    with pytest.raises(ValueError, match="one length"):
        CompressionProbe([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="kl needs"):
        CompressionProbe([[1, 2, 3], [4, 5, 6]], task="reconstruction", metric="kl")
    with pytest.raises(ValueError, match="unknown probe task"):
        CompressionProbe([[1, 2, 3], [4, 5, 6]], task="echo")
    train_part, held = holdout_split(list("abcdefgh"), 3)
    assert held == list("fgh") and train_part == list("abcde")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    paragraphs = [f"{a} {b} {c}" for a in SAMPLE_TEXT for b in SAMPLE_TEXT for c in SAMPLE_TEXT[:2]]
    path.write_text("\n\n".join(paragraphs))
    return path


def test_training_probes_held_out_passages_and_plots_them(tiny_dir, corpus, tmp_path):
    from llm2comp.data.corpus import load_texts

    texts = load_texts(str(corpus), unit="paragraph")
    holdout = len(texts) // 4
    cfg = TrainConfig.from_dict(dict(stage="pretrain", objective="kl", model=str(tiny_dir), data=str(corpus), output=str(tmp_path / "run"),
                                     max_steps=5, batch_size=2, save_steps=5, max_length=48, num_memory_tokens=3, split_margin=3,
                                     probe_steps=2, probe_passages=4, probe_text_tokens=12, probe_holdout=holdout,
                                     memory_bridge="linear", memory_lr=1e-2, bidirectional=False))
    output = train(cfg)
    records = [json.loads(line) for line in (output / "probe.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4, 5]
    assert all(set(r["loss"]) == {"own", "other", "none"} and r["passages"] == 4 for r in records)
    assert (output / "loss.png").is_file()
    # training never read a held-out paragraph
    from llm2comp.objectives.pretext import pretext_dataset

    model = LLM2Comp.from_pretrained(output)
    dataset = pretext_dataset(cfg.data_settings(), model)
    held = {tuple(r) for r in model.tokenizer(texts[-holdout:], add_special_tokens=False)["input_ids"]}
    assert len(dataset) == len(texts) - holdout and not any(tuple(r) in held for r in dataset.rows)
    assert model.config.stages[-1]["probe_holdout"] == holdout  # recorded with the model
    # the bridge was fitted, trained, saved, and loads back; the probe reads memory through it
    from llm2comp.training.run import build_model, build_objective_and_data

    assert model.config.memory_bridge == "linear" and model.memory_bridge is not None
    fresh = build_model(cfg)
    build_objective_and_data(cfg, fresh)  # fits the bridge
    saved = load_file(output / "memory_bridge.safetensors")
    assert not torch.allclose(saved["weight"], fresh.memory_bridge.weight.detach())  # trained away from its fit
    torch.testing.assert_close(model.memory_bridge.weight.detach(), saved["weight"])
    states = torch.randn(2, 3, model.get_sentence_embedding_dimension())
    assert not torch.allclose(model.decoder_memory(states), states)
    # a contrastive stage from it drops the bridge: the embedding path never had it
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q {t}", "positive": t}) + "\n" for t in SAMPLE_TEXT * 2))
    sup = train(TrainConfig.from_dict(dict(stage="supervised", model=str(output), data=str(pairs), output=str(tmp_path / "sup"),
                                           max_steps=1, batch_size=2, save_steps=1, max_length=48, warmup_steps=0)))
    assert LLM2Comp.from_pretrained(sup).memory_bridge is None
    assert not (sup / "memory_bridge.safetensors").exists()


def test_bridge_fit_gives_the_memory_token_embedding_statistics(tiny_dir):
    from llm2comp.memory import MemoryBridge

    model = _model(tiny_dir)
    embedding = model.hf_model.get_input_embeddings()
    states = torch.randn(40, 3, model.get_sentence_embedding_dimension()) * 30 + 5
    for kind in MemoryBridge.KINDS:
        bridge = MemoryBridge(kind, states.shape[-1]).fit(states, embedding, model.vocab_size)
        out = bridge(states).reshape(-1, states.shape[-1])
        tokens = embedding.weight.detach()
        torch.testing.assert_close(out.mean(0), tokens.mean(0), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(out.std(0), tokens.std(0), atol=1e-3, rtol=1e-2)
    with pytest.raises(ValueError, match="token_rows"):
        model.add_memory_bridge("affine")


def test_memory_lr_is_a_group_of_its_own(tiny_dir, corpus, tmp_path):
    from llm2comp.training.run import build_model, build_objective_and_data, training_arguments
    from llm2comp.training.trainer import LLM2CompTrainer

    cfg = TrainConfig.from_dict(dict(stage="pretrain", objective="kl", model=str(tiny_dir), data=str(corpus), output=str(tmp_path / "o"),
                                     max_steps=2, batch_size=2, max_length=48, num_memory_tokens=3, memory_bridge="affine",
                                     memory_lr=3e-3, learning_rate=1e-4))
    model = build_model(cfg)
    objective, dataset = build_objective_and_data(cfg, model)  # fits the bridge
    trainer = LLM2CompTrainer(model, objective, training_arguments(cfg, tmp_path / "ck"), train_dataset=dataset,
                              memory_lr=cfg.memory_lr)
    optimizer = trainer.create_optimizer()
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    fast = {id(p) for p in [*model.memory.parameters(), *model.memory_bridge.parameters()]}
    assert by_lr[3e-3] == fast and by_lr[1e-4] and not by_lr[1e-4] & fast
    with pytest.raises(ValueError, match="compression pre-training"):
        TrainConfig.from_dict(dict(stage="supervised", memory_bridge="affine"))
    with pytest.raises(ValueError, match="memory_bridge must be"):
        TrainConfig.from_dict(dict(stage="pretrain", memory_bridge="mlp"))


def test_probe_passages_come_from_the_held_out_tail(tiny_dir, corpus):
    from llm2comp.data.corpus import load_texts

    model = _model(tiny_dir)
    texts = load_texts(str(corpus), unit="paragraph")
    rows = probe_passages(model.tokenizer, str(corpus), passages=5, text_tokens=10, holdout=len(texts) // 4)
    held = model.tokenizer(texts[-(len(texts) // 4):], add_special_tokens=False)["input_ids"]
    assert rows == [r[:10] for r in held if len(r) >= 10][:5]
