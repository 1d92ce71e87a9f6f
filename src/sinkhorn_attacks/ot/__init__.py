"""Transport mathematics on image grids (no model code): cost, the local operator, Sinkhorn, the meter."""

from .cost import LocalCost
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
