"""Stage 1 pretext objectives: KL (continuation distillation), NLL (continuation), RC (reconstruction), MNTP.

Each objective is a small object: ``collate(examples) -> batch`` builds what it needs (split points, masks)
from examples holding ``input_ids`` (text tokens, no special tokens), and ``__call__(model, batch) -> dict``
returns the loss. One model copy serves as encoder (adapter on, bidirectional) and as the frozen
decoder/teacher (``model.decoder_mode()``: adapter off, causal).

Vocabulary-sized tensors are never materialised for the whole batch: the LM head and the loss run over
chunks of positions under activation checkpointing, so peak memory holds one chunk of logits.
"""

from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..compressor import COMPRESSION_OBJECTIVES
from ..data.settings import DataSettings
from ..features import right_pad, special_prefix
from ..lm_head import decoder_bos, lm_logits
from ..model import LLM2Comp
from ..runtime import is_distributed, is_main_process
from .registry import ObjectiveSettings, ObjectiveSpec, register

# the number of terms a batch's loss averages over (target tokens); the trainer weights micro-batches by it, so that
# gradient accumulation gives exactly the gradient of one large batch
LOSS_ITEMS = "loss_items"


# ---------------------------------------------------------------------------------------------- LM head, chunked
def token_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count`` where count is over the *global* batch when data-parallel: each rank returns
    local_sum * world / global_count, so DDP's gradient averaging yields exactly the gradient of the
    global per-token mean, whatever the token counts of each rank's shard."""
    import torch.distributed as dist

    if is_distributed():
        counts = torch.tensor([float(count)], device=total.device)
        dist.all_reduce(counts)
        return total * dist.get_world_size() / counts.clamp(min=1)[0]
    return total / max(1, count)


