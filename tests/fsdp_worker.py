"""Worker of test_fsdp.py: steps of a training stage with torch's FSDP2 (`fully_shard`) over gloo, sharded the way
accelerate's TRANSFORMER_BASED_WRAP shards the module the Trainer gets, then the gathered state saved the way the
Trainer's final save passes it to `LLM2Comp.save`. (accelerate itself runs FSDP only on GPUs: on CPU it falls back to
plain data parallelism, so the Trainer cannot be used for this on a CPU machine.)

    torchrun --nproc_per_node=N tests/fsdp_worker.py CONFIG OUTPUT STEPS [--no-shard] [--load CHECKPOINT]

``--load``: after sharding, load a checkpoint's trainable weights the way the Trainer's resume does under FSDP
(`load_training_state` on the wrapped model), before the steps.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist


def main(config: str, output: str, steps: int, shard: bool = True, load: str | None = None) -> None:
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from llm2comp.training.checkpoints import load_training_state
    from llm2comp.training.config import TrainConfig
    from llm2comp.training.engine import sharded_units
    from llm2comp.training.run import build_model, build_objective_and_data
    from llm2comp.training.trainer import TrainingModule

    distributed = "RANK" in __import__("os").environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    cfg = TrainConfig.from_yaml(config)
    torch.manual_seed(cfg.seed)
    encoder = build_model(cfg)
    objective, dataset = build_objective_and_data(cfg, encoder)
    module = TrainingModule(encoder, objective)
    full_sizes = {name: p.numel() for name, p in module.named_parameters()}
    report = {"world": world}
    if shard:
        plugin = SimpleNamespace(auto_wrap_policy=transformer_auto_wrap_policy, transformer_cls_names_to_wrap=None)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, module)
        for submodule in [m for m in module.modules() if policy(m)]:
            fully_shard(submodule)
        fully_shard(module)
        local = {name: p.to_local().numel() for name, p in module.named_parameters()}
        report["units"] = sharded_units(module)
        report["sharded_fraction"] = sum(local.values()) / sum(full_sizes.values())
    if load:
        load_training_state(encoder, load)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    global_batch = 4
    losses = []
    for step in range(steps):
        examples = [dataset[step * global_batch + i] for i in range(global_batch)]
        local_examples = examples[rank * global_batch // world : (rank + 1) * global_batch // world]
        loss = module(**objective.collate(local_examples))["loss"]
        loss.backward()  # FSDP reduce-scatters the gradient averaged over ranks, as DDP all-reduces it
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        if distributed:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)) if shard else module.state_dict()
    if rank == 0:
        # the Trainer's `_save` under FSDP: the gathered state dict, keys of TrainingModule
        encoder.save(output, state_dict={k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        report["losses"] = losses
        (Path(output) / "fsdp_report.json").write_text(json.dumps(report))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    load = sys.argv[sys.argv.index("--load") + 1] if "--load" in sys.argv else None
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), shard="--no-shard" not in sys.argv, load=load)
