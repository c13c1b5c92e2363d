"""Stages 2 and 3: contrastive objectives (SimCSE, supervised InfoNCE) and their loss.

- ``info_nce``: InfoNCE on cosine similarity / temperature; row i of the queries targets candidate i
  (candidates = [all positives; all hard negatives]); ``matryoshka_info_nce`` sums it over nested prefix sizes.
- ``cosent``: CoSENT on graded pairs (a ``score`` per pair, as sentence-transformers' CoSENTLoss): every pair
  scored higher than another must have the higher cosine; a batch of scored pairs trains with it instead.
- The global batch across ranks: `gather.py` (every rank computes the same loss over the gathered batch).
- Large batches in the memory of a small one: `gradcache.py` (``gradcache_chunk``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.settings import DataSettings
from ..model import LLM2Comp
from .gather import gather_parts
from .gradcache import embed_features
from .registry import ObjectiveSettings, ObjectiveSpec, register

CONTRASTIVE_STAGES = ("simcse", "supervised")


# ---------------------------------------------------------------------------------------------- loss
def info_nce(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float = 0.05,
    labels: torch.Tensor | None = None,
    query_keys: torch.Tensor | None = None,
    candidate_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of cos(q_i, c_j) / temperature with target ``labels[i]`` (default: i).

    Optional false-negative masking: where ``query_keys[i] >= 0`` and ``candidate_keys[j] == query_keys[i]``
    (the same intent, the same query, ...), candidate j is left out of row i's softmax, except the target.
    """
    q = F.normalize(queries.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    scores = q @ c.T / temperature
    if labels is None:
        labels = torch.arange(q.shape[0], device=q.device)
    if query_keys is not None and candidate_keys is not None:
        same = (query_keys[:, None] == candidate_keys[None, :]) & (query_keys[:, None] >= 0)
        same[torch.arange(q.shape[0], device=q.device), labels] = False
        scores = scores.masked_fill(same, float("-inf"))
    return F.cross_entropy(scores, labels)


def matryoshka_info_nce(queries: torch.Tensor, candidates: torch.Tensor, dims: Sequence[int] = (), **kwargs) -> torch.Tensor:
    """InfoNCE nested over the Matryoshka sizes (`matryoshka`)."""
    return matryoshka(info_nce, queries, candidates, dims, **kwargs)


def cosent(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: log(1 + sum over pairs (i, j) with scores[i] > scores[j] of exp(scale * (cos_j - cos_i))), where
    cos_i = cos(first_i, second_i). Zero gradient when the cosines are ordered like the scores by a wide margin;
    a batch whose scores are all equal gives log(1) = 0."""
    cos = F.cosine_similarity(first.float(), second.float(), dim=-1) * scale
    scores = scores.to(cos.device, torch.float32)
    wrong_order = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
    higher = scores[:, None] > scores[None, :]
    terms = torch.cat([cos.new_zeros(1), wrong_order[higher]])
    return torch.logsumexp(terms, dim=0)


def matryoshka(loss, first: torch.Tensor, second: torch.Tensor, dims: Sequence[int] = (), **kwargs) -> torch.Tensor:
    """``loss`` on the full embeddings and on each of their first ``dims`` dimensions (Matryoshka representation
    learning, as sentence-transformers' MatryoshkaLoss nests any loss), averaged with equal weights: the
    averaged loss keeps the full-size loss's scale, so a recipe's learning rate still fits."""
    sizes = [first.shape[-1], *(d for d in dims if d < first.shape[-1])]
    losses = [loss(first[..., :d], second[..., :d], **kwargs) for d in sizes]
    return torch.stack(losses).mean() if len(losses) > 1 else losses[0]


def check_matryoshka_dims(dims: Sequence[int] | None, hidden_size: int | None = None) -> list[int]:
    """The nested sizes, largest first; each in [1, hidden size)."""
    dims = sorted({int(d) for d in dims or ()}, reverse=True)
    if any(d < 1 for d in dims) or hidden_size is not None and any(d >= hidden_size for d in dims):
        raise ValueError(f"matryoshka_dims must lie in [1, {hidden_size or 'hidden size'}), got {dims}")
    return dims


# ---------------------------------------------------------------------------------------------- helpers
def _stable_key(source, key) -> int:
    """A non-negative 63-bit id for a (source, key) pair; -1 when there is no key."""
    if key is None or key == "":
        return -1
    digest = hashlib.blake2b(f"{source}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _prefixed(features: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}_{k}": v for k, v in features.items()}


def _unprefixed(batch: dict, prefix: str) -> dict[str, torch.Tensor]:
    head = f"{prefix}_"
    return {k[len(head):]: v for k, v in batch.items() if k.startswith(head)}


def _text_token_ids(model: LLM2Comp, examples: list[dict], field: str = "text") -> list[list[int]]:
    """Token rows for examples holding either raw text or ``input_ids`` (text tokens, no special tokens)."""
    from ..features import special_prefix

    if all(field in e for e in examples):
        return model.token_ids([str(e[field]) for e in examples])
    if all("input_ids" in e for e in examples):
        head = special_prefix(model.tokenizer)
        budget = model.raw_text_budget()
        return [head + list(e["input_ids"])[:budget] for e in examples]
    raise ValueError(f"contrastive examples need a '{field}' or an 'input_ids' entry")


# ---------------------------------------------------------------------------------------------- SimCSE
@dataclass
class SimCSEObjective:
    """Unsupervised SimCSE: every sentence encoded twice with dropout on (one forward of the doubled batch,
    independent masks per row); view 2 of sentence i is its positive, the other sentences of the global batch
    (gathered across ranks) the negatives."""

    model: LLM2Comp
    temperature: float = 0.05
    gradcache_chunk: int | None = None
    matryoshka_dims: Sequence[int] = ()

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.model.collate(_text_token_ids(self.model, examples))
        if examples and "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch

    def views(self, model: LLM2Comp, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The two dropout views of the local batch, (n, d) each."""
        features = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "memory_mask")}
        doubled = {k: torch.cat([v, v]) for k, v in features.items()}
        (embeddings,) = embed_features(model, [doubled], self.gradcache_chunk)
        n = features["input_ids"].shape[0]
        return embeddings[:n], embeddings[n:]

    def __call__(self, model: LLM2Comp, batch: dict) -> dict[str, torch.Tensor]:
        first, second = gather_parts(self.views(model, batch))
        loss = matryoshka_info_nce(first, second, self.matryoshka_dims, temperature=self.temperature)
        return {"loss": loss}


# ---------------------------------------------------------------------------------------------- supervised
@dataclass
class SupervisedObjective:
    """Supervised contrastive learning on (query, positive, optional hard negative).

    The query carries its task instruction (``"{instruction}: {query}\\n"``, the bare query without one);
    positives and negatives do not. Loss: InfoNCE of every query of the global batch against all positives
    and all hard negatives of the global batch (gathered across ranks). Candidates sharing a query's
    non-empty ``key`` (same intent, same query...) other than its own positive are masked out as false
    negatives. A batch of graded pairs (each with a ``score``; batches hold one source, and a source is graded
    throughout or not at all) trains with CoSENT on (query, positive, score) instead, at ``cosent_scale``.
    ``gradcache_chunk`` enables GradCache (exact gradients, memory of one chunk).
    """

    model: LLM2Comp
    temperature: float = 0.05
    gradcache_chunk: int | None = None
    query_field: str = "query"
    matryoshka_dims: Sequence[int] = ()
    cosent_scale: float = 20.0

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from ..data.instructions import format_query

        model = self.model
        queries = [format_query(str(e[self.query_field]), e.get("instruction") or "") for e in examples]
        positives = [str(e["positive"]) for e in examples]
        scored = [e.get("score") is not None for e in examples]
        if any(scored) and not all(scored):
            raise ValueError("a batch mixes graded pairs (with a 'score') and ungraded ones; give every pair of a source a score, or none")
        # CoSENT compares pairs with each other: a graded batch's hard negatives would be encoded for nothing
        with_negative = [] if any(scored) else [e for e in examples if e.get("negative") not in (None, "")]
        batch = _prefixed(model.tokenize(queries), "query") | _prefixed(model.tokenize(positives), "positive")
        if with_negative:
            batch |= _prefixed(model.tokenize([str(e["negative"]) for e in with_negative]), "negative")
        if any(scored):
            batch["score"] = torch.tensor([float(e["score"]) for e in examples], dtype=torch.float32)
        batch["key_query"] = torch.tensor([_stable_key(e.get("source"), e.get("key")) for e in examples], dtype=torch.long)
        batch["key_negative"] = torch.tensor(
            [_stable_key(e.get("source"), e.get("negative_key")) for e in with_negative], dtype=torch.long
        )
        if examples and "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch

    def embed(self, model: LLM2Comp, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Local (queries, positives, negatives-or-None) embeddings."""
        names = ["query", "positive"] + (["negative"] if "negative_input_ids" in batch else [])
        embeddings = embed_features(model, [_unprefixed(batch, name) for name in names], self.gradcache_chunk)
        return embeddings[0], embeddings[1], embeddings[2] if len(embeddings) > 2 else None

    def __call__(self, model: LLM2Comp, batch: dict) -> dict[str, torch.Tensor]:
        queries, positives, negatives = self.embed(model, batch)
        device = queries.device
        if "score" in batch:
            all_queries, all_positives = gather_parts([queries, positives])
            (scores,) = gather_parts([batch["score"].to(device)], grad=False)
            return {"loss": matryoshka(cosent, all_queries, all_positives, self.matryoshka_dims, scores=scores, scale=self.cosent_scale)}
        query_keys = batch.get("key_query", torch.full((queries.shape[0],), -1, dtype=torch.long)).to(device)
        negative_keys = batch.get("key_negative", torch.empty(0, dtype=torch.long)).to(device)
        if negatives is None:  # this rank has no hard negatives; others may
            negatives = queries.new_zeros((0, queries.shape[1]))
            negative_keys = negative_keys[:0]
        all_queries, all_positives, all_negatives = gather_parts([queries, positives, negatives])
        all_query_keys, all_negative_keys = gather_parts([query_keys, negative_keys], grad=False)
        candidates = torch.cat([all_positives, all_negatives])
        candidate_keys = torch.cat([all_query_keys, all_negative_keys])
        loss = matryoshka_info_nce(all_queries, candidates, self.matryoshka_dims, temperature=self.temperature,
                                   query_keys=all_query_keys, candidate_keys=candidate_keys)
        return {"loss": loss}


def build_contrastive_objective(stage: str, settings: ObjectiveSettings, model: LLM2Comp):
    """The objective of a contrastive stage (simcse | supervised)."""
    if settings.gradcache_chunk is not None and settings.gradcache_chunk < 1:
        raise ValueError(f"gradcache_chunk must be >= 1, got {settings.gradcache_chunk}")
    dims = check_matryoshka_dims(settings.matryoshka_dims, model.get_sentence_embedding_dimension())
    chunk = settings.gradcache_chunk
    if stage == "simcse":
        return SimCSEObjective(model, temperature=settings.temperature, gradcache_chunk=chunk, matryoshka_dims=dims)
    if stage == "supervised":
        return SupervisedObjective(model, temperature=settings.temperature, gradcache_chunk=chunk, matryoshka_dims=dims,
                                   cosent_scale=settings.cosent_scale)
    raise ValueError(f"no contrastive objective for stage '{stage}'; choose one of {', '.join(CONTRASTIVE_STAGES)}")


def _contrastive_dataset(stage: str, settings: DataSettings, model):
    from ..data.pairs import build_contrastive_dataset

    return build_contrastive_dataset(stage, settings)


def _register(stage: str, defaults: dict) -> None:
    register(ObjectiveSpec(stage, stage, build=functools.partial(build_contrastive_objective, stage),
                           dataset=functools.partial(_contrastive_dataset, stage), defaults=defaults))


# recipe defaults of the stages (RECIPE.md): SimCSE on sentences, supervised on pairs
_register("simcse", {"learning_rate": 3e-5, "batch_size": 128, "data": "builtin:news-sentences", "output": "runs/simcse"})
_register("supervised", {"learning_rate": 1e-4, "batch_size": 64, "warmup_steps": 200, "data": "builtin:shared-pairs",
                         "output": "runs/supervised"})