def _chunk_rows(model: LLM2Comp, budget: int) -> int:
    return max(1, budget // max(1, model.vocab_size))


def chunked_cross_entropy(model: LLM2Comp, hidden: torch.Tensor, targets: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` (P,) given hidden states (P, d), one chunk of logits at a time."""

    def chunk_loss(h, t):
        return F.cross_entropy(lm_logits(model, h), t, reduction="sum")

    rows = _chunk_rows(model, budget)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]
        total = total + (checkpoint(chunk_loss, h, t, use_reentrant=False) if h.requires_grad else chunk_loss(h, t))
    return token_mean(total, targets.numel())


def chunked_kl(model: LLM2Comp, student: torch.Tensor, teacher: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), summed over the vocabulary; inputs are hidden states (P, d)."""

    def chunk_loss(s, t):
        with torch.no_grad():
            teacher_logp = F.log_softmax(lm_logits(model, t), dim=-1)
        student_logp = F.log_softmax(lm_logits(model, s), dim=-1)
        return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum")

    rows = _chunk_rows(model, budget)
    total = student.new_zeros((), dtype=torch.float32)
    for start in range(0, student.shape[0], rows):
        s, t = student[start : start + rows], teacher[start : start + rows]
        total = total + (checkpoint(chunk_loss, s, t, use_reentrant=False) if s.requires_grad else chunk_loss(s, t))
    return token_mean(total, student.shape[0])


# ---------------------------------------------------------------------------------------------- helpers
def example_rng(seed: int, example: dict, fallback: random.Random) -> random.Random:
    """Randomness tied to (seed, example index), not to a stream: a resumed run draws exactly what the
    uninterrupted run drew, whatever the data loader prefetched before the kill."""
    return random.Random(seed * 1_000_003 + example["index"]) if "index" in example else fallback


def split_point(length: int, rng: random.Random, margin: int = 10) -> int:
    """Prefix length a, uniform in [margin, L - margin]; short texts fall back to [1, L - 1]."""
    if length >= 2 * margin + 1:
        return rng.randint(margin, length - margin)
    return rng.randint(1, max(1, length - 1))


# ---------------------------------------------------------------------------------------------- compression objectives
@dataclass
class CompressionObjective:
    """KL / NLL / RC on one model copy. ``model`` is used only to read the tokenizer and k at collate time."""

    model: LLM2Comp
    kind: str = "kl"
    split_margin: int = 10
    loss_budget: int = 1 << 24  # logits elements per chunk
    seed: int = 0
    frozen_copy: torch.nn.Module | None = None  # a separate frozen LLM as decoder/teacher (the authors' layout; 2x memory)
    # own-vs-other memory contrast (a stage-1 lever, as AutoRegEmbed contrasts its embeddings): adds
    # weight * softplus(loss with own memory - loss with the next example's memory), one more decoder pass
    contrast_weight: float = 0.0

    def __post_init__(self):
        if self.kind not in COMPRESSION_OBJECTIVES:
            raise ValueError(f"unknown compression objective '{self.kind}'")
        if self.model.config.pooling != "memory":
            raise ValueError(f"objective '{self.kind}' needs memory-token pooling, the model uses '{self.model.config.pooling}'")
        if self.contrast_weight < 0:
            raise ValueError(f"contrast_weight must be >= 0, got {self.contrast_weight}")
        self.rng = random.Random(self.seed)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.model.tokenizer
        head = special_prefix(tok)
        budget = self.model.raw_text_budget()
        encoder_rows, continuation_rows, teacher_rows = [], [], []
        for example in examples:
            text = list(example["input_ids"])[:budget]
            if len(text) < 2:
                raise ValueError("compression pre-training needs texts of at least 2 tokens; filter the corpus (min_chars)")
            rng = example_rng(self.seed, example, self.rng)
            a = len(text) if self.kind == "rc" else split_point(len(text), rng, self.split_margin)
            encoder_rows.append(head + text[:a])
            continuation_rows.append(text if self.kind == "rc" else text[a:])
            teacher_rows.append(decoder_bos(tok) + text)
        batch = {f"encoder_{k}": v for k, v in self.model.collate(encoder_rows).items()}
        batch["continuation_ids"], batch["continuation_mask"] = right_pad(continuation_rows, tok.pad_token_id)
        batch[LOSS_ITEMS] = batch["continuation_mask"].sum()
        if self.kind == "kl":
            batch["teacher_ids"], batch["teacher_mask"] = right_pad(teacher_rows, tok.pad_token_id)
            batch["prefix_lengths"] = torch.tensor([len(r) - len(head) for r in encoder_rows])
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch

    def frozen_decoder(self, model: LLM2Comp):
        return contextlib.nullcontext(self.frozen_copy) if self.frozen_copy is not None else model.decoder_mode()

    def decoder_inputs(self, model: LLM2Comp, memory: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """[BOS, m_1..m_k, continuation] as input embeddings, and its attention mask."""
        bos = decoder_bos(model.tokenizer)
        embed = model.hf_model.get_input_embeddings()
        continuation = embed(batch["continuation_ids"])
        parts = [memory.to(continuation.dtype), continuation]
        mask = [torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device), batch["continuation_mask"]]
        if bos:
            bos_ids = torch.full((memory.shape[0], 1), bos[0], dtype=torch.long, device=memory.device)
            parts.insert(0, embed(bos_ids))
            mask.insert(0, torch.ones_like(bos_ids))
        return torch.cat(parts, 1), torch.cat(mask, 1)

    def __call__(self, model: LLM2Comp, batch: dict) -> dict[str, torch.Tensor]:
        device = model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        encoder = {k[len("encoder_"):]: v for k, v in batch.items() if k.startswith("encoder_")}
        memory = model.decoder_memory(model(encoder)["memory_states"])  # (B, k, d)
        valid = batch["continuation_mask"].bool()
        student = self.student_states(model, memory, batch)
        contrast = self.contrast_weight and memory.shape[0] > 1
        if self.kind in ("nll", "rc"):
            targets = batch["continuation_ids"][valid]
            loss = chunked_cross_entropy(model, student, targets, self.loss_budget)
            if contrast:  # the next example's memory must explain this continuation worse than its own
                other = chunked_cross_entropy(model, self.student_states(model, memory.roll(1, 0), batch), targets, self.loss_budget)
                loss = loss + self.contrast_weight * F.softplus(loss - other)
            return {"loss": loss}
        with torch.no_grad(), self.frozen_decoder(model) as lm:
            teacher_hidden = lm.get_decoder()(
                input_ids=batch["teacher_ids"], attention_mask=batch["teacher_mask"], use_cache=False
            ).last_hidden_state
        # teacher position j predicts teacher token j+1; continuation token 0 is teacher token (bos + a)
        offset = len(decoder_bos(model.tokenizer)) + batch["prefix_lengths"] - 1  # (B,)
        gather = offset[:, None] + torch.arange(valid.shape[1], device=device)[None, :]
        gather = gather.clamp(max=teacher_hidden.shape[1] - 1)
        teacher = teacher_hidden.gather(1, gather[..., None].expand(-1, -1, teacher_hidden.shape[-1]))[valid]
        loss = chunked_kl(model, student, teacher, self.loss_budget)
        if contrast:
            other = chunked_kl(model, self.student_states(model, memory.roll(1, 0), batch), teacher, self.loss_budget)
            loss = loss + self.contrast_weight * F.softplus(loss - other)
        return {"loss": loss}

    def student_states(self, model: LLM2Comp, memory: torch.Tensor, batch: dict) -> torch.Tensor:
        """The frozen decoder's final states at the positions that predict the continuation tokens, (P, d)."""
        inputs, mask = self.decoder_inputs(model, memory, batch)
        first = inputs.shape[1] - batch["continuation_ids"].shape[1] - 1  # position of m_k: predicts continuation[0]
        with self.frozen_decoder(model) as lm:
            hidden = lm.get_decoder()(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
        valid = batch["continuation_mask"].bool()
        return hidden[:, first : first + valid.shape[1]][valid]


# ---------------------------------------------------------------------------------------------- MNTP baseline
@dataclass
class MNTPObjective:
    """LLM2Vec's masked next-token prediction: mask 20% of tokens, predict token i from the state at i-1."""

    model: LLM2Comp
    mask_probability: float = 0.2
    loss_budget: int = 1 << 24
    seed: int = 0

    def __post_init__(self):
        if self.model.config.pooling == "memory":
            raise ValueError("mntp trains a token-pooled encoder: load the model with pooling='mean'")
        if not self.model.config.bidirectional:
            raise ValueError("mntp needs bidirectional attention (bidirectional=True)")
        tok = self.model.tokenizer
        self.mask_id = tok.mask_token_id if tok.mask_token_id is not None else tok.convert_tokens_to_ids("_")
        if self.mask_id is None or self.mask_id == tok.unk_token_id:
            self.mask_id = tok.pad_token_id
        self.rng = random.Random(self.seed)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.model.tokenizer
        head = special_prefix(tok)
        budget = self.model.raw_text_budget()
        rows, labels = [], []
        for example in examples:
            text = list(example["input_ids"])[:budget]
            rng = example_rng(self.seed, example, self.rng)
            row, label = list(head), [-100] * len(head)
            for token in text:
                if rng.random() < self.mask_probability:
                    draw = rng.random()
                    row.append(self.mask_id if draw < 0.8 else (rng.randrange(self.model.vocab_size) if draw < 0.9 else token))
                    label.append(token)
                else:
                    row.append(token)
                    label.append(-100)
            if all(x == -100 for x in label) and len(row) > len(head):  # at least one target per text
                label[-1], row[-1] = row[-1], self.mask_id
            rows.append(row)
            labels.append(label)
        batch = self.model.collate(rows)
        batch["labels"], _ = right_pad(labels, -100)
        batch["labels"][batch["attention_mask"] == 0] = -100
        batch[LOSS_ITEMS] = (batch["labels"][:, 1:] != -100).sum()
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch

    def __call__(self, model: LLM2Comp, batch: dict) -> dict[str, torch.Tensor]:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        batch.pop("index", None)
        hidden = model(batch)["token_embeddings"]
        shifted = labels[:, 1:]  # the state at i-1 predicts token i
        valid = shifted != -100
        return {"loss": chunked_cross_entropy(model, hidden[:, :-1][valid], shifted[valid], self.loss_budget)}


def pretext_dataset(settings: DataSettings, model: LLM2Comp):
    """Texts of a pretrain stage, tokenized once: truncated (or dropped) to fit the encoder input with its memory
    slots and the tokenizer's BOS; what was kept is printed."""
    from ..data.corpus import TokenizedTexts, holdout_split, load_texts

    texts = load_texts(settings.source, unit="paragraph", field=settings.field)
    held_out = 0
    if settings.probe_holdout and (len(texts) >= 2 * settings.probe_holdout or settings.probe):  # too few with a probe: an error
        texts, held = holdout_split(texts, settings.probe_holdout)  # the compression probe's passages: never trained on
        held_out = len(held)
    dataset = TokenizedTexts(
        texts, model.tokenizer, min_chars=settings.min_chars,
        # one token less than the input holds: kept from the first release (a special prefix of up to one
        # token), so that every stage-1 run, comparisons included, cuts its texts the same way
        max_tokens=model.text_budget() - 1, drop_long=not settings.truncate_long, max_samples=settings.max_samples,
        seed=settings.seed,
    )
    dataset.held_out = held_out
    if is_main_process():
        held = f"; the last {held_out:,} paragraphs held out for the compression probe (probe_holdout: 0 trains on them)" if held_out else ""
        print(f"data {settings.source}: {dataset.describe()}{held}", file=sys.stderr)
    return dataset


def _compression_builder(kind: str):
    def build(settings: ObjectiveSettings, model):
        return CompressionObjective(model, kind=kind, split_margin=settings.split_margin, loss_budget=settings.loss_budget,
                                    seed=settings.seed, contrast_weight=settings.contrast_weight)

    return build


for _kind in COMPRESSION_OBJECTIVES:
    register(ObjectiveSpec(_kind, "pretrain", build=_compression_builder(_kind), dataset=pretext_dataset, pooling="memory", compresses=True))
register(ObjectiveSpec(
    "mntp", "pretrain", pooling="mean", bidirectional=True, dataset=pretext_dataset,
    build=lambda settings, model: MNTPObjective(model, loss_budget=settings.loss_budget, seed=settings.seed),
))
