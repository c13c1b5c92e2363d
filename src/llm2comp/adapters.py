"""What training changes on a model, apart from its memory tokens: LoRA adapters (attach, merge) and the stage-1
view of the backbone as the frozen decoder (adapter off, causal attention, the memory through an optional bridge).

`LLM2Comp` has these as methods (``model.add_lora()``, ``model.decoder_mode()``: `AdaptersMixin`); the code lives here because
none of it is needed to embed text with a saved model. (It is not under `training/`: loading a saved model with a
live adapter and the compression probe use it too.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Self

import torch
from torch import nn

from .memory import MemoryBridge
from .names import DEFAULT_LORA_TARGETS  # noqa: F401 - re-exported
from .persistence import quiet_peft


class AdaptersMixin:
    """What training changes, as methods of `LLM2Comp` (which mixes this class in)."""

    def add_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                 target_modules: Sequence[str] = DEFAULT_LORA_TARGETS, train_memory: bool = True) -> Self:
        """Attach a fresh LoRA adapter; an adapter already attached is merged first (stage chaining).

        `train_memory=False` freezes the memory tokens, for stages that never read them (mean/last/PromptEOL
        pooling, MNTP): a trainable parameter without a gradient breaks DDP and wastes optimizer state.
        """
        from peft import LoraConfig, get_peft_model

        if self.backend != "torch":
            raise ValueError(f"a model on backend '{self.backend}' embeds but does not train; load it with backend='torch'")
        if self.peft_model is not None:
            self.merge_and_unload()
        present = {name.rsplit(".", 1)[-1] for name, _ in self.hf_model.named_modules()}
        missing = [t for t in target_modules if t not in present]
        if missing:
            raise ValueError(f"LoRA target modules {missing} not found in {type(self.hf_model).__name__}")
        self.clear_replicas()
        self.drop_normalizer()
        lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
        with quiet_peft():
            self.__dict__["_peft"] = get_peft_model(self.hf_model, lora)
        self.memory.weight.requires_grad_(train_memory)
        return self

    def merge_and_unload(self) -> Self:
        """Fold the attached LoRA into the weights (the memory tokens stay); a no-op without an adapter."""
        from peft import get_peft_model_state_dict

        peft_model = self.peft_model
        if peft_model is None:
            return self
        self.clear_replicas()
        adapter_config = peft_model.peft_config["default"].to_dict()
        state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
        self._merged.append((adapter_config, state))
        self.hf_model = peft_model.merge_and_unload()
        self.__dict__["_peft"] = None
        return self

    # ------------------------------------------------------------------ stage 1: what the frozen decoder reads
    def add_memory_bridge(self, kind: str, token_rows: Sequence[Sequence[int]] | None = None) -> MemoryBridge:
        """Attach a stage-1 `MemoryBridge` fitted on the memory states of ``token_rows`` (encoder inputs of training
        texts, as `collate` takes them); one of that kind already there is kept as it is (a resumed or continued run)."""
        if self.memory_bridge is None or self.memory_bridge.kind != kind:
            if not token_rows:
                raise ValueError("a new memory bridge is fitted on training texts: pass token_rows")
            with torch.no_grad(), self._evaluating():
                states = torch.cat([self(self.collate(token_rows[i : i + 16]))["memory_states"] for i in range(0, len(token_rows), 16)])
            bridge = MemoryBridge(kind, self.get_sentence_embedding_dimension()).to(self.device)
            self.memory_bridge = bridge.fit(states, self.hf_model.get_input_embeddings(), self.vocab_size)
        self.config = dataclasses.replace(self.config, memory_bridge=kind)
        return self.memory_bridge

    def drop_memory_bridge(self) -> None:
        self.memory_bridge = None
        self.config = dataclasses.replace(self.config, memory_bridge=None)

    def decoder_memory(self, memory_states: torch.Tensor) -> torch.Tensor:
        """The memory as the frozen decoder receives it in stage 1 (and in the compression probe): the memory
        states, through the bridge where one is trained. The embedding never goes through it."""
        return self.memory_bridge(memory_states) if self.memory_bridge is not None else memory_states

    @contextlib.contextmanager
    def decoder_mode(self) -> Iterator[nn.Module]:
        """The frozen LLM: the active adapter switched off, causal attention. Yields the causal LM.

        (Adapters of earlier stages, already merged, are part of the frozen weights.) Under layer-wise gradient
        checkpointing the layers stay checkpointed, but their recomputation during backward, which runs after this
        block has exited, switches the adapter off again (torch's non-reentrant `context_fn`); where that is not
        available (reentrant checkpointing) checkpointing is paused inside the block.
        """
        adapter_off = self.peft_model.disable_adapter if self.peft_model is not None else contextlib.nullcontext
        changed = []
        for module in self.hf_model.modules():
            if getattr(module, "gradient_checkpointing", False) is not True:
                continue
            func = getattr(module, "_gradient_checkpointing_func", None)
            changed.append((module, func))
            if _non_reentrant(func):
                module._gradient_checkpointing_func = functools.partial(
                    func, context_fn=lambda: (contextlib.nullcontext(), adapter_off())
                )
            else:
                module.gradient_checkpointing = False
        try:
            with adapter_off():
                yield self.hf_model
        finally:
            for module, func in changed:
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = func



def _non_reentrant(func) -> bool:
    """Whether a layer's checkpoint function is torch's non-reentrant checkpoint (which accepts `context_fn`)."""
    from torch.utils.checkpoint import checkpoint

    keywords = getattr(func, "keywords", None)
    return (getattr(func, "func", None) is checkpoint and keywords.get("use_reentrant") is False
            and "context_fn" not in keywords)
