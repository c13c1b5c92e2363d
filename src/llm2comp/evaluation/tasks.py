"""mteb's own task objects, fed from a local data folder instead of the Hugging Face Hub.

Layout (see `shared/data/README.md`): ``<data_dir>/mteb/<TaskName>/`` (``<data_dir>/<TaskName>/`` also works) with

* STS tasks: ``<split>.jsonl`` rows ``{"sentence1", "sentence2", "score"}``;
* classification tasks: ``train.jsonl`` and ``<eval split>.jsonl`` rows ``{"text", "label"}``;
* retrieval tasks (BEIR): ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``),
  ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score`` with a header line).

The data is injected the way mteb's own mock tasks do it (``task.dataset = ...; task.data_loaded = True``), in the
2.x structure each task type reads: a ``DatasetDict`` of splits for STS and classification, and
``{"default": {split: RetrievalSplitData(corpus, queries, relevant_docs, top_ranked)}}`` for retrieval. A task
whose folder is missing is left to mteb, which downloads it from the Hub (where the Hub is reachable).

The data folder is the `data_dir` argument, else ``$LLM2COMP_DATA_DIR``, else ``../shared/data`` relative to the
working directory when that exists, else none (every task comes from the Hub).

`limit` subsamples deterministically (seeded, same rows on every call): STS pairs and classification test texts to
`limit` rows per evaluation split; retrieval queries to `limit` (among queries that have relevance judgements),
with the corpus cut to `corpus_limit` documents (default ``10 * limit``) that always include every document
relevant to a kept query. Classification train splits are not cut (mteb draws only 8 examples per label from them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.benchmark_dir import ENV_DATA_DIR, read_qrels, resolve_data_dir  # noqa: F401 - re-exported
from ..data.corpus import read_jsonl

from ..names import DEFAULT_EVAL_SEED as DEFAULT_SEED  # noqa: F401 - re-exported
from ..names import DEFAULT_TASKS  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data folder
def task_data_folder(data_dir: Path | None, task_name: str) -> Path | None:
    """``<data_dir>/mteb/<task>`` or ``<data_dir>/<task>`` when present, else None."""
    if data_dir is None:
        return None
    for candidate in (data_dir / "mteb" / task_name, data_dir / task_name):
        if candidate.is_dir():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------- readers
def _split_file(folder: Path, split: str) -> Path:
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise FileNotFoundError(f"{folder}: no '{split}.jsonl' (splits present: {', '.join(present) or 'none'})")
    return path


# ---------------------------------------------------------------------------------------------- builders
def _sts_dataset(task, folder: Path):
    from datasets import Dataset, DatasetDict

    col1, col2 = getattr(task, "column_names", ("sentence1", "sentence2"))
    splits = {}
    for split in task.eval_splits:
        rows = read_jsonl(_split_file(folder, split))
        splits[split] = Dataset.from_dict(
            {
                col1: [str(r["sentence1"] if "sentence1" in r else r[col1]) for r in rows],
                col2: [str(r["sentence2"] if "sentence2" in r else r[col2]) for r in rows],
                "score": [float(r["score"]) for r in rows],
            }
        )
    return DatasetDict(splits)


def _classification_dataset(task, folder: Path):
    from datasets import Dataset, DatasetDict

    text_col = task.input_column_name if isinstance(task.input_column_name, str) else "text"
    label_col = task.label_column_name
    splits = {}
    for split in dict.fromkeys([task.train_split, *task.eval_splits]):
        rows = read_jsonl(_split_file(folder, split))
        splits[split] = Dataset.from_dict(
            {
                text_col: [str(r.get(text_col, r.get("text"))) for r in rows],
                label_col: [r.get(label_col, r.get("label")) for r in rows],
            }
        )
    return DatasetDict(splits)


def _retrieval_dataset(task, folder: Path):
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    corpus_rows = read_jsonl(folder / "corpus.jsonl")
    query_rows = read_jsonl(folder / "queries.jsonl")
    corpus = Dataset.from_dict(
        {
            "id": [str(r["_id"] if "_id" in r else r["id"]) for r in corpus_rows],
            "title": [str(r.get("title") or "") for r in corpus_rows],
            "text": [str(r.get("text") or "") for r in corpus_rows],
        }
    )
    all_queries = {str(r["_id"] if "_id" in r else r["id"]): str(r["text"]) for r in query_rows}
    subsets = {}
    for split in task.eval_splits:
        qrels_path = folder / "qrels" / f"{split}.tsv"
        if not qrels_path.is_file():
            raise FileNotFoundError(f"{folder}: no qrels/{split}.tsv")
        qrels = read_qrels(qrels_path)
        ids = [qid for qid in all_queries if qid in qrels]  # queries file order, only judged queries (as mteb)
        queries = Dataset.from_dict({"id": ids, "text": [all_queries[q] for q in ids]})
        subsets[split] = RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=qrels, top_ranked=None)
    return {"default": subsets}


def task_kind(task) -> str:
    from mteb.abstasks import AbsTaskClassification, AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    if isinstance(task, AbsTaskRetrieval):
        return "retrieval"
    if isinstance(task, AbsTaskSTS):
        return "sts"
    if isinstance(task, AbsTaskClassification):
        return "classification"
    return type(task).__mro__[1].__name__


def inject_local_data(task, folder: str | os.PathLike) -> None:
    """Read `folder` into mteb's structure for the task type, and mark the task as loaded."""
    folder = Path(folder)
    kind = task_kind(task)
    if task.metadata.is_multilingual:
        raise NotImplementedError(f"{task.metadata.name}: local data for multilingual tasks is not supported")
    if kind == "sts":
        task.dataset = _sts_dataset(task, folder)
    elif kind == "classification":
        if getattr(task, "is_cross_validation", False):
            raise NotImplementedError(f"{task.metadata.name}: cross-validation classification is not supported")
        task.dataset = _classification_dataset(task, folder)
    elif kind == "retrieval":
        task.dataset = _retrieval_dataset(task, folder)
    else:
        raise NotImplementedError(
            f"{task.metadata.name}: local data for {kind} tasks is not supported (STS, classification, retrieval are)"
        )
    task.data_loaded = True


