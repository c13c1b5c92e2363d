"""Engine checks of a training run: combinations that give wrong gradients or hang are refused before the first step,
and a non-finite loss on one rank stops every rank."""

import os
import types

import pytest
import torch
import torch.multiprocessing as mp

from llm2comp.training.config import TrainConfig
from llm2comp.training.engine import any_rank_nonfinite, check_engine, engine_checkpointing, sharded_engine


def _accelerator(kind="NO", zero_stage=None, fsdp_checkpointing=False, ds_config=None):
    deepspeed = types.SimpleNamespace(zero_stage=zero_stage, deepspeed_config=ds_config or {}) if kind == "DEEPSPEED" else None
    fsdp = types.SimpleNamespace(activation_checkpointing=fsdp_checkpointing) if kind == "FSDP" else None
    return types.SimpleNamespace(distributed_type=f"DistributedType.{kind}",
                                 state=types.SimpleNamespace(deepspeed_plugin=deepspeed, fsdp_plugin=fsdp))


def test_gradcache_is_refused_where_parameters_are_sharded():
    cfg = TrainConfig.from_dict(dict(stage="supervised", gradcache_chunk=8, max_steps=300))
    for accelerator in (_accelerator("FSDP"), _accelerator("DEEPSPEED", zero_stage=3)):
        with pytest.raises(ValueError, match="GradCache re-encodes inside backward"):
            check_engine(accelerator, cfg.gradcache_chunk, reads_decoder=False)
    for accelerator in (_accelerator("NO"), _accelerator("MULTI_GPU"), _accelerator("DEEPSPEED", zero_stage=2)):
        check_engine(accelerator, cfg.gradcache_chunk, reads_decoder=False)  # DDP, ZeRO-1/2: fine
    assert sharded_engine(_accelerator("DEEPSPEED", zero_stage=3)) == "DeepSpeed ZeRO-3"
    assert sharded_engine(_accelerator("DEEPSPEED", zero_stage=1)) is None


def test_engine_activation_checkpointing_is_refused_for_the_decoder_objectives():
    cfg = TrainConfig.from_dict(dict(stage="pretrain", objective="kl"))
    fsdp = _accelerator("FSDP", fsdp_checkpointing=True)
    deepspeed = _accelerator("DEEPSPEED", zero_stage=3, ds_config={"activation_checkpointing": {"partition_activations": True}})
    for accelerator in (fsdp, deepspeed):
        assert engine_checkpointing(accelerator)
        with pytest.raises(ValueError, match="gradient_checkpointing: true"):
            check_engine(accelerator, cfg.gradcache_chunk, reads_decoder=True)
        check_engine(accelerator, cfg.gradcache_chunk, reads_decoder=False)  # no adapter-off pass to recompute wrongly
    assert engine_checkpointing(_accelerator("FSDP")) is None


def _worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        results[rank] = any_rank_nonfinite(loss)
        results[rank + world] = any_rank_nonfinite(torch.tensor(2.0))
    finally:
        torch.distributed.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, results), nprocs=2, join=True)
    assert results[0] is True and results[1] is True  # rank 0's loss was finite: it stops as well
    assert results[2] is False and results[3] is False
    assert any_rank_nonfinite(torch.tensor(float("inf"))) and not any_rank_nonfinite(torch.tensor(0.0))


def test_only_the_main_process_removes_half_written_checkpoints(tmp_path, monkeypatch):
    from llm2comp.training import checkpoints

    (tmp_path / "checkpoint-4").mkdir()  # no completion marker: half written
    monkeypatch.setattr(checkpoints, "is_main_process", lambda: False)
    assert checkpoints.last_complete_checkpoint(tmp_path) is None and (tmp_path / "checkpoint-4").exists()
    monkeypatch.setattr(checkpoints, "is_main_process", lambda: True)
    assert checkpoints.last_complete_checkpoint(tmp_path) is None and not (tmp_path / "checkpoint-4").exists()


def test_an_fsdp_config_that_did_not_get_fsdp_is_reported(monkeypatch, caplog):
    from llm2comp.training.engine import describe_engine

    cfg = TrainConfig.from_dict(dict(stage="supervised", max_steps=300))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level("WARNING", logger="llm2comp.training.engine"):
        check_engine(_accelerator("MULTI_CPU"), cfg.gradcache_chunk, reads_decoder=False)  # what accelerate gives on a CPU machine
    assert "asks for FSDP but the run is MULTI_CPU" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm2comp.training.engine"):
        check_engine(_accelerator("FSDP"), cfg.gradcache_chunk, reads_decoder=False)
    assert "asks for FSDP" not in caplog.text
    line = describe_engine(types.SimpleNamespace(**vars(_accelerator("FSDP")), num_processes=2), torch.nn.Linear(2, 2))
    assert line == "engine: FSDP, 2 process(es), 0 FSDP unit(s)"
