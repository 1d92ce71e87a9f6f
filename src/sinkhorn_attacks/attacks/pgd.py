"""The generic projected-gradient attack: step rule + projection + radius schedule + bookkeeping.

One iteration on the still-active examples::

    g  = grad_x objective(model(x_t), y)            (cross-entropy, or minus the target loss)
    w  = step(x_t, g, step_size, x)                  (sign / l2 / l_inf-normalised / mass-scaled)
    x_{t+1}, state = projection(x, w, radius, state) (warm-started; UOT, Wong, Hu, l_p balls)
    examples that now fool the model leave the batch (their image and radius are recorded)
    radius <- schedule(radius, t)                    (fixed, or a growing search for the minimal radius)

Fixed-radius mode returns the last iterate of robust examples; the minimal-radius search (Wong: x factor
every n steps; Hu: + increment every n steps) records, per example, the radius at which it was first
fooled (clean errors count as radius 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..ot.checks import check_count
from .base import Attack
from .steps import StepRule, get_step

__all__ = ["PGDAttack", "RadiusSchedule", "Projection"]


class Projection(Protocol):
    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...


@dataclass(frozen=True)
class RadiusSchedule:
    """``fixed``; ``multiply`` (radius *= factor every ``every`` steps); ``add`` (radius += increment)."""

    kind: str = "fixed"
    factor: float = 1.1
    increment: float = 0.01
    every: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "multiply", "add"):
            raise ValueError(f"unknown radius schedule {self.kind!r}; use fixed, multiply or add")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"schedule.every must be an integer >= 1, got {self.every!r}")
        for name, lo, strict in (("factor", 0.0, True), ("increment", 0.0, False)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or (v <= lo if strict else v < lo):
                need = "a finite number > 0" if strict else "a finite number >= 0"
                raise ValueError(f"schedule.{name} must be {need}, got {v!r}")

    def update(self, radius: torch.Tensor, step: int) -> torch.Tensor:
        if self.kind == "fixed" or step % self.every:
            return radius
        return radius * self.factor if self.kind == "multiply" else radius + self.increment


class PGDAttack(Attack):
    """Projected-gradient attack with a pluggable step rule and projection.

    Args:
        model: classifier taking [0, 1] images.
        projection: callable ``(x, w, radius, state) -> (z, state, info)``; ``None`` = box only.
        step: step rule name (``sign``, ``l2``, ``linf_normalized``, ``mass_scaled``) or callable.
        step_size: step length ``a`` of the rule.
        radius: initial (or fixed) nominal radius, in the projection's units.
        steps: maximum number of iterations (gradient evaluations per example).
        schedule: :class:`RadiusSchedule`; anything but ``fixed`` is a minimal-radius search.
        early_stop: fooled examples leave the batch (saves work; results of fixed-radius runs are unchanged
            in success but the returned image is the first fooling iterate).
        random_start: begin with one step of the step rule along a uniformly random direction, projected
            (as torchattacks' ``random_start``; for the Wasserstein balls the start stays inside the ball).
        restarts: run the attack this many times; each restart (random start) attacks only the examples
            not fooled by the previous runs and its images replace theirs only where it fools the model.
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        *,
        projection: Projection | None,
        step: str | StepRule = "sign",
        step_size: float = 0.1,
        radius: float = 0.1,
        steps: int = 40,
        schedule: RadiusSchedule | str | dict[str, Any] | None = None,
        early_stop: bool = True,
        random_start: bool = False,
        restarts: int = 1,
        name: str | None = None,
        units: str = "",
        extra_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        steps, restarts = (
            check_count(steps, "steps"),
            check_count(restarts, "restarts"),
        )  # 0 steps returned the clean images
        if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
            raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        self.projection = projection
        self.needs_mass = bool(getattr(projection, "needs_mass", False))
        self.step_name = step if isinstance(step, str) else getattr(step, "__name__", "custom")
        self.step = get_step(step)
        self.step_size = float(step_size)
        self.radius = float(radius)
        self.steps = int(steps)
        # a plain form for configuration files: "fixed", or {"kind": "multiply", "factor": 1.1, "every": 5}
        if isinstance(schedule, str):
            schedule = RadiusSchedule(schedule)
        elif isinstance(schedule, dict):
            schedule = RadiusSchedule(**schedule)
        self.schedule = schedule or RadiusSchedule("fixed")
        self.early_stop = early_stop
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
        self.random_start, self.restarts = bool(random_start), restarts
        if name:
            self.name = name
        self.units = units
        self._extra_config = extra_config or {}

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step": self.step_name,
            "step_size": self.step_size,
            "radius": self.radius,
            "steps": self.steps,
            "schedule": asdict(self.schedule),
            "early_stop": self.early_stop,
            "random_start": self.random_start,
            "restarts": self.restarts,
            **self._extra_config,
        }

    def _grad(self, xa: torch.Tensor, ya: torch.Tensor) -> torch.Tensor:
        xa = xa.detach().requires_grad_(True)
        obj = self.objective(self._forward(xa), ya)
        (grad,) = torch.autograd.grad(obj.sum(), xa)
        # a model with NaN / inf output here gives no direction: no step (the projections refuse NaN points)
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def _attack(self, x: torch.Tensor, y: torch.Tensor):
        best, found_r, iters, cert, extras, grad_evals, done = self._run(x, y, self.random_start)
        for _ in range(1, self.restarts):
            left = (~done).nonzero().squeeze(1)
            if left.numel() == 0:
                break
            b, r, it, c, ex, ge, d = self._run(x[left], y[left], True)
            grad_evals += ge
            iters[left] += it
            hit = left[d]
            best[hit], found_r[hit], cert[hit], done[hit] = b[d], r[d], c[d], True
            for k, v in ex.items():
                extras.setdefault(k, torch.full_like(found_r, math.nan, dtype=torch.float64))[hit] = v[d]
        return best, found_r, iters, cert, extras, grad_evals

    def _start(self, x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """One step of the step rule along a uniformly random direction, projected into the ball."""
        w = self.step(x, torch.rand_like(x) * 2 - 1, self.step_size, x)
        if self.projection is not None:
            w, _, _ = self.projection(x, w.detach(), radius, None)
        return w.detach().clamp(0, 1)

    def _run(self, x: torch.Tensor, y: torch.Tensor, random_start: bool):
        B = x.shape[0]
        dev = x.device
        x_t = x.clone()
        best = x.clone()
        radius = torch.full((B,), self.radius, dtype=x.dtype, device=dev)
        found_r = radius.clone()
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        cert = torch.full((B,), math.nan, dtype=torch.float64, device=dev)
        extras: dict[str, torch.Tensor] = {}
        state: dict[str, torch.Tensor] | None = None
        act = torch.arange(B, device=dev)
        grad_evals = 0
        search = self.schedule.kind != "fixed"
        if random_start:
            x_t = self._start(x, radius)
        for t in range(1, self.steps + 1):
            if act.numel() == 0:
                break
            xa = x_t[act]
            grad = self._grad(xa, y[act])
            grad_evals += int(act.numel())
            w = self.step(xa, grad, self.step_size, x[act])
            if self.projection is not None:
                sub = None if state is None else {k: v[act] for k, v in state.items()}
                z, new_state, info = self.projection(x[act], w.detach(), radius[act], sub)
                if state is None and new_state:
                    state = {
                        k: torch.zeros((B,) + v.shape[1:], dtype=v.dtype, device=dev) for k, v in new_state.items()
                    }
                if state is not None:
                    for k, v in new_state.items():
                        state[k][act] = v
                for k, v in info.items():
                    if k == "certified_radius":
                        cert[act] = v.double()
                    else:
                        extras.setdefault(k, torch.full((B,), math.nan, dtype=torch.float64, device=dev))
                        extras[k][act] = v.double()
            else:
                z = w
            z = z.detach().clamp(0, 1)
            x_t[act] = z
            iters[act] = t
            found_r[act] = radius[act]
            with torch.no_grad():
                fooled = self.is_success(self._forward(z), y[act])
            newly = act[fooled]
            best[newly] = z[fooled]
            done[newly] = True
            if self.early_stop:
                act = act[~fooled]
            if self.callback is not None:
                cur = torch.where(done.reshape(-1, 1, 1, 1), best, x_t)
                self.callback(t, cur, done.clone())
            radius[act] = self.schedule.update(radius[act], t)
        best[~done] = x_t[~done]
        if search:
            found_r[~done] = math.inf  # never fooled within the search
        return best, found_r, iters, cert, extras, grad_evals, done
