"""Compress, then generate (generation.py, generation_cli.py): a tiny model whose memory is trained (RC, two texts) to
carry its text, batched/left-padded generation against a plain loop, the memory file, and the error paths."""

import argparse
import json

import pytest
import torch

from llm2comp import generation as G
from llm2comp.model import LLM2Comp
from llm2comp.objectives.pretext import CompressionObjective, lm_logits
from llm2comp.testing import SAMPLE_TEXT, make_tiny_model_dir

TEXTS = [SAMPLE_TEXT[0][:8], SAMPLE_TEXT[2][:8]]  # two short texts (8 tokens each in the tiny tokenizer) the memory must tell apart


def _rc_stage():
    return {"stage": "pretrain", "objective": "rc", "data": "test", "samples": 2, "max_steps": 0, "batch_size": 2}


@pytest.fixture(scope="module")
def peaked_dir(tmp_path_factory):
    """A tiny random Llama with large weights: its random decoder gives peaked distributions a memory can steer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("gen") / "peaked", "llama", initializer_range=0.5, hidden_size=64,
                               intermediate_size=128)


@pytest.fixture(scope="module")
def forced(peaked_dir, tmp_path_factory):
    """A tiny model trained with the RC objective (LoRA, memory tokens and an affine bridge; the decoder frozen) until
    greedy decoding from each text's memory gives back that text, token for token. Saved; returns the folder."""
    torch.manual_seed(0)
    model = LLM2Comp.from_pretrained(str(peaked_dir), device="cpu", pooling="memory", num_memory_tokens=4, bidirectional=False)
    ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    model.add_lora(r=8, alpha=16, dropout=0.0)
    model.add_memory_bridge("affine", [[model.tokenizer.bos_token_id, *r] for r in ids])
    objective = CompressionObjective(model, kind="rc")
    batch = objective.collate([{"input_ids": r} for r in ids])
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    targets = batch["continuation_ids"][batch["continuation_mask"].bool()]
    for step in range(600):
        loss = objective(model, batch)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 25 == 24:
            with torch.no_grad():
                memory = model.decoder_memory(model(model.collate([[model.tokenizer.bos_token_id, *r] for r in ids]))["memory_states"])
                predicted = lm_logits(model, objective.student_states(model, memory, batch)).argmax(-1)
            if bool((predicted == targets).all()) and float(loss.detach()) < 0.5:
                break
    else:
        pytest.fail("the tiny model did not learn to reconstruct its two texts")
    model.config.stages = [_rc_stage()]
    model.eval()
    return model.save(tmp_path_factory.mktemp("gen") / "forced")


@pytest.fixture(scope="module")
def model(forced):
    return LLM2Comp.from_pretrained(str(forced), device="cpu")


