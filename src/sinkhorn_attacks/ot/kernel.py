"""The local transport operator: every algorithm of the project goes through this module.

For a potential ``v`` on the pixel grid (any leading batch dims, last two dims ``H, W``) and the local
cost of :class:`~sinkhorn_attacks.ot.cost.LocalCost`,

    local_lse(v)_i = log  sum_{j in W(i)}  c_ij**m * exp((v_j - c_ij) / eta)            (log domain)
    local_max(v)_i = max_{j in W(i)} (v_j - c_ij)                                      (eta -> 0 limit)

with ``W(i)`` the window around pixel ``i`` (pixels outside the image carry no mass, i.e. ``v = -inf``).
The cost is symmetric, so the same operator gives row and column reductions of a plan
``P_ij = exp((f_i + g_j - C_ij)/eta)``: ``sum_j P_ij = exp(f_i/eta + local_lse(g)_i)``.
``m = 1`` gives the transport-cost moment ``sum_j C_ij P_ij`` and ``m = 2`` the second moment.

It is computed as a two-pass streaming log-sum-exp over the ``k*k`` shifted views of ``v`` padded with
``-inf`` (memory O(n), time O(n k^2)); when the window covers a small image a dense ``(n, n)`` form is used.
``gather_window``/``scatter_window`` are the same shifts used to store a local coupling (Wu et al.).
``eta`` may be a scalar or a tensor broadcastable to ``v``'s leading dims plus ``(1, 1)`` (per-measure eta).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .cost import LocalCost

__all__ = ["local_lse", "local_max", "gather_window", "scatter_window", "window_size"]

_DENSE_MAX_ELEMS = 1 << 24  # elements of one dense (chunk, n, n) block
_STACK_MAX_ELEMS = 1 << 24  # elements of one stacked (K, chunk, H, W) window block
_EXP_FLOOR = {torch.float32: -80.0, torch.float16: -15.0, torch.bfloat16: -80.0}


def window_size(cost: LocalCost, height: int, width: int) -> int:
    """Number of offsets ``k*k`` in the window of ``cost`` for an image of this size."""
    return cost.window(height, width) ** 2


def _flat(v: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    if v.dim() < 2:
        raise ValueError(f"expected a tensor (..., H, W), got shape {tuple(v.shape)}")
    lead = tuple(v.shape[:-2])
    return v.reshape(-1, v.shape[-2], v.shape[-1]), lead


def _eta_like(eta: float | torch.Tensor, lead: tuple[int, ...], v: torch.Tensor) -> torch.Tensor | float:
    """A scalar, or a per-measure ``(N, 1, 1)`` tensor from one broadcastable to ``lead + (1, 1)``."""
    if isinstance(eta, torch.Tensor):
        e = eta.to(dtype=v.dtype, device=v.device)
        if e.dim() == 0:
            return e
        try:
            return e.expand(lead + (1, 1)).reshape(-1, 1, 1)
        except RuntimeError as err:
            raise ValueError(
                f"eta of shape {tuple(e.shape)} does not broadcast to {lead + (1, 1)} (potential {tuple(v.shape)})"
            ) from err
    return float(eta)


def _shifts(v: torch.Tensor, cost: LocalCost, fill: float) -> Iterator[tuple[torch.Tensor, float]]:
    """Yield ``(v shifted so that out[i] = v[i + delta], c(delta))`` for every offset of the window."""
    n, h, w = v.shape
    r = cost.radius(h, w)
    vp = F.pad(v, (r, r, r, r), value=fill) if r else v
    for di, dj, c in _offsets(cost, h, w):
        yield vp[:, r + di : r + di + h, r + dj : r + dj + w], c


def _use_dense(cost: LocalCost, h: int, w: int) -> bool:
    k = cost.window(h, w)
    return k * k > 2 * h * w


@functools.lru_cache(maxsize=64)
def _dense_cost(cost: LocalCost, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return cost.dense(h, w, dtype=dtype, device=device)


@functools.lru_cache(maxsize=256)
def _offsets(cost: LocalCost, h: int, w: int) -> tuple[tuple[int, int, float], ...]:
    return tuple(cost.offsets(h, w))


def _dense_lse(v: torch.Tensor, cost: LocalCost, eta, power: int) -> torch.Tensor:
    n, h, w = v.shape
    c = _dense_cost(cost, h, w, v.dtype, v.device)  # (hw, hw), symmetric
    logw = torch.log(c) * power if power else None
    vf = v.reshape(n, 1, h * w)
    out = torch.empty(n, h * w, dtype=v.dtype, device=v.device)
    chunk = max(1, _DENSE_MAX_ELEMS // max(1, (h * w) ** 2))
    for s in range(0, n, chunk):
        e = eta[s : s + chunk] if isinstance(eta, torch.Tensor) and eta.dim() else eta
        a = (vf[s : s + chunk] - c) / e
        if logw is not None:
            a = a + logw
        out[s : s + chunk] = torch.logsumexp(a, dim=-1)
    return out.reshape(n, h, w)


def local_lse(v: torch.Tensor, cost: LocalCost, eta: float | torch.Tensor, power: int = 0) -> torch.Tensor:
    """``log sum_{j in W(i)} c_ij**power * exp((v_j - c_ij)/eta)`` for every pixel ``i``.

    Args:
        v: potential, shape ``(..., H, W)``; entries may be ``-inf`` (no mass) but not ``+inf`` or NaN.
        cost: the local ground cost.
        eta: entropic temperature (cost units), scalar or per-measure tensor broadcastable to ``v.shape[:-2]``.
        power: 0 for the plain kernel, 1 / 2 for the first / second cost moment.
    Returns:
        tensor shaped like ``v`` (``-inf`` where the window holds no mass).
    """
    vf, lead = _flat(v)
    e = _eta_like(eta, lead, v)
    n, h, w = vf.shape
    if n == 0:
        return v.clone()
    if _use_dense(cost, h, w):
        return _dense_lse(vf, cost, e, power).reshape(v.shape)
    floor = _EXP_FLOOR[vf.dtype] if vf.dtype in _EXP_FLOOR else -700.0
    offs = [(di, dj, c) for di, dj, c in _offsets(cost, h, w) if not (power and c == 0.0)]
    r = cost.radius(h, w)
    vp = F.pad(vf, (r, r, r, r), value=-math.inf) if r else vf
    cvec = torch.tensor([c for _, _, c in offs], dtype=vf.dtype, device=vf.device).reshape(-1, 1, 1, 1)
    logw = power * torch.log(cvec) if power else None
    per = max(1, _STACK_MAX_ELEMS // max(1, len(offs) * h * w))
    out = torch.empty_like(vf)
    for s0 in range(0, n, per):
        sl = slice(s0, s0 + per)
        stack = torch.stack([vp[sl, r + di : r + di + h, r + dj : r + dj + w] for di, dj, _ in offs])
        e_sl = e[sl] if isinstance(e, torch.Tensor) and e.dim() else e
        a = (stack - cvec) / e_sl
        if logw is not None:
            a = a + logw
        m = a.amax(0)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        # clamp before exp: float32 exp is ~10x slower on underflowing inputs; e^-80 terms are negligible
        acc = torch.exp((a - m_safe).clamp_(min=floor)).sum(0)
        res = torch.log(acc) + m_safe
        out[sl] = torch.where(torch.isneginf(m), m, res)
    return out.reshape(v.shape)


def local_max(v: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """``max_{j in W(i)} (v_j - c_ij)``: the eta -> 0 limit of ``eta * local_lse`` (a window min-plus).

    ``-local_max(-v)`` is the c-transform ``min_j (c_ij + v_j)``.
    """
    vf, _ = _flat(v)
    if vf.shape[0] == 0:
        return v.clone()
    m = torch.full_like(vf, -math.inf)
    for s, c in _shifts(vf, cost, -math.inf):
        m = torch.maximum(m, s - c)
    return m.reshape(v.shape)


def gather_window(v: torch.Tensor, cost: LocalCost, fill: float = 0.0) -> torch.Tensor:
    """Stack the window: ``out[..., d, i] = v[..., i + delta_d]`` (``fill`` outside the image).

    Shape ``(..., K, H, W)`` with ``K = k*k`` offsets in the order of ``cost.offsets`` (zero offset first).
    """
    vf, lead = _flat(v)
    h, w = vf.shape[-2:]
    out = torch.stack([s for s, _ in _shifts(vf, cost, fill)], dim=1)
    return out.reshape(lead + (out.shape[1], h, w))


def scatter_window(t: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """Adjoint of :func:`gather_window`: ``out[..., j] = sum_d t[..., d, j - delta_d]``.

    For a local coupling stored per source pixel (``t[d, i]`` = mass sent from ``i`` to ``i + delta_d``)
    this is its column marginal; mass sent outside the image is dropped (it must be zero).
    """
    if t.dim() < 3:
        raise ValueError(f"expected (..., K, H, W), got {tuple(t.shape)}")
    lead = tuple(t.shape[:-3])
    kk, h, w = t.shape[-3:]
    tf = t.reshape(-1, kk, h, w)
    offs = cost.offsets(h, w)
    if len(offs) != kk:
        raise ValueError(f"coupling has {kk} offsets, the cost window has {len(offs)}")
    r = cost.radius(h, w)
    out = torch.zeros(tf.shape[0], h + 2 * r, w + 2 * r, dtype=t.dtype, device=t.device)
    for d, (di, dj, _) in enumerate(offs):
        out[:, r + di : r + di + h, r + dj : r + dj + w] += tf[:, d]
    return out[:, r : r + h, r : r + w].reshape(lead + (h, w))


def offset_costs(cost: LocalCost, height: int, width: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Costs of the offsets of :func:`gather_window`, shape ``(K, 1, 1)``."""
    c = torch.tensor([c for _, _, c in cost.offsets(height, width)], dtype=dtype, device=device)
    return c.reshape(-1, 1, 1)


def valid_offsets(cost: LocalCost, height: int, width: int, device="cpu") -> torch.Tensor:
    """Boolean mask ``(K, H, W)``: offset ``d`` from pixel ``i`` stays inside the image."""
    ones = torch.ones(1, height, width, dtype=torch.float32, device=device)
    return gather_window(ones, cost, fill=0.0)[0] > 0
