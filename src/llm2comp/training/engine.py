"""What a training run checks about the distributed engine it runs under (accelerate's DDP, FSDP, DeepSpeed).

Two combinations give wrong results or hang, and are refused before the first step:

- GradCache (``gradcache_chunk``) re-encodes inside backward with ``torch.autograd.grad`` over the parameters, which
  needs unsharded parameters: fine under DDP and ZeRO-1/2, not under ZeRO-3 or FSDP.
- Activation checkpointing by the *engine* (FSDP's ``fsdp_activation_checkpointing``, DeepSpeed's
  ``activation_checkpointing``) recomputes a layer during backward without knowing that the compression objectives'
  decoder pass ran with the adapter off: the recomputation would run with the adapter on and give wrong gradients,
  silently. `gradient_checkpointing: true` (Hugging Face's, which `LLM2Comp.decoder_mode` makes adapter-aware) is
  the supported way.

And one fallback made visible: accelerate selects FSDP only on GPUs and other accelerators; on CPU an FSDP
config silently runs plain data parallelism (MULTI_CPU), so a run asked for FSDP that did not get it says so.

And one agreement: a non-finite loss on one rank must stop every rank (else the others wait for the collective
timeout), so the check is all-reduced (`any_rank_nonfinite`).
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


def engine_kind(accelerator) -> str:
    """accelerate's distributed type by name: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED, ..."""
    return str(getattr(accelerator, "distributed_type", "NO")).split(".")[-1].upper()


def sharded_engine(accelerator) -> str | None:
    """'FSDP' or 'DeepSpeed ZeRO-3' when the engine shards parameters, else None."""
    kind = engine_kind(accelerator)
    if kind == "FSDP":
        return "FSDP"
    if kind == "DEEPSPEED":
        plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
        if plugin is not None and int(getattr(plugin, "zero_stage", 0) or 0) == 3:
            return "DeepSpeed ZeRO-3"
    return None


def engine_checkpointing(accelerator) -> str | None:
    """The engine's own activation checkpointing, where it is switched on, by name."""
    state = getattr(accelerator, "state", None)
    fsdp = getattr(state, "fsdp_plugin", None)
    if fsdp is not None and getattr(fsdp, "activation_checkpointing", False):
        return "FSDP activation checkpointing (fsdp_activation_checkpointing: true)"
    deepspeed = getattr(state, "deepspeed_plugin", None)
    config = getattr(deepspeed, "deepspeed_config", None) or {}
    checkpointing = config.get("activation_checkpointing") if isinstance(config, dict) else None
    if checkpointing and (not isinstance(checkpointing, dict) or checkpointing.get("partition_activations")
                          or checkpointing.get("cpu_checkpointing") or checkpointing.get("contiguous_memory_optimization")
                          or checkpointing.get("number_checkpoints")):
        return "DeepSpeed activation_checkpointing"
    return None


def check_engine(accelerator, gradcache_chunk: int | None, reads_decoder: bool) -> None:
    """Refuse the engine settings above with what to do instead (``gradcache_chunk``: the run's GradCache chunk size;
    ``reads_decoder``: the objective runs the frozen decoder with the adapter off, `ObjectiveSpec.compresses`)."""
    engine = sharded_engine(accelerator)
    if gradcache_chunk and engine:
        raise ValueError(f"gradcache_chunk cannot run under {engine}: GradCache re-encodes inside backward and needs "
                         "unsharded parameters. Use DDP or DeepSpeed ZeRO-1/2 with GradCache, or drop gradcache_chunk "
                         "and lower batch_size / raise gradient_accumulation_steps")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and engine != "FSDP":
        logger.warning("the accelerate config asks for FSDP but the run is %s: accelerate runs FSDP only on GPUs and other "
                       "accelerators, so parameters are not sharded here (each process holds the whole model)",
                       engine_kind(accelerator))
    checkpointing = engine_checkpointing(accelerator)
    if checkpointing and reads_decoder:
        raise ValueError(f"{checkpointing} would recompute the frozen decoder's pass with the LoRA adapter on (wrong "
                         "gradients); switch it off and set gradient_checkpointing: true, which llm2comp makes adapter-aware")


def sharded_units(model: torch.nn.Module) -> int:
    """How many FSDP units wrap parts of ``model`` (FSDP2 ``fully_shard`` modules, or FSDP1 wrappers)."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # a torch without FSDP
        return 0
    return sum(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


def describe_engine(accelerator, model: torch.nn.Module) -> str:
    """One line on how the run is distributed (printed at the start): engine, processes, FSDP units."""
    line = f"engine: {engine_kind(accelerator)}, {getattr(accelerator, 'num_processes', 1)} process(es)"
    if sharded_engine(accelerator) == "FSDP":
        line += f", {sharded_units(model)} FSDP unit(s)"
    return line


def any_rank_nonfinite(loss: torch.Tensor) -> bool:
    """Whether the loss is NaN/inf on this rank or on any other (one all-reduce when distributed)."""
    bad = (~torch.isfinite(loss.detach())).any().float().reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.SUM)
    return bool(bad.item() > 0)
