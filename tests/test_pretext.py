"""Pretext objectives against direct, slow computations on a tiny model (with a second frozen copy as reference)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from llm2comp import LLM2Comp
from llm2comp.objectives.pretext import CompressionObjective, MNTPObjective, chunked_cross_entropy, chunked_kl, decoder_bos
from llm2comp.testing import SAMPLE_TEXT


def _examples(model, n=3):
    rows = model.tokenizer(SAMPLE_TEXT[:n], add_special_tokens=False)["input_ids"]
    return [{"input_ids": r, "index": i} for i, r in enumerate(rows)]


def _model(tiny_dir, **kwargs):
    torch.manual_seed(0)
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, max_length=96, **kwargs)
    model.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.hf_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model.train()


def _slow_compression_loss(model, original, batch, kind):
    """Per example, unpadded: encoder -> memory; a separate frozen copy decodes; full-vocabulary logits."""
    tok, k = model.tokenizer, model.config.num_memory_tokens
    bos = decoder_bos(tok)
    embed = original.get_input_embeddings()
    total, count = 0.0, 0
    for i in range(batch["encoder_input_ids"].shape[0]):
        n = batch["encoder_attention_mask"][i].sum().item()
        features = {key[len("encoder_"):]: v[i : i + 1, :n] for key, v in batch.items() if key.startswith("encoder_")}
        memory = model(features)["memory_states"]
        cont = batch["continuation_ids"][i][batch["continuation_mask"][i].bool()]
        inputs = torch.cat([embed(torch.tensor(bos, dtype=torch.long)), memory[0], embed(cont)])[None]
        logits = original(inputs_embeds=inputs).logits[0]
        student = logits[len(bos) + k - 1 : len(bos) + k - 1 + len(cont)]
        if kind in ("nll", "rc"):
            total = total + F.cross_entropy(student, cont, reduction="sum")
        else:
            a = batch["prefix_lengths"][i].item()
            text = batch["teacher_ids"][i][batch["teacher_mask"][i].bool()]
            with torch.no_grad():
                teacher = original(input_ids=text[None]).logits[0][len(bos) + a - 1 : len(bos) + a - 1 + len(cont)]
            p = F.softmax(teacher, -1)
            total = total + (p * (F.log_softmax(teacher, -1) - F.log_softmax(student, -1))).sum()
        count += len(cont)
    return total / count


@pytest.mark.parametrize("kind", ["kl", "nll", "rc"])
def test_compression_losses_match_direct_computation(tiny_dir, kind):
    model = _model(tiny_dir)
    original = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    objective = CompressionObjective(model, kind=kind, split_margin=3, loss_budget=512)  # tiny chunks
    batch = objective.collate(_examples(model))
    if kind == "rc":
        assert torch.equal(batch["continuation_mask"].sum(1), torch.tensor([len(e["input_ids"]) for e in _examples(model)]))
    fast = objective(model, batch)["loss"]
    slow = _slow_compression_loss(model, original, batch, kind)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_split_point_in_range_and_deterministic(tiny_dir):
    model = _model(tiny_dir)
    objective = CompressionObjective(model, kind="kl", split_margin=10)
    examples = _examples(model, 8)
    a = objective.collate(examples)["prefix_lengths"]
    b = objective.collate(examples)["prefix_lengths"]
    assert torch.equal(a, b)  # tied to the example index, not to a stream
    for length, prefix in zip([len(e["input_ids"]) for e in examples], a.tolist()):
        assert 10 <= prefix <= length - 10


def test_kl_is_zero_when_student_equals_teacher(tiny_dir):
    model = _model(tiny_dir)
    hidden = torch.randn(5, model.get_sentence_embedding_dimension())
    assert chunked_kl(model, hidden, hidden, budget=300).abs() < 1e-5
    targets = torch.randint(0, model.vocab_size, (5,))
    torch.testing.assert_close(
        chunked_cross_entropy(model, hidden, targets, budget=300),
        F.cross_entropy(model.hf_model.get_output_embeddings()(hidden), targets),
    )


@pytest.mark.parametrize("kind", ["kl", "nll", "rc"])
def test_gradients_reach_only_lora_and_memory(tiny_dir, kind):
    model = _model(tiny_dir)
    objective = CompressionObjective(model, kind=kind, split_margin=3)
    model.zero_grad()
    objective(model, objective.collate(_examples(model)))["loss"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "memory.weight" in with_grad
    assert any("lora_" in n for n in with_grad)
    assert all("lora_" in n or n == "memory.weight" for n in with_grad)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and n != "memory.weight")


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, use_reentrant):
    """The decoder pass runs with the adapter off; checkpointed recomputation must not switch it back on.

    Non-reentrant checkpointing keeps the decoder pass checkpointed (its layers run twice: forward and
    recomputation); reentrant checkpointing cannot, so the decoder pass runs unchecked there."""
    grads, calls = [], []
    for checkpointing in (False, True):
        model = _model(tiny_dir)
        if checkpointing:
            model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        objective = CompressionObjective(model, kind="kl", split_margin=3)
        attention = model.body.layers[0].self_attn
        count = [0]
        attention.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        objective(model, objective.collate(_examples(model)))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        calls.append(count[0])
    # encoder, decoder, teacher; then recomputations: encoder and (non-reentrant only) decoder
    assert calls == [3, 4 if use_reentrant else 5]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_mntp_loss_matches_direct_computation(tiny_dir):
    model = _model(tiny_dir, pooling="mean", bidirectional=True)
    objective = MNTPObjective(model, mask_probability=0.3)
    batch = objective.collate(_examples(model))
    labels = batch["labels"]
    assert (labels != -100).any()
    fast = objective(model, dict(batch))["loss"]
    hidden = model({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")})["token_embeddings"]
    logits = model.hf_model.get_output_embeddings()(hidden)
    slow = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_objectives_check_the_pooling(tiny_dir):
    with pytest.raises(ValueError, match="pooling='mean'"):
        MNTPObjective(_model(tiny_dir))
    with pytest.raises(ValueError, match="memory-token pooling"):
        CompressionObjective(_model(tiny_dir, pooling="mean", bidirectional=True), kind="kl")


def test_one_copy_layout_holds_no_weights_of_its_own(tiny_dir):
    """The memory saving of benchmarks/one_copy_memory.py, structurally: only the authors' layout holds a second model."""
    model = _model(tiny_dir)

    def held_models(objective):
        return [v for v in vars(objective).values() if isinstance(v, torch.nn.Module) and v is not model]

    assert held_models(CompressionObjective(model, kind="kl")) == []
    frozen = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert held_models(CompressionObjective(model, kind="kl", frozen_copy=frozen)) == [frozen]


