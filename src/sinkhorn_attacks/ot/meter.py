"""The meter: exact (unregularised) optimal-transport cost between a clean and a perturbed image.

Balanced convention (the field's, used for every attack's reported radius)::

    p_c = x_c / ||x||_1,     q_c = (z_c / ||z_c||_1) * (||x_c||_1 / ||x||_1)
    exact_ot(x, z) = sum_c  min_{P >= 0, P1 = p_c, P^T 1 = q_c}  <P, C>

Images are normalised by the clean image's total mass over all channels (Wong, Hu, Wu); transport stays
within a channel, so each perturbed channel is rescaled to the clean channel's share of the mass (for
grayscale this is simply ``W_C(x/||x||, z/||z||)``). The mass change ``||z||/||x|| - 1`` that this
normalisation hides is reported beside the radius. Pairs that cannot be matched inside the window
(e.g. mass appears farther than ``(k-1)/2`` pixels from any clean mass) get ``inf``.

Solvers: POT's network simplex (``ot.emd``) on the dense cost restricted to the two supports when that
block is small; a sparse exact LP (HiGHS, only in-window edges) otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_measure, check_positive, check_same
from .cost import LocalCost

__all__ = ["exact_ot", "MeterResult", "exact_uot", "exact_ot_pair"]

_DENSE_LIMIT = 6_000_000  # entries of the restricted dense cost block
_SUPPORT_EPS = 0.0


@dataclass
class MeterResult:
    """Per-example meter readings, shape ``(B,)`` (CPU, float64)."""

    value: torch.Tensor  # exact balanced OT cost between mass-normalised images (inf if infeasible)
    mass_change: torch.Tensor  # ||z||_1 / ||x||_1 - 1

    def __len__(self) -> int:
        return int(self.value.numel())


def _grid(h: int, w: int) -> np.ndarray:
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64)


def exact_ot_pair(p: np.ndarray, q: np.ndarray, cost: LocalCost) -> float:
    """Exact balanced OT between two non-negative ``(H, W)`` arrays of equal total mass (float64)."""
    h, w = p.shape
    pf, qf = p.ravel().astype(np.float64), q.ravel().astype(np.float64)
    sp, sq = np.flatnonzero(pf > _SUPPORT_EPS), np.flatnonzero(qf > _SUPPORT_EPS)
    if sp.size == 0 and sq.size == 0:
        return 0.0
    if sp.size == 0 or sq.size == 0:
        return math.inf
    a, b = pf[sp], qf[sq]
    b = b * (a.sum() / b.sum())  # remove round-off mass mismatch
    pos = _grid(h, w)
    d = pos[sp][:, None, :] - pos[sq][None, :, :]
    r = cost.radius(h, w)
    inside = (np.abs(d) <= r).all(-1)
    if not inside.any(1).all() or not inside.any(0).all():
        return math.inf
    c = np.sqrt((d**2).sum(-1)) ** cost.p
    if sp.size * sq.size <= _DENSE_LIMIT:
        import ot

        big = float(c[inside].max() + 1.0) * 1e3 + 1e3
        m = np.where(inside, c, big)
        plan = ot.emd(a, b, m, numItermax=10_000_000)
        if (plan[~inside] > 1e-12 * a.sum()).any():
            return math.inf
        return float((plan * np.where(inside, c, 0.0)).sum())
    return _sparse_lp(a, b, c, inside)


def _sparse_lp(a: np.ndarray, b: np.ndarray, c: np.ndarray, inside: np.ndarray) -> float:
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    ri, ci = np.nonzero(inside)
    ne = ri.size
    rows = coo_matrix((np.ones(ne), (ri, np.arange(ne))), shape=(a.size, ne))
    cols = coo_matrix((np.ones(ne), (ci, np.arange(ne))), shape=(b.size, ne))
    res = linprog(
        c[ri, ci],
        A_eq=vstack([rows, cols]).tocsr(),
        b_eq=np.concatenate([a, b]),
        bounds=(0, None),
        method="highs",
    )
    if res.status == 2:
        return math.inf
    if res.status != 0:
        raise RuntimeError(f"exact LP failed: {res.message}")
    return float(res.fun)


def exact_ot(x: torch.Tensor, z: torch.Tensor, cost: LocalCost) -> MeterResult:
    """Exact OT cost between mass-normalised ``x`` (clean) and ``z`` (perturbed), per example.

    Args:
        x, z: ``(B, C, H, W)`` non-negative images (any device; computed on CPU in float64).
        cost: the local ground cost; the value is in its units (``p=1``: W1, ``p=2``: W2^2) on images
            normalised to total mass 1.
    Returns:
        :class:`MeterResult` with ``.value`` (``inf`` where no in-window plan exists) and ``.mass_change``.
    """
    check_measure(x, "x")
    check_measure(z, "z")
    check_same(x, z, "x", "z")
    xs = x.detach().to("cpu", torch.float64).numpy()
    zs = z.detach().to("cpu", torch.float64).numpy()
    vals, dm = [], []
    for xb, zb in zip(xs, zs):
        mx, mz = xb.sum(), zb.sum()
        dm.append(mz / mx - 1.0 if mx > 0 else (0.0 if mz == 0 else math.inf))
        if mx <= 0:
            vals.append(0.0 if mz == 0 else math.inf)
            continue
        total = 0.0
        for xc, zc in zip(xb, zb):
            sx, sz = xc.sum(), zc.sum()
            if sx <= 0:
                continue
            if sz <= 0:
                total = math.inf
                break
            total += exact_ot_pair(xc / mx, zc / sz * (sx / mx), cost)
        vals.append(total)
    return MeterResult(value=torch.tensor(vals, dtype=torch.float64), mass_change=torch.tensor(dm))


def exact_uot(
    x: torch.Tensor,
    z: torch.Tensor,
    cost: LocalCost,
    tau: float,
    *,
    max_iter: int = 20000,
    tol: float = 1e-13,
) -> torch.Tensor:
    """Unregularised UOT ``U_tau(x, z) = min_P <P,C> + tau KL(P1|x) + tau KL(P^T1|z)`` on raw masses.

    Solved per channel with POT's majorisation-minimisation solver (``ot.unbalanced.mm_unbalanced``,
    KL divergence, no entropy) on the dense cost; meant for small images (it is O(n^2) per iteration).
    Returns ``(B,)`` float64, summed over channels.
    """
    import ot

    check_measure(x, "x")
    check_measure(z, "z")
    check_same(x, z, "x", "z")
    tau = check_positive(tau, "tau")
    h, w = x.shape[-2:]
    c = cost.dense(h, w).numpy()
    finite = np.isfinite(c)
    c = np.where(finite, c, 1e6 * tau)
    out = []
    for xb, zb in zip(x.detach().double().cpu().numpy(), z.detach().double().cpu().numpy()):
        tot = 0.0
        for xc, zc in zip(xb, zb):
            a, b = xc.ravel(), zc.ravel()
            if a.sum() == 0 and b.sum() == 0:
                continue
            sa, sb = a > 0, b > 0
            if not sa.any() or not sb.any():
                tot += tau * (a.sum() + b.sum())
                continue
            plan = ot.unbalanced.mm_unbalanced(
                a[sa], b[sb], c[np.ix_(sa, sb)], reg_m=tau, div="kl", numItermax=max_iter, stopThr=tol
            )
            pa, pb = plan.sum(1), plan.sum(0)

            def kl(p, q):
                return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0) - p + q))

            tot += float((plan * c[np.ix_(sa, sb)]).sum()) + tau * (kl(pa, a[sa]) + kl(pb, b[sb]))
        out.append(tot)
    return torch.tensor(out, dtype=torch.float64)
