"""Is model B really better than model A on the same STS pairs? A paired bootstrap over the test pairs.

`llm2comp evaluate --predictions` keeps, next to the scores, each model's per-pair cosine similarities (mteb's own
prediction files) and the gold scores of the pairs it evaluated. `compare_evaluations` resamples the pairs with
replacement, the same resample for both models, and reports the difference of their Spearman correlations with a
percentile interval; for several tasks, the difference of the task averages, each task resampled on its own.

It measures test-set sampling noise only: two training runs that differ by seed differ by more than this.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from .report import FULL_RESULTS_NAME

PREDICTIONS_DIR = "predictions"
GOLD_DIR = "gold"


def label_folder(label: str) -> str:
    """A model label as a folder name (labels may be paths; never "." or "..")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") or "model"


def write_gold(task, folder: Path) -> bool:
    """Write the gold scores of an STS task's evaluation split, in mteb's order, to `folder/gold/<task>.json`.
    Returns False (and writes nothing) for other task types and for STS tasks with several subsets or splits
    (multilingual ones: not compared)."""
    from .tasks import _split_containers, task_kind

    subsets = getattr(task, "hf_subsets", None) or ["default"]
    if task_kind(task) != "sts" or len(subsets) > 1 or len(task.eval_splits) > 1:
        return False
    if not getattr(task, "data_loaded", True):
        task.load_data()
    split = task.eval_splits[0]
    container = _split_containers(task)[0]
    scores = [float(s) for s in container[split]["score"]]
    (folder / GOLD_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / GOLD_DIR / f"{task.metadata.name}.json", {"task": task.metadata.name, "split": split, "scores": scores})
    return True


def _read_gold(folder: Path, task: str) -> tuple[str, np.ndarray]:
    """(evaluation split, gold scores in mteb's order) written by `write_gold`."""
    path = folder / GOLD_DIR / f"{task}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: evaluate with --predictions (STS tasks only)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["split"], np.asarray(data["scores"], dtype=np.float64)


def _predictions_path(folder: Path, label: str, task: str) -> Path:
    return folder / label_folder(label) / f"{task}_predictions.json"


def _read_cosines(folder: Path, label: str, task: str, split: str) -> np.ndarray:
    path = _predictions_path(folder, label, task)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: evaluate with --predictions")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        subsets = [v for k, v in data.items() if k != "mteb_model_meta"]
        if len(subsets) != 1:
            raise ValueError(f"expected one subset, found {len(subsets)}")
        return np.asarray(subsets[0][split]["cosine_scores"], dtype=np.float64)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not an mteb STS prediction file ({type(error).__name__}: {error})") from None


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
    idx = np.random.default_rng(seed).integers(0, len(gold), size=(resamples, len(gold)))
    deltas = np.empty(resamples)
    for start in range(0, resamples, 256):  # bounded memory on large test sets
        rows = idx[start : start + 256]
        deltas[start : start + 256] = _spearman_rows(gold[rows], b[rows]) - _spearman_rows(gold[rows], a[rows])
    return deltas


@dataclasses.dataclass
class PairedDifference:
    task: str
    a: float  # Spearman of model A on all pairs
    b: float
    low: float  # percentile interval of b - a
    high: float
    p_not_better: float  # share of resamples where b - a <= 0

    @property
    def delta(self) -> float:
        return self.b - self.a


def _report(folder: Path) -> dict:
    full = folder / FULL_RESULTS_NAME
    if not full.is_file():
        raise FileNotFoundError(f"{full} missing: not an `llm2comp evaluate --output` folder")
    return json.loads(full.read_text(encoding="utf-8"))


def available_tasks(eval_dir: str | Path, label: str | None = None) -> list[str]:
    """STS tasks of an evaluation folder that have a score, gold scores and the model's predictions (a run
    killed before a task has its gold file but no score or predictions for it)."""
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
) -> list[PairedDifference]:
    """B minus A per STS task, and a last row "average" (mean over the tasks), from two `--predictions` runs.

    Each folder is an `llm2comp evaluate --output` folder; the model compared is the run's main model unless a
    label (a column of its table) is given. Both runs must have evaluated the same pairs (same data, limit, seed):
    the gold scores are checked to match."""
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
        raise ValueError(f"no STS task with predictions in both {eval_a} and {eval_b} "
                         "(evaluate each with `llm2comp evaluate --output DIR --predictions`)")
    tail = (1 - confidence) / 2
    rows, all_deltas = [], []
    for i, task in enumerate(tasks):
        split, gold = _read_gold(folder_a, task)
        if not np.array_equal(gold, _read_gold(folder_b, task)[1]):
            raise ValueError(f"{task}: the two runs evaluated different pairs (gold scores differ); use the same data, limit and seed")
        a = _read_cosines(folder_a, label_a, task, split)
        b = _read_cosines(folder_b, label_b, task, split)
        deltas = paired_bootstrap(gold, a, b, resamples=resamples, seed=seed + i)
        all_deltas.append(deltas)
        point_a, point_b = (float(_spearman_rows(gold, s)) for s in (a, b))
        for point, report, label, folder in ((point_a, report_a, label_a, eval_a), (point_b, report_b, label_b, eval_b)):
            stored = report.get("scores", {}).get(label, {}).get(task)
            if stored is None or abs(stored - point) > 1e-6:
                raise ValueError(f"{folder}: the predictions of {label} on {task} give {point:.6f}, the run reported "
                                 f"{stored}: stale or partial predictions; evaluate again with --predictions")
        rows.append(_summarise(task, point_a, point_b, deltas, tail))
    if len(rows) > 1:
        mean_a = float(np.mean([r.a for r in rows]))
        mean_b = float(np.mean([r.b for r in rows]))
        rows.append(_summarise("average", mean_a, mean_b, np.mean(all_deltas, axis=0), tail))
    return rows


def _summarise(task: str, a: float, b: float, deltas: np.ndarray, tail: float) -> PairedDifference:
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return PairedDifference(task, a, b, float(low), float(high), float(np.mean(deltas <= 0)))


def format_comparison(rows: Sequence[PairedDifference], name_a: str = "A", name_b: str = "B", confidence: float = 0.95) -> str:
    """Markdown table (Spearman x 100)."""
    lines = [
        f"| task | {name_a} | {name_b} | {name_b} - {name_a} | {confidence:.0%} interval | resamples with {name_b} <= {name_a} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {100 * r.a:.2f} | {100 * r.b:.2f} | {100 * r.delta:+.2f} | "
            f"[{100 * r.low:+.2f}, {100 * r.high:+.2f}] | {r.p_not_better:.1%} |"
        )
    return "\n".join(lines)
