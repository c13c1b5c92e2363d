"""Two gloo processes under DDP give the single-process loss and gradients of the same global batch.

Each rank holds half of the global batch (3 hard negatives on rank 0, none on rank 1, so the variable-size
gather is exercised); the objective gathers embeddings with gradient, DDP averages the gradients. Checked for
the supervised objective (plain and GradCache) and for SimCSE, with DDP configured as the Trainer does
(``find_unused_parameters=False``).
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from llm2comp import LLM2Comp
from llm2comp.objectives.contrastive import SimCSEObjective, SupervisedObjective
from llm2comp.testing import SAMPLE_TEXT

WORLD = 2
MODES = [("supervised", None), ("supervised", 2), ("simcse", None), ("simcse", 2)]


def _model(tiny_dir, state_path=None):
    torch.manual_seed(0)
    model = LLM2Comp.from_pretrained(str(tiny_dir), num_memory_tokens=3, max_length=128)
    model.add_lora(r=4, alpha=8, dropout=0.0)
    if state_path is None:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
    else:
        state = torch.load(state_path)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(state[name])
    return model.eval()  # no dropout: ranks and the reference see the same network


def _global_examples(kind):
    if kind == "simcse":
        return [{"text": t, "index": i} for i, t in enumerate(SAMPLE_TEXT)]
    examples = []
    for i in range(8):
        example = {"query": SAMPLE_TEXT[i][: 18 + 2 * i], "positive": SAMPLE_TEXT[(i + 3) % 8], "instruction": "Find" if i % 2 else "",
                   "source": "s", "key": str(i % 3), "index": i}
        if i in (0, 1, 2):  # rank 0 holds three hard negatives, rank 1 none (the sizes differ per rank)
            example["negative"] = SAMPLE_TEXT[(i + 5) % 8][: 25 + i]
        examples.append(example)
    return examples


def _objective(kind, model, chunk):
    cls = SimCSEObjective if kind == "simcse" else SupervisedObjective
    return cls(model, temperature=0.05, gradcache_chunk=chunk)


def _worker(rank, tiny_dir, state_path, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from llm2comp.training.trainer import TrainingModule

        model = _model(tiny_dir, state_path)
        results = {}
        for kind, chunk in MODES:
            objective = _objective(kind, model, chunk)
            module = torch.nn.parallel.DistributedDataParallel(TrainingModule(model, objective), find_unused_parameters=False)
            model.zero_grad(set_to_none=True)
            examples = _global_examples(kind)
            share = len(examples) // WORLD
            batch = objective.collate(examples[rank * share : (rank + 1) * share])
            batch.pop("index")
            loss = module(**batch)["loss"]
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            results[(kind, chunk)] = (loss.item(), grads)
            del module
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_loss_and_gradients_equal_single_process(tiny_dir, tmp_path):
    model = _model(tiny_dir)
    state_path = tmp_path / "state.pt"
    torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, state_path)

    reference = {}
    for kind, chunk in MODES:
        objective = _objective(kind, model, chunk)
        model.zero_grad(set_to_none=True)
        loss = objective(model, objective.collate(_global_examples(kind)))["loss"]
        loss.backward()
        reference[(kind, chunk)] = (loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    mp.spawn(_worker, args=(str(tiny_dir), str(state_path), _free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for mode, (loss, grads) in results.items():
            ref_loss, ref_grads = reference[mode]
            assert loss == pytest.approx(ref_loss, abs=1e-5), (rank, mode)
            assert set(grads) == set(ref_grads)
            for name, grad in grads.items():
                assert ref_grads[name].abs().sum() > 0, name
                torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=f"rank {rank} {mode} {name}")
