"""The thesis's UOT attack with total-variation marginals at the yardstick's price.

The projected-gradient loop of :class:`~sinkhorn_attacks.attacks.PGDAttack` with the budgeted projection of
:mod:`~sinkhorn_attacks.projections.uot_tv`: each step is projected onto
``{z in [0,1]: F(P, z) <= radius * ||x||_1}`` with ``F = <P, C> + tau ||P1 - x||_1 + tau ||P^T 1 - z||_1``.
With ``tau`` the yardstick's price (the default) and the yardstick's window and exponent, ``F`` of the
returned plan bounds the yardstick reading of the returned image, so ``certified_radius`` is a yardstick
certificate and ``radius`` is in the yardstick's units (per unit clean mass; images whose clean mass is below
the yardstick's ``mass_floor`` are certified in raw mass, which is stricter).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..ot.yardstick import Yardstick
from ..projections.uot_tv import UOTTVProjection
from .pgd import PGDAttack, RadiusSchedule

__all__ = ["UOTTVAttack"]


class UOTTVAttack(PGDAttack):
    """Projected gradient in the TV-marginal UOT ball (the thesis's attack at the yardstick's price).

    Args:
        radius: budget of ``F`` per unit clean mass (a yardstick radius when ``tau`` is the price).
        steps, step, step_size, schedule: see :class:`PGDAttack` (``step="l2"``: ``a g / ||g||_2``).
        eta: entropic temperature of the plan (cost units); the certificate ``F`` of an entropic plan exceeds
            the yardstick reading of its image, the more so the larger ``eta``.
        ball: the yardstick whose window, exponent and price (``tau``) define the ball (default
            :class:`~sinkhorn_attacks.ot.Yardstick` ``()``); ``tau`` overrides the price.
        gamma: weight of the pull towards the stepped image in the projection.
        inner_tol, inner_max_iter, relax, radius_rtol, max_search: the projection's sweeps and its search for
            the budget multiplier (:func:`~sinkhorn_attacks.projections.uot_tv.uot_tv_project`).
    """

    name = "uot-tv"

    def __init__(
        self,
        model: nn.Module,
        *,
        radius: float = 0.1,
        steps: int = 40,
        eta: float = 0.01,
        tau: float | None = None,
        gamma: float = 1.0,
        ball: Yardstick | None = None,
        step: str = "l2",
        step_size: float = 1.0,
        schedule: RadiusSchedule | None = None,
        inner_tol: float = 1e-3,
        inner_max_iter: int = 300,
        relax: float = 1.8,
        radius_rtol: float = 2e-2,
        max_search: int = 12,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        ys = ball or Yardstick()
        if not isinstance(ys, Yardstick):
            raise TypeError(f"ball must be a Yardstick, got {type(ys).__name__}")
        price = ys.price if tau is None else float(tau)
        proj = UOTTVProjection(
            ys.cost, eta, price, gamma, tol=inner_tol, max_iter=inner_max_iter, radius_rtol=radius_rtol,
            max_search=max_search, relax=relax,
        )  # fmt: skip
        units = (
            f"F = <P,C> + tau |P1 - x| + tau |P^T1 - z| per unit clean mass, tau = {price:.4g}; {ys.cost.describe()}"
        )
        super().__init__(
            model,
            projection=proj,
            step=step,
            step_size=step_size,
            radius=radius,
            steps=steps,
            schedule=schedule,
            name=name or "uot-tv",
            units=units,
            extra_config={"eta": eta, "tau": price, "gamma": gamma, "ball": ys.to_dict(), "relax": relax},
            **kwargs,
        )
