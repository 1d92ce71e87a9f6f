"""l_p-ball projections with the attack-loop protocol ``(x, w, radius, state) -> (z, state, info)``.

* ``LinfProjection``: ``z = clamp(x + clamp(w - x, -r, r), 0, 1)``.
* ``L2Projection``:   ``z = clamp(x + (w - x) min(1, r / ||w - x||_2), 0, 1)`` (per example).

``radius`` is (B,) in pixel units of the raw images; no state is kept.
"""

from __future__ import annotations

import torch

__all__ = ["LinfProjection", "L2Projection"]


def _b(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


class LinfProjection:
    """Projection onto the l_inf ball of radius ``r`` around ``x``, then onto the box [0, 1]."""

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        r = _b(radius, x)
        z = (x + torch.maximum(torch.minimum(w - x, r), -r)).clamp(0, 1)
        return z, {}, {"certified_radius": (z - x).flatten(1).abs().amax(1)}


class L2Projection:
    """Projection onto the l_2 ball of radius ``r`` around ``x``, then onto the box [0, 1]."""

    def __call__(
        self, x: torch.Tensor, w: torch.Tensor, radius: torch.Tensor, state: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        d = w - x
        n = _b(d.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        z = (x + d * torch.clamp(_b(radius, x) / n, max=1.0)).clamp(0, 1)
        return z, {}, {"certified_radius": (z - x).flatten(1).norm(dim=1)}
