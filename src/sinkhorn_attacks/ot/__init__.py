"""Transport mathematics on image grids (no model code): cost, the local operator, the sweep loop, Sinkhorn,
the meter and the yardstick."""

from .cost import LocalCost
from .engine import SweepOptions, run_sweeps
from .kernel import gather_window, local_lse, local_max, scatter_window
from .meter import MeterResult, exact_ot, exact_uot
from .sinkhorn import SinkhornResult, uot_sinkhorn, uot_terms
from .yardstick import Measurement, Yardstick, measure

__all__ = [
    "LocalCost",
    "local_lse",
    "local_max",
    "gather_window",
    "scatter_window",
    "SweepOptions",
    "run_sweeps",
    "uot_sinkhorn",
    "uot_terms",
    "SinkhornResult",
    "exact_ot",
    "exact_uot",
    "MeterResult",
    "measure",
    "Yardstick",
    "Measurement",
]
