"""Projected gradient in the yardstick's own geometry: the threat set is the yardstick ball itself.

Variables (per channel, :mod:`~sinkhorn_attacks.projections.yardstick_ball`): a local plan ``pi >= 0`` (mass
moved from each pixel to each offset of the ``k x k`` window), destroyed mass ``d >= 0`` and created mass
``0 <= c <= 1 - x`` per pixel, with::

    z        = pi^T 1 + c                                      (= x - outflow + inflow - d + c)
    pi 1 + d = x                                               (outflow + destroyed <= clean)
    <C, pi> + price (sum d + sum c) <= radius * max(||x||_1, mass_floor)        (the yardstick's units)
    0 <= z <= 1

Any such point is a feasible plan of the yardstick's linear programme, so ``D(x, z)`` is at most its cost.
One step, on the examples not yet fooled::

    g          = grad_z objective(model(z_t), y)
    (pi, d, c) <- repair_box(project_ball((pi, d, c) + a_t (gather_window(g), 0, g) / ||.||_2))

(the gradient with respect to ``pi`` is the window gather of the image gradient; ``project_ball`` is the exact
Euclidean projection onto the budget set, ``repair_box`` returns mass that would lift a pixel above 1 to its
source, which only lowers the cost). The step length ``a_t = step_size * beta / price`` (``beta`` the raw
budget: ``beta / price`` is the mass the budget can create) decays along a cosine. An example leaves once the
model misclassifies its current image, which is then returned unchanged: the model is evaluated on exactly
the returned image.

Every returned image is metered on the yardstick (:func:`~sinkhorn_attacks.ot.measure`); in the rare case
that rounding puts it above ``radius``, it is pulled back along the segment to the clean image by the
factor ``radius / value`` (``D(x, .)`` is convex and zero at ``x``), and metered again, so the returned
image meters at or below its nominal radius exactly. ``certified_radius`` is that metered value.

A model that returns NaN or inf logits on an iterate contributes no gradient for it (the step is skipped
for that example) and such an iterate is never counted as fooling; an example whose every iterate gives
non-finite logits returns its last iterate, counted as not fooled (``extras["nonfinite_steps"]`` counts
those steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ot.kernel import gather_window, valid_offsets
from ..ot.yardstick import Yardstick, measure
from ..projections.yardstick_ball import BallPoint, ball_lmo, identity_plan, plan_image, project_ball, repair_box
from .base import Attack

__all__ = ["YardstickPGD", "margin_loss", "certify_within", "ascent_step", "loss_options", "set_ball"]

_BUDGET_MARGIN = 1e-6  # the plan's budget is this fraction below the radius (the meter's rounding)
_LOSSES = ("ce", "margin")
_SCHEDULES = ("cosine", "constant")
_METHODS = ("pgd", "fw")


def margin_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example ``max_{k != y} z_k - z_y`` (positive once misclassified; Carlini-Wagner's margin)."""
    true = outputs.gather(1, labels[:, None]).squeeze(1)
    other = outputs.masked_fill(F.one_hot(labels, outputs.shape[1]).bool(), -math.inf).amax(1)
    return other - true


