"""FSDP (torch's FSDP2 over gloo, 2 CPU processes) on a compression stage: one unit per decoder layer, parameters
really sharded, the same losses and trained weights as one process, and only the adapter and the memory rows saved.
(accelerate runs FSDP only on GPUs; `tests/fsdp_worker.py` drives FSDP2 directly, as accelerate would wrap the
module the Trainer gets.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm2comp.testing import assert_same_tensors, saved_trainable, write_kl_setup

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
WORKER = Path(__file__).with_name("fsdp_worker.py")


def _run(config, output, processes, *extra, steps=3):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if processes == 1:
        command = [sys.executable, str(WORKER), str(config), str(output), str(steps), *extra]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
                   str(WORKER), str(config), str(output), str(steps), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "fsdp_report.json").read_text())


def test_fsdp_shards_per_layer_and_matches_one_process(tmp_path, tiny_dir):
    config = write_kl_setup(tmp_path, tiny_dir)
    single = _run(config, tmp_path / "single", 1, "--no-shard")
    sharded = _run(config, tmp_path / "fsdp", 2)
    layers = json.loads((Path(tiny_dir) / "config.json").read_text())["num_hidden_layers"]
    assert sharded["units"] == layers + 1  # each decoder layer, and the root for the rest
    assert 0.45 < sharded["sharded_fraction"] < 0.6  # each of 2 ranks holds about half of every parameter
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(single["losses"]), atol=1e-7, rtol=1e-4)
    a, b = saved_trainable(tmp_path / "fsdp"), saved_trainable(tmp_path / "single")
    assert any("lora_A" in k for k in a)
    assert_same_tensors(a, b)
    # the save holds the adapter and the memory rows only, never the frozen backbone
    saved = sorted(str(p.relative_to(tmp_path / "fsdp")) for p in (tmp_path / "fsdp").rglob("*.safetensors"))
    assert saved == ["adapters/0/adapter_model.safetensors", "memory_tokens.safetensors"]
    assert all("lora_" in k for k in a if k != "memory")
    # resume under FSDP: a checkpoint's full tensors loaded into the sharded parameters (as the Trainer does after
    # wrapping) give back exactly the checkpoint's weights
    resumed = _run(config, tmp_path / "resumed", 2, "--load", str(tmp_path / "single"), steps=0)
    assert resumed["units"] == layers + 1
    assert_same_tensors(saved_trainable(tmp_path / "resumed"), b, atol=0, rtol=0)
