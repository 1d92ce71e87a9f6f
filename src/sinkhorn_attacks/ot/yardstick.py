"""The yardstick: one exact, always-finite measure of how far a perturbed image is from its clean image.

Per channel, mass may move inside the ``k x k`` window at the ground cost of :class:`LocalCost`
(``d**p``), and clean mass may be destroyed or perturbed mass created at a fixed ``price`` per unit::

    D(x, z) = min_{P >= 0, P1 <= x, P^T 1 <= z}  <P, C> + price (||x||_1 - |P|) + price (||z||_1 - |P|)

(a TV-relaxed unbalanced OT cost, a Kantorovich-Rubinstein-type norm of ``x - z``), summed over channels
and reported per unit of clean mass, ``D / max(||x||_1, mass_floor)``. ``D = 0`` only for ``z = x``;
every change of mass or colour is charged; the value is finite for any pair. The default price is the
window's largest ground cost (``2 sqrt 2`` for a 5 x 5 window, ``p = 1``), at which ``D`` equals the
windowed W1 of :func:`~sinkhorn_attacks.ot.meter.exact_ot` on mass-preserving pairs unless a chain of at
least three moves can be shortcut (docs/math.md, section 4, states exactly when).

Solvers (:func:`~sinkhorn_attacks.ot.meter.tv_pair`): the meter's network simplex with one extra node
(dense cost between the supports for small ones, sparse in-window cost for large ones), or its grid
min-cost flow with the same extra node where POT lacks sparse costs; each value is the cost of a feasible
plan and comes with a certified lower bound (``raw_lower``), at most 1e-6 relative below it.

Timings (process CPU time per image, one thread, l_inf-stepped and smeared test images, batches of 4 to
64; ``python -m benchmarks.yardstick``): MNIST 28 x 28: 2.5 to 5 ms; CIFAR-10 32 x 32 x 3: 12 to 13 ms;
64 x 64 x 3: 57 to 68 ms (the grid-flow fallback: about 0.4 s and 2 s).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import torch

from .checks import check_images, check_positive, check_same
from .cost import LocalCost
from .meter import tv_pair

__all__ = ["Yardstick", "Measurement", "measure"]

_MAX_PRICE = 1e100  # with _MIN_FLOOR: every reading of an image stays finite in float64
_MIN_FLOOR = 1e-100
_NORMALISATIONS = {
    "clean_mass": "per unit clean mass",
    "none": "raw (unnormalised)",
}


def _name(p: float) -> str:
    return {1.0: "W1-TV", 2.0: "W2^2-TV"}.get(float(p), f"W(d^{float(p):g})-TV")


@dataclass(frozen=True)
class Yardstick:
    """The units of every reported distance: a frozen, JSON-serialisable description of :func:`measure`.

    Args:
        kernel_size: odd transport window width in pixels (``None``: the whole image; then ``price`` must
            be given).
        p: exponent of the Euclidean pixel distance (``1``: W1).
        price: cost per unit of destroyed clean mass and, again, per unit of created perturbed mass, at most
            ``1e100``. ``None``: the window's largest ground cost ``((k - 1) / sqrt 2) ** p`` (2.83 for 5 x 5,
            ``p = 1``).
        normalisation: ``"clean_mass"`` (the value is ``D / max(||x||_1, mass_floor)``, ``||x||_1`` summed
            over channels) or ``"none"`` (``D`` itself).
        mass_floor: the smallest clean mass divided by (default one pixel of one channel at full value), so
            a black clean image gives a finite value; at least ``1e-100`` (with the price bound, every value
            stays finite in float64).
        name: derived from ``p`` (``"W1-TV"``); may be passed (e.g. by :meth:`from_dict`) only if it agrees.
    """

    kernel_size: int | None = 5
    p: float = 1.0
    price: float | None = None
    normalisation: str = "clean_mass"
    mass_floor: float = 1.0
    name: str = field(default="")

    def __post_init__(self) -> None:
        cost = LocalCost(self.kernel_size, self.p)  # validates kernel_size and p
        object.__setattr__(self, "p", float(self.p))
        if self.price is None:
            if self.kernel_size is None or self.kernel_size == 1:
                raise ValueError(
                    f"kernel_size={self.kernel_size!r} has no largest in-window move to price by default; give price"
                )
            price = cost.largest(self.kernel_size, self.kernel_size)  # the window's corner
        else:
            price = check_positive(self.price, "price")
            if self.kernel_size is not None:
                cost.largest(self.kernel_size, self.kernel_size)  # the window's costs are finite
        if price > _MAX_PRICE:
            raise ValueError(f"price must be at most {_MAX_PRICE:g}, got {price!r}")
        object.__setattr__(self, "price", float(price))
        if self.normalisation not in _NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {sorted(_NORMALISATIONS)}, got {self.normalisation!r}")
        floor = check_positive(self.mass_floor, "mass_floor")
        if floor < _MIN_FLOOR:
            raise ValueError(f"mass_floor must be at least {_MIN_FLOOR:g}, got {self.mass_floor!r}")
        object.__setattr__(self, "mass_floor", floor)
        derived = _name(self.p)
        if self.name and self.name != derived:
            raise ValueError(f"name {self.name!r} does not match p = {self.p:g} (expected {derived!r})")
        object.__setattr__(self, "name", derived)

    @property
    def cost(self) -> LocalCost:
        """The ground cost of the transport part."""
        return LocalCost(self.kernel_size, self.p)

    @property
    def label(self) -> str:
        """Short units string for tables and plot axes, e.g. ``W1-TV, 5x5, price 2.83, per unit clean mass``."""
        k = "whole image" if self.kernel_size is None else f"{self.kernel_size}x{self.kernel_size}"
        return f"{self.name}, {k}, price {self.price:.3g}, {_NORMALISATIONS[self.normalisation]}"

    def describe(self) -> str:
        """One sentence stating exactly what a value in these units is."""
        k = (
            "anywhere in the image"
            if self.kernel_size is None
            else f"within a {self.kernel_size}x{self.kernel_size} window"
        )
        per = (
            f"divided by the clean image's total mass (at least {self.mass_floor:g})"
            if self.normalisation == "clean_mass"
            else "not normalised"
        )
        return (
            f"{self.label}: per channel, exact min-cost of moving mass {k} at Euclidean pixel distance^{self.p:g}, "
            f"destroying clean mass and creating perturbed mass at {self.price:.6g} per unit; summed over channels, "
            f"{per}"
        )

    def __str__(self) -> str:
        return self.label

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Yardstick:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Yardstick fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


DEFAULT = Yardstick()


@dataclass
class Measurement:
    """Per-example readings of :func:`measure`, shape ``(B,)`` (CPU, float64); masses in pixel-value sums.

    ``transported`` is the mass the plan matches (moved or staying in place), so
    ``transported + destroyed = ||x||_1`` and ``transported + created = ||z||_1``; when several optimal
    plans exist these split the same ``raw`` differently.
    """

    value: torch.Tensor  # raw / max(clean_mass, mass_floor)  (or raw, normalisation "none")
    raw: torch.Tensor  # D(x, z), summed over channels
    raw_lower: torch.Tensor  # certified lower bound on D: raw - raw_lower <= 1e-6 raw
    transported: torch.Tensor
    destroyed: torch.Tensor
    created: torch.Tensor
    clean_mass: torch.Tensor  # ||x||_1 over all channels
    yardstick: Yardstick

    def __len__(self) -> int:
        return int(self.value.numel())


def measure(x: torch.Tensor, z: torch.Tensor, yardstick: Yardstick | None = None) -> Measurement:
    """The library's yardstick between clean images ``x`` and perturbed images ``z``.

    Args:
        x, z: ``(B, C, H, W)`` images in ``[0, 1]`` (1e-6 tolerance), same shape, dtype and device;
            computed on CPU in float64.
        yardstick: the units (default :class:`Yardstick` ``()``: W1-TV, 5x5 window, price 2 sqrt 2, per
            unit clean mass).
    Returns:
        :class:`Measurement`; ``.value`` is the yardstick reading per example.
    """
    ys = DEFAULT if yardstick is None else yardstick
    if not isinstance(ys, Yardstick):
        raise TypeError(f"yardstick must be a Yardstick, got {type(ys).__name__}")
    check_images(x, "x")
    check_images(z, "z")
    check_same(x, z, "x", "z")
    cost, price = ys.cost, ys.price
    cost.largest(*x.shape[-2:])  # a whole-image window: its costs must be finite at this size
    xs = x.detach().to("cpu", torch.float64).numpy()
    zs = z.detach().to("cpu", torch.float64).numpy()
    rows = []
    for xb, zb in zip(xs, zs):
        raw = lower = moved = 0.0
        for xc, zc in zip(xb, zb):
            pair = tv_pair(xc, zc, cost, price)
            raw, lower, moved = raw + pair.raw, lower + pair.lower, moved + pair.transported
        mx, mz = float(xb.sum()), float(zb.sum())
        rows.append((raw, lower, moved, max(mx - moved, 0.0), max(mz - moved, 0.0), mx))
    raw, lower, moved, destroyed, created, mass = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    if ys.normalisation == "clean_mass":
        value = raw / mass.clamp(min=ys.mass_floor)
    else:
        value = raw.clone()
    assert bool(torch.isfinite(value).all()), "yardstick values must be finite"
    return Measurement(value, raw, lower, moved, destroyed, created, mass, ys)
