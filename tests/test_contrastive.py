"""Contrastive objectives: InfoNCE, SimCSE dropout views, GradCache gradients, end-to-end stage runs."""

import json
import math

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.attention import set_attention_dropout
from llm2comp.data.pairs import build_contrastive_dataset
from llm2comp.objectives.contrastive import SimCSEObjective, SupervisedObjective, build_contrastive_objective, info_nce
from llm2comp.objectives.gather import gather_with_grad
from llm2comp.objectives.gradcache import split_features
from llm2comp.testing import SAMPLE_TEXT
from llm2comp.training.config import TrainConfig


# ---------------------------------------------------------------------------------------------- InfoNCE
def slow_info_nce(q, c, temperature, labels=None, qk=None, ck=None):
    total = 0.0
    for i in range(q.shape[0]):
        target = i if labels is None else int(labels[i])
        logits = []
        for j in range(c.shape[0]):
            if qk is not None and qk[i] >= 0 and ck[j] == qk[i] and j != target:
                continue
            cos = float(q[i] @ c[j]) / (float(q[i].norm()) * float(c[j].norm()))
            logits.append((j, cos / temperature))
        top = max(v for _, v in logits)
        log_z = top + math.log(sum(math.exp(v - top) for _, v in logits))
        total += log_z - dict(logits)[target]
    return total / q.shape[0]


def test_info_nce_matches_direct_computation():
    torch.manual_seed(0)
    q, c = torch.randn(5, 7, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)  # 5 positives + 4 negatives
    assert info_nce(q, c, 0.05).item() == pytest.approx(slow_info_nce(q, c, 0.05), rel=1e-5)
    labels = torch.tensor([4, 3, 2, 1, 0])
    assert info_nce(q, c, 0.1, labels=labels).item() == pytest.approx(slow_info_nce(q, c, 0.1, labels), rel=1e-5)
    # false-negative masking: candidates sharing a query's key (other than its target) leave its softmax
    qk = torch.tensor([3, 3, -1, 5, 7])
    ck = torch.cat([qk, torch.tensor([3, -1, 5, 9])])
    masked = info_nce(q, c, 0.05, query_keys=qk, candidate_keys=ck).item()
    assert masked == pytest.approx(slow_info_nce(q, c, 0.05, None, qk, ck), rel=1e-5)
    assert masked != pytest.approx(info_nce(q, c, 0.05).item(), rel=1e-3)


def test_info_nce_gradient_and_gather_identity():
    q = torch.randn(4, 6, requires_grad=True)
    assert gather_with_grad(q) is q  # not distributed: identity
    loss = info_nce(q, q.detach() + 0.1 * torch.randn(4, 6))
    loss.backward()
    assert torch.isfinite(loss) and q.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- models
