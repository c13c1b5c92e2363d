"""The LLM2Comp encoder: encode contract, memory tokens, pooling baselines, save/load/merge round trips."""

import numpy as np
import pytest
import torch

from llm2comp import LLM2Comp
from llm2comp.replicas import model_replicas
from llm2comp.testing import SAMPLE_TEXT, perturb_lora


@pytest.fixture(scope="module")
def model(tiny_dir):
    return LLM2Comp.from_pretrained(tiny_dir)


def test_encode_shapes_and_types(model):
    d = model.get_sentence_embedding_dimension()
    out = model.encode(SAMPLE_TEXT)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (len(SAMPLE_TEXT), d)
    single = model.encode(SAMPLE_TEXT[0])
    assert single.shape == (d,)
    np.testing.assert_allclose(single, out[0], atol=1e-5)
    tensor = model.encode(SAMPLE_TEXT, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(SAMPLE_TEXT), d)
    normed = model.encode(SAMPLE_TEXT, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)


def test_order_is_preserved_whatever_the_batching(model):
    texts = SAMPLE_TEXT + [t[: len(t) // 3] for t in SAMPLE_TEXT]
    reference = np.stack([model.encode(t) for t in texts])
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(model.encode(texts, batch_size=batch_size), reference, atol=1e-5)
    permutation = np.random.default_rng(0).permutation(len(texts))
    shuffled = model.encode([texts[i] for i in permutation], batch_size=4)
    np.testing.assert_allclose(shuffled, reference[permutation], atol=1e-5)


def test_memory_tokens_follow_text_and_fit_max_length(tiny_dir):
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=4, max_length=16)
    features = model.tokenize(["word " * 100, "short"])
    assert features["input_ids"].shape[1] == 16
    assert features["memory_mask"].sum(1).tolist() == [4, 4]
    row = features["memory_mask"][1].nonzero().flatten()
    assert row.tolist() == list(range(features["attention_mask"][1].sum().item() - 4, features["attention_mask"][1].sum().item()))
    assert model.encode("word " * 1000).shape == (model.get_sentence_embedding_dimension(),)


def test_embedding_is_mean_of_memory_states(model):
    features = model.forward(model.tokenize(SAMPLE_TEXT[:2]))
    assert features["memory_states"].shape == (2, 8, model.get_sentence_embedding_dimension())
    torch.testing.assert_close(features["sentence_embedding"], features["memory_states"].mean(1))


def test_memory_tokens_are_attended_bidirectionally(model):
    """The memory token states depend on the text and the text states on the memory tokens (bidirectional)."""
    features = model.tokenize(["the cat sat"])
    out1 = model.forward(dict(features))["token_embeddings"].detach()
    with torch.no_grad():
        model.memory.weight.add_(1.0)
    try:
        out2 = model.forward(dict(features))["token_embeddings"].detach()
    finally:
        with torch.no_grad():
            model.memory.weight.sub_(1.0)
    assert (out1[0, 0] - out2[0, 0]).abs().max() > 1e-4  # the first text token sees the memory tokens


def test_bad_input(model):
    d = model.get_sentence_embedding_dimension()
    assert model.encode([]).shape == (0, d)
    assert model.encode([], convert_to_tensor=True).shape == (0, d)
    out = model.encode(["", "   ", "text"])
    assert out.shape == (3, d) and np.isfinite(out).all()
    with pytest.raises(TypeError):
        model.encode(["ok", 3])
    with pytest.raises(TypeError):
        model.encode([None])
    with pytest.raises(TypeError):
        model.encode(42)
    with pytest.raises(ValueError):
        model.encode(["a"], batch_size=0)


@pytest.mark.parametrize("pooling", ["mean", "last", "prompteol"])
def test_baseline_poolings(tiny_dir, pooling):
    model = LLM2Comp.from_pretrained(tiny_dir, pooling=pooling, max_length=80)
    assert model.config.bidirectional is False
    features = model.tokenize(["", "a sentence that is a little longer than the others here"])
    assert "memory_mask" not in features and features["input_ids"].shape[1] <= 80
    out = model.encode(["", "hello there", "word " * 200])
    assert out.shape == (3, model.get_sentence_embedding_dimension()) and np.isfinite(out).all()
    if pooling == "prompteol":
        ids = model.token_ids(["xyz"])[0]
        assert model.tokenizer.decode(ids).endswith('means in one word:"')


def test_prompt_changes_embedding(model):
    a = model.encode("query text")
    b = model.encode("query text", prompt="Retrieve passages: ")
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, model.encode("Retrieve passages: query text"), atol=1e-5)


def test_similarity(model):
    emb = model.encode(SAMPLE_TEXT[:3])
    sim = model.similarity(emb, emb)
    assert sim.shape == (3, 3)
    torch.testing.assert_close(torch.diagonal(sim), torch.ones(3), atol=1e-5, rtol=0)
    assert model.similarity(emb[0], emb).shape == (1, 3)
    other = emb[::-1].copy()
    torch.testing.assert_close(model.similarity_pairwise(emb, other), torch.diagonal(model.similarity(emb, other)), atol=1e-6, rtol=0)


