"""Tiny random-weight models and tokenizers for tests, benchmarks' smoke runs and examples (no downloads)."""

from __future__ import annotations

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


def make_tiny_model_dir(path: str | Path, architecture: str = "llama", attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> Path:
    """Write a tiny random causal LM plus tokenizer to ``path`` (a Hugging Face model directory)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(architecture, attn_implementation, vocab_size=max(len(tokenizer), 64), **overrides)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