def _ids(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _plain_greedy(model, start, memory, prompt, steps):
    """Greedy decoding the slow, obvious way: the whole input again at every step, no cache, no padding."""
    out = []
    with torch.no_grad(), model.decoder_mode() as lm:
        embed = lm.get_input_embeddings()
        for _ in range(steps):
            parts = [embed(torch.tensor(start, dtype=torch.long))] if start else []
            if memory is not None:
                parts.append(memory)
            if prompt + out:
                parts.append(embed(torch.tensor(prompt + out, dtype=torch.long)))
            hidden = lm.get_decoder()(inputs_embeds=torch.cat(parts)[None]).last_hidden_state[:, -1]
            out.append(int(lm_logits(model, hidden).argmax(-1)))
    return out


# ---------------------------------------------------------------------------------------------- the forced memory
def test_memory_carries_its_text(model):
    memory = G.compress(model, TEXTS)
    assert memory.vectors.shape == (2, 4, 64) and memory.lengths.tolist() == [4, 4]
    assert memory.text_tokens.tolist() == [len(_ids(model, t)) for t in TEXTS]
    assert memory.info["objective"] == "rc" and memory.info["memory_bridge"] == "affine"
    # reconstruction: every token back, from each text's own memory
    assert G.reconstruct(model, memory, return_token_ids=True) == [_ids(model, t) for t in TEXTS]
    assert G.reconstruct(model, memory) == TEXTS
    # generate from the memory alone is the same greedy decoding
    assert G.generate(model, memory=memory, max_new_tokens=len(_ids(model, TEXTS[0])), stop_at_eos=False)[0] == TEXTS[0]
    # another text's memory gives that other text, and no memory gives neither
    swapped = G.reconstruct(model, memory[[1, 0]], return_token_ids=True)
    assert swapped == [_ids(model, TEXTS[1]), _ids(model, TEXTS[0])]
    n = len(_ids(model, TEXTS[0]))
    plain = G.generate(model, [""], max_new_tokens=n, stop_at_eos=False, return_token_ids=True)[0]
    assert plain != _ids(model, TEXTS[0])[:n]
    # the same memory, broadcast to several prompts
    assert G.generate(model, ["", ""], memory=memory[0], max_new_tokens=n, stop_at_eos=False) == [TEXTS[0]] * 2


# ---------------------------------------------------------------------------------------------- batching and padding
def test_greedy_batched_equals_one_by_one_and_the_plain_loop(model):
    memory = G.compress(model, [TEXTS[0], TEXTS[1], SAMPLE_TEXT[5]])
    prompts = ["", "The weather", "She played the violin at the"]  # lengths differ: left padding in the batch
    batched = G.generate(model, prompts, memory=memory, max_new_tokens=8, batch_size=3, return_token_ids=True, stop_at_eos=False)
    single = [G.generate(model, [p], memory=memory[i], max_new_tokens=8, return_token_ids=True, stop_at_eos=False)[0]
              for i, p in enumerate(prompts)]
    assert batched == single
    bos = [model.tokenizer.bos_token_id]
    plain = [_plain_greedy(model, bos, memory.rows()[i], _ids(model, p), 8) for i, p in enumerate(prompts)]
    assert batched == plain
    # without memory as well, and in batches of 2 (the order sorted by length, then restored)
    no_memory = G.generate(model, prompts, max_new_tokens=6, batch_size=2, return_token_ids=True, stop_at_eos=False)
    assert no_memory == [_plain_greedy(model, bos, None, _ids(model, p), 6) for p in prompts]


def test_segments_of_different_counts_are_left_padded(model):
    texts = [TEXTS[0] + " " + TEXTS[1], TEXTS[1]]
    memory = G.compress(model, texts, segment_tokens=6)
    counts = [len(_ids(model, t)) for t in texts]
    assert memory.text_tokens.tolist() == counts
    assert memory.lengths.tolist() == [4 * -(-c // 6) for c in counts]
    assert memory.segments(0) == [6] * (counts[0] // 6) + ([counts[0] % 6] if counts[0] % 6 else [])
    batched = G.generate(model, ["", ""], memory=memory, max_new_tokens=5, batch_size=2, return_token_ids=True, stop_at_eos=False)
    bos = [model.tokenizer.bos_token_id]
    assert batched == [_plain_greedy(model, bos, memory.rows()[i], [], 5) for i in range(2)]
    # reconstruction decodes each segment from its own k vectors: as many tokens as the text has
    assert [len(r) for r in G.reconstruct(model, memory, return_token_ids=True)] == counts


@pytest.mark.parametrize("architecture", ["gemma3_text", "qwen3"])
def test_batched_generation_on_other_architectures(tiny_model_factory, architecture):
    """Gemma 3 (scaled embeddings, sliding-window layers) and Qwen 3: left-padded batches give the plain loop's tokens."""
    bare = LLM2Comp.from_pretrained(str(tiny_model_factory(architecture)), device="cpu", pooling="memory", num_memory_tokens=3)
    memory = G.compress(bare, [SAMPLE_TEXT[0], SAMPLE_TEXT[3][:10]], allow_untrained=True)
    prompts = ["", "The weather today is"]
    batched = G.generate(bare, prompts, memory=memory, max_new_tokens=5, batch_size=2, return_token_ids=True,
                         stop_at_eos=False, allow_untrained=True)
    start = G._start_ids(bare.tokenizer, True)
    assert batched == [_plain_greedy(bare, start, memory.rows()[i], _ids(bare, p), 5) for i, p in enumerate(prompts)]


def test_sampling_is_seeded(model):
    memory = G.compress(model, TEXTS)
    a = G.generate(model, memory=memory, do_sample=True, temperature=1.5, top_p=0.95, seed=3, max_new_tokens=12, return_token_ids=True)
    b = G.generate(model, memory=memory, do_sample=True, temperature=1.5, top_p=0.95, seed=3, max_new_tokens=12, return_token_ids=True)
    assert a == b and all(len(row) <= 12 for row in a)
    with pytest.raises(ValueError, match="temperature"):
        G.generate(model, memory=memory, do_sample=True, temperature=0.0)


# ---------------------------------------------------------------------------------------------- the memory file
def test_memory_file_round_trip_and_mismatch(model, forced, peaked_dir, tmp_path):
    memory = G.compress(model, [TEXTS[0], TEXTS[1] * 3], segment_tokens=8)
    path = memory.save(tmp_path / "mem.safetensors")
    loaded = G.CompressedMemory.load(path, model)
    assert torch.equal(loaded.vectors, memory.vectors) and torch.equal(loaded.lengths, memory.lengths)
    assert torch.equal(loaded.text_tokens, memory.text_tokens)
    assert (loaded.fingerprint, loaded.base_model, loaded.segment_tokens, loaded.info) == \
        (memory.fingerprint, memory.base_model, 8, memory.info)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:  # plain safetensors: tensors and a string header, no pickle
        assert set(handle.keys()) == {"vectors", "lengths", "text_tokens"}
        assert handle.metadata()["format"] == G.FORMAT
    # the same weights in bfloat16: the same model
    assert G.model_fingerprint(LLM2Comp.from_pretrained(str(forced), device="cpu", dtype=torch.bfloat16)) == memory.fingerprint
    # another model (the backbone without the trained memory): a clear error, on load and on use
    other = LLM2Comp.from_pretrained(str(peaked_dir), device="cpu", pooling="memory", num_memory_tokens=4, bidirectional=False)
    with pytest.raises(G.MemoryMismatchError, match="compressed by another model"):
        G.CompressedMemory.load(path, other)
    with pytest.raises(G.MemoryMismatchError):
        G.generate(other, memory=loaded, allow_untrained=True)
    # a file that is not a memory
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a compressed memory"):
        G.CompressedMemory.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable compressed memory"):
        G.CompressedMemory.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        G.CompressedMemory.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------- models that do not compress
def test_models_without_a_compressor_are_refused(peaked_dir, model):
    bare = LLM2Comp.from_pretrained(str(peaked_dir), device="cpu", pooling="memory", num_memory_tokens=4)
    with pytest.raises(G.CompressorError, match="never trained a compressor"):
        G.compress(bare, TEXTS)
    memory = G.compress(bare, TEXTS, allow_untrained=True)  # research: allowed, and runs
    assert len(G.generate(bare, memory=memory, max_new_tokens=3, allow_untrained=True)) == 2
    with pytest.raises(G.CompressorError, match="never trained a compressor"):
        G.generate(bare, memory=memory)
    assert isinstance(G.generate(bare, "The", max_new_tokens=3), str)  # no memory: any LLM generates
    # an embedding-only model (a supervised stage, no kl/nll/rc)
    bare.config.stages = [{"stage": "supervised", "objective": "supervised"}]
    with pytest.raises(G.CompressorError, match="stages recorded: supervised"):
        G.compress(bare, TEXTS)
    # a compression stage followed by a contrastive one
    bare.config.stages = [_rc_stage(), {"stage": "supervised", "objective": "supervised"}]
    with pytest.raises(G.CompressorError, match="followed by other stages"):
        G.compress(bare, TEXTS)
    # reconstruction needs rc; a kl model continues instead
    bare.config.stages = [{**_rc_stage(), "objective": "kl"}]
    kl_memory = G.compress(bare, TEXTS)
    with pytest.raises(G.CompressorError, match="trained 'kl'"):
        G.reconstruct(bare, kl_memory)
    # another pooling
    mean = LLM2Comp.from_pretrained(str(peaked_dir), device="cpu", pooling="mean")
    with pytest.raises(G.CompressorError, match="memory-token pooling"):
        G.compress(mean, TEXTS, allow_untrained=True)
    assert len(G.generate(mean, ["The", "A"], max_new_tokens=2)) == 2  # without memory any model is the plain LLM


def test_a_merged_compression_adapter_is_refused(forced):
    merged = LLM2Comp.from_pretrained(str(forced), device="cpu")
    merged.merge_and_unload()
    with pytest.raises(G.CompressorError, match="merged"):
        G.compress(merged, TEXTS)


# ---------------------------------------------------------------------------------------------- CLI
def _parser():
    from llm2comp.generation_cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_compress_and_generate(forced, tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n")
    memory_file = tmp_path / "mem.safetensors"
    args = _parser().parse_args(["compress", str(forced), "--input", str(docs), "--output", str(memory_file), "--device", "cpu"])
    assert args.func(args) == 0
    assert "compressed 2 documents" in capsys.readouterr().out
    out = tmp_path / "gen.jsonl"
    args = _parser().parse_args(["generate", str(forced), "--memory", str(memory_file), "--reconstruct", "--output", str(out),
                                 "--device", "cpu"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS and [r["index"] for r in rows] == [0, 1]
    # continuation from the memory, to stdout; one prompt for both memories is refused, one per memory is fine
    args = _parser().parse_args(["generate", str(forced), "--memory", str(memory_file), "--prompt", "The", "--prompt", "A",
                                 "--max-new-tokens", "3", "--device", "cpu"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["The", "A"]
    args = _parser().parse_args(["generate", str(forced), "--memory", str(memory_file), "--prompt", "The", "--prompt", "A",
                                 "--prompt", "B", "--device", "cpu"])
    with pytest.raises(ValueError, match="3 prompts and 2 memories"):
        args.func(args)
    args = _parser().parse_args(["generate", str(forced), "--device", "cpu"])
    with pytest.raises(ValueError, match="needs --memory"):
        args.func(args)


def test_cli_refuses_an_untrained_model(peaked_dir, tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text(f"{TEXTS[0]}\n")
    argv = ["compress", str(peaked_dir), "--input", str(docs), "--output", str(tmp_path / "m.safetensors"), "--device", "cpu"]
    args = _parser().parse_args(argv)
    with pytest.raises(G.CompressorError, match="--allow-untrained"):
        args.func(args)
    args = _parser().parse_args(argv + ["--allow-untrained"])
    assert args.func(args) == 0 and (tmp_path / "m.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- the measurement scripts
def _script(path):
    import importlib.util
    from pathlib import Path

    file = Path(__file__).parent.parent / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rouge_l_and_token_agreement_on_known_strings():
    ev = _script("scripts/compress_generate_eval.py")
    assert ev.lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook pair
    assert ev.lcs_length([], [1, 2]) == 0 and ev.lcs_length([1, 2, 3], [1, 2, 3]) == 3
    assert ev.words("The cat's hat, 2 DOGS!") == ["the", "cat", "s", "hat", "2", "dogs"]
    # rouge-score's README example: "The quick brown fox jumps over the lazy dog" vs "The quick brown dog jumps on the log."
    # LCS the quick brown jumps the = 5; precision 5/8, recall 5/9
    p, r = 5 / 8, 5 / 9
    assert ev.rouge_l("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog") == \
        pytest.approx(2 * p * r / (p + r))
    assert ev.rouge_l("same words here", "Same, words here!") == 1.0
    assert ev.rouge_l("", "anything") == 0.0 and ev.rouge_l("a b", "c d") == 0.0
    assert ev.rouge_l([1, 2, 3, 4], [1, 3, 4, 5]) == pytest.approx(0.75)  # token sequences: LCS 3 of 4 and 4
    assert ev.token_agreement([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75
    assert ev.token_agreement([1, 2], [1, 2, 3, 4]) == 0.5  # missing positions disagree
    assert ev.token_agreement([], []) == 1.0
    assert ev.ratio(3.0, 2.0) == 1.5 and ev.ratio(1.0, 0.0) is None


def test_break_even_and_kv_size():
    bench = _script("benchmarks/generate_from_memory.py")
    assert bench.break_even(compress_s=3.0, memory_s=1.0, full_s=2.0) == 3  # 3 + 3 x 1 <= 3 x 2
    assert bench.break_even(compress_s=0.5, memory_s=1.0, full_s=2.0) == 1
    assert bench.break_even(compress_s=1.0, memory_s=2.0, full_s=2.0) is None
    from llm2comp.testing import shape_overrides, tiny_config

    config = tiny_config(**shape_overrides("smollm2-135m"))
    assert bench.kv_bytes_per_position(config, 4) == 30 * 2 * 3 * 64 * 4  # COMPRESSION.md: 11,520 floats per position


def _corpus(path):
    path.write_text("\n\n".join(" ".join(SAMPLE_TEXT[i:] + SAMPLE_TEXT[:i]) for i in range(8)))
    return path


def test_eval_script_on_the_forced_model(forced, tmp_path, capsys):
    ev = _script("scripts/compress_generate_eval.py")
    out = tmp_path / "out"
    assert ev.main(["--model", str(forced), "--data", str(_corpus(tmp_path / "c.txt")), "--holdout", "4", "--passages", "3",
                    "--context-tokens", "8", "--new-tokens", "6", "--rc-lengths", "8,12", "--device", "cpu",
                    "--output", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    scores = report["continuation"]["scores"]
    assert report["passages"] == 3 and set(scores["vs_full"]) == {"own", "other", "none"}
    assert set(scores["vs_true"]) == {"full", "own", "other", "none"}
    assert all(0 <= v["rouge_l"] <= 1 and 0 <= v["token_agreement"] <= 1 for v in scores["vs_full"].values())
    assert set(report["reconstruction"]) == {"8", "12"}  # the forced model is RC: reconstruction measured
    assert len(report["texts"]) == 3 and set(report["texts"][0]) == {"context", "true", "full", "own", "other", "none"}
    assert set(report["continuation"]["ratio_intervals_95"]) == set(report["continuation"]["ratios"])
    text = (out / "eval.md").read_text()
    assert "## Continuation" in text and "| 8 |" in text and "own/none" in text


def test_benchmark_smoke(tmp_path):
    bench = _script("benchmarks/generate_from_memory.py")
    assert bench.main(["--model", "tiny", "--context-tokens", "24", "--new-tokens", "3", "--contexts", "2", "--rounds", "1",
                       "--segment-tokens", "8", "--device", "cpu", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())["result"]
    assert report["prefill_tokens"] == {"full": 25, "memory": 9, "memory-seg": 1 + 8 * 3}
    assert {"full", "compress", "memory", "compress-seg", "memory-seg", "full-prefill", "memory-prefill"} <= set(report["seconds"])
    assert "Break-even" in (tmp_path / "benchmark.md").read_text()


def test_benchmark_batches_contexts_in_every_arm(tmp_path):
    # --batch-size B: each arm handles B contexts per call (what a batching server pays); the same prefill per context
    bench = _script("benchmarks/generate_from_memory.py")
    assert bench.main(["--model", "tiny", "--context-tokens", "16", "--new-tokens", "3", "--contexts", "4", "--rounds", "1",
                       "--batch-size", "2", "--device", "cpu", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["batch_size"] == 2 and report["result"]["batch_size"] == 2
    assert report["result"]["prefill_tokens"] == {"full": 17, "memory": 9}
    assert len(report["result"]["all_seconds"]["full"]) == 2  # 4 contexts, 2 calls of 2, one round
    assert "batch 2" in (tmp_path / "benchmark.md").read_text()
    with pytest.raises(ValueError, match="multiple of --batch-size"):
        bench.main(["--model", "tiny", "--context-tokens", "16", "--new-tokens", "2", "--contexts", "3", "--rounds", "1",
                    "--batch-size", "2", "--device", "cpu"])


def test_bootstrap_ratio_interval():
    ev = _script("scripts/compress_generate_eval.py")
    low, high = ev.bootstrap_ratio([2.0, 2.2, 1.8, 2.0] * 8, [1.0, 1.1, 0.9, 1.0] * 8)
    assert low <= 2.0 <= high and high - low < 0.1  # every passage's own score is about twice the other's
    assert ev.bootstrap_ratio([1.0, 1.0], [0.0, 0.0]) is None
