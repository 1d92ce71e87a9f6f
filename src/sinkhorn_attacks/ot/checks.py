"""Input validation shared by every layer: bad input raises a clear error, nothing is silently wrong."""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_measure",
    "check_images",
    "check_same",
    "check_positive",
    "check_nonnegative",
    "check_radius",
    "check_step_point",
    "check_tau",
    "check_cost",
    "check_count",
    "check_potential",
]


def check_measure(t: torch.Tensor, name: str, *, upper: float | None = None) -> torch.Tensor:
    """A batch of non-negative measures ``(B, C, H, W)``: floating, finite, non-empty, ``>= 0``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(t.shape)} (rank {t.dim()})")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if min(t.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty channel/height/width dimension: {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype} (scale uint8 images to [0, 1])")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    lo = float(t.min())
    if lo < 0:
        raise ValueError(f"{name} has negative entries (min {lo:.3g}); pixel masses must be >= 0")
    if upper is not None:
        hi = float(t.max())
        if hi > upper + 1e-6:
            raise ValueError(f"{name} has entries above {upper} (max {hi:.4g}); images must lie in [0, {upper}]")
    return t


def check_images(t: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Images ``(B, C, H, W)`` in ``[0, 1]``."""
    return check_measure(t, name, upper=1.0)


def check_same(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    """Same shape, dtype and device."""
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} have different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{na} is on {a.device} but {nb} is on {b.device}; move both to one device")
    if a.dtype != b.dtype:
        raise TypeError(f"{na} is {a.dtype} but {nb} is {b.dtype}; use one floating dtype")


def check_step_point(x: torch.Tensor, w: torch.Tensor, name: str = "w") -> None:
    """The point ``w`` a projection starts from (or a gradient): a finite ``(B, C, H, W)`` tensor like the
    clean images ``x``."""
    check_images(x, "x")
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {getattr(w, 'shape', type(w))}")
    check_same(x, w, "x", name)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _number(value: object, name: str) -> float:
    """A real number: a Python or NumPy number or a one-element tensor (not a bool or a string)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a real scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err


def check_positive(value: float, name: str, *, allow_inf: bool = False) -> float:
    """A number ``> 0``, finite unless ``allow_inf``."""
    v = _number(value, name)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        extra = " or inf" if allow_inf else ""
        raise ValueError(f"{name} must be a positive finite number{extra}, got {value!r}")
    return v


def check_nonnegative(value: float, name: str) -> float:
    """A finite number ``>= 0`` (tolerances, offsets)."""
    v = _number(value, name)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_radius(radius: float | torch.Tensor, batch: int, name: str = "radius") -> torch.Tensor:
    """A budget: a scalar or one entry per image, finite and ``>= 0``; returned as a float64 tensor."""
    if isinstance(radius, (bool, str, bytes)) or not isinstance(radius, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(radius).__name__} {radius!r}")
    r = torch.as_tensor(radius).detach()
    if r.is_complex() or r.dtype == torch.bool:
        raise TypeError(f"{name} must be real, got {r.dtype}")
    if r.dim() > 1 or (r.dim() == 1 and r.numel() != batch):
        raise ValueError(f"{name} must be a scalar or have one entry per image ({batch}), got shape {tuple(r.shape)}")
    r = r.to(torch.float64)
    bad = ~torch.isfinite(r) | (r < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and >= 0, got {float(r[bad].flatten()[0])!r}")
    return r


def check_tau(tau: float) -> float:
    """Marginal relaxation ``tau`` > 0; ``inf`` means balanced (hard marginals)."""
    return check_positive(tau, "tau", allow_inf=True)


def check_cost(cost: object, name: str = "cost") -> None:
    """A :class:`~sinkhorn_attacks.ot.cost.LocalCost` (``cost=5`` is a mistake for ``LocalCost(5)``)."""
    from .cost import LocalCost

    if not isinstance(cost, LocalCost):
        hint = f" (did you mean LocalCost({cost!r})?)" if isinstance(cost, int) and not isinstance(cost, bool) else ""
        raise TypeError(f"{name} must be a LocalCost, got {type(cost).__name__} {cost!r}{hint}")


def check_count(value: object, name: str, *, lower: int = 1) -> int:
    """An integer count ``>= lower`` (Python or NumPy integer; not a float or a bool)."""
    import operator

    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        v = None
    if isinstance(value, bool) or v is None or v < lower:
        raise ValueError(f"{name} must be an integer >= {lower}, got {value!r}")
    return int(v)


def check_potential(t: object, like: torch.Tensor, name: str) -> torch.Tensor | None:
    """A warm-start potential: ``None``, or a tensor of ``like``'s shape (``+-inf`` entries are exact values;
    NaN entries, which no solver returns, restart from 0)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor from a previous result, got {type(t).__name__}")
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)} (a warm start of another batch?)"
        )
    t = t.to(device=like.device, dtype=like.dtype)
    return torch.nan_to_num(t, nan=0.0, posinf=math.inf, neginf=-math.inf) if bool(torch.isnan(t).any()) else t
