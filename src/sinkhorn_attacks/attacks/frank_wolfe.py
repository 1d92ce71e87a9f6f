"""Wu, Wang, Yu (2020): attacks that optimise the local coupling directly (no image projection).

The adversarial image is the column marginal of a local coupling ``pi`` of the clean image
(:mod:`sinkhorn_attacks.projections.coupling`); ``pi`` starts at the identity (``pi_ii = x_i``) and stays in
``Pi(x, eps) = {pi >= 0, pi 1 = x, <C, pi> <= eps ||x||_1}``. The gradient with respect to ``pi`` is the
window gather of the image gradient (``x_adv = scatter_window(pi)`` so ``d/dpi = gather_window(d/dx_adv)``);
the loss is the summed cross-entropy of ``model(clamp(pi^T 1, 0, 1))``.

* Frank-Wolfe: ``G = grad / ||grad||_inf``, ``s = entropic_lmo(G)``, ``pi <- pi + 2/(t+2) (s - pi)``.
* PGD: ``pi <- dual_projection(pi + lr grad / ||grad||_inf)`` (exact Euclidean projection onto Pi).

Optional post-processing (Wu's ``postprocess``) projects the final coupling with the capacity constraint
``pi^T 1 <= 1`` (Wu's dual ascent, 5000 iterations by default) and then makes the capacity exact by returning
the remaining overflow to its source pixels (:func:`~sinkhorn_attacks.projections.coupling.repair_capacity`,
an addition of this library: Wu's dual ascent leaves a small overflow), so the returned image is in [0, 1]
without clipping away mass.

Radii reported by the attack classes (``eps`` normalised by ``||x||_1``):

* ``radius``: the budget ``eps``;
* ``extras["nominal_radius"]``: the optimised coupling's cost ``<C, pi> / ||x||_1`` (Wu's native radius, a
  bound for the *unclipped* image ``pi^T 1``);
* ``certified_radius``: the same number where it holds for the returned image, i.e. where ``pi^T 1`` is
  already in [0, 1] and the base class's clipping changes nothing; NaN where pixels were clipped;
* ``extras["clipped_mass"]``: the fraction of the mass cut by clipping ``pi^T 1`` to [0, 1] (0 when the
  returned image is the optimised one); ``extras["repaired_mass"]``: mass moved back by the repair step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ot.checks import check_count, check_positive
from ..ot.cost import LocalCost
from ..ot.kernel import gather_window
from ..projections.coupling import (
    capacity_projection,
    column_marginal,
    coupling_cost,
    dual_projection,
    entropic_lmo,
    identity_coupling,
    repair_capacity,
)
from .base import Attack

__all__ = ["wu_frank_wolfe", "wu_pgd", "coupling_radii", "WuFrankWolfe", "WuPGD"]

_W1_5X5 = LocalCost(5, 1.0)  # Wu's ground cost: Euclidean (W1), 5x5 window
_GRAD_GUARD = 1e-35


def _coupling_grad(
    model: Callable[[torch.Tensor], torch.Tensor], pi: torch.Tensor, y: torch.Tensor, cost: LocalCost, objective=None
):
    img = column_marginal(pi, cost).detach().requires_grad_(True)
    out = model(img.clamp(0, 1))
    loss = F.cross_entropy(out, y, reduction="sum") if objective is None else objective(out, y).sum()
    (g,) = torch.autograd.grad(loss, img)
    gp = gather_window(g, cost, fill=0.0)  # adjoint of the column marginal
    # per-example l_inf normalisation with Wu's tiny guard (1e-35): the summed cross-entropy of a confident
    # model has gradients of 1e-16..1e-6, which must still be scaled to norm 1 (a larger guard such as
    # 1e-12 shrinks them and lets the entropy term of the LMO dominate)
    return gp / (gp.flatten(1).abs().amax(1) + _GRAD_GUARD).reshape(-1, 1, 1, 1, 1)


def _finish(pi, x, cost, budget, postprocess: bool, post_iterations: int, check_zero: bool = False):
    """Optional capacity post-processing (+ exact repair, in float64); returns ``(pi^T 1, pi)``."""
    if postprocess:
        pi = capacity_projection(pi, x, cost, budget, iterations=post_iterations, check_zero=check_zero)
        pi, _ = repair_capacity(pi, cost)
        return column_marginal(pi, cost).to(x.dtype), pi
    return column_marginal(pi, cost), pi


def coupling_radii(adv: torch.Tensor, pi: torch.Tensor, x: torch.Tensor, cost: LocalCost) -> dict[str, torch.Tensor]:
    """Per-example radii of a Wu result ``(adv = pi^T 1, pi)`` for the image returned after clipping to [0, 1].

    ``nominal_radius = <C, pi> / ||x||_1``; ``clipped_mass`` = fraction of the mass that clipping ``adv``
    to [0, 1] removes or adds; ``certified_radius`` = ``nominal_radius`` where nothing is clipped (the
    coupling then transports ``x`` exactly onto the returned image), NaN elsewhere.
    """
    mass = x.flatten(1).sum(1).double().clamp_min(1e-12)
    nominal = coupling_cost(pi, cost).double() / mass
    clipped = (adv - adv.clamp(0, 1)).abs().flatten(1).double().sum(1) / mass
    certified = torch.where(clipped == 0, nominal, torch.full_like(nominal, math.nan))
    return {"nominal_radius": nominal, "clipped_mass": clipped, "certified_radius": certified}


def wu_frank_wolfe(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cost: LocalCost,
    eps: float | torch.Tensor,
    steps: int = 300,
    *,
    gamma: float = 1e-3,
    dual_max_iter: int = 50,
    tol: float = 1e-4,
    postprocess: bool = False,
    post_iterations: int = 5000,
    check_zero: bool = False,
    objective=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wu's Frank-Wolfe attack; returns ``(adv image (not clipped), coupling)``. ``eps`` normalised.

    ``check_zero=False`` bisects the dual variable as Wu's code does (never testing ``mu = 0``); ``True``
    returns the exact oracle when the budget is inactive (see :func:`~..projections.coupling.dual_projection`).
    """
    budget = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]) * x.flatten(1).sum(1)
    pi = identity_coupling(x, cost)
    for t in range(steps):
        g = _coupling_grad(model, pi, y, cost, objective)
        s = entropic_lmo(g, x, cost, budget, gamma, max_iter=dual_max_iter, tol=tol, int_tol=tol, check_zero=check_zero)
        pi = pi + 2.0 / (t + 2) * (s - pi)
    return _finish(pi, x, cost, budget, postprocess, post_iterations, check_zero)


