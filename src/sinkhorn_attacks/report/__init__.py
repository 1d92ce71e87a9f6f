"""Report: reads the outputs of :mod:`sinkhorn_attacks.eval` and draws them (no attack code here).

``write_report(out_dir)`` writes, into ``out_dir/report/``:

* ``acc_vs_iteration.png``, ``acc_vs_radius.png``, ``acc_at_radii.png``: one figure per curve type,
  attacks as panels, models as lines (the worst case over attacks is an extra panel);
* ``grid_<model>__<attack>.png``: example grids (input / perturbation / adversarial, with the predicted
  labels and the metered radius);
* ``report.html``: tables and every image embedded as base64 PNG, so the file opens offline on its own.
"""

from .html import write_report
from .plots import plot_accuracy_at_radii, plot_accuracy_vs_iteration, plot_accuracy_vs_radius, plot_grid

__all__ = [
    "write_report",
    "plot_accuracy_vs_iteration",
    "plot_accuracy_vs_radius",
    "plot_accuracy_at_radii",
    "plot_grid",
]
