"""Smoke runs of the benchmark scripts on tiny models (their numbers come from real runs, see docs/RESULTS.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], check=True, capture_output=True, text=True, timeout=600).stdout


def test_encode_throughput_smoke():
    out = _run(BENCHMARKS / "encode_throughput.py", "--model", "tiny", "--n", "16", "--batch-size", "4", "--rounds", "1")
    assert "encode overhead over bare forward" in out and "length-sorted speed-up" in out


def test_one_copy_memory_smoke():
    out = _run(BENCHMARKS / "one_copy_memory.py", "--model", "tiny", "--steps", "1", "--rounds", "1", "--length", "32")
    assert "ratio one/two" in out
    assert "|diff| = 0.00e+00" in out
    out = _run(BENCHMARKS / "one_copy_memory.py", "--model", "random:tiny", "--steps", "1", "--rounds", "1", "--length", "32",
               "--gradient-checkpointing")
    assert "gradient checkpointing" in out and "|diff| = 0.00e+00" in out


def test_real_shapes_build_the_right_config():
    from llm2comp.testing import shape_overrides, tiny_config

    config = tiny_config(**shape_overrides("1b"))
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads, config.vocab_size) == (2048, 16, 8, 128256)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_overrides("13b")


def test_gpu_throughput_smoke_on_cpu():
    out = _run(BENCHMARKS / "gpu_throughput.py", "--shape", "tiny", "--device", "cpu", "--dtype", "float32",
               "--batch-size", "2", "--length", "32", "--steps", "1")
    for label in ("stage-1 KL step", "SimCSE step", "encode (forward)"):
        assert label in out