def _lora_model(tiny_dir, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=3, max_length=128)
    model.add_lora(r=4, alpha=8, dropout=dropout)
    with torch.no_grad():  # LoRA B starts at zero (A would get no gradient): move all trainable weights a little
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def _pairs(n=6, negatives=True):
    pairs = []
    for i in range(n):
        pair = {"query": SAMPLE_TEXT[i % 8][: 20 + i], "positive": SAMPLE_TEXT[(i + 1) % 8], "instruction": "Find it" if i % 2 else "",
                "source": "s", "index": i}
        if negatives and i % 3 != 1:
            pair["negative"] = SAMPLE_TEXT[(i + 4) % 8][: 15 + 2 * i]
        pairs.append(pair)
    return pairs


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_supervised_collate_instruction_on_query_side_only(tiny_dir):
    model = _lora_model(tiny_dir)
    objective = SupervisedObjective(model)
    batch = objective.collate(_pairs(4))
    decode = lambda ids, mask: model.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)  # noqa: E731
    queries = [decode(batch["query_input_ids"][i], batch["query_attention_mask"][i] & ~batch["query_memory_mask"][i]) for i in range(4)]
    assert queries[1] == f"Find it: {_pairs(4)[1]['query']}\n"
    assert queries[0] == _pairs(4)[0]["query"]  # empty instruction: the bare query
    positive = decode(batch["positive_input_ids"][1], batch["positive_attention_mask"][1] & ~batch["positive_memory_mask"][1])
    assert positive == _pairs(4)[1]["positive"]
    assert batch["negative_input_ids"].shape[0] == 3  # rows 0, 2, 3 carry a hard negative
    assert batch["index"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("chunk", [1, 4])  # 4: uneven last chunk (6 rows)
def test_gradcache_gradients_equal_plain_large_batch(tiny_dir, chunk):
    model = _lora_model(tiny_dir).eval()  # dropout off: the plain batch and the chunks see identical networks
    objective = SupervisedObjective(model, temperature=0.05)
    batch = objective.collate(_pairs(6))

    loss_plain = objective(model, batch)["loss"]
    loss_plain.backward()
    plain = _grads(model)
    model.zero_grad(set_to_none=True)

    objective.gradcache_chunk = chunk
    loss_cached = objective(model, batch)["loss"]
    loss_cached.backward()
    cached = _grads(model)

    assert loss_cached.item() == pytest.approx(loss_plain.item(), abs=1e-6)
    assert "memory.weight" in plain and any("lora_A" in n for n in plain) and any("lora_B" in n for n in plain)
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradcache_reproduces_dropout_masks(tiny_dir):
    """With dropout on, the re-encoding in backward must draw the masks of the first pass: the gradient equals
    that of encoding the same chunks, in the same order, with a graph."""
    model = _lora_model(tiny_dir, dropout=0.3).train()
    set_attention_dropout(model.hf_model, 0.3)
    chunk = 2
    objective = SupervisedObjective(model, temperature=0.05, gradcache_chunk=chunk)
    batch = objective.collate(_pairs(6))

    torch.manual_seed(123)
    reference = []
    for name in ("query", "positive", "negative"):
        features = {k[len(name) + 1:]: v for k, v in batch.items() if k.startswith(name + "_")}
        reference.append(torch.cat([model(f)["sentence_embedding"].float() for f in split_features(features, chunk)]))
    q, p, n = reference
    keys = batch["key_query"]
    loss_ref = info_nce(q, torch.cat([p, n]), 0.05, query_keys=keys, candidate_keys=torch.cat([keys, batch["key_negative"]]))
    loss_ref.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)

    torch.manual_seed(123)
    loss = objective(model, batch)["loss"]
    state_after_forward = torch.get_rng_state()
    loss.backward()
    assert torch.equal(torch.get_rng_state(), state_after_forward)  # backward leaves the global RNG stream alone
    assert loss.item() == pytest.approx(loss_ref.item(), abs=1e-6)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)

    torch.manual_seed(124)  # dropout is really on: another seed gives another loss
    with torch.no_grad():
        assert objective(model, batch)["loss"].item() != pytest.approx(loss_ref.item(), abs=1e-4)


def test_gradcache_reencodes_under_the_forward_autocast_and_checkpointing(tiny_dir):
    """Mixed precision: the backward re-encoding runs under the autocast state of the forward (as the Trainer's
    bf16 forward sets it), and works with layer-wise activation checkpointing."""
    model = _lora_model(tiny_dir).train()
    model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    objective = SupervisedObjective(model, gradcache_chunk=2)
    batch = objective.collate(_pairs(4))
    seen = []
    layer = model.hf_model.get_decoder().layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), o.dtype)))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = objective(model, batch)["loss"]
        assert seen and all(not grad and autocast for grad, autocast, _ in seen)  # first pass: no graph
        seen.clear()
        loss.backward()
    finally:
        handle.remove()
        model.hf_model.gradient_checkpointing_disable()
    assert any(grad for grad, _, _ in seen)
    assert all(autocast and dtype == torch.bfloat16 for _, autocast, dtype in seen)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in _grads(model).values())


