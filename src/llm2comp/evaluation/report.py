"""The result of an evaluation run: scores, seconds and settings per (model, task), and its plain-text table."""

from __future__ import annotations

import dataclasses
from typing import Any

RESULTS_NAME = "results.json"  # {task: main score} of the main model
FULL_RESULTS_NAME = "results_full.json"  # the whole EvaluationReport


@dataclasses.dataclass
class EvaluationReport:
    tasks: list[str]
    models: list[str]
    scores: dict[str, dict[str, float | None]]  # model label -> task -> main score
    seconds: dict[str, dict[str, float]]  # model label -> task -> wall time of the mteb run
    main_scores: dict[str, str]  # task -> name of the main score
    subsample: dict[str, Any]  # task -> what `limit` kept (None: full data)
    sources: dict[str, str]  # task -> local folder or hub
    errors: dict[str, dict[str, str]]
    settings: dict[str, Any]
    complete: bool = True  # False in the snapshots written while a run is still going

    def table(self, times: bool = True) -> str:
        return format_table(self, times=times)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fmt(score: float | None) -> str:
    return "   n/a" if score is None else f"{score:.4f}"


def format_table(report: EvaluationReport, times: bool = True) -> str:
    """Plain-text table: one row per task, one column per model (score and, optionally, seconds)."""
    headers = ["task", "metric", *report.models]
    rows = []
    for task in report.tasks:
        cells = [task, report.main_scores.get(task, "")]
        for label in report.models:
            score = report.scores.get(label, {}).get(task)
            cell = _fmt(score)
            if label in report.errors and task in report.errors[label]:
                cell = "error"
            if times and task in report.seconds.get(label, {}):
                cell += f" ({report.seconds[label][task]:.0f}s)"
            cells.append(cell)
        rows.append(cells)
    averages = ["average", ""]
    for label in report.models:
        values = [report.scores.get(label, {}).get(t) for t in report.tasks]
        values = [v for v in values if v is not None]
        cell = _fmt(sum(values) / len(values)) if values and len(values) == len(report.tasks) else "   n/a"
        if times:
            cell += f" ({sum(report.seconds.get(label, {}).values()):.0f}s)"
        averages.append(cell)
    rows.append(averages)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows[:-1]]
    out += [line(["-" * w for w in widths]), line(rows[-1])]
    return "\n".join(out)


def _subsample_note(task: str, kept: Any) -> str:
    if not kept:
        return ""
    parts = []
    for split, info in kept.items():
        if "queries" in info:
            parts.append(f"{split}: {info['queries']}/{info['of_queries']} queries, {info['corpus']}/{info['of_corpus']} docs")
        else:
            parts.append(f"{split}: {info['rows']}/{info['of']} rows")
    return f"{task} subsampled ({'; '.join(parts)})"


def _print_table(table: str) -> None:
    try:
        from rich.console import Console

        Console(highlight=False).print(table, markup=False, soft_wrap=True)
    except ImportError:  # pragma: no cover - rich is optional
        print(table)
