"""Evaluation: models x attacks x a dataset slice, resumable, with per-example results and curves.

This package computes and writes results; :mod:`sinkhorn_attacks.report` reads them and draws.
"""

from .config import AttackSpec, EvalConfig, config_from_dict, load_config
from .curves import accuracy_at_radii, accuracy_vs_iteration, accuracy_vs_radius, worst_case
from .distributed import attack_sharded, shard_indices
from .runner import EXAMPLE_COLUMNS, Unit, plan_units, run_evaluation, run_unit

__all__ = [
    "AttackSpec",
    "EvalConfig",
    "config_from_dict",
    "load_config",
    "run_evaluation",
    "run_unit",
    "plan_units",
    "Unit",
    "EXAMPLE_COLUMNS",
    "accuracy_vs_iteration",
    "accuracy_vs_radius",
    "accuracy_at_radii",
    "worst_case",
    "attack_sharded",
    "shard_indices",
]
