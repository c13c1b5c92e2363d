"""An evaluation run's output folder: an earlier run set aside first, the files rewritten after every task, the
main scores written last.

    out/results.json        {task: main score} of the main model (a finished run only)
    out/results_full.json   the whole `EvaluationReport` (`"complete": false` while the run goes on)
    out/results.txt         the side-by-side table
    out/predictions/        per-item predictions and gold values (`save_predictions`, see `significance`)
    out/previous_run/       the earlier run's files, until this run completes
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from .report import FULL_RESULTS_NAME, RESULTS_NAME, EvaluationReport
from .significance import PREDICTIONS_DIR

PREVIOUS_RUN_DIR = "previous_run"
TABLE_NAME = "results.txt"
RUN_FILES = (RESULTS_NAME, FULL_RESULTS_NAME, TABLE_NAME, PREDICTIONS_DIR)


def _is_complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / FULL_RESULTS_NAME).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def set_aside_earlier_run(out: Path) -> None:
    """Before a run writes into `out`, move an earlier run's files to `out/previous_run`: a re-run that is killed
    then leaves the last complete run there instead of a mix of old and new files (old main scores beside new
    partial ones, predictions of one run with scores of another). A killed run's partial files are dropped when
    the folder also holds an earlier complete run; they are never moved over it."""
    present = [out / name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return
    previous = out / PREVIOUS_RUN_DIR
    if previous.exists() and not _is_complete(out):
        for path in present:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir(parents=True)
    for path in present:
        path.rename(previous / path.name)


def save_progress(out: Path, report: EvaluationReport) -> None:
    """Write the report so far (the full results and the table): a killed run keeps what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / FULL_RESULTS_NAME, report.to_json())
    write_text_atomic(out / TABLE_NAME, report.table() + "\n")


def save_finished(out: Path, report: EvaluationReport, main: dict) -> None:
    """Write a finished run's files, the main model's scores last, and drop the earlier run it replaces."""
    save_progress(out, report)
    write_json_atomic(out / RESULTS_NAME, main)
    shutil.rmtree(out / PREVIOUS_RUN_DIR, ignore_errors=True)
