"""Is model B really better than model A on the same test items? A paired bootstrap over the test set.

`llm2comp evaluate --predictions` keeps, next to the scores, each model's per-item predictions (mteb's own
prediction files: cosine similarities for STS pairs, predicted labels of every classification experiment) and the
gold values of the items it evaluated. `compare_evaluations` resamples the items with replacement, the same
resample for both models, and reports the difference of their scores (Spearman for STS, accuracy averaged over
mteb's experiments for classification) with a percentile interval; for several STS tasks, also the difference of
their average, each task resampled on its own.

It measures test-set sampling noise only: two training runs that differ by seed differ by more than this.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from .report import FULL_RESULTS_NAME

PREDICTIONS_DIR = "predictions"
GOLD_DIR = "gold"
STS_AVERAGE = "STS average"  # the last row of a comparison of two or more STS tasks


def label_folder(label: str) -> str:
    """A model label as a folder name (labels may be paths; never "." or "..")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") or "model"


def write_gold(task, folder: Path) -> bool:
    """Write the gold values of a task's evaluation split, in mteb's order, to `folder/gold/<task>.json`: the
    scores of an STS task, the labels of a classification task scored by accuracy. Returns False (and writes
    nothing) for other tasks and for tasks with several subsets or splits (multilingual ones: not compared)."""
    from .tasks import _split_containers, task_kind

    kind = task_kind(task)
    subsets = getattr(task, "hf_subsets", None) or ["default"]
    if kind not in ("sts", "classification") or len(subsets) > 1 or len(task.eval_splits) > 1:
        return False
    if kind == "classification" and task.metadata.main_score != "accuracy":
        return False
    if not getattr(task, "data_loaded", True):
        task.load_data()
    split = task.eval_splits[0]
    rows = _split_containers(task)[0][split]
    gold = {"task": task.metadata.name, "split": split, "kind": kind}
    if kind == "sts":
        gold["scores"] = [float(s) for s in rows["score"]]
    else:
        gold["labels"] = [_plain(label) for label in rows[getattr(task, "label_column_name", "label")]]
    (folder / GOLD_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / GOLD_DIR / f"{task.metadata.name}.json", gold)
    return True


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@dataclasses.dataclass
class _Gold:
    kind: str  # "sts" | "classification"
    split: str
    values: np.ndarray  # gold scores (float) or labels (str)


def _read_gold(folder: Path, task: str) -> _Gold:
    """The gold values of a task in mteb's order, written by `write_gold`."""
    path = folder / GOLD_DIR / f"{task}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: evaluate with --predictions (STS and classification tasks only)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("kind", "sts") == "sts":  # files written before classification was compared have no "kind"
        return _Gold("sts", data["split"], np.asarray(data["scores"], dtype=np.float64))
    return _Gold("classification", data["split"], np.asarray([str(label) for label in data["labels"]]))


def _predictions_path(folder: Path, label: str, task: str) -> Path:
    return folder / label_folder(label) / f"{task}_predictions.json"


def _read_predictions(folder: Path, label: str, task: str, gold: _Gold) -> np.ndarray:
    """Per-item values of a model: the cosine of each STS pair, or for classification the share of mteb's
    experiments that labelled the item right (its mean over the items is mteb's accuracy)."""
    path = _predictions_path(folder, label, task)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: evaluate with --predictions")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        subsets = [v for k, v in data.items() if k != "mteb_model_meta"]
        if len(subsets) != 1:
            raise ValueError(f"expected one subset, found {len(subsets)}")
        if gold.kind == "sts":
            return np.asarray(subsets[0][gold.split]["cosine_scores"], dtype=np.float64)
        experiments = subsets[0][gold.split]
        if not experiments or any(len(labels) != len(gold.values) for labels in experiments):
            raise ValueError(f"expected experiments of {len(gold.values)} predicted labels each")
        return np.mean([np.asarray([str(x) for x in labels]) == gold.values for labels in experiments], axis=0)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not an mteb {gold.kind} prediction file ({type(error).__name__}: {error})") from None