def test_one_copy_equals_a_second_frozen_copy(tiny_dir):
    """Adapter off on the same weights is the frozen LLM: loss and gradients match the authors' two-copy layout."""
    results = []
    for frozen in (None, AutoModelForCausalLM.from_pretrained(tiny_dir).eval().requires_grad_(False)):
        model = _model(tiny_dir)
        objective = CompressionObjective(model, kind="kl", split_margin=3, frozen_copy=frozen)
        loss = objective(model, objective.collate(_examples(model)))["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["kl", "nll"])
def test_contrast_term_is_own_minus_other_memory(tiny_dir, kind):
    """loss = L(own) + w * softplus(L(own) - L(other)), other = the previous example's memory (a roll by one)."""
    import torch.nn.functional as F

    model = _model(tiny_dir).eval()
    examples = _examples(model)
    plain = CompressionObjective(model, kind=kind, split_margin=3)
    batch = plain.collate(examples)
    with torch.no_grad():
        own = plain(model, batch)["loss"]
        original = model.decoder_memory
        model.decoder_memory = lambda states: original(states).roll(1, 0)
        other = plain(model, batch)["loss"]
        model.decoder_memory = original
        contrasted = CompressionObjective(model, kind=kind, split_margin=3, contrast_weight=0.5)(model, batch)["loss"]
    assert other.item() != pytest.approx(own.item())
    assert contrasted.item() == pytest.approx((own + 0.5 * F.softplus(own - other)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="contrast_weight"):
        CompressionObjective(model, kind=kind, contrast_weight=-1)