def test_save_load_merge_round_trip(tiny_dir, tmp_path):
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=4)
    model.add_lora(r=4, alpha=8)
    perturb_lora(model)
    reference = model.encode(SAMPLE_TEXT)
    model.save(tmp_path / "saved")
    loaded = LLM2Comp.from_pretrained(tmp_path / "saved")
    assert loaded.config.num_memory_tokens == 4
    np.testing.assert_allclose(loaded.encode(SAMPLE_TEXT), reference, atol=1e-5)
    loaded.merge_and_unload()
    assert loaded.peft_model is None
    np.testing.assert_allclose(loaded.encode(SAMPLE_TEXT), reference, atol=1e-5)
    # chaining: merged stage-1 adapter + fresh adapter, saved and reloaded
    loaded.add_lora(r=4, alpha=8)
    perturb_lora(loaded, seed=1)
    chained = loaded.encode(SAMPLE_TEXT)
    loaded.save(tmp_path / "chained")
    again = LLM2Comp.from_pretrained(tmp_path / "chained")
    assert again.config.adapters == ["adapters/0", "adapters/1"] and again.config.merged_adapters == 1
    np.testing.assert_allclose(again.encode(SAMPLE_TEXT), chained, atol=1e-5)
    assert (tmp_path / "chained" / "adapters" / "1" / "adapter_model.safetensors").is_file()


def test_save_keeps_other_content(model, tmp_path):
    target = tmp_path / "run"
    (target / "checkpoints").mkdir(parents=True)
    (target / "loss.jsonl").write_text("{}\n")
    model.save(target)
    model.save(target)
    assert (target / "checkpoints").is_dir() and (target / "loss.jsonl").is_file()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_lora_and_memory_are_the_only_trainable_parameters(tiny_dir):
    model = LLM2Comp.from_pretrained(tiny_dir)
    model.add_lora()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "memory.weight" in trainable
    assert all("lora_" in name or name == "memory.weight" for name in trainable)
    assert not any(".k_proj.lora" in name for name in trainable)  # the recipe leaves k out
    targets = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if "lora_" in name}
    assert targets == {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_decoder_mode_is_the_original_causal_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model = LLM2Comp.from_pretrained(tiny_dir).eval()
    model.add_lora()
    perturb_lora(model)
    ids = torch.randint(3, 200, (2, 7))
    with torch.no_grad(), model.decoder_mode() as lm:
        ours = lm(input_ids=ids).logits
    torch.testing.assert_close(ours, original(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_multi_device_encoding_is_opt_in_and_identical(tiny_dir):
    model = LLM2Comp.from_pretrained(tiny_dir)
    texts = SAMPLE_TEXT * 3
    single = model.encode(texts, batch_size=4)
    assert "_replica_cache" not in model.__dict__ or not model.__dict__["_replica_cache"]  # nothing started silently
    multi = model.encode(texts, batch_size=4, devices=["cpu", "cpu"])
    np.testing.assert_allclose(multi, single, atol=1e-5)
    replicas = model_replicas(model, ["cpu", "cpu"])
    assert len(replicas) == 2 and replicas[0] is model and replicas[1] is not model
    model.add_lora()
    assert not model.__dict__["_replica_cache"]  # weights changed: stale replicas dropped


def test_save_takes_gathered_tensors_when_given(tiny_dir, tmp_path):
    """Under ZeRO-3/FSDP the live parameters are shards: save() must write the gathered state dict it is given."""
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=4)
    model.add_lora(r=4, alpha=8)
    perturb_lora(model)
    reference = model.encode(SAMPLE_TEXT)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # what sharding leaves in the live module
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.zero_()
    model.save(tmp_path / "m", state_dict=gathered)
    np.testing.assert_allclose(LLM2Comp.from_pretrained(tmp_path / "m").encode(SAMPLE_TEXT), reference, atol=1e-5)


def test_memory_init_from_a_phrase(tiny_dir, tmp_path):
    phrase = " means in one word:"
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3, memory_init=phrase)
    ids = model.tokenizer(phrase, add_special_tokens=False)["input_ids"]
    rows = model.hf_model.get_input_embeddings().weight[ids].detach()
    pick = torch.linspace(0, len(ids) - 1, 3).round().long()
    torch.testing.assert_close(model.memory.weight.detach(), rows[pick])
    assert model.config.memory_init == phrase
    model.save(tmp_path / "m")  # a saved model keeps its trained tokens, whatever its memory_init says
    with torch.no_grad():
        model.memory.weight.add_(1.0)
    model.save(tmp_path / "m")
    torch.testing.assert_close(LLM2Comp.from_pretrained(tmp_path / "m").memory.weight, model.memory.weight)
    short = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=5, memory_init="a")  # shorter than k: repeated
    assert torch.equal(short.memory.weight[0], short.memory.weight[-1])