def _spearman_rows(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of `gold` with the same row of `pred` (ties get average ranks)."""
    from scipy.stats import rankdata

    rg = rankdata(gold, axis=-1)
    rp = rankdata(pred, axis=-1)
    rg = rg - rg.mean(axis=-1, keepdims=True)
    rp = rp - rp.mean(axis=-1, keepdims=True)
    denom = np.sqrt((rg * rg).sum(-1) * (rp * rp).sum(-1))
    return np.where(denom > 0, (rg * rp).sum(-1) / np.where(denom > 0, denom, 1.0), 0.0)


def paired_bootstrap(gold, scores_a, scores_b, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Spearman(b) - Spearman(a) on `resamples` resamples of the pairs (the same indices for both models)."""
    gold, a, b = (np.asarray(x, dtype=np.float64) for x in (gold, scores_a, scores_b))
    if not (len(gold) == len(a) == len(b)) or len(gold) < 3:
        raise ValueError(f"need the same >= 3 pairs for gold and both models, got {len(gold)}, {len(a)}, {len(b)}")
    return _bootstrap((gold, a, b), lambda g, x, y, axis=-1: _spearman_rows(g, y) - _spearman_rows(g, x), resamples, seed)


def paired_bootstrap_mean(values_a, values_b, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """mean(b) - mean(a) of per-item values (e.g. correctness) on `resamples` resamples of the items."""
    if len(values_a) != len(values_b) or len(values_a) < 3:
        raise ValueError(f"need the same >= 3 items for both models, got {len(values_a)}, {len(values_b)}")
    diff = np.asarray(values_b, dtype=np.float64) - np.asarray(values_a, dtype=np.float64)
    return _bootstrap((diff,), lambda d, axis=-1: d.mean(axis=axis), resamples, seed)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, resamples: int, seed: int) -> np.ndarray:
    """The statistic on `resamples` paired resamples of the items: scipy's bootstrap distribution (resampled in
    batches of 256, bounded memory on large test sets; the same draws as numpy's ``default_rng(seed)``)."""
    from scipy.stats import bootstrap

    result = bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=resamples, batch=256,
                       method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(result.bootstrap_distribution, dtype=np.float64)


@dataclasses.dataclass
class PairedDifference:
    task: str
    a: float  # Spearman of model A on all pairs
    b: float
    low: float  # percentile interval of b - a
    high: float
    p_not_better: float  # share of resamples where b - a <= 0
    metric: str = "spearman"  # or "accuracy"

    @property
    def delta(self) -> float:
        return self.b - self.a


def _report(folder: Path) -> dict:
    full = folder / FULL_RESULTS_NAME
    if not full.is_file():
        raise FileNotFoundError(f"{full} missing: not an `llm2comp evaluate --output` folder")
    return json.loads(full.read_text(encoding="utf-8"))


def available_tasks(eval_dir: str | Path, label: str | None = None) -> list[str]:
    """Tasks of an evaluation folder that have a score, gold values and the model's predictions (a run killed
    before a task has its gold file but no score or predictions for it)."""
    folder = Path(eval_dir)
    if not (folder / FULL_RESULTS_NAME).is_file():
        return []
    report = _report(folder)
    return _finished_tasks(folder, report, label or report["models"][0])


def _finished_tasks(folder: Path, report: dict, label: str) -> list[str]:
    gold = folder / PREDICTIONS_DIR / GOLD_DIR
    if not gold.is_dir():
        return []
    scores = report.get("scores", {}).get(label, {})
    return sorted(p.stem for p in gold.glob("*.json") if scores.get(p.stem) is not None
                  and _predictions_path(folder / PREDICTIONS_DIR, label, p.stem).is_file())


def compare_evaluations(
    eval_a: str | Path,
    eval_b: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    label_a: str | None = None,
    label_b: str | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    tolerance: float = 1e-6,
) -> list[PairedDifference]:
    """B minus A per task (STS and classification), and for two or more STS tasks a last row "STS average" (mean
    over the STS tasks), from two `--predictions` runs.

    Each folder is an `llm2comp evaluate --output` folder; the model compared is the run's main model unless a
    label (a column of its table) is given. Both runs must have evaluated the same items (same data, limit, seed):
    the gold values are checked to match, and each score recomputed from the predictions must equal the one the run
    reported within `tolerance` (more where the predictions were rounded)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    folder_a, folder_b = Path(eval_a) / PREDICTIONS_DIR, Path(eval_b) / PREDICTIONS_DIR
    report_a, report_b = _report(Path(eval_a)), _report(Path(eval_b))
    label_a = label_a or report_a["models"][0]
    label_b = label_b or report_b["models"][0]
    if tasks is None:
        in_b = set(_finished_tasks(Path(eval_b), report_b, label_b))
        tasks = [t for t in _finished_tasks(Path(eval_a), report_a, label_a) if t in in_b]
    if not tasks:
        raise ValueError(f"no task with predictions in both {eval_a} and {eval_b} "
                         "(evaluate each with `llm2comp evaluate --output DIR --predictions`)")
    tail = (1 - confidence) / 2
    rows, sts_deltas = [], []
    for task in tasks:
        gold = _read_gold(folder_a, task)
        other = _read_gold(folder_b, task)
        if gold.kind != other.kind or not np.array_equal(gold.values, other.values):
            raise ValueError(f"{task}: the two runs evaluated different items (gold values differ); use the same data, limit and seed")
        a = _read_predictions(folder_a, label_a, task, gold)
        b = _read_predictions(folder_b, label_b, task, gold)
        if gold.kind == "sts":
            deltas = paired_bootstrap(gold.values, a, b, resamples=resamples, seed=_task_seed(seed, task))
            sts_deltas.append(deltas)
            point_a, point_b = (float(_spearman_rows(gold.values, s)) for s in (a, b))
        else:
            deltas = paired_bootstrap_mean(a, b, resamples=resamples, seed=_task_seed(seed, task))
            point_a, point_b = float(a.mean()), float(b.mean())
        for point, report, label, folder in ((point_a, report_a, label_a, eval_a), (point_b, report_b, label_b, eval_b)):
            stored = report.get("scores", {}).get(label, {}).get(task)
            if stored is None or abs(stored - point) > tolerance:
                raise ValueError(f"{folder}: the predictions of {label} on {task} give {point:.6f}, the run reported "
                                 f"{stored}: stale or partial predictions; evaluate again with --predictions")
        rows.append(_summarise(task, point_a, point_b, deltas, tail, "spearman" if gold.kind == "sts" else "accuracy"))
    sts_rows = [r for r in rows if r.metric == "spearman"]
    if len(sts_rows) > 1:
        mean_a = float(np.mean([r.a for r in sts_rows]))
        mean_b = float(np.mean([r.b for r in sts_rows]))
        rows.append(_summarise(STS_AVERAGE, mean_a, mean_b, np.mean(sts_deltas, axis=0), tail, "spearman"))
    return rows


def _task_seed(seed: int, task: str) -> int:
    """A task's resampling seed: the same whichever other tasks are compared with it (a task's row and interval
    do not move when a task is added to the comparison)."""
    return seed + zlib.crc32(task.encode("utf-8"))


def _summarise(task: str, a: float, b: float, deltas: np.ndarray, tail: float, metric: str) -> PairedDifference:
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return PairedDifference(task, a, b, float(low), float(high), float(np.mean(deltas <= 0)), metric)


def format_comparison(rows: Sequence[PairedDifference], name_a: str = "A", name_b: str = "B", confidence: float = 0.95) -> str:
    """Markdown table (scores x 100)."""
    lines = [
        f"| task | metric | {name_a} | {name_b} | {name_b} - {name_a} | {confidence:.0%} interval | resamples with {name_b} <= {name_a} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.metric} | {100 * r.a:.2f} | {100 * r.b:.2f} | {100 * r.delta:+.2f} | "
            f"[{100 * r.low:+.2f}, {100 * r.high:+.2f}] | {r.p_not_better:.1%} |"
        )
    return "\n".join(lines)
