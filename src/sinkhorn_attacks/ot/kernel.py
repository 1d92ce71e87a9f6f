"""The local transport operator: every algorithm of the project goes through this module.

For a potential ``v`` on the pixel grid (any leading batch dims, last two dims ``H, W``) and the local
cost of :class:`~sinkhorn_attacks.ot.cost.LocalCost`,

    local_lse(v)_i = log  sum_{j in W(i)}  c_ij**m * exp((v_j - c_ij) / eta)            (log domain)
    local_max(v)_i = max_{j in W(i)} (v_j - c_ij)                                      (eta -> 0 limit)

with ``W(i)`` the window around pixel ``i`` (pixels outside the image carry no mass, i.e. ``v = -inf``).
The cost is symmetric, so the same operator gives row and column reductions of a plan
``P_ij = exp((f_i + g_j - C_ij)/eta)``: ``sum_j P_ij = exp(f_i/eta + local_lse(g)_i)``.
``m = 1`` gives the transport-cost moment ``sum_j C_ij P_ij`` and ``m = 2`` the second moment.

It is computed as a streaming log-sum-exp over the ``k*k`` shifted views of ``v`` padded with ``-inf``
(memory O(n), time O(n k^2), cache-sized chunks); for ``p = 2`` the cost ``di^2 + dj^2`` is separable and
the sum is a row pass then a column pass (time O(n k)); when the window covers a small image a dense
``(n, n)`` form is used.
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
_CHUNK_ELEMS = 1 << 16  # pixels per streamed chunk: its few image-sized buffers stay in the L2 cache
_EXP_FLOOR = {torch.float32: -80.0, torch.float16: -15.0, torch.bfloat16: -80.0}
# largest scaled window cost max(c)/eta for which the window max of v/eta is a safe stabiliser
_BOUND_RANGE = {torch.float32: 40.0, torch.float16: 8.0, torch.bfloat16: 40.0}
# the scaling form's window sums are exact to rounding above this (all neglected terms are < ~1e-37)
_SCALING_MIN_SUM = {torch.float32: 1e-20, torch.float64: 1e-280}
_SCALING_FIRST = True


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
    if _SCALING_FIRST and vf.dtype in (torch.float32, torch.float64):
        out, redo = _scaling_lse(vf, cost, e, power)
        if not bool(redo.any()):
            return out.reshape(v.shape)
        e_redo = e[redo] if isinstance(e, torch.Tensor) and e.dim() else e
        out[redo] = _streamed_lse(vf[redo], cost, e_redo, power)
        return out.reshape(v.shape)
    return _streamed_lse(vf, cost, e, power).reshape(v.shape)


def _scaling_lse(v: torch.Tensor, cost: LocalCost, eta, power: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaling form: ``log(K^(m) * exp(v/eta - s)) + s`` with ``K^(m)_d = c_d**m e^{-c_d/eta}`` as a convolution.

    ``s`` is each image's max of ``v/eta``, so ``exp`` never overflows and one ``exp`` per pixel replaces
    one per pixel and offset. Every neglected (underflowed) term is below ``tiny`` (~1e-37 in float32), so
    a window sum ``S_i >= _SCALING_MIN_SUM`` is exact to rounding. Returns the result and the images that
    have a pixel with a finite window below that threshold (the caller recomputes them in the log domain).
    """
    n, h, w = v.shape
    r = cost.radius(h, w)
    table = cost.table(h, w, dtype=torch.float64, device=v.device)
    per_measure = isinstance(eta, torch.Tensor) and eta.dim() > 0
    e64 = eta.to(torch.float64).reshape(-1, 1, 1) if per_measure else eta
    kern = torch.exp(-table / e64)  # (k, k) or (n, k, k)
    if power:
        kern = kern * table**power
    k = 2 * r + 1
    kern = kern.to(v.dtype).reshape(-1, 1, k, k).expand(n, 1, k, k)
    support = (table > 0 if power else torch.ones_like(table)).to(v.dtype).reshape(1, 1, k, k).expand(n, 1, k, k)
    u = v / eta
    s = u.flatten(1).amax(1).reshape(n, 1, 1)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    # the batch as channels of one grouped convolution: the fastest CPU layout for single-channel planes
    acc = F.conv2d(torch.exp(u - s).unsqueeze(0), kern, padding=r, groups=n).squeeze(0)
    out = torch.log(acc).add_(s)
    low = acc < _SCALING_MIN_SUM[v.dtype]
    if not bool(low.any()):
        return out, torch.zeros(n, dtype=torch.bool, device=v.device)
    # a tiny sum is either an empty window (answer -inf, kept) or an underflow (recomputed by the caller)
    mass = F.conv2d(torch.isfinite(u).to(v.dtype).unsqueeze(0), support, padding=r, groups=n).squeeze(0)
    empty = mass < 0.5
    out = torch.where(empty, torch.full_like(out, -math.inf), out)
    return out, (low & ~empty).flatten(1).any(1)