def wu_pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cost: LocalCost,
    eps: float | torch.Tensor,
    steps: int = 300,
    *,
    lr: float = 0.1,
    dual_max_iter: int = 25,
    tol: float = 1e-4,
    postprocess: bool = True,
    post_iterations: int = 5000,
    check_zero: bool = False,
    objective=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wu's PGD on the coupling with the exact dual projection; returns ``(adv, coupling)``.

    ``check_zero`` as in :func:`wu_frank_wolfe`: with Wu's bisection (``False``) a step whose row-simplex
    projection is already within budget is bisected down to ``mu ~ tol`` instead of 0 (the projection is
    then off by ``~tol * C`` per entry).
    """
    budget = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]) * x.flatten(1).sum(1)
    pi = identity_coupling(x, cost)
    for _ in range(steps):
        g = _coupling_grad(model, pi, y, cost, objective)
        pi = dual_projection(
            pi + lr * g, x, cost, budget, max_iter=dual_max_iter, tol=tol, int_tol=tol, check_zero=check_zero
        )
    return _finish(pi, x, cost, budget, postprocess, post_iterations, check_zero)


class _WuBase(Attack):
    units = "normalised <C, pi> (local coupling cost / ||x||_1); certified only where nothing is clipped"

    def __init__(
        self,
        model: nn.Module,
        *,
        cost: LocalCost = _W1_5X5,
        eps: float = 0.5,
        steps: int = 300,
        postprocess: bool = False,
        post_iterations: int = 5000,
        check_zero: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.check_zero = bool(check_zero)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.cost, self.eps, self.steps = cost, float(eps), check_count(steps, "steps")
        self.postprocess, self.post_iterations = postprocess, check_count(post_iterations, "post_iterations", lower=0)
        if name:
            self.name = name

    def _run(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _attack(self, x: torch.Tensor, y: torch.Tensor):
        adv, pi = self._run(x, y)
        B = x.shape[0]
        r = coupling_radii(adv, pi, x, self.cost)
        radius = torch.full((B,), self.eps, dtype=torch.float64, device=x.device)
        iters = torch.full((B,), self.steps, dtype=torch.long, device=x.device)
        mass = x.flatten(1).sum(1).double().clamp_min(1e-12)
        extras = {
            "nominal_radius": r["nominal_radius"],
            "clipped_mass": r["clipped_mass"],
            "above_one_mass": (adv - 1).clamp_min(0).flatten(1).double().sum(1) / mass,
        }
        return adv.detach(), radius, iters, r["certified_radius"], extras, self.steps * B

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kernel_size": self.cost.kernel_size,
            "p": self.cost.p,
            "eps": self.eps,
            "steps": self.steps,
            "postprocess": self.postprocess,
            "post_iterations": self.post_iterations,
            "check_zero": self.check_zero,
        }


class WuFrankWolfe(_WuBase):
    """Wu et al.'s Frank-Wolfe attack with the entropic dual LMO (fixed radius ``eps``, normalised)."""

    name = "wu-fw"

    def __init__(self, model: nn.Module, *, gamma: float = 1e-3, dual_max_iter: int = 50, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.gamma, self.dual_max_iter = check_positive(gamma, "gamma"), check_count(dual_max_iter, "dual_max_iter")

    def _run(self, x, y):
        return wu_frank_wolfe(
            self._forward, x, y, self.cost, self.eps, self.steps, gamma=self.gamma, dual_max_iter=self.dual_max_iter,
            postprocess=self.postprocess, post_iterations=self.post_iterations, check_zero=self.check_zero,
            objective=self.objective,
        )  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {**super().config(), "gamma": self.gamma, "dual_max_iter": self.dual_max_iter}


class WuPGD(_WuBase):
    """Wu et al.'s PGD on the coupling with the exact dual projection (fixed radius ``eps``)."""

    name = "wu-pgd"

    def __init__(self, model: nn.Module, *, lr: float = 0.1, dual_max_iter: int = 25, **kwargs: Any) -> None:
        kwargs.setdefault("postprocess", True)
        super().__init__(model, **kwargs)
        self.lr, self.dual_max_iter = check_positive(lr, "lr"), check_count(dual_max_iter, "dual_max_iter")

    def _run(self, x, y):
        return wu_pgd(
            self._forward, x, y, self.cost, self.eps, self.steps, lr=self.lr, dual_max_iter=self.dual_max_iter,
            postprocess=self.postprocess, post_iterations=self.post_iterations, check_zero=self.check_zero,
            objective=self.objective,
        )  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lr": self.lr, "dual_max_iter": self.dual_max_iter}
