"""The objective registry: one registration makes an objective known to config validation, the CLI and training."""

import dataclasses

import pytest
import torch

from llm2comp.compressor import COMPRESSION_OBJECTIVES
from llm2comp.objectives import registry
from llm2comp.objectives.pretext import pretext_dataset
from llm2comp.testing import SAMPLE_TEXT
from llm2comp.training.config import TrainConfig
from llm2comp.training.run import train


@dataclasses.dataclass
class ShrinkMemory:
    """A toy pretext objective: pull the memory states towards zero."""

    model: object

    def collate(self, examples):
        return self.model.collate([list(e["input_ids"]) for e in examples])

    def __call__(self, model, batch):
        return {"loss": model(batch)["memory_states"].float().pow(2).mean()}


def test_one_registration_makes_an_objective_trainable(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._load()))  # registered for this test only
    with pytest.raises(ValueError, match="unknown pretrain objective 'shrink'; choose one of kl, nll, rc, mntp"):
        TrainConfig.from_dict({"objective": "shrink"})
    registry.register(registry.ObjectiveSpec("shrink", "pretrain", build=lambda cfg, model: ShrinkMemory(model),
                                             dataset=pretext_dataset, pooling="memory"))

    from llm2comp.cli import build_parser

    args = build_parser().parse_args(["train", "--objective", "shrink"])  # the CLI offers it
    assert args.objective == "shrink"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(SAMPLE_TEXT))
    output = train(TrainConfig.from_dict(dict(objective="shrink", model=str(tiny_dir), data=str(corpus), max_steps=2,
                                              batch_size=2, num_memory_tokens=2, output=str(tmp_path / "run"))))
    from llm2comp import LLM2Comp

    trained = LLM2Comp.from_pretrained(output)
    assert trained.config.stages[-1]["objective"] == "shrink"
    fresh = LLM2Comp.from_pretrained(tiny_dir, num_memory_tokens=2)
    assert not torch.allclose(trained.memory.weight, fresh.memory.weight)  # its loss trained the memory tokens


def test_specs_say_what_each_objective_needs():
    mntp = registry.objective_spec("pretrain", "mntp")
    assert (mntp.pooling, mntp.bidirectional) == ("mean", True)
    assert registry.objective_spec("pretrain", "kl").pooling == "memory"  # compression trains memory tokens
    supervised = registry.objective_spec("supervised")
    assert registry.compression_objectives() == COMPRESSION_OBJECTIVES  # the decoder-read objectives: compresses=True
    assert not mntp.compresses and not supervised.compresses
    assert supervised.pooling is None  # the model's own pooling
    assert TrainConfig.from_dict({"stage": "simcse"}).batch_size == registry.stage_defaults()["simcse"]["batch_size"]
    with pytest.raises(ValueError, match="unknown stage 'finetune'; choose one of pretrain, simcse, supervised"):
        TrainConfig.from_dict({"stage": "finetune"})
