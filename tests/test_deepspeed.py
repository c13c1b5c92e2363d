"""DeepSpeed ZeRO-3 on its CPU accelerator (2 gloo processes, launched by `accelerate launch` as on GPUs): the same
losses and weights as one process, checkpoints without the frozen backbone, resume after a kill, and a final save of
the adapter and memory rows only. Skipped where deepspeed is not installed (`make install` installs it)."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from llm2comp.testing import assert_same_tensors, logged_losses, saved_trainable, write_kl_setup

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")

ZERO3 = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  zero3_init_flag: false
  zero3_save_16bit_model: true
  offload_optimizer_device: none
  offload_param_device: none
  gradient_accumulation_steps: 1
  gradient_clipping: 2.0
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
main_training_function: main
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("zero3")
    write_kl_setup(root, tiny_dir, "save_steps: 2\nmax_steps: 3\n")
    (root / "zero3.yaml").write_text(ZERO3)
    return root


def _run(root, output, zero3, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", LLM2COMP_CACHE=str(root / "cache"))
    train = ["-m", "llm2comp", "train", "--config", str(root / "config.yaml"), "--output", str(output), *extra]
    if zero3:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / "zero3.yaml"), *train, "--batch-size", "2"]
    else:
        command = [sys.executable, *train, "--batch-size", "4"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@needs_deepspeed
def test_zero3_matches_one_process_saves_no_frozen_weights_and_resumes(setup):
    single, sharded = setup / "single", setup / "zero3"
    _run(setup, single, zero3=False)
    log = _run(setup, sharded, zero3=True)
    assert "engine: DEEPSPEED, 2 process(es)" in log
    torch.testing.assert_close(torch.tensor(logged_losses(sharded)), torch.tensor(logged_losses(single)), atol=1e-7, rtol=1e-4)
    assert_same_tensors(saved_trainable(sharded), saved_trainable(single))
    # checkpoints: DeepSpeed's module states hold the trainable tensors only (LoRA and memory rows), no frozen weight
    states = torch.load(sharded / "checkpoints/checkpoint-3/global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)
    assert states["module"] and all("lora_" in k or k == "encoder.memory.weight" for k in states["module"])
    assert not states.get("frozen_param_shapes")
    saved = sorted(str(p.relative_to(sharded)) for p in sharded.glob("**/*.safetensors") if "checkpoints" not in p.parts)
    assert saved == ["adapters/0/adapter_model.safetensors", "memory_tokens.safetensors"]
    # resume, as if killed after checkpoint-2: the same weights as the uninterrupted run
    resumed = setup / "resumed"
    shutil.copytree(sharded, resumed, ignore=shutil.ignore_patterns("checkpoint-3"))
    for name in ("llm2comp_config.json", "memory_tokens.safetensors", "adapters"):
        path = resumed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _run(setup, resumed, True, "--resume")
    assert_same_tensors(saved_trainable(resumed), saved_trainable(sharded), atol=0)
    assert len(logged_losses(resumed)) == 3


def test_the_trainer_sees_the_peft_model_inside_the_training_module(tiny_dir):
    import transformers.trainer as hf_trainer

    from llm2comp import LLM2Comp
    from llm2comp.training.trainer import TrainingModule, peft_visible_to_trainer

    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=2, max_length=32)
    model.add_lora(r=2, alpha=4)
    module = TrainingModule(model, objective=None)
    assert not hf_trainer._is_peft_model(module)
    with peft_visible_to_trainer():
        assert hf_trainer._is_peft_model(module) and hf_trainer._is_peft_model(model.peft_model)
    assert not hf_trainer._is_peft_model(module)
