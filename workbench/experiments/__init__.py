"""Experiments of Stolfo et al. (ICLR 2025): layer/strength sweeps, the four conditions, end-to-end runs."""

from .conditions import CONDITIONS, GenerationMemo, run_conditions
from .executors import EXECUTORS, Executor, LocalExecutor, make_executor
from .store import UnitStore
from .sweep import SweepResult, SweepSettings, SweepTarget, default_layers, heatmap_records, run_sweep, select

__all__ = [
    "CONDITIONS", "EXECUTORS", "Executor", "GenerationMemo", "LocalExecutor", "SweepResult", "SweepSettings", "SweepTarget",
    "UnitStore", "default_layers", "heatmap_records", "make_executor", "run_conditions", "run_sweep", "select",
]
