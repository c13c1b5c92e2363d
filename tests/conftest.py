import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama model directory with a tokenizer."""
    from llm2comp.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    from llm2comp.testing import make_tiny_model_dir

    cache = {}

    def make(architecture="llama", attn="sdpa"):
        key = (architecture, attn)
        if key not in cache:
            cache[key] = make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / f"{architecture}-{attn}", architecture, attn)
        return cache[key]

    return make