# ---------------------------------------------------------------------------------------------- subsampling
def _pick(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """k of n indices, in their original order."""
    if k >= n:
        return list(range(n))
    return sorted(rng.choice(n, size=k, replace=False).tolist())


def _split_containers(task) -> Iterable[dict]:
    """The objects that map split name -> data, one per hf subset."""
    dataset = task.dataset
    subsets = getattr(task, "hf_subsets", None) or ["default"]
    if isinstance(dataset, dict) and any(s in dataset for s in subsets) and not all(
        split in dataset for split in task.eval_splits
    ):
        return [dataset[s] for s in subsets if s in dataset]
    return [dataset]


def subsample_task(task, limit: int, corpus_limit: int | None = None, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Cut a loaded task's evaluation data in place (deterministic); returns what was kept, per split."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    kind = task_kind(task)
    kept: dict[str, Any] = {}
    for container in _split_containers(task):
        for split in task.eval_splits:
            if split not in container:
                continue
            rng = np.random.default_rng(seed)
            data = container[split]
            if kind == "retrieval":
                kept[split] = _subsample_retrieval(data, limit, corpus_limit if corpus_limit else 10 * limit, rng)
            elif kind in ("sts", "classification") or hasattr(data, "select"):
                n = len(data)
                container[split] = data.select(_pick(n, limit, rng))
                kept[split] = {"rows": min(n, limit), "of": n}
            else:
                raise NotImplementedError(f"{task.metadata.name}: cannot subsample a {kind} task")
    return kept


def _subsample_retrieval(data: dict, limit: int, corpus_limit: int, rng: np.random.Generator) -> dict[str, Any]:
    queries, corpus, qrels = data["queries"], data["corpus"], data["relevant_docs"]
    judged = [i for i, qid in enumerate(queries["id"]) if qrels.get(qid)]
    chosen = [judged[i] for i in _pick(len(judged), limit, rng)]
    new_queries = queries.select(chosen)
    query_ids = set(new_queries["id"])
    corpus_ids = corpus["id"]
    relevant = {did for qid in query_ids for did in qrels[qid]}
    relevant_rows = [i for i, did in enumerate(corpus_ids) if did in relevant]
    others = [i for i, did in enumerate(corpus_ids) if did not in relevant]
    room = max(0, corpus_limit - len(relevant_rows))
    distractors = [others[i] for i in _pick(len(others), room, rng)]
    rows = sorted(relevant_rows + distractors)
    new_corpus = corpus.select(rows)
    kept_docs = set(new_corpus["id"])
    data["queries"] = new_queries
    data["corpus"] = new_corpus
    data["relevant_docs"] = {
        qid: {did: s for did, s in docs.items() if did in kept_docs} for qid, docs in qrels.items() if qid in query_ids
    }
    if data.get("top_ranked"):
        data["top_ranked"] = {
            qid: [d for d in docs if d in kept_docs] for qid, docs in data["top_ranked"].items() if qid in query_ids
        }
    return {
        "queries": len(chosen),
        "of_queries": len(judged),
        "corpus": len(rows),
        "of_corpus": len(corpus_ids),
        "relevant_docs": len(relevant_rows),
    }


def _check_hub_dataset(task, root: Path | None) -> None:
    """Fail at once, saying where we looked, when a task has no local data and its hub dataset is out of reach."""
    from ..hub import hub_problem

    repo = task.metadata.dataset["path"]
    problem = hub_problem(repo, "dataset", cached_file="README.md")
    if problem is None:
        return
    name = task.metadata.name
    looked = (f"{root} has no mteb/{name}/ or {name}/ folder" if root is not None else
              f"no data folder: --data-dir not given, ${ENV_DATA_DIR} not set, no ../shared/data next to {Path.cwd()}")
    raise FileNotFoundError(f"{name}: no local data ({looked}); its hub dataset {repo}: {problem}. Put the task's "
                            f"files under DIR/mteb/{name}/ (layout: llm2comp/evaluation/tasks.py) and pass --data-dir DIR "
                            f"or set {ENV_DATA_DIR}=DIR")


# ---------------------------------------------------------------------------------------------- public
def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    corpus_limit: int | None = None,
    seed: int = DEFAULT_SEED,
    hub_fallback: bool = True,
):
    """mteb's task object for `name`, with data from the local folder when present (see the module docstring).

    The returned task carries ``llm2comp_source`` ("local:<folder>" or "hub") and ``llm2comp_subsample`` (what
    `limit` kept, per split; None without a limit).
    """
    import mteb

    task = mteb.get_task(name)
    root = resolve_data_dir(data_dir)
    folder = task_data_folder(root, task.metadata.name)
    if folder is not None:
        inject_local_data(task, folder)
        task.llm2comp_source = f"local:{folder}"
    else:
        if not hub_fallback:
            raise FileNotFoundError(f"no local data for {task.metadata.name} under {root}")
        _check_hub_dataset(task, root)
        logger.warning("%s: no local data%s; mteb loads it from the Hugging Face Hub", name, f" under {root}" if root else "")
        task.llm2comp_source = "hub"
        if limit:
            task.load_data()
    task.llm2comp_subsample = None
    if limit:
        task.llm2comp_subsample = subsample_task(task, limit, corpus_limit=corpus_limit, seed=seed)
    return task


def load_tasks(
    names: Iterable[str],
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    corpus_limit: int | None = None,
    seed: int = DEFAULT_SEED,
) -> list:
    return [load_task(n, data_dir, limit, corpus_limit=corpus_limit, seed=seed) for n in names]
