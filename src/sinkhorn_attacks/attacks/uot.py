"""The UOT Sinkhorn attack (the thesis's attack with the corrected projection of docs/math.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ot.cost import LocalCost
from ..ot.sinkhorn import uot_upper_bound
from ..projections.uot import UOTProjection
from .pgd import PGDAttack, RadiusSchedule

__all__ = ["UOTAttack"]


class UOTAttack(PGDAttack):
    """Projected-gradient attack in an unbalanced-OT ball around the clean image.

    Budgeted mode (default): each step is projected onto ``{z in [0,1]: F(P, z) <= radius * ||x||_1}`` with
    ``F = <P, C> + tau KL(P1|x) + tau KL(P^T1|z)`` (transport + destroyed + created mass cost), so
    ``radius`` is in normalised units comparable with the balanced attacks' radius when tau is large.
    Penalised mode (``penalised=True``, the thesis's formulation) has no radius: the projection is
    ``argmin_z gamma/2 ||z - w||^2 + UOT_{eta,tau}(x, z)``.

    Args:
        eta: entropic regularisation (cost units); tau: marginal relaxation; gamma: pull towards w.
        kernel_size, p: local ground cost ``d**p`` on a ``kernel_size`` window, pixel units.
        step, step_size, steps, schedule: see :class:`PGDAttack`.
        inner_tol: residual tolerance of the projection's sweeps (largest change of ``log LSE_C[g]`` in one
            sweep). An attack step does not need the exact projection: the budget is certified by ``F`` of the
            returned plan whatever the residual, and on 100 MNIST images 1e-3 gives the robust accuracy of
            1e-5 within one image at 0.56x the CPU time (docs/benchmarks/uot_speed.md). ``None``: the
            projection's default (1e-5 float32, 1e-10 float64).
        tight_certificate: replace each returned image's certified radius by the smaller of the projection's
            ``F(P, z)`` and :func:`~sinkhorn_attacks.ot.sinkhorn.uot_upper_bound` (the UOT functional of
            re-solved plans at temperatures ``2 eta`` and ``0.6 eta``); both are upper bounds on the exact
            ``U_tau(x, z)``, the second within a few percent of it on MNIST (docs/math.md).
    """

    name = "uot"

    def __init__(
        self,
        model: nn.Module,
        *,
        radius: float = 0.3,
        steps: int = 40,
        eta: float = 0.05,
        tau: float = 10.0,
        gamma: float = 1.0,
        kernel_size: int | None = 5,
        p: float = 1.0,
        step: str = "sign",
        step_size: float = 0.1,
        penalised: bool = False,
        schedule: RadiusSchedule | None = None,
        inner_max_iter: int = 300,
        inner_tol: float | None = 1e-3,
        radius_rtol: float = 2e-2,
        max_search: int = 25,
        name: str | None = None,
        tight_certificate: bool = True,
        **kwargs: Any,
    ) -> None:
        cost = LocalCost(kernel_size, p)
        self._uot_cost, self._uot_eta, self._uot_tau = cost, eta, tau
        self.tight_certificate = bool(tight_certificate)
        proj = UOTProjection(
            cost,
            eta,
            tau,
            gamma,
            penalised=penalised,
            normalize=True,
            tol=inner_tol,
            max_iter=inner_max_iter,
            radius_rtol=radius_rtol,
            max_search=max_search,
        )
        units = (
            "penalised UOT (no radius)"
            if penalised
            else f"UOT functional F=<P,C>+tau KL+tau KL per unit clean mass; {cost.describe()}"
        )
        super().__init__(
            model,
            projection=proj,
            step=step,
            step_size=step_size,
            radius=radius,
            steps=steps,
            schedule=schedule,
            name=name or ("uot-penalised" if penalised else "uot"),
            units=units,
            extra_config={
                "eta": eta,
                "tau": tau,
                "gamma": gamma,
                "kernel_size": kernel_size,
                "p": p,
                "penalised": penalised,
                "tight_certificate": bool(tight_certificate),
            },
            **kwargs,
        )

    def _attack(self, x: torch.Tensor, y: torch.Tensor):
        best, found_r, iters, cert, extras, grad_evals = super()._attack(x, y)
        if self.tight_certificate and x.shape[0]:
            with torch.no_grad():
                mass = x.double().flatten(1).sum(1).clamp_min(1e-12)
                eta = self._uot_eta
                ub = uot_upper_bound(x, best.detach(), self._uot_cost, self._uot_tau, (2 * eta, 0.6 * eta))
                tight = (ub / mass).to(cert.dtype)
                cert = torch.where(torch.isfinite(cert) & torch.isfinite(tight), torch.minimum(cert, tight), cert)
        return best, found_r, iters, cert, extras, grad_evals
