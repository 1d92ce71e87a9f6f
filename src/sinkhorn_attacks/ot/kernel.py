"""The local transport operator: every algorithm of the project goes through this module.

For a potential ``v`` on the pixel grid (any leading batch dims, last two dims ``H, W``) and the local
cost of :class:`~sinkhorn_attacks.ot.cost.LocalCost`,

    local_lse(v)_i = log  sum_{j in W(i)}  c_ij**m * exp((v_j - c_ij) / eta)            (log domain)
    local_max(v)_i = max_{j in W(i)} (v_j - c_ij)                                      (eta -> 0 limit)

with ``W(i)`` the window around pixel ``i`` (pixels outside the image carry no mass, i.e. ``v = -inf``).
The cost is symmetric, so the same operator gives row and column reductions of a plan
``P_ij = exp((f_i + g_j - C_ij)/eta)``: ``sum_j P_ij = exp(f_i/eta + local_lse(g)_i)``.
``m = 1`` gives the transport-cost moment ``sum_j C_ij P_ij`` and ``m = 2`` the second moment.

It is computed in the scaling form first: with ``s`` the image's max of ``v/eta``, the window sum of
``exp(v/eta - s)`` against the kernel ``c**m e^{-c/eta}`` is one grouped convolution (one ``exp`` per pixel
instead of one per pixel and offset). That sum is exact to rounding wherever it is not tiny; float32 images
with pixels where it underflows are redone in float64 (exp range e^+-700), and the few pixels left are
recomputed in the log domain by gathering their windows (exact for any dynamic range). When the window
covers a small image a dense ``(n, n)`` log-sum-exp is used.
``gather_window``/``scatter_window`` are the same shifts used to store a local coupling (Wu et al.).
``eta`` may be a scalar or a tensor broadcastable to ``v``'s leading dims plus ``(1, 1)`` (per-measure eta).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cost import LocalCost

__all__ = ["local_lse", "local_max", "gather_window", "scatter_window", "window_index", "window_size"]

_DENSE_MAX_ELEMS = 1 << 24  # elements of one dense (chunk, n, n) block
_STACK_MAX_ELEMS = 1 << 22  # elements of one gathered (pixels, k*k) block of the log-domain path
# the neglected terms (each below the smallest normal number) total at most k^2 * 1.2e-38 (float32): above
# these thresholds that is <= 3e-7 absolute in log S, under the rounding of log S itself (|log S| >= 69)
_SCALING_MIN_SUM = {torch.float32: 1e-30, torch.float64: 1e-290}
_F32_SPAN = 40.0  # float32 images whose potential v/eta spans more than this are scaled in float64
_SMALL_CALL = 1 << 15  # float32 calls up to this many pixels are scaled in float64 (overhead-bound anyway)
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


@functools.lru_cache(maxsize=64)
def _table(cost: LocalCost, h: int, w: int, device: torch.device) -> torch.Tensor:
    return cost.table(h, w, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=256)
def _offsets(cost: LocalCost, h: int, w: int) -> tuple[tuple[int, int, float], ...]:
    return tuple(cost.offsets(h, w))


def _dense_lse(v: torch.Tensor, cost: LocalCost, eta, power: int) -> torch.Tensor:
    n, h, w = v.shape
    c = _dense_cost(cost, h, w, v.dtype, v.device)  # (hw, hw), symmetric
    # log c**power; 0 where c = inf (outside the window: the exp term is already 0, and -inf + inf would be NaN)
    logw = torch.where(torch.isinf(c), torch.zeros_like(c), torch.log(c) * power) if power else None
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


def local_lse(
    v: torch.Tensor,
    cost: LocalCost,
    eta: float | torch.Tensor,
    power: int = 0,
    *,
    empty: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log sum_{j in W(i)} c_ij**power * exp((v_j - c_ij)/eta)`` for every pixel ``i``.

    Args:
        v: potential, shape ``(..., H, W)``; entries may be ``-inf`` (no mass) but not ``+inf`` or NaN.
        cost: the local ground cost.
        eta: entropic temperature (cost units), scalar or per-measure tensor broadcastable to ``v.shape[:-2]``.
        power: 0 for the plain kernel, 1 / 2 for the first / second cost moment.
        empty: optional boolean mask shaped like ``v`` of the windows that hold no finite entry of ``v``
            (exactly those; ``power = 0`` only), e.g. from :func:`empty_windows` of a fixed support: it spares
            counting the finite entries of every window.
    Returns:
        tensor shaped like ``v`` (``-inf`` where the window holds no mass).
    """
    if empty is not None and (power != 0 or empty.shape != v.shape):
        raise ValueError("empty must be a mask shaped like v, for power = 0")
    vf, lead = _flat(v)
    e = _eta_like(eta, lead, v)
    n, h, w = vf.shape
    if n == 0:
        return v.clone()
    if _use_dense(cost, h, w):
        return _dense_lse(vf, cost, e, power).reshape(v.shape)
    u = vf / e
    if _SCALING_FIRST and vf.dtype in (torch.float32, torch.float64):
        out, redo = _scaling_any(u, cost, e, power, None if empty is None else empty.reshape(vf.shape))
    else:
        out, redo = torch.empty_like(vf), torch.ones_like(vf, dtype=torch.bool)
    if bool(redo.any()):
        out[redo] = _lse_at(u, redo.nonzero(), cost, e, power)
    return out.reshape(v.shape)