def test_repeated_texts_are_embedded_once(model, monkeypatch):
    texts = [SAMPLE_TEXT[0], SAMPLE_TEXT[1], SAMPLE_TEXT[0], "", SAMPLE_TEXT[1], ""]
    reference = np.stack([model.encode(t) for t in texts])
    rows = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda features: rows.append(features["input_ids"].shape[0]) or forward(features))
    out = model.encode(texts, batch_size=2)
    assert sum(rows) == 3  # three distinct texts
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert isinstance(model.encode(texts, convert_to_tensor=True), torch.Tensor)
    # the same through token rows made once (what `serve` does): identical rows embedded once, in input order
    rows.clear()
    by_rows = model.encode_token_ids(model.token_ids(texts), batch_size=2)
    assert sum(rows) == 3 and isinstance(by_rows, torch.Tensor)
    np.testing.assert_allclose(by_rows.numpy(), reference, atol=1e-5)
    assert model.encode_token_ids([]).shape == (0, model.get_sentence_embedding_dimension())
    with pytest.raises(ValueError, match=r"token_ids\[1\] has .* tokens; at most"):
        model.encode_token_ids([[5, 6], [7] * (model.config.max_length + 1)])


def test_tokenizing_from_several_threads_gives_the_sequential_rows(model):
    # truncation is state on a fast tokenizer: a thread measuring full lengths (count_truncated) must not make
    # another thread's rows skip truncation (seen in `serve`, where requests are tokenized in parallel)
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"{SAMPLE_TEXT[i % len(SAMPLE_TEXT)]} " * 60 + str(i) for i in range(24)]
    expected = [model.token_ids([t]) for t in texts]
    assert all(len(r[0]) < len(model.tokenizer(t)["input_ids"]) for r, t in zip(expected, texts))  # all are cut

    def work(i):
        rows = model.token_ids([texts[i]])
        model.count_truncated([texts[i]], rows)
        return rows

    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            assert list(pool.map(work, range(len(texts)))) == expected


def test_concurrent_encodes_stay_in_eval_mode_until_the_last_one_ends(tiny_dir):
    # a model in training mode (dropout on) encoded from several threads: one thread finishing must not switch
    # dropout back on under another one's forward
    from concurrent.futures import ThreadPoolExecutor

    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=2, max_length=48)
    model.add_lora(r=4, alpha=8, dropout=0.5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained adapter: its dropout changes the output
    model.eval()
    expected = model.encode(SAMPLE_TEXT[:4])
    model.train()
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: model.encode(SAMPLE_TEXT[:4], batch_size=1), range(16)))
    for output in outputs:
        np.testing.assert_allclose(output, expected, atol=1e-5)
    assert model.training  # the caller's mode is back


@pytest.mark.parametrize("pooling", ["memory", "mean", "prompteol"])
def test_encode_says_how_many_texts_it_truncated(tiny_dir, caplog, pooling):
    model = LLM2Comp.from_pretrained(tiny_dir, max_length=48, num_memory_tokens=2, pooling=pooling)
    with caplog.at_level("WARNING", logger="llm2comp.model"):
        model.encode(["short", "word " * 200, "another " * 300])
    assert "2 of 3 texts are longer than max_length=48 and were truncated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm2comp.model"):
        model.encode(["short", "two words"])
    assert "truncated" not in caplog.text


def test_partitioned_parameters_are_read_only_inside_their_modules_forward(tiny_dir):
    # a stand-in for ZeRO-3: a weight is empty except during its own module's forward (gathered by a pre-hook)
    model = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=3)
    expected, vocab = model.encode(SAMPLE_TEXT[:2]), model.vocab_size
    for module in (model.memory, model.hf_model.get_input_embeddings()):
        full = module.weight.data
        module.weight.data = torch.empty(0, dtype=full.dtype)
        module.register_forward_pre_hook(lambda m, args, full=full: setattr(m.weight, "data", full))
        module.register_forward_hook(lambda m, args, out: setattr(m.weight, "data", torch.empty(0, dtype=m.weight.dtype)))
    assert model.vocab_size == vocab and model.memory.num_tokens == 3
    np.testing.assert_allclose(model.encode(SAMPLE_TEXT[:2]), expected, atol=1e-6)


def test_a_new_pooling_is_one_class(tiny_dir, monkeypatch):
    import llm2comp.pooling as pooling

    class MaxPooling(pooling.Pooling):
        name = "max"
        description = "element-wise maximum over the final token states"

        def pool(self, features, config):
            hidden = features["token_embeddings"].masked_fill(features["attention_mask"][..., None] == 0, float("-inf"))
            return hidden.max(1).values

    monkeypatch.setitem(pooling.POOLINGS, "max", MaxPooling())
    model = LLM2Comp.from_pretrained(tiny_dir, pooling="max")
    texts = ["short", "a somewhat longer text here"]
    features = model.tokenize(texts)
    with torch.no_grad():
        hidden = model.forward(features)["token_embeddings"]
    expected = torch.stack([hidden[i, : int(features["attention_mask"][i].sum())].max(0).values for i in range(2)])
    np.testing.assert_allclose(model.encode(texts), expected.numpy(), atol=1e-5)
    assert model.config.bidirectional is False and "memory_mask" not in features