def test_simcse_views_differ_with_dropout_and_loss_is_finite(tiny_dir):
    model = _lora_model(tiny_dir, dropout=0.05)
    set_attention_dropout(model.hf_model, 0.2)
    objective = SimCSEObjective(model, temperature=0.05)
    batch = objective.collate([{"text": t, "index": i} for i, t in enumerate(SAMPLE_TEXT[:5])])
    assert batch["index"].tolist() == list(range(5))
    model.train()
    first, second = objective.views(model, batch)
    assert first.shape == second.shape == (5, model.get_sentence_embedding_dimension())
    assert not torch.allclose(first, second, atol=1e-6)
    loss = objective(model, batch)["loss"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.memory.weight.grad is not None and model.memory.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        first, second = objective.views(model, batch)
    torch.testing.assert_close(first, second)  # eval: no dropout, identical views

    # pre-tokenized examples (input_ids without special tokens) collate like the texts
    ids = model.tokenizer(SAMPLE_TEXT[:5], add_special_tokens=False)["input_ids"]
    tokenized = objective.collate([{"input_ids": x, "index": i} for i, x in enumerate(ids)])
    assert torch.equal(tokenized["input_ids"], batch["input_ids"])


def test_simcse_gradcache_matches_plain(tiny_dir):
    model = _lora_model(tiny_dir).eval()
    objective = SimCSEObjective(model)
    batch = objective.collate([{"text": t} for t in SAMPLE_TEXT[:6]])
    objective(model, batch)["loss"].backward()
    plain = _grads(model)
    model.zero_grad(set_to_none=True)
    objective.gradcache_chunk = 4
    objective(model, batch)["loss"].backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_build_contrastive_objective(tiny_dir):
    model = _lora_model(tiny_dir)
    simcse = build_contrastive_objective("simcse", TrainConfig.from_dict({"stage": "simcse", "temperature": 0.1}).objective_settings(), model)
    assert isinstance(simcse, SimCSEObjective) and simcse.temperature == 0.1
    supervised = build_contrastive_objective("supervised", TrainConfig.from_dict({"stage": "supervised", "gradcache_chunk": 8}).objective_settings(), model)
    assert isinstance(supervised, SupervisedObjective) and supervised.gradcache_chunk == 8
    with pytest.raises(ValueError, match="stage"):
        build_contrastive_objective("pretrain", TrainConfig.from_dict({"stage": "pretrain"}).objective_settings(), model)


# ---------------------------------------------------------------------------------------------- end to end
def _train_config(tiny_dir, data, output, **overrides):
    values = dict(model=str(tiny_dir), data=str(data), output=str(output), max_steps=2, batch_size=4, save_steps=2,
                  max_length=128, num_memory_tokens=3, lora_r=4, lora_alpha=8, learning_rate=1e-3, warmup_steps=0)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def _check_output(output, texts):
    records = [json.loads(line) for line in (output / "loss.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    loaded = LLM2Comp.from_pretrained(str(output))
    embeddings = loaded.encode(texts)
    assert embeddings.shape == (len(texts), loaded.get_sentence_embedding_dimension())
    return loaded


def test_train_simcse_end_to_end(tiny_dir, tmp_path):
    from llm2comp.training.run import train

    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(SAMPLE_TEXT + [t.upper() for t in SAMPLE_TEXT]))
    output = train(_train_config(tiny_dir, data, tmp_path / "simcse", stage="simcse"))
    loaded = _check_output(output, SAMPLE_TEXT[:3])
    assert loaded.config.stages[-1]["stage"] == "simcse"


@pytest.mark.parametrize("gradcache_chunk", [None, 2])
def test_train_supervised_end_to_end(tiny_dir, tmp_path, gradcache_chunk):
    from llm2comp.training.run import train

    data = tmp_path / "pairs.jsonl"
    rows = [{"query": a, "positive": b, "negative": c, "source": src, "instruction": "Retrieve it"}
            for src in ("a", "b") for a, b, c in zip(SAMPLE_TEXT, SAMPLE_TEXT[1:] + SAMPLE_TEXT[:1], SAMPLE_TEXT[4:] + SAMPLE_TEXT[:4])]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _train_config(tiny_dir, data, tmp_path / "sup", stage="supervised", gradcache_chunk=gradcache_chunk)
    output = train(cfg)
    loaded = _check_output(output, SAMPLE_TEXT[:3])
    assert loaded.config.stages[-1]["stage"] == "supervised"
    # sequential reading of the source-grouped dataset: every step is one group of 4 pairs from one source
    dataset = build_contrastive_dataset(cfg.stage, cfg.data_settings())
    order = [json.loads(line) for line in (output / "data_order.jsonl").read_text().splitlines()]
    assert [r["index"] for r in order] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for record in order:
        assert len({dataset[i]["source"] for i in record["index"]}) == 1


def test_contrastive_stage_can_train_another_pooling(tiny_dir, tmp_path):
    # `pooling: mean` trains (and saves) a mean-pooling encoder; the memory tokens play no part in its embeddings
    from llm2comp.training.run import train

    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(SAMPLE_TEXT + [t.upper() for t in SAMPLE_TEXT]))
    output = train(_train_config(tiny_dir, data, tmp_path / "simcse-mean", stage="simcse", pooling="mean"))
    loaded = _check_output(output, SAMPLE_TEXT[:3])
    assert loaded.config.pooling == "mean"
    before = loaded.encode(SAMPLE_TEXT[:3])
    with torch.no_grad():
        loaded.memory.weight.add_(1.0)
    np.testing.assert_allclose(loaded.encode(SAMPLE_TEXT[:3]), before, atol=1e-6)
    zero_shot = LLM2Comp.from_pretrained(str(tiny_dir), pooling="mean").encode(SAMPLE_TEXT[:3])
    assert np.abs(before - zero_shot).max() > 1e-5  # the stage changed the encoder
