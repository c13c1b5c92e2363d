"""Evaluation: mteb 2.x adapter, offline task loading, baselines side by side, embedding diagnostics.

    from llm2comp.evaluation import evaluate_model
    evaluate_model("smollm2-135m", ["STSBenchmark"], data_dir="../shared/data", baselines=["mean", "minilm"])

Names are imported lazily (mteb takes seconds to import): `llm2comp.evaluation.diagnostics` needs no mteb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "evaluate_model": "runner",
    "run_suite": "runner",
    "run_evaluate_cli": "cli",
    "add_evaluate_arguments": "cli",
    "EvaluationReport": "report",
    "format_table": "report",
    "minilm_path": "specs",
    "MTEBEncoder": "mteb_adapter",
    "load_mteb_model": "mteb_adapter",
    "register_mteb_model": "mteb_adapter",
    "model_fingerprint": ".fingerprint",  # llm2comp.fingerprint (shared with the model)
    "load_task": "tasks",
    "load_tasks": "tasks",
    "resolve_data_dir": "tasks",
    "inject_local_data": "tasks",
    "subsample_task": "tasks",
    "DEFAULT_TASKS": "tasks",
    "compare_evaluations": "significance",
    "paired_bootstrap": "significance",
    "paired_bootstrap_mean": "significance",
    "diagnose": "diagnostics",
    "singular_spectrum": "diagnostics",
    "memory_correlation": "diagnostics",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .diagnostics import diagnose, memory_correlation, singular_spectrum
    from ..fingerprint import model_fingerprint
    from .mteb_adapter import MTEBEncoder, load_mteb_model, register_mteb_model
    from .cli import add_evaluate_arguments, run_evaluate_cli
    from .report import EvaluationReport, format_table
    from .runner import evaluate_model, run_suite
    from .significance import compare_evaluations, paired_bootstrap, paired_bootstrap_mean
    from .specs import minilm_path
    from .tasks import DEFAULT_TASKS, inject_local_data, load_task, load_tasks, resolve_data_dir, subsample_task


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llm2comp.evaluation' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
