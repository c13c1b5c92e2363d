"""Keep evaluation text out of training data.

The STS Benchmark was assembled from the SemEval STS tasks, so its *train* split holds, verbatim, hundreds of test
pairs of STS13-15 (``shared/data/README.md``). A model trained on them and scored on those tasks measures no
transfer. `Decontaminator` holds every text of the evaluation splits of a benchmark folder (STS sentences,
classification texts, retrieval queries and the documents their qrels judge relevant), normalised for case and
surrounding space, and drops every training pair with a side (query, positive or negative) among them, and every
training sentence that is one of them.

``decontaminate`` settings (training config, ``--decontaminate``): ``auto`` (default) checks against the benchmark
folder that evaluation uses when there is one (for ``builtin:shared-pairs:DIR``, that DIR); a path checks against
that folder (an error when it does not exist); ``off`` checks nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .benchmark_dir import read_qrels, resolve_data_dir, split_folder_source
from .corpus import DataError, read_jsonl

logger = logging.getLogger(__name__)

# splits a score is reported on (test) or that a model may be selected on (validation/dev); never train
EVALUATION_SPLITS = ("test", "validation", "dev")
_TEXT_FIELDS = ("sentence1", "sentence2", "text")
OFF = ("off", "none", "false", "no")


def normalise(text: str) -> str:
    """Case and whitespace folded: the unit of comparison."""
    return " ".join(str(text).lower().split())


def _task_folders(root: Path) -> list[Path]:
    base = root / "mteb" if (root / "mteb").is_dir() else root
    return sorted(p for p in base.iterdir() if p.is_dir())


def _retrieval_texts(folder: Path, splits: Iterable[str]) -> set[str]:
    """Queries of the evaluation qrels and the documents they judge (title + text, and text alone)."""
    qrels = {}
    for split in splits:
        path = folder / "qrels" / f"{split}.tsv"
        if path.is_file():
            for query, docs in read_qrels(path).items():
                qrels.setdefault(query, set()).update(docs)
    if not qrels:
        return set()
    texts = set()
    if (folder / "queries.jsonl").is_file():
        texts.update(normalise(r["text"]) for r in read_jsonl(folder / "queries.jsonl") if str(r["_id"]) in qrels)
    if (folder / "corpus.jsonl").is_file():
        judged = set().union(*qrels.values())
        for row in read_jsonl(folder / "corpus.jsonl"):
            if str(row["_id"]) in judged:
                texts.add(normalise(row["text"]))
                texts.add(normalise(f"{row.get('title', '')} {row['text']}"))
    return texts


def evaluation_texts(root: str | Path, splits: Iterable[str] = EVALUATION_SPLITS) -> dict[str, set[str]]:
    """Normalised texts of every evaluation split of a benchmark folder, per task."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"decontamination folder {root} does not exist")
    splits = tuple(splits)
    per_task = {}
    for folder in _task_folders(root):
        texts = set()
        for split in splits:
            path = folder / f"{split}.jsonl"
            if path.is_file():
                for row in read_jsonl(path):
                    texts.update(normalise(row[f]) for f in _TEXT_FIELDS if isinstance(row.get(f), str))
        texts |= _retrieval_texts(folder, splits)
        texts.discard("")
        if texts:
            per_task[folder.name] = texts
    return per_task


class Decontaminator:
    """The evaluation texts of one folder, the filter that keeps them out of training data, and its tally."""

    def __init__(self, texts: Iterable[str], folder: str = ""):
        self.texts = frozenset(normalise(t) for t in texts)
        self.folder = folder
        self.checked: Counter = Counter()
        self.dropped: Counter = Counter()

    @classmethod
    def from_folder(cls, root: str | Path, splits: Iterable[str] = EVALUATION_SPLITS) -> Decontaminator:
        per_task = evaluation_texts(root, splits)
        return cls(set().union(*per_task.values()) if per_task else set(), folder=str(root))

    def __contains__(self, text: str) -> bool:
        return normalise(text) in self.texts

    def keeps(self, source: str, *texts) -> bool:
        """Whether a training record (its texts) is clean; counted per source either way."""
        self.checked[source] += 1
        if any(isinstance(t, str) and t in self for t in texts):
            self.dropped[source] += 1
            return False
        return True

    def clean_pairs(self, pairs: list[dict]) -> list[dict]:
        """The pairs none of whose sides (query, positive, negative) is an evaluation text."""
        return [p for p in pairs if self.keeps(p.get("source") or "default", p.get("query"), p.get("positive"), p.get("negative"))]

    def clean_texts(self, texts: list[str], source: str = "default") -> list[str]:
        return [t for t in texts if self.keeps(source, t)]

    def report(self) -> dict:
        """What was checked and dropped, per source (records: pairs, or the source rows pairs are built from)."""
        return {
            "folder": self.folder, "evaluation_texts": len(self.texts),
            "per_source": {s: {"checked": self.checked[s], "dropped": self.dropped[s]} for s in sorted(self.checked)},
        }

    def log(self) -> None:
        for source in sorted(self.checked):
            logger.warning("decontamination: dropped %d of %d training records of %s that share a text with an "
                           "evaluation split of %s", self.dropped[source], self.checked[source], source, self.folder)


def resolve_decontaminator(setting: str | None, data_source: str = "") -> Decontaminator | None:
    """The `Decontaminator` of a ``decontaminate`` setting (module docstring), or None for none."""
    if setting is None or str(setting).lower() in OFF:
        return None
    if str(setting).lower() == "auto":
        folder = None
        for part in data_source.split("+"):  # builtin:shared-pairs:DIR names the folder (also among joined sources)
            builtin = split_folder_source(part)
            if builtin is not None and builtin[1]:
                folder = builtin[1]
        try:  # a folder named (in the source or $LLM2COMP_DATA_DIR) that is not there is an error, never a log line
            root = resolve_data_dir(folder)
        except FileNotFoundError as error:
            raise DataError(f"decontaminate: auto cannot check: {error} (name an existing benchmark folder, or "
                            "decontaminate: off to train without the check)") from None
        if root is None:
            logger.warning("decontamination: no benchmark folder named or found beside the project (../shared/data), "
                           "nothing to check against; training data is used as it is")
            return None
        return Decontaminator.from_folder(root)
    path = Path(setting).expanduser()
    if not path.is_dir():
        raise DataError(f"decontaminate: {setting} is not a folder (a benchmark folder, 'auto' or 'off')")
    return Decontaminator.from_folder(path.resolve())
