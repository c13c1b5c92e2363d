"""Run one training stage from a `TrainConfig`: build model, objective and data, train, save."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..model import LLM2Comp
from ..persistence import CONFIG_NAME
from .callbacks import ProbeSettings, RunLogs
from .checkpoints import last_complete_checkpoint, resumed_step, set_training_length
from .config import TrainConfig
from .trainer import LLM2CompTrainer

logger = logging.getLogger(__name__)
# transformers 5.x renamed gradient_checkpointing -> activation_checkpointing
_CHECKPOINTING_ARG = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"


def _use_bf16(setting) -> bool:
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def build_model(cfg: TrainConfig) -> LLM2Comp:
    """The encoder with a fresh LoRA attached. From a saved llm2comp directory, its adapter is merged first."""
    saved = (Path(cfg.model).expanduser() / CONFIG_NAME).is_file()
    # frozen weights in the training precision (a 7B backbone in fp32 doubles its memory for nothing); peft keeps
    # the LoRA weights in fp32, and so are the memory tokens
    dtype = cfg.dtype or ("bfloat16" if _use_bf16(cfg.bf16) else None)
    # loaded on the CPU: the Trainer (accelerate, FSDP, DeepSpeed) places the model itself
    kwargs = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code, "device": "cpu"}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.pooling is not None:
        kwargs["pooling"] = cfg.pooling
    if cfg.bidirectional is not None:
        kwargs["bidirectional"] = cfg.bidirectional
    if not saved:  # a fresh model gets its memory tokens, also when this stage does not train them
        kwargs.update(num_memory_tokens=cfg.num_memory_tokens, memory_init=cfg.memory_init)
    spec = cfg.spec
    if spec.pooling is not None:  # what the objective trains (MNTP: mean pooling; compression: memory tokens)
        kwargs["pooling"] = spec.pooling
    if spec.bidirectional is not None:  # MNTP: a bidirectional encoder
        kwargs["bidirectional"] = spec.bidirectional
    model = LLM2Comp.load(cfg.model, **kwargs)
    # the memory tokens train where the embedding reads them (frozen otherwise: DDP needs a gradient for every
    # trainable parameter)
    model.add_lora(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules,
                   train_memory=model.config.pooling == "memory")
    if cfg.memory_bridge is None and model.memory_bridge is not None:  # a later stage, or stage 1 without one
        model.drop_memory_bridge()
    return model


BRIDGE_FIT_TEXTS = 64


def build_objective_and_data(cfg: TrainConfig, model: LLM2Comp):
    """The stage's objective and dataset at the training length (stage-1 texts are cut to fit it; the model is saved
    at its encoding length); for a stage-1 run with ``memory_bridge``, the bridge fitted on the encoder inputs of its
    first training texts (as the objective builds them: the prefix for kl/nll, the whole text for rc)."""
    set_training_length(model, cfg.max_length)
    objective = cfg.spec.build(cfg.objective_settings(), model)
    dataset = cfg.spec.dataset(cfg.data_settings(), model)
    if cfg.memory_bridge is not None:
        batch = objective.collate([dataset[i] for i in range(min(BRIDGE_FIT_TEXTS, len(dataset)))])
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["encoder_input_ids"], batch["encoder_attention_mask"])]
        k = model.config.num_memory_tokens
        model.add_memory_bridge(cfg.memory_bridge, [row[:-k] for row in rows])  # collate appends the memory slots again
    return objective, dataset


def training_arguments(cfg: TrainConfig, checkpoint_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps else int(cfg.warmup_ratio * cfg.max_steps),
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        bf16=_use_bf16(cfg.bf16),
        **{_CHECKPOINTING_ARG: cfg.gradient_checkpointing},
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def run_logs(cfg: TrainConfig, output: Path) -> RunLogs:
    what = f"{cfg.stage} ({cfg.objective})" if cfg.stage == "pretrain" else cfg.stage
    probe = None
    if cfg.probe_steps:
        probe = ProbeSettings(source=cfg.data, field=cfg.data_field, passages=cfg.probe_passages,
                              text_tokens=cfg.probe_text_tokens, holdout=cfg.probe_holdout, every=cfg.probe_steps,
                              task="reconstruction" if cfg.objective == "rc" else "continuation",
                              metric="ce" if cfg.objective != "kl" else "kl")
    return RunLogs(output, title=f"{what}: {cfg.model} on {cfg.data}, batch {cfg.batch_size}", probe=probe)


def train(cfg: TrainConfig) -> Path:
    """Train one stage; returns the output directory (loadable with `LLM2Comp.from_pretrained`).

    First what only the config decides (the resume point, the logs), then the model, its objective and data, then
    the trainer's arguments and the trainer (`trainer.py`: checkpoints, logs, probe), then the embedding's sizes and
    normalizer, saved."""
    cfg = cfg.per_device()
    output = Path(cfg.output)
    checkpoint_dir = output / "checkpoints"
    logs = run_logs(cfg, output)
    resume_from = last_complete_checkpoint(checkpoint_dir) if cfg.resume else None
    if cfg.resume and resume_from is None:
        logger.warning("--resume: no complete checkpoint in %s, starting from scratch", checkpoint_dir)
    if resume_from is None and (logs.losses.exists() or checkpoint_dir.exists()) and not cfg.resume:
        raise FileExistsError(f"{output} already holds a run; pass --resume to continue it or choose another --output")
    # logs keep the steps of the checkpoint training continues from (none: a fresh start, e.g. killed before the
    # first complete checkpoint), so that redone steps are not logged twice
    logs.truncate(resumed_step(resume_from))
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    objective, dataset = build_objective_and_data(cfg, model)
    model.config.stages = model.config.stages + [
        {"stage": cfg.stage, "objective": cfg.objective if cfg.stage == "pretrain" else cfg.stage,
         "data": cfg.data, "samples": len(dataset), "max_steps": cfg.max_steps, "batch_size": cfg.batch_size,
         **({"decontamination": dataset.decontamination} if getattr(dataset, "decontamination", None) else {}),
         **({"probe_holdout": dataset.held_out} if getattr(dataset, "held_out", 0) else {})}
    ]
    if cfg.stage == "supervised":  # the query formats it trains, as prompts: the model embeds queries as trained
        from ..data.instructions import trained_prompts

        model.config.prompts = trained_prompts(dataset.pairs[i] for i in dataset.order)
        if model.config.default_prompt_name not in model.config.prompts:
            model.config.default_prompt_name = None
    if cfg.stage == "simcse":
        from ..attention import set_attention_dropout

        set_attention_dropout(model.hf_model, cfg.attention_dropout)

    # the arguments only now: under DeepSpeed ZeRO-3 they switch on zero.Init, which would shard a model loaded after them
    args = training_arguments(cfg, checkpoint_dir)
    trainer = LLM2CompTrainer(
        model, objective, args, train_dataset=dataset, logs=logs, save_limit=cfg.save_total_limit, memory_lr=cfg.memory_lr,
        gradcache_chunk=cfg.gradcache_chunk, reads_decoder=cfg.spec.compresses, stage=model.config.stages[-1],
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    if cfg.stage != "pretrain":  # the sizes the embedding can be cut to: trained, or those of a rotated normalizer
        from ..objectives.contrastive import check_matryoshka_dims

        size = model.get_sentence_embedding_dimension()
        declared = [d for d in cfg.normalizer_dims or [] if d < size]  # a recipe's sizes on a smaller backbone: dropped
        if len(declared) < len(cfg.normalizer_dims or []):
            logger.warning("normalizer_dims %s: sizes >= the embedding size (%d) left out", cfg.normalizer_dims, size)
        model.config.matryoshka_dims = check_matryoshka_dims([*(cfg.matryoshka_dims or []), *declared], size)
    if cfg.fit_normalizer:  # on every rank: under ZeRO-3 / FSDP each forward needs all ranks (the main process saves)
        from ..data.pairs import stage_texts

        texts = stage_texts(dataset, cfg.fit_normalizer, seed=cfg.seed)
        model.fit_normalizer(texts, source=f"{len(texts)} training texts of {cfg.data}", pca=cfg.normalizer_pca,
                             standardise=cfg.normalizer_standardise)
        logger.info("normalizer fitted on %d training texts", len(texts))
    # on every rank: under ZeRO-3 / FSDP the Trainer gathers the sharded weights; the main process writes them
    trainer.save_model(str(output))
    _close_process_group(trainer)
    return output


def _close_process_group(trainer) -> None:
    # A rank that exits while gloo still runs its threads aborts ("terminate called without an active exception")
    # and torchrun reports the whole run as failed: wait for rank 0 to finish saving, then tear the group down.
    # Then give gloo's worker threads a moment, the GIL released, to drop the Python objects of that last collective:
    # the DDP reducer still holds the group, and when it is freed (on return) the group's destructor joins those
    # threads while holding the GIL; a worker still waiting for the GIL then deadlocks the rank (seen with py-spy:
    # ~ProcessGroupGloo -> thread::join vs a worker in gil_scoped_acquire for a decref).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
        time.sleep(0.5)
