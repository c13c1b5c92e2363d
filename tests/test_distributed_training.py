"""Data-parallel training with torchrun on CPU (2 gloo processes) equals one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from llm2comp.testing import assert_same_tensors, logged_losses, saved_trainable, write_kl_setup

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("ddp")
    write_kl_setup(root, tiny_dir, "save_steps: 2\nmax_steps: 3\n")
    return root


def _run(root, output, processes, *extra):
    # a run that hangs prints every thread's stack after 150 s, which the failure below shows
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", LLM2COMP_DUMP_STACKS_AFTER="150",
               LLM2COMP_CACHE=str(root / "cache"))  # the corpus is tokenized once, into this cache
    args = ["--config", str(root / "config.yaml"), "--output", str(output), "--batch-size", str(4 // processes), *extra]
    if processes == 1:
        command = [sys.executable, "-m", "llm2comp", "train", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
                   "-m", "llm2comp", "train", *args]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or "")
        pytest.fail(f"{' '.join(command[-8:])} timed out; stderr tail:\n{stderr[-6000:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model saved to") == 1  # one process reports, not every rank


def test_two_processes_match_one_and_resume(setup):
    single, double = setup / "single", setup / "double"
    _run(setup, single, 1)
    _run(setup, double, 2)
    assert len(list((setup / "cache" / "tokenized").glob("*.arrow"))) == 1  # tokenized once, by the main process
    # same loss per step and same trained weights
    assert len(logged_losses(single)) == 3
    torch.testing.assert_close(torch.tensor(logged_losses(double)), torch.tensor(logged_losses(single)), atol=1e-7, rtol=1e-4)
    assert_same_tensors(saved_trainable(double), saved_trainable(single))
    # one checkpoint set and one log, not one per rank; the data-order log holds the whole global batch
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    order = [json.loads(line) for line in (double / "data_order.jsonl").read_text().splitlines()]
    assert order == [json.loads(line) for line in (single / "data_order.jsonl").read_text().splitlines()]
    assert all(len(record["index"]) == 4 for record in order)

    # resume: as if killed after checkpoint-2
    resumed = setup / "resumed"
    shutil.copytree(double, resumed, ignore=shutil.ignore_patterns("checkpoint-3"))
    for name in ("llm2comp_config.json", "memory_tokens.safetensors", "adapters"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _run(setup, resumed, 2, "--resume")
    assert_same_tensors(saved_trainable(resumed), saved_trainable(double))
    assert len(logged_losses(resumed)) == 3


@pytest.mark.parametrize("stage_args", [("--objective", "mntp"), ("--stage", "simcse", "--pooling", "mean")],
                         ids=["mntp", "simcse-mean"])
def test_two_processes_train_stages_that_never_read_the_memory(setup, stage_args):
    # these stages leave the memory tokens without gradient; DDP (find_unused_parameters=False) must still run
    output = setup / f"unused-{stage_args[1]}"
    _run(setup, output, 2, *stage_args)
    losses = logged_losses(output)
    assert len(losses) == 3 and all(loss == loss and abs(loss) < 1e4 for loss in losses)
    if stage_args[1] == "mntp":  # deterministic (masks tied to example indices): equal to one process, exactly
        single = setup / "unused-mntp-single"
        _run(setup, single, 1, *stage_args)
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(logged_losses(single)), atol=1e-7, rtol=1e-4)
        assert_same_tensors(saved_trainable(output), saved_trainable(single))
