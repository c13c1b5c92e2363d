"""The vector `encode` returns for a text is the one training optimised for that text.

Stage 1: the memory states the frozen decoder receives for an example's prefix (padded batch, training mode)
are exactly the states `encode` pools for the same prefix text (unpadded, eval mode, sorted batches).
Stages 2-3: the embeddings the contrastive loss sees are exactly `encode`'s."""

import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.objectives.contrastive import SupervisedObjective
from llm2comp.features import special_prefix
from llm2comp.objectives.pretext import CompressionObjective
from llm2comp.testing import SAMPLE_TEXT, perturb_lora


def _trained_looking(tiny_dir, bidirectional):
    torch.manual_seed(0)
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, max_length=96, bidirectional=bidirectional)
    model.add_lora(r=4, alpha=8, dropout=0.0)
    perturb_lora(model, seed=1)
    return model.train()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_decoder_receives_the_memory_that_encode_pools(tiny_dir, bidirectional):
    model = _trained_looking(tiny_dir, bidirectional)
    objective = CompressionObjective(model, kind="kl", split_margin=2)
    texts = SAMPLE_TEXT + [t[: len(t) // 2] for t in SAMPLE_TEXT]  # mixed lengths: padding inside the batch
    rows = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
    batch = objective.collate([{"input_ids": r, "index": i} for i, r in enumerate(rows)])
    seen = {}
    original = objective.decoder_inputs

    def record(m, memory, b):
        seen["memory"] = memory.detach().clone()
        return original(m, memory, b)

    objective.decoder_inputs = record
    objective(model, batch)  # training mode, as the Trainer runs it
    head = len(special_prefix(model.tokenizer))
    compared = 0
    for i, row in enumerate(rows):
        prefix_ids = row[: int(batch["prefix_lengths"][i])]
        prefix_text = model.tokenizer.decode(prefix_ids)
        if model.token_ids([prefix_text])[0][head:] != prefix_ids:
            continue  # this prefix does not survive decode -> encode; compared by token ids below instead
        encoded = model.encode(prefix_text, convert_to_tensor=True)
        torch.testing.assert_close(encoded, seen["memory"][i].mean(0), rtol=0, atol=1e-5)
        compared += 1
    assert compared >= len(rows) // 2
    # token level, every example: one unpadded forward per prefix in eval mode == the training batch's states
    model.eval()
    with torch.no_grad():
        for i in range(len(rows)):
            n = int(batch["encoder_attention_mask"][i].sum())
            alone = model(model.collate([batch["encoder_input_ids"][i, : n - model.config.num_memory_tokens].tolist()]))
            torch.testing.assert_close(alone["memory_states"][0], seen["memory"][i], rtol=0, atol=1e-5)


def test_contrastive_loss_sees_what_encode_returns(tiny_dir):
    model = _trained_looking(tiny_dir, bidirectional=False)
    objective = SupervisedObjective(model)
    examples = [{"query": a, "positive": b, "instruction": ""} for a, b in zip(SAMPLE_TEXT, SAMPLE_TEXT[1:])]
    queries, positives, _ = objective.embed(model, objective.collate(examples))
    torch.testing.assert_close(queries.detach(), model.encode([e["query"] for e in examples], convert_to_tensor=True), rtol=0, atol=1e-5)
    torch.testing.assert_close(positives.detach(), model.encode([e["positive"] for e in examples], convert_to_tensor=True), rtol=0, atol=1e-5)


def test_a_shifted_memory_position_would_be_caught(tiny_dir):
    # the check above is sensitive: the same memory tokens one position later (one pad token before them) differ
    model = _trained_looking(tiny_dir, bidirectional=True).eval()
    ids = model.token_ids([SAMPLE_TEXT[0]])[0]
    with torch.no_grad():
        right = model(model.collate([ids]))["memory_states"]
        shifted = model(model.collate([ids + [model.tokenizer.pad_token_id]]))["memory_states"]
    assert (right - shifted).abs().max() > 1e-3
