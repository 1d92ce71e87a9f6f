"""Gradient step rules ``w = x_t + step(grad)`` of the projected-gradient attacks.

* ``sign``:   ``w = x_t + a * sign(g)``                                   (l_inf steepest ascent; Wong)
* ``l2``:     ``w = x_t + a * g / ||g||_2``                              (per example)
* ``linf_normalized``: ``w = x_t + a * g / ||g||_inf``                   (Wu, on the coupling)
* ``mass_scaled``: ``w = x_t + a * ||x||_1 / n * g / ||g||_inf``         (Hu: l_inf-normalised gradient
  scaled by the clean image's mass per pixel, so the step is a fixed fraction of the mean pixel mass)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepRule = Callable[[torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["STEP_RULES", "get_step", "StepRule"]


def _per_example(t: torch.Tensor, ord_: float) -> torch.Tensor:
    n = t.flatten(1).norm(p=ord_, dim=1).clamp_min(1e-12)
    return n.reshape(-1, *([1] * (t.dim() - 1)))


def sign_step(x_t: torch.Tensor, grad: torch.Tensor, a: float | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return x_t + a * grad.sign()


def l2_step(x_t: torch.Tensor, grad: torch.Tensor, a: float | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return x_t + a * grad / _per_example(grad, 2)


def linf_normalized_step(x_t, grad, a, x0):
    return x_t + a * grad / _per_example(grad, float("inf"))


def mass_scaled_step(x_t, grad, a, x0):
    n = x0[0].numel()
    mass = x0.flatten(1).sum(1).reshape(-1, *([1] * (x0.dim() - 1)))
    return x_t + a * (mass / n) * grad / _per_example(grad, float("inf"))


STEP_RULES: dict[str, StepRule] = {
    "sign": sign_step,
    "l2": l2_step,
    "linf_normalized": linf_normalized_step,
    "mass_scaled": mass_scaled_step,
}


def get_step(name: str | StepRule) -> StepRule:
    if callable(name):
        return name
    try:
        return STEP_RULES[name]
    except KeyError:
        raise ValueError(f"unknown step rule {name!r}; choose one of {sorted(STEP_RULES)}") from None