def _streamed_lse(vf: torch.Tensor, cost: LocalCost, e, power: int) -> torch.Tensor:
    """Log-domain streaming over the window offsets (exact for any dynamic range of ``v``)."""
    n, h, w = vf.shape
    r = cost.radius(h, w)
    grid = _PaddedGrid(h, w, r)
    per = max(1, _CHUNK_ELEMS // grid.plane)
    out = torch.empty_like(vf)
    for s0 in range(0, n, per):
        sl = slice(s0, s0 + per)
        e_sl = e[sl].reshape(-1, 1) if isinstance(e, torch.Tensor) and e.dim() else e
        buf = grid.embed(vf[sl] / (e_sl.reshape(-1, 1, 1) if isinstance(e_sl, torch.Tensor) else e_sl))
        if power == 0 and float(cost.p) == 2.0:
            # d^2 = di^2 + dj^2: the window sum factorises into a row pass then a column pass (2k, not k^2)
            line = [(d, float(d * d)) for d in range(-r, r + 1)]
            rows = grid.empty_like(buf)
            grid.stream(buf, [(0, dj, c) for dj, c in line], e_sl, 0, (0, r), out=grid.inner(rows))
            res = grid.stream(rows, [(di, 0, c) for di, c in line], e_sl, 0, (r, 0))
        else:
            offs = [o for o in _offsets(cost, h, w) if not (power and o[2] == 0.0)]
            res = grid.stream(buf, offs, e_sl, power, (r, r))
        out[sl] = grid.crop(res)
    return out


class _PaddedGrid:
    """Images padded by ``r`` with ``-inf`` and laid out in one flat buffer with ``r*(w+2r)+r`` guard cells.

    A window shift ``(di, dj)`` is then the flat offset ``di*(w+2r) + dj``, so every shifted view of a whole
    chunk of images is one contiguous slice (fully vectorised elementwise ops); results are computed on the
    padded planes and the pad ring is cropped away. Shifts never reach another image's interior.
    """

    def __init__(self, h: int, w: int, r: int) -> None:
        self.h, self.w, self.r = h, w, r
        self.wp = w + 2 * r
        self.plane = (h + 2 * r) * self.wp
        self.guard = r * self.wp + r

    def embed(self, u: torch.Tensor) -> torch.Tensor:
        r = self.r
        up = F.pad(u, (r, r, r, r), value=-math.inf) if r else u
        return F.pad(up.reshape(-1), (self.guard, self.guard), value=-math.inf)

    def empty_like(self, buf: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(buf)
        out[: self.guard] = -math.inf
        out[len(buf) - self.guard :] = -math.inf
        return out

    def inner(self, buf: torch.Tensor) -> torch.Tensor:
        """The planes of ``buf`` without its guards, shape ``(n, plane)``."""
        return buf[self.guard : len(buf) - self.guard].view(-1, self.plane)

    def crop(self, planes: torch.Tensor) -> torch.Tensor:
        r = self.r
        return planes.view(-1, self.h + 2 * r, self.wp)[:, r : r + self.h, r : r + self.w]

    def window_max(self, buf: torch.Tensor, half: tuple[int, int]) -> torch.Tensor:
        """``max_{|di| <= half[0], |dj| <= half[1]} u[i + delta]`` as a row pass then a column pass, ``(n, plane)``."""
        g, n = self.guard, (len(buf) - 2 * self.guard) // self.plane
        span = n * self.plane
        rows = self.empty_like(buf) if half[0] else None
        m = self.inner(rows) if rows is not None else torch.empty(n, self.plane, dtype=buf.dtype, device=buf.device)
        m.copy_(buf[g : g + span].view(n, self.plane))
        for dj in range(-half[1], half[1] + 1):
            if dj:
                torch.maximum(m, buf[g + dj : g + dj + span].view(n, self.plane), out=m)
        if rows is None:
            return m
        out = m.clone()
        for di in range(-half[0], half[0] + 1):
            if di:
                torch.maximum(out, rows[g + di * self.wp : g + di * self.wp + span].view(n, self.plane), out=out)
        return out

    def stream(self, buf, offs, eta, power: int, half: tuple[int, int], out=None) -> torch.Tensor:
        """``log sum_d c_d**power exp(u[i + delta_d] - c_d/eta)`` on every padded plane cell, shape ``(n, plane)``.

        Stabiliser ``M_i``: when every cost term is small (``max c/eta`` below ``_BOUND_RANGE``) the window max
        of ``u`` (one ``max_pool2d`` over the ``(2*half+1)`` window) is used; all terms are then ``<= 1`` and the
        largest ``>= e^-range``, so nothing underflows. Otherwise an exact first pass
        ``M_i = max_d (u[i + delta_d] - c_d/eta)``. Terms are clamped at ``exp(floor)`` before ``exp`` (float32
        ``exp`` is ~10x slower on underflowing inputs).
        """
        g, n = self.guard, (len(buf) - 2 * self.guard) // self.plane
        u = buf[g : len(buf) - g].view(n, self.plane)
        views = [
            buf[g + di * self.wp + dj : g + di * self.wp + dj + n * self.plane].view(n, self.plane)
            for di, dj, _ in offs
        ]
        floor = _EXP_FLOOR.get(u.dtype, -700.0)
        inv_eta_max = 1.0 / float(eta.min()) if isinstance(eta, torch.Tensor) else 1.0 / eta
        sc = [c / eta for _, _, c in offs]  # scaled costs: floats, or (n, 1) tensors for a per-measure eta
        if power:
            sc = [s - power * math.log(c) for s, (_, _, c) in zip(sc, offs)]
        tmp = torch.empty_like(u)
        if power == 0 and max(c for _, _, c in offs) * inv_eta_max <= _BOUND_RANGE.get(u.dtype, 600.0):
            m = self.window_max(buf, half)
        else:
            m = torch.full_like(u, -math.inf)
            for view, s in zip(views, sc):
                torch.maximum(m, torch.sub(view, s, out=tmp), out=m)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        acc = torch.zeros_like(u)
        for view, s in zip(views, sc):
            torch.sub(view, m_safe, out=tmp).sub_(s).clamp_(min=floor).exp_()
            acc.add_(tmp)
        res = acc.log_().add_(m_safe)
        return (
            torch.where(torch.isneginf(m), m, res, out=out)
            if out is not None
            else torch.where(torch.isneginf(m), m, res)
        )


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