def certify_within(
    x: torch.Tensor, z: torch.Tensor, radius: float | torch.Tensor, yardstick: Yardstick, *, max_rounds: int = 40
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images on the segment ``x + t (z - x)`` metering at or below ``radius``, their values, and which moved.

    Images already within ``radius`` are kept. The others are pulled back by ``t = radius / value`` (convexity
    of the yardstick in the perturbed image: ``D(x, x + t (z - x)) <= t D(x, z)``), cast to ``z``'s dtype and
    metered again; ``t`` shrinks further until the reading is within ``radius`` (after ``max_rounds`` the
    clean image, value 0).
    """
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1).expand(x.shape[0]).clone()
    z = z.detach().clone()
    value = measure(x, z, yardstick).value
    over = value > r
    moved = over.clone()
    t = torch.ones_like(value)
    for _ in range(max_rounds):
        if not bool(over.any()):
            break
        idx = over.nonzero().squeeze(1)
        t[idx] = t[idx] * (r[idx] / value[idx]) * (1 - 1e-6)
        cand = (x[idx] + t[idx].to(x.dtype).reshape(-1, 1, 1, 1) * (z[idx] - x[idx])).clamp(0, 1)
        z[idx] = cand
        value[idx] = measure(x[idx], cand, yardstick).value
        over = value > r
    if bool(over.any()):
        z[over], value[over] = x[over], 0.0
    return z, value, moved


def loss_options(loss: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~.base.Attack` keyword options for ``loss`` (``"ce"`` or ``"margin"``); a given ``loss_fn`` wins."""
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if loss == "margin" and kwargs.get("loss_fn") is None:
        return {**kwargs, "loss_fn": margin_loss}
    return kwargs


def set_ball(attack: Attack, ball: Yardstick | None, name: str | None) -> None:
    """Give an attack in the yardstick ball its ``ball`` (default: the yardstick it is metered in), ``name``
    and ``units``."""
    if ball is not None and not isinstance(ball, Yardstick):
        raise TypeError(f"ball must be a Yardstick, got {type(ball).__name__}")
    attack.ball = ball or attack.yardstick or Yardstick()
    if name:
        attack.name = name
    attack.units = f"yardstick radius ({attack.ball.label})"


def ascent_step(
    p: BallPoint,
    g_plan: torch.Tensor,
    g_created: torch.Tensor,
    length: torch.Tensor,
    x: torch.Tensor,
    ball: Yardstick,
    budget: torch.Tensor,
    mu: torch.Tensor,
) -> tuple[BallPoint, torch.Tensor]:
    """One projected step ``repair_box(project_ball(p + length (g_plan, 0, g_created) / ||.||_2))``.

    ``g_plan`` (B, C, K, H, W) and ``g_created`` (B, C, H, W) are the objective's gradients with respect to the
    plan and the created mass, ``length`` (B,) the step length in mass units, ``budget`` (B,) the raw budget of
    the ball and ``mu`` (B,) the previous projection's multiplier (warm start). Returns the new point and
    multiplier."""
    norm = (g_plan.flatten(1).pow(2).sum(1) + g_created.flatten(1).pow(2).sum(1)).sqrt()
    norm = torch.where(norm > 0, norm, torch.ones_like(norm)).reshape(-1, 1, 1, 1)
    a = length.reshape(-1, 1, 1, 1) / norm
    p = BallPoint(p.pi + a.unsqueeze(-1) * g_plan, p.destroyed, p.created + a * g_created)
    p, mu = project_ball(p, x, ball.cost, ball.price, budget, mu0=mu)
    return repair_box(p, ball.cost), mu


class YardstickPGD(Attack):
    """Projected gradient over a transport plan with created and destroyed mass, in the yardstick's ball.

    See the module docstring for the equations. ``radius`` is a yardstick value (default units: W1-TV, 5x5
    window, price 2 sqrt 2, per unit clean mass) and every returned image meters at or below it.

    Args:
        model: classifier taking [0, 1] images.
        radius: yardstick radius (> 0).
        steps: gradient steps per run (>= 1).
        step_size: first step length as a fraction of the mass the budget can create (``beta / price``);
            it decays along a cosine to 0 over ``steps`` (``schedule="constant"`` keeps it).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (``max_{k != y} z_k - z_y``); a ``loss_fn`` given to
            the constructor replaces both.
        restarts: runs in all (>= 1); each further run starts from a random point of the ball and attacks only
            the examples not fooled so far.
        method: ``"pgd"`` (the steps above) or ``"fw"``: Frank-Wolfe, ``p <- p + 2/(t+2) (s - p)`` with ``s`` the
            linear maximiser over the ball (:func:`~sinkhorn_attacks.projections.yardstick_ball.ball_lmo`, a
            fractional knapsack), followed by the same box repair; measured weaker (docs/results/yardstick_attack.md).
        ball: the yardstick whose ball is attacked (default: the ``yardstick`` the results are metered in,
            else :class:`~sinkhorn_attacks.ot.Yardstick` ``()``).
        name: reported name.
        **kwargs: :class:`~sinkhorn_attacks.attacks.Attack` options (``yardstick``, ``batch_size``, ...).
    """

    name = "yardstick-pgd"
    needs_mass = False

    def __init__(
        self,
        model: nn.Module,
        *,
        radius: float = 0.1,
        steps: int = 100,
        step_size: float = 2.0,
        loss: str = "ce",
        schedule: str = "cosine",
        restarts: int = 1,
        ball: Yardstick | None = None,
        method: str = "pgd",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.method = method
        super().__init__(model, **loss_options(loss, kwargs))
        ok = isinstance(radius, (int, float)) and not isinstance(radius, bool)
        if not (ok and math.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be a finite yardstick value > 0, got {radius!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
        self.radius, self.steps, self.step_size = float(radius), int(steps), float(step_size)
        self.loss, self.schedule, self.restarts = loss, schedule, restarts
        set_ball(self, ball, name)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "radius": self.radius,
            "steps": self.steps,
            "step_size": self.step_size,
            "loss": self.loss,
            "schedule": self.schedule,
            "restarts": self.restarts,
            "method": self.method,
            "ball": self.ball.to_dict(),
        }

    # ------------------------------------------------------------------------------------------ the loop
    def _budget(self, x: torch.Tensor) -> torch.Tensor:
        mass = x.detach().to(torch.float64).flatten(1).sum(1)
        scale = (
            mass.clamp_min(self.ball.mass_floor) if self.ball.normalisation == "clean_mass" else torch.ones_like(mass)
        )
        return self.radius * scale * (1 - _BUDGET_MARGIN)

    def _alpha(self, t: int) -> float:
        if self.schedule == "constant":
            return self.step_size
        return self.step_size * 0.5 * (1 + math.cos(math.pi * t / self.steps))

    def _random_point(self, x: torch.Tensor, budget: torch.Tensor, gen: torch.Generator) -> BallPoint:
        """A random point of the ball: a random plan, destruction and creation, projected and repaired."""
        cost, price = self.ball.cost, self.ball.price
        p = identity_plan(x, cost)
        scale = (budget / price).reshape(-1, 1, 1, 1)
        n = float(x[0].numel()) ** 0.5
        noise = torch.rand(p.pi.shape, generator=gen, dtype=torch.float64).to(x.device)
        p.pi = p.pi + noise * scale.unsqueeze(-1) / n
        p.created = torch.rand(p.created.shape, generator=gen, dtype=torch.float64).to(x.device) * scale / n
        p, _ = project_ball(p, x, cost, price, budget)
        return repair_box(p, cost)

    def _run(self, x: torch.Tensor, y: torch.Tensor, start: BallPoint | None):
        cost, price = self.ball.cost, self.ball.price
        B = x.shape[0]
        budget = self._budget(x)
        p = identity_plan(x, cost) if start is None else start
        mu = torch.zeros(B, dtype=torch.float64, device=x.device)
        valid = valid_offsets(cost, x.shape[-2], x.shape[-1], device=x.device)
        rows = (x > 0).unsqueeze(-3) & valid  # (B, C, K, H, W): plan entries that can hold mass
        room = x < 1  # pixels where mass may be created
        adv = x.clone()
        fooled = torch.zeros(B, dtype=torch.bool, device=x.device)
        iters = torch.zeros(B, dtype=torch.long, device=x.device)
        nonfinite = torch.zeros(B, dtype=torch.float64, device=x.device)
        act = torch.arange(B, device=x.device)
        grad_evals = 0
        for t in range(self.steps + 1):
            z = plan_image(p, cost).to(x.dtype).clamp(0, 1)
            last = t == self.steps
            z.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                out = self._forward(z)
            finite = torch.isfinite(out.detach()).all(1)
            with torch.no_grad():
                hit = self.is_success(out.detach(), y[act]) & finite
            adv[act] = z.detach()
            iters[act] = t
            if bool(hit.any()):
                fooled[act[hit]] = True
            if self.callback is not None:
                self.callback(t + 1, adv.clone(), fooled.clone())
            if last:
                break
            obj = self.objective(out, y[act])
            keep = ~hit
            (g,) = torch.autograd.grad(torch.where(finite, obj, torch.zeros_like(obj)).sum(), z)
            grad_evals += int(act.numel())
            g = g.detach().to(torch.float64)
            bad = ~torch.isfinite(g.flatten(1)).all(1) | ~finite
            nonfinite[act[bad]] += 1
            g[bad] = 0.0
            act, g, mu, budget = act[keep], g[keep], mu[keep], budget[keep]
            if act.numel() == 0:
                break
            p = p.index(keep)
            xa = x[act]
            ga = gather_window(g, cost, fill=0.0) * rows[act]
            gc = g * room[act]
            if self.method == "fw":
                s_ = ball_lmo(ga, gc, xa, cost, price, budget)
                gam = 2.0 / (t + 2)
                p = BallPoint(
                    p.pi + gam * (s_.pi - p.pi),
                    p.destroyed + gam * (s_.destroyed - p.destroyed),
                    p.created + gam * (s_.created - p.created),
                )
                p = repair_box(p, cost)
                continue
            p, mu = ascent_step(p, ga, gc, self._alpha(t) * budget / price, xa, self.ball, budget, mu)
        return adv, fooled, iters, nonfinite, grad_evals

    def _attack(self, x: torch.Tensor, y: torch.Tensor):
        B = x.shape[0]
        adv, fooled, iters, nonfinite, grad_evals = self._run(x, y, None)
        gen = torch.Generator().manual_seed(0)
        for _ in range(1, self.restarts):
            left = (~fooled).nonzero().squeeze(1)
            if left.numel() == 0:
                break
            start = self._random_point(x[left], self._budget(x[left]), gen)
            a2, f2, it2, nf2, ge2 = self._run(x[left], y[left], start)
            grad_evals += ge2
            iters[left] += it2
            nonfinite[left] += nf2
            adv[left[f2]] = a2[f2]
            fooled[left[f2]] = True
        adv, value, moved = certify_within(x, adv, self.radius, self.ball)
        radius = torch.full((B,), self.radius, dtype=torch.float64, device=x.device)
        extras = {"nonfinite_steps": nonfinite, "pulled_back": moved.double().to(x.device)}
        return adv, radius, iters, value.to(x.device), extras, grad_evals
