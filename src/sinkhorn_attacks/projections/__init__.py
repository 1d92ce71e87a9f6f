"""Projections: bring a perturbed image ``w`` back near the clean ``x`` in a transport (or l_p) geometry.

* :func:`uot_project` / :class:`UOTProjection` - unbalanced OT (penalised or budgeted), this library's method.
* :func:`sinkhorn_project` / :class:`WongProjection` - Wong et al. 2019 balanced entropic projection.
* :func:`hu_project` / :class:`HuProjection` - Hu et al. 2020, with the pixel box inside the projection.
* :mod:`.coupling` - Wu et al. 2020 coupling-space projection and entropic LMO.
* :class:`LinfProjection`, :class:`L2Projection` - l_p balls.
* :func:`uot_tv_project` / :class:`UOTTVProjection` - the budgeted UOT ball with TV marginals (yardstick price).
* :mod:`.yardstick_ball` - the yardstick's own ball over a plan with created / destroyed mass (exact projection).
"""

from .lp import L2Projection, LinfProjection
from .sinkhorn import HuProjection, WongProjection, conjugate_sinkhorn, hu_project, sinkhorn_project, wright_omega
from .uot import ProjectionResult, UOTProjection, solve_z, uot_project
from .uot_tv import UOTTVProjection, uot_tv_project
from .yardstick_ball import project_ball, repair_box

__all__ = [
    "uot_project",
    "UOTProjection",
    "ProjectionResult",
    "solve_z",
    "sinkhorn_project",
    "hu_project",
    "conjugate_sinkhorn",
    "wright_omega",
    "WongProjection",
    "HuProjection",
    "LinfProjection",
    "L2Projection",
    "uot_tv_project",
    "UOTTVProjection",
    "project_ball",
    "repair_box",
]
