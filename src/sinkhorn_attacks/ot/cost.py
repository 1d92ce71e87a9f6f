"""Ground cost on the pixel grid.

``C_ij = ||p_i - p_j||_2 ** p`` (pixel units: horizontal neighbours are at distance 1) when the offset
``p_j - p_i`` lies in the ``k x k`` window centred on ``p_i`` (``|di|, |dj| <= (k-1)/2``) and ``+inf``
otherwise. ``p = 1`` is the Euclidean ground metric (W1); ``p = 2`` is the *squared* Euclidean distance,
the cost Wong et al. call "2-Wasserstein", whose radius is W2^2 (no root is taken).

Channels never exchange mass: a colour image is ``C`` independent measures on the same grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LocalCost:
    """Local ground cost ``d**p`` on a ``kernel_size x kernel_size`` window (``None`` = whole image).

    Args:
        kernel_size: odd window width in pixels, or ``None`` to allow transport between any two pixels
            of an image (the window then grows to ``2 * max(H, W) - 1``).
        p: exponent of the Euclidean pixel distance ``d``; the cost is ``d ** p``.
    """

    kernel_size: int | None = 5
    p: float = 1.0

    def __post_init__(self) -> None:
        k = self.kernel_size
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int):
                raise TypeError(f"kernel_size must be an odd int or None, got {k!r}")
            if k < 1 or k % 2 == 0:
                raise ValueError(f"kernel_size must be a positive odd integer, got {k}")
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and self.p > 0):
            raise ValueError(f"p must be a finite positive number, got {self.p!r}")

    def window(self, height: int, width: int) -> int:
        """Effective odd window width for an image of this size."""
        full = 2 * max(height, width) - 1
        if self.kernel_size is None:
            return full
        return min(self.kernel_size, full)

    def radius(self, height: int, width: int) -> int:
        return (self.window(height, width) - 1) // 2

    def covers(self, height: int, width: int) -> bool:
        """True when every pair of pixels of an ``height x width`` image is inside the window."""
        return self.window(height, width) >= 2 * max(height, width) - 1

    def largest(self, height: int, width: int, dtype: torch.dtype = torch.float64) -> float:
        """The window's largest cost (its corner, ``(sqrt 2 r) ** p``); ``ValueError`` if it overflows ``dtype``."""
        r = self.radius(height, width)
        try:
            c = math.hypot(r, r) ** self.p
        except OverflowError:
            c = math.inf
        if c > torch.finfo(dtype).max:
            raise ValueError(
                f"p = {self.p:g} makes the cost d**p overflow {dtype} at the window's corner (distance "
                f"{math.hypot(r, r):.3g}, {2 * r + 1}x{2 * r + 1} window); use a smaller p or window"
            )
        return c

    def offsets(self, height: int, width: int) -> list[tuple[int, int, float]]:
        """The window as a list of ``(di, dj, cost)``; the zero offset comes first."""
        self.largest(height, width)
        r = self.radius(height, width)
        out = [(0, 0, 0.0)]
        for di in range(-r, r + 1):
            for dj in range(-r, r + 1):
                if di or dj:
                    out.append((di, dj, float(math.hypot(di, dj) ** self.p)))
        return out

    def table(
        self, height: int, width: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The ``k x k`` cost table ``c(delta)`` (centre = 0)."""
        self.largest(height, width, dtype)
        r = self.radius(height, width)
        d = torch.arange(-r, r + 1, dtype=torch.float64)
        c = torch.sqrt(d[:, None] ** 2 + d[None, :] ** 2) ** self.p
        return c.to(dtype=dtype, device=device)

    def dense(
        self, height: int, width: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Dense ``(HW, HW)`` cost of one channel, row-major pixels, ``+inf`` outside the window."""
        self.largest(height, width, dtype)
        rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
        cols = torch.arange(width, dtype=torch.float64).repeat(height)
        di = rows[:, None] - rows[None, :]
        dj = cols[:, None] - cols[None, :]
        c = torch.sqrt(di**2 + dj**2) ** self.p
        r = self.radius(height, width)
        outside = (di.abs() > r) | (dj.abs() > r)
        c = c.masked_fill(outside, math.inf)
        return c.to(dtype=dtype, device=device)

    def describe(self) -> str:
        k = "whole image" if self.kernel_size is None else f"{self.kernel_size}x{self.kernel_size} window"
        unit = {1.0: "W1 (Euclidean pixel distance)", 2.0: "W2^2 (squared Euclidean pixel distance)"}
        return f"cost d^{self.p:g}, {k}, pixel units: {unit.get(float(self.p), f'd^{self.p:g}')}"
