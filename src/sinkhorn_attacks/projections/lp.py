"""l_p-ball projections with the attack-loop protocol ``(x, w, radius, state) -> (z, state, info)``.

* ``LinfProjection``: ``z = clamp(x + clamp(w - x, -r, r), 0, 1)``.
* ``L2Projection``:   ``z = clamp(x + (w - x) min(1, r / ||w - x||_2), 0, 1)`` (per example).

``radius`` is a scalar or (B,), finite and ``>= 0``, in pixel units of the raw images; no state is kept.
The clean images must lie in [0, 1] and the iterate ``w`` be finite, like every projection of the library.
"""

from __future__ import annotations

import torch

from ..ot.checks import check_radius, check_step_point

__all__ = ["LinfProjection", "L2Projection"]


def _radius(x: torch.Tensor, w: torch.Tensor, radius: float | torch.Tensor, who: str) -> torch.Tensor:
    """The checked radius, shaped ``(B, 1, 1, 1)`` (or ``(1, 1, 1, 1)``) in ``x``'s dtype and device."""
    check_step_point(x, w)
    r = check_radius(radius, x.shape[0], f"{who}: radius")
    return r.to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


class LinfProjection:
    """Projection onto the l_inf ball of radius ``r`` around ``x``, then onto the box [0, 1]."""

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        r = _radius(x, w, radius, "LinfProjection")
        z = (x + torch.maximum(torch.minimum(w - x, r), -r)).clamp(0, 1)
        return z, {}, {"certified_radius": (z - x).flatten(1).abs().amax(1)}


class L2Projection:
    """Projection onto the l_2 ball of radius ``r`` around ``x``, then onto the box [0, 1]."""

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        r = _radius(x, w, radius, "L2Projection")
        d = w - x
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12).reshape((-1,) + (1,) * (x.dim() - 1))
        z = (x + d * torch.clamp(r / n, max=1.0)).clamp(0, 1)
        return z, {}, {"certified_radius": (z - x).flatten(1).norm(dim=1)}
