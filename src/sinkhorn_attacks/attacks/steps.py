"""Gradient step rules ``w = x_t + step(grad)`` of the projected-gradient attacks.

* ``sign``:   ``w = x_t + a * sign(g)``                                   (l_inf steepest ascent; Wong)
* ``l2``:     ``w = x_t + a * g / ||g||_2``                              (per example)
* ``linf_normalized``: ``w = x_t + a * g / ||g||_inf``                   (Wu, on the coupling)
* ``mass_scaled``: ``w = x_t + (a / c) * ||x||_1 * g / ||g||_inf``      (Hu et al. 2020, ``norm='grad'``:
  the l_inf-normalised gradient scaled by the clean image's total mass ``||x||_1`` over all channels, with
  the step length divided by the channel count ``c``. In normalised units (``x / ||x||_1``) the largest
  pixel moves by ``a / c``; Hu's projection then decides how much of it survives.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepRule = Callable[[torch.Tensor, torch.Tensor, float | torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["STEP_RULES", "get_step", "StepRule"]


def _per_example(t: torch.Tensor, ord_: float) -> torch.Tensor:
    """Per-example norm for normalising a gradient; 1 where the gradient is exactly zero (no step).

    No floor: confident models have cross-entropy gradients of 1e-14 and smaller, which must still give a
    unit-norm direction."""
    n = t.flatten(1).norm(p=ord_, dim=1)
    n = torch.where(n > 0, n, torch.ones_like(n))
    return n.reshape(-1, *([1] * (t.dim() - 1)))


def sign_step(x_t: torch.Tensor, grad: torch.Tensor, a: float | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return x_t + a * grad.sign()


def l2_step(x_t: torch.Tensor, grad: torch.Tensor, a: float | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return x_t + a * grad / _per_example(grad, 2)


def linf_normalized_step(x_t, grad, a, x0):
    return x_t + a * grad / _per_example(grad, float("inf"))


def mass_scaled_step(x_t, grad, a, x0):
    channels = x0.shape[1]
    mass = x0.flatten(1).sum(1).reshape(-1, *([1] * (x0.dim() - 1)))
    return x_t + (a / channels) * mass * grad / _per_example(grad, float("inf"))


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