def _take(e, sel, dtype: torch.dtype | None = None):
    """Per-measure ``eta`` restricted to the selected images (a scalar passes through)."""
    if isinstance(e, torch.Tensor) and e.dim():
        e = e[sel]
        return e.to(dtype) if dtype is not None else e
    return e


def empty_windows(v: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """Mask of the pixels whose window holds no finite entry of ``v`` (for ``local_lse(..., empty=)``).

    A window max of the finite-entry indicator, row then column (the window is a square).
    """
    if v.numel() == 0:
        return torch.zeros_like(v, dtype=torch.bool)
    return window_max(torch.isfinite(v).to(torch.float32), cost) == 0


def window_max(v: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """``max_{j in W(i)} v_j`` over the pixels of each window that lie in the image (shape of ``v``).

    The window is a square: a max pool along the rows, then along the columns.
    """
    vf, _ = _flat(v)
    n, h, w = vf.shape
    if n == 0:
        return v.clone()
    r = cost.radius(h, w)
    k = 2 * r + 1
    m = F.max_pool2d(vf.reshape(n, 1, h, w), (k, 1), stride=1, padding=(r, 0))
    return F.max_pool2d(m, (1, k), stride=1, padding=(0, r)).reshape(v.shape)


def _scaling_any(u: torch.Tensor, cost: LocalCost, eta, power: int, empty=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_scaling_lse` in the cheapest precision that holds the image's range of ``u``.

    A float32 image whose finite ``u`` spans more than ``_F32_SPAN`` may underflow float32's ``exp``: it is
    computed in float64 directly (one call instead of a float32 attempt plus a retry), and so is every small
    call (where per-operation overhead, not arithmetic, sets the cost); float32 images that still flag pixels
    are retried in float64.
    Returns the result in ``u``'s dtype and the pixels left.
    """
    if u.dtype != torch.float32:
        return _scaling_lse(u, cost, eta, power, empty)
    if u.numel() <= _SMALL_CALL:  # per-op overhead dominates: one float64 call, no range check, no retry
        out, redo = _scaling_lse(u.double(), cost, _take(eta, slice(None), torch.float64), power, empty)
        return out.to(u.dtype), redo
    # span of the finite entries (u holds no +inf or NaN; amax passes over -inf unless all are -inf)
    span = u.amax((1, 2)) - torch.where(torch.isneginf(u), math.inf, u).amin((1, 2))
    wide = span > _F32_SPAN
    out = torch.empty_like(u)
    redo = torch.zeros_like(u, dtype=torch.bool)
    for group, dt in ((~wide, torch.float32), (wide, torch.float64)):
        if not bool(group.any()):
            continue
        sel = slice(None) if bool(group.all()) else group
        em = None if empty is None else empty[sel]
        o, r = _scaling_lse(u[sel].to(dt), cost, _take(eta, sel, dt), power, em)
        if dt == torch.float32 and bool(r.any()):
            imgs = r.flatten(1).any(1)
            e64 = _take(_take(eta, sel), imgs, torch.float64)
            o64, r64 = _scaling_lse(u[sel][imgs].double(), cost, e64, power, None if em is None else em[imgs])
            o[imgs] = torch.where(r[imgs], o64.to(o.dtype), o[imgs])
            r[imgs] = r[imgs] & r64
        out[sel] = o.to(u.dtype)
        redo[sel] = r
    return out, redo


def _scaling_lse(u: torch.Tensor, cost: LocalCost, eta, power: int, empty=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaling form: ``log(K^(m) * exp(u - s)) + s``, ``u = v/eta``, ``K^(m)_d = c_d**m e^{-c_d/eta}`` (a convolution).

    ``s`` is each image's max of ``u``, so ``exp`` never overflows and one ``exp`` per pixel replaces one per
    pixel and offset. Every neglected (underflowed) term is below the smallest normal number (1.2e-38 in
    float32), so a window sum ``S_i >= _SCALING_MIN_SUM`` is exact to the rounding of its logarithm.
    Returns the result and the mask of pixels with a finite window whose sum is below that threshold (the
    caller recomputes them in the log domain).
    """
    n, h, w = u.shape
    r = cost.radius(h, w)
    k = 2 * r + 1
    table = _table(cost, h, w, u.device)
    per_measure = isinstance(eta, torch.Tensor) and eta.dim() > 0
    kern = torch.exp(-table / (eta.to(torch.float64).reshape(-1, 1, 1) if per_measure else eta))  # (k,k) | (n,k,k)
    if power:
        kern = kern * table**power
    kern = kern.to(u.dtype).reshape(-1, k, k).expand(n, k, k)
    s = u.flatten(1).amax(1).reshape(n, 1, 1)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    fin = torch.isfinite(u) if empty is None else None
    if empty is not None or (bool(fin.all()) and (power == 0 or (r >= 1 and h * w > 1))):
        # the empty windows are known (none when there is no -inf entry; with power > 0 a window has a
        # neighbour besides its centre), so one convolution of the batch as channels (the fastest CPU
        # layout for single-channel planes); an empty window sums to exactly 0 and gets log 0 = -inf
        acc = F.conv2d(torch.exp(u - s).reshape(1, n, h, w), kern.reshape(n, 1, k, k), padding=r, groups=n)
        acc = acc.reshape(n, h, w)
        low = acc < _SCALING_MIN_SUM[u.dtype]
        return torch.log(acc).add_(s), (low if empty is None else low & ~empty)
    support = (table > 0 if power else torch.ones_like(table)).to(u.dtype).expand(n, k, k)
    # the window's mass indicator rides along as extra channels, so one call gives both sums
    planes = torch.stack([torch.exp(u - s), fin.to(u.dtype)], dim=1).reshape(1, 2 * n, h, w)
    sums = F.conv2d(planes, torch.stack([kern, support], dim=1).reshape(2 * n, 1, k, k), padding=r, groups=2 * n)
    acc, mass = sums.reshape(n, 2, h, w).unbind(1)
    empty = mass < 0.5
    out = torch.where(empty, torch.full_like(acc, -math.inf), torch.log(acc).add_(s))
    return out, (acc < _SCALING_MIN_SUM[u.dtype]) & ~empty


@dataclass(frozen=True)
class FixedSupport:
    """The ``-inf`` entries of a potential that keeps them at the same pixels from sweep to sweep.

    For a solver whose row potential is ``-inf`` exactly on the zero pixels of the clean image: ``finite``
    is ``1.0`` on the other pixels and ``0.0`` there, ``empty`` marks the windows holding no finite entry
    (:func:`empty_windows`), ``empty_one`` is ``1.0`` on them and ``empty_ninf`` is ``-inf`` on them (both
    ``0.0`` elsewhere). All share the potential's shape and dtype (``empty``: bool).
    """

    finite: torch.Tensor
    empty: torch.Tensor
    empty_one: torch.Tensor
    empty_ninf: torch.Tensor

    @staticmethod
    def of(v: torch.Tensor, cost: LocalCost) -> FixedSupport:
        """The support of ``v`` (its finite entries) and its empty windows."""
        empty = empty_windows(v, cost)
        ninf = torch.where(empty, -math.inf, 0.0).to(v.dtype)
        return FixedSupport(torch.isfinite(v).to(v.dtype), empty, empty.to(v.dtype), ninf)


@functools.lru_cache(maxsize=256)
def _table_powers(cost: LocalCost, h: int, w: int, device: torch.device, powers: tuple[int, ...]) -> torch.Tensor:
    """``-c`` and ``c**p`` for each ``p`` of ``powers`` (float64, shape ``(1 + len(powers), k, k)``)."""
    table = _table(cost, h, w, device)
    return torch.stack([-table] + [table**p for p in powers])


def scaling_floor(dtype: torch.dtype) -> float:
    """The smallest window sum of the scaling form that is exact to rounding (below it, underflowed terms
    may matter and :func:`local_lse` recomputes the pixel)."""
    return _SCALING_MIN_SUM[dtype]


def window_sums(e: torch.Tensor, cost: LocalCost, eta: torch.Tensor, powers: tuple[int, ...]) -> torch.Tensor | None:
    """``S^(p)_i = sum_{j in W(i)} c_ij**p e^{-c_ij/eta} e_j`` for each ``p`` of ``powers``: the scaling form's sums.

    ``e`` (shape ``(n, H, W)``) is a potential already exponentiated and scaled by the caller (e.g.
    ``exp(v/eta - max)``), ``eta`` the per-plane temperature, shape ``(n, 1, 1)``. The kernels of all
    powers are built in float64, as :func:`local_lse` builds them, and applied in one grouped convolution
    (the planes of each power side by side). Returns ``(len(powers), n, H, W)``, or ``None`` for a window
    that covers a small image (where :func:`local_lse` goes dense) or a dtype other than float32/float64.
    Sums below :func:`scaling_floor` may miss underflowed terms.
    """
    n, h, w = e.shape
    if e.dtype not in _SCALING_MIN_SUM or _use_dense(cost, h, w):
        return None
    r = cost.radius(h, w)
    k = 2 * r + 1
    tabs = _table_powers(cost, h, w, e.device, powers)
    base = torch.exp(tabs[0] / eta.to(torch.float64).reshape(-1, 1, 1))  # e^{-c/eta}, (n, k, k)
    kern = torch.cat([base * tabs[1 + i] if p else base for i, p in enumerate(powers)]).to(e.dtype)
    m = len(powers)
    planes = e.reshape(1, n, h, w)
    if m > 1:
        planes = planes.expand(m, n, h, w).reshape(1, m * n, h, w)
    return F.conv2d(planes, kern.reshape(m * n, 1, k, k), padding=r, groups=m * n).reshape(m, n, h, w)


def local_lse_powers(
    u: torch.Tensor,
    cost: LocalCost,
    eta: torch.Tensor,
    powers: tuple[int, ...],
    support: FixedSupport | None = None,
) -> torch.Tensor | None:
    """``local_lse(u * eta, cost, eta, p)`` for each ``p`` in ``powers``, one ``exp`` for all of them.

    The scaling form's convolution path only (``_scaling_lse``), for solvers that reduce a batch every
    sweep: with ``s`` each plane's max of ``u``,

        out_p = log( K^(p) * exp(u - s) ) + s,     K^(p)_d = c_d**p e^{-c_d/eta}     (:func:`window_sums`)

    with the same operations as :func:`local_lse` and none of its per-pixel masks: ``u`` holds ``-inf``
    exactly outside ``support`` (none without one; ``powers == (0,)`` with one), so ``exp`` and ``log``
    never see ``-inf`` or ``0`` (their slow scalar paths on CPU), and the checks are three reductions read
    back once.

    Args:
        u: ``v / eta`` for the potential ``v``, shape ``(n, H, W)`` (the division as local_lse makes it).
        eta: per-plane temperature, shape ``(n, 1, 1)``.
        powers: cost moments to compute (0: plain kernel).
        support: the fixed ``-inf`` pattern of ``u`` (see :class:`FixedSupport`), shaped like ``u``.
    Returns:
        the reductions, shape ``(len(powers), n, H, W)``, or ``None`` where :func:`local_lse` would take
        another path (a dense window, a float32 plane whose finite range exceeds ``_F32_SPAN``, a window
        sum below ``_SCALING_MIN_SUM`` outside the empty windows, non-finite entries without a support, a
        plane max beyond a quarter of the dtype's range): the caller then calls :func:`local_lse`. Equal
        bit for bit to local_lse in float64 and for float32 batches of more than ``_SMALL_CALL`` pixels;
        smaller float32 batches, which local_lse scales in float64, are computed in float32 here, as the
        larger ones are.
    """
    n, h, w = u.shape
    dt = u.dtype
    if not _SCALING_FIRST or (any(powers) and (support is not None or cost.radius(h, w) < 1 or h * w <= 1)):
        return None
    flat = u.flatten(1)
    s_raw = flat.amax(1)
    if support is None:
        low = flat.amin(1)  # every entry must be finite: a -inf makes the span +inf
    else:  # the finite range, as local_lse measures it (a -inf entry counts as +inf for the min)
        low = torch.nan_to_num(u, nan=math.nan, posinf=math.inf, neginf=math.inf).flatten(1).amin(1)
    s = torch.nan_to_num(s_raw, nan=0.0, posinf=0.0, neginf=0.0).reshape(n, 1, 1)
    e = u - s
    if support is not None:  # exp(-inf) = 0 without exp's special-value path
        e = e.nan_to_num_(nan=math.nan, posinf=math.inf, neginf=0.0).exp_().mul_(support.finite)
    else:
        e = e.exp_()
    acc = window_sums(e, cost, eta, powers)
    if acc is None:
        return None
    if support is not None:
        acc.add_(support.empty_one)  # log(1) = 0 on the empty windows, -inf below: no log(0)
    span, size, least = torch.stack([(s_raw - low).max(), s.abs().max(), acc.amin()]).tolist()
    top = _F32_SPAN if dt == torch.float32 else math.inf  # wider float32 planes: float64 in local_lse
    if not (span <= top and span < math.inf and size <= torch.finfo(dt).max / 4 and least >= _SCALING_MIN_SUM[dt]):
        return None
    out = acc.log_()
    if support is not None:
        out.add_(support.empty_ninf)
    return out.add_(s)


def _lse_at(u: torch.Tensor, pix: torch.Tensor, cost: LocalCost, eta, power: int) -> torch.Tensor:
    """Log domain at the listed pixels ``pix`` (m, 3) = (image, row, col): gather each window and reduce.

    ``log sum_d c_d**power exp(u[i + delta_d] - c_d/eta)``, exact for any dynamic range; O(m k^2) memory,
    chunked.
    """
    n, h, w = u.shape
    offs = _offsets(cost, h, w)
    keep = [d for d, o in enumerate(offs) if not (power and o[2] == 0.0)]
    pixel = pix[:, 1] * w + pix[:, 2]
    flat = F.pad(u.reshape(n, h * w), (0, 1), value=-math.inf).reshape(-1)
    c = torch.tensor([offs[d][2] for d in keep], dtype=u.dtype, device=u.device)
    logw = power * torch.log(c) if power else None
    start = pix[:, 0] * (h * w + 1)
    per_measure = isinstance(eta, torch.Tensor) and eta.dim() > 0
    e = eta.reshape(-1)[pix[:, 0]].unsqueeze(1) if per_measure else eta
    out = torch.empty(pix.shape[0], dtype=u.dtype, device=u.device)
    step = max(1, _STACK_MAX_ELEMS // len(keep))
    for s0 in range(0, pix.shape[0], step):
        sl = slice(s0, s0 + step)
        window = window_index(cost, h, w, at=pixel[sl])[:, keep]  # h w (one past the last pixel): outside
        a = flat[start[sl, None] + window] - c / (e[sl] if per_measure else e)
        if logw is not None:
            a = a + logw
        out[sl] = torch.logsumexp(a, dim=1)
    return out


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


def gather_window(v: torch.Tensor, cost: LocalCost, fill: float = 0.0, *, last: bool = False) -> torch.Tensor:
    """Stack the window: ``out[..., d, i] = v[..., i + delta_d]`` (``fill`` outside the image).

    Shape ``(..., K, H, W)`` with ``K = k*k`` offsets in the order of ``cost.offsets`` (zero offset first);
    ``last=True``: the offsets on the last axis, ``(..., H, W, K)``, one row of ``K`` entries per pixel.
    """
    vf, lead = _flat(v)
    h, w = vf.shape[-2:]
    shifts = [s for s, _ in _shifts(vf, cost, fill)]
    if not last:
        return torch.stack(shifts, dim=1).reshape(lead + (len(shifts), h, w))
    out = vf.new_empty(vf.shape + (len(shifts),))
    for d, s in enumerate(shifts):  # a strided copy per offset: faster than stacking on the last axis
        out[..., d] = s
    return out.reshape(lead + (h, w, len(shifts)))


def window_index(
    cost: LocalCost, height: int, width: int, *, sign: int = 1, at: torch.Tensor | None = None, device="cpu"
) -> torch.Tensor:
    """Row-major index of ``i + sign * delta_d`` for every pixel ``i`` and offset ``d``, shape ``(H W, K)``.

    Offsets in the order of ``cost.offsets``; ``H W`` (one past the last pixel) where the neighbour lies
    outside the image. ``sign=1`` lists each pixel's window as :func:`gather_window` does, ``sign=-1`` the
    sources that :func:`scatter_window` sums into each pixel, so both can be evaluated at a few pixels.
    ``at``: row-major indices of the pixels to list (shape ``(m,)``, result ``(m, K)``) instead of all of them.
    """
    offs = cost.offsets(height, width)
    if at is None:
        r = torch.arange(height, device=device).reshape(-1, 1, 1)
        c = torch.arange(width, device=device).reshape(1, -1, 1)
    else:
        r, c = (at // width).reshape(-1, 1), (at % width).reshape(-1, 1)
    di = torch.tensor([o[0] for o in offs], device=r.device) * sign
    dj = torch.tensor([o[1] for o in offs], device=r.device) * sign
    rr, cc = r + di, c + dj
    inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    return torch.where(inside, rr * width + cc, height * width).reshape(-1, len(offs))


def scatter_window(t: torch.Tensor, cost: LocalCost, *, last: bool = False) -> torch.Tensor:
    """Adjoint of :func:`gather_window`: ``out[..., j] = sum_d t[..., d, j - delta_d]``.

    For a local coupling stored per source pixel (``t[d, i]`` = mass sent from ``i`` to ``i + delta_d``)
    this is its column marginal; mass sent outside the image is dropped (it must be zero). ``last=True``:
    ``t`` holds the offsets on its last axis, ``(..., H, W, K)``.
    """
    if t.dim() < 3:
        raise ValueError(f"expected {'(..., H, W, K)' if last else '(..., K, H, W)'}, got {tuple(t.shape)}")
    if last:
        *lead_, h, w, kk = t.shape
        tf = t.reshape(-1, h, w, kk)
    else:
        *lead_, kk, h, w = t.shape
        tf = t.reshape(-1, kk, h, w)
    lead = tuple(lead_)
    offs = cost.offsets(h, w)
    if len(offs) != kk:
        raise ValueError(f"coupling has {kk} offsets, the cost window has {len(offs)}")
    r = cost.radius(h, w)
    out = torch.zeros(tf.shape[0], h + 2 * r, w + 2 * r, dtype=t.dtype, device=t.device)
    for d, (di, dj, _) in enumerate(offs):
        out[:, r + di : r + di + h, r + dj : r + dj + w] += tf[..., d] if last else tf[:, d]
    return out[:, r : r + h, r : r + w].reshape(lead + (h, w))


def offset_costs(cost: LocalCost, height: int, width: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Costs of the offsets of :func:`gather_window`, shape ``(K, 1, 1)``."""
    c = torch.tensor([c for _, _, c in cost.offsets(height, width)], dtype=dtype, device=device)
    return c.reshape(-1, 1, 1)


def valid_offsets(cost: LocalCost, height: int, width: int, device="cpu") -> torch.Tensor:
    """Boolean mask ``(K, H, W)``: offset ``d`` from pixel ``i`` stays inside the image."""
    ones = torch.ones(1, height, width, dtype=torch.float32, device=device)
    return gather_window(ones, cost, fill=0.0)[0] > 0
