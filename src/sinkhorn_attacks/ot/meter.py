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
block is small; otherwise the same LP written as a min-cost flow on the pixel grid (HiGHS, only in-window
arcs, see :func:`_grid_flow`), about 6x faster than the bipartite LP at 128x128. The same solvers, with
one extra node for destruction and creation, compute the yardstick's W1-TV cost (:func:`tv_pair`, used by
:func:`sinkhorn_attacks.ot.measure`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .checks import check_cost, check_count, check_images, check_measure, check_nonnegative, check_positive, check_same
from .cost import LocalCost

__all__ = ["exact_ot", "MeterResult", "exact_uot", "exact_ot_pair", "tv_pair", "TVPair"]

_DENSE_LIMIT = 250_000  # entries of the restricted dense cost block (POT); larger: grid flow
_CUT_ROUNDS = 2  # solves with capacities only where needed before all are imposed (grid flow)
_CAP_BELOW = 0.05  # pixels holding less than this fraction of the mean mass are capacitated from the start
_CUT_TOL = 1e-7  # through-flow slack, in units of the mean pixel mass (HiGHS's feasibility tolerance)
_SUPPORT_EPS = 0.0
_TINY_MASS = 1e-100  # below this total mass a pair is solved rescaled (see tv_pair)


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


def _block_cost(h: int, w: int, sp: np.ndarray, sq: np.ndarray, cost: LocalCost) -> tuple[np.ndarray, np.ndarray]:
    """Ground cost ``d**p`` between the pixels ``sp`` (rows) and ``sq`` (columns) and the in-window mask."""
    pos = _grid(h, w)
    d = pos[sp][:, None, :] - pos[sq][None, :, :]
    inside = (np.abs(d) <= cost.radius(h, w)).all(-1)
    return np.sqrt((d**2).sum(-1)) ** cost.p, inside


def exact_ot_pair(p: np.ndarray, q: np.ndarray, cost: LocalCost) -> float:
    """Exact balanced OT between two non-negative ``(H, W)`` arrays of equal total mass (float64)."""
    h, w = p.shape
    pf, qf = p.ravel().astype(np.float64), q.ravel().astype(np.float64)
    sp, sq = np.flatnonzero(pf > _SUPPORT_EPS), np.flatnonzero(qf > _SUPPORT_EPS)
    if sp.size == 0 and sq.size == 0:
        return 0.0
    if sp.size == 0 or sq.size == 0:
        return math.inf
    qf = qf * (pf.sum() / qf.sum())  # remove round-off mass mismatch
    if sp.size * sq.size > _DENSE_LIMIT:
        return _grid_flow(pf.reshape(h, w), qf.reshape(h, w), cost)
    a, b = pf[sp], qf[sq]
    c, inside = _block_cost(h, w, sp, sq, cost)
    if not inside.any(1).all() or not inside.any(0).all():
        return math.inf
    import ot

    big = float(c[inside].max() + 1.0) * 1e3 + 1e3
    plan = ot.emd(a, b, np.where(inside, c, big), numItermax=10_000_000)
    if (plan[~inside] > 1e-12 * a.sum()).any():
        return math.inf
    return float((plan * np.where(inside, c, 0.0)).sum())


def _window_arcs(h: int, w: int, offsets: list[tuple[int, int, float]]):
    """Arcs ``i -> i + (di, dj)`` of the pixel grid for each offset that stays inside the image.

    Returns ``src, dst, cost, kind`` (``kind`` = the arc's index in ``offsets``).
    """
    ii, jj = np.divmod(np.arange(h * w), w)
    src, dst, cst, kind = [], [], [], []
    for o, (di, dj, c) in enumerate(offsets):
        ok = np.flatnonzero((ii + di >= 0) & (ii + di < h) & (jj + dj >= 0) & (jj + dj < w))
        src.append(ok)
        dst.append(ok + di * w + dj)
        cst.append(np.full(ok.size, c))
        kind.append(np.full(ok.size, o))
    return np.concatenate(src), np.concatenate(dst), np.concatenate(cst), np.concatenate(kind)


def _shortcut_relays(flow: np.ndarray, offsets: list[tuple[int, int, float]], h: int, w: int, r: int) -> None:
    """Replace relays ``i -> j -> k`` by the direct arc ``i -> k`` where that is in the window and no dearer.

    ``flow[o, i]`` is the flow from pixel ``i`` along ``offsets[o]`` (in place). An optimal flow keeps its
    cost (the replaced relays are ties, e.g. two unit steps vs one step of 2 for p = 1) and conservation,
    and passes less mass through pixels, so fewer pixel capacities bind.
    """
    index = {(di, dj): o for o, (di, dj, _) in enumerate(offsets)}
    rows = np.arange(h * w) // w
    cols = np.arange(h * w) % w
    for o1, (a1, b1, c1) in enumerate(offsets):
        for o2, (a2, b2, c2) in enumerate(offsets):
            d = (a1 + a2, b1 + b2)
            o3 = index.get(d)
            if o3 is None or max(abs(d[0]), abs(d[1])) > r or offsets[o3][2] > c1 + c2:
                continue
            # relay pixels j with j - d1 and j + d2 inside the image
            ok = (rows - a1 >= 0) & (rows - a1 < h) & (cols - b1 >= 0) & (cols - b1 < w)
            ok &= (rows + a2 >= 0) & (rows + a2 < h) & (cols + b2 >= 0) & (cols + b2 < w)
            classes = [ok]
            if o1 == o2:  # j - d and j share one array: split j by parity along d so writes never overlap
                par = (rows if a1 else cols) % 2 == 0
                classes = [ok & par, ok & ~par]
            for cls in classes:
                j = np.flatnonzero(cls)
                i = j - (a1 * w + b1)
                moved = np.minimum(flow[o1, i], flow[o2, j])
                if not moved.any():
                    continue
                flow[o1, i] -= moved
                flow[o2, j] -= moved
                flow[o3, i] += moved


@dataclass
class _Flow:
    """A solution of :func:`_grid_flow_solve`, in the units of its inputs (``None`` fields: infeasible)."""

    value: float  # the LP optimum as HiGHS reports it
    offsets: list[tuple[int, int, float]]  # the window without the zero offset
    flow: np.ndarray | None = None  # (len(offsets), H*W): flow leaving pixel i along offsets[o]
    destroyed: np.ndarray | None = None  # (H*W,) mass sent to the extra node (price given)
    created: np.ndarray | None = None  # (H*W,) mass received from the extra node (price given)
    potential: np.ndarray | None = None  # (H*W,) multipliers of the conservation rows


def _grid_flow(p: np.ndarray, q: np.ndarray, cost: LocalCost) -> float:
    """Exact windowed balanced OT of two ``(H, W)`` arrays of equal mass (see :func:`_grid_flow_solve`)."""
    return _grid_flow_solve(p, q, cost).value


def _grid_flow_solve(
    p: np.ndarray, q: np.ndarray, cost: LocalCost, price: float | None = None, *, tight: bool = False
) -> _Flow:
    """Exact windowed OT of two ``(H, W)`` arrays as a min-cost flow on the pixel grid (HiGHS LP).

    A plan ``P`` is a diagonal plus a flow ``f`` on the window's arcs (``f_ij = P_ij``, ``i != j``) with

        out_j - in_j = p_j - q_j,        out_j <= p_j        (equivalently in_j <= q_j),

    and conversely any such flow gives the plan ``P_jj = p_j - out_j``: the problems are the same LP. The
    capacities ``out_j <= p_j`` (mass passed *through* a pixel cannot exceed what it holds) rarely bind
    on images. Without them the flow problem is a relaxation, so a solution that respects them all is
    optimal for the full one. They are imposed up front at dark pixels (empty ones lose their arcs), then
    where a solve violates them once tied relays are replaced by direct arcs (:func:`_shortcut_relays`),
    with the violators' windows, and after ``_CUT_ROUNDS`` solves everywhere. For ``p = 1`` on images
    without dark pixels, the arcs whose cost equals a path of shorter arcs (offsets ``(2, 0)``,
    ``(2, 2)``, ...) are left out until a capacity is needed. Marginals
    are scaled to mean 1 so that HiGHS's absolute tolerances (1e-7) are relative ones.

    With a ``price`` the graph gets one extra node: every pixel holding clean mass may send it there
    (destruction, cost ``price`` per unit) and every pixel holding perturbed mass may receive from it
    (creation, same price); the conservation rows become ``out_j + d_j - in_j - a_j = p_j - q_j``, the
    capacities ``out_j + d_j <= p_j``, and the problem is always feasible (the extra node's own row is
    the sum of the others and is left out). ``tight`` imposes every capacity at once and asks HiGHS for
    tolerances of 1e-10.
    """
    from scipy.ndimage import binary_dilation

    lp = _FlowLP.of(p, q, cost, price, tight)
    capped = (np.minimum(lp.a, lp.b) < _CAP_BELOW) | (_CUT_ROUNDS == 0) | tight  # dark pixels: relays bind
    # without the arcs that equal a path of unit arcs, the problem is a relaxation only if no pixel is
    # capacitated: a (2, 0) move across a capped pixel would have to relay through it
    short = cost.p == 1 and not capped.any() and bool((lp.sends & lp.takes).all())
    arcs = [o for o in lp.offsets if math.gcd(abs(o[0]), abs(o[1])) == 1] if short else lp.offsets
    rounds = 0
    while True:  # at most _CUT_ROUNDS + 1 solves
        sol = _flow_round(lp, arcs, capped)
        if isinstance(sol, _Flow):
            return sol
        res, flow, dead, born = sol
        over = _flow_through(lp, flow, dead, born) > np.minimum(lp.a, lp.b) + _CUT_TOL
        if capped.all() or not over.any():
            phi = getattr(getattr(res, "eqlin", None), "marginals", None)
            return _Flow(float(res.fun / lp.scale), lp.offsets, flow / lp.scale, dead / lp.scale, born / lp.scale, phi)
        rounds += 1
        arcs = lp.offsets
        if rounds >= _CUT_ROUNDS:
            capped = np.ones(lp.n, dtype=bool)
        else:  # the violators and their windows (the flow would re-route through the neighbours)
            box = np.ones((2 * lp.r + 1, 2 * lp.r + 1), dtype=bool)
            capped |= binary_dilation(over.reshape(lp.h, lp.w), box).ravel()


@dataclass
class _FlowLP:
    """The fixed data of :func:`_grid_flow_solve`'s LP: marginals scaled to mean 1 (``a``, ``b``), the window
    without the zero offset, the pixels that may send / receive, every in-window arc
    (:func:`_window_arcs`), and with a ``price`` the destruction / creation arcs of the extra node."""

    h: int
    w: int
    scale: float
    a: np.ndarray
    b: np.ndarray
    offsets: list[tuple[int, int, float]]
    sends: np.ndarray
    takes: np.ndarray
    every: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    r: int
    price: float | None
    sinks: np.ndarray  # pixels that may destroy (price given)
    sources: np.ndarray  # pixels that may create (price given)
    opts: dict

    @property
    def n(self) -> int:
        return self.h * self.w

    @property
    def extra(self) -> int:
        """Number of destruction / creation arcs (0 without a price)."""
        return 0 if self.price is None else self.sinks.size + self.sources.size

    @staticmethod
    def of(p: np.ndarray, q: np.ndarray, cost: LocalCost, price: float | None, tight: bool) -> _FlowLP:
        h, w = p.shape
        n = h * w
        scale = n / p.sum() if price is None else 2 * n / (p.sum() + q.sum())
        a, b = p.ravel() * scale, q.ravel() * scale
        offsets = cost.offsets(h, w)[1:]
        sends, takes = a > 0, b > 0  # out_j <= p_j = 0 and in_j <= q_j = 0: no arcs out of / into empty pixels
        tol = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
        return _FlowLP(
            h, w, scale, a, b, offsets, sends, takes, _window_arcs(h, w, offsets), cost.radius(h, w), price,
            np.flatnonzero(sends), np.flatnonzero(takes), {"options": tol} if tight else {},
        )  # fmt: skip


def _flow_round(
    lp: _FlowLP, arcs: list[tuple[int, int, float]], capped: np.ndarray
) -> _Flow | tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    """One LP solve on the arcs ``arcs`` between pixels that may send and receive, with the capacities
    ``out_j (+ d_j) <= p_j`` at the ``capped`` pixels (:func:`_grid_flow_solve`).

    Returns a final :class:`_Flow` (no arc can carry mass; infeasible), else ``(res, flow, dead, born)``:
    HiGHS's result and the flow per offset and pixel (tied relays shortcut, :func:`_shortcut_relays`), the
    destroyed and the created mass, in scaled units.
    """
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack

    n, extra = lp.n, lp.extra
    src, dst, c, kind = lp.every if arcs is lp.offsets else _window_arcs(lp.h, lp.w, arcs)
    keep = lp.sends[src] & lp.takes[dst]
    src, dst, c, kind = src[keep], dst[keep], c[keep], kind[keep]
    if src.size + extra == 0:  # no arc can carry mass: feasible only if nothing has to move
        return _Flow(0.0 if np.abs(lp.a - lp.b).max() <= _CUT_TOL else math.inf, lp.offsets)
    cols = np.arange(src.size)
    out_op = csr_matrix((np.ones(src.size), (src, cols)), shape=(n, src.size))
    in_op = csr_matrix((np.ones(src.size), (dst, cols)), shape=(n, src.size))
    a_eq, cap_op, obj = out_op - in_op, out_op, c
    sinks, sources = lp.sinks, lp.sources
    if lp.price is not None:
        kill = csr_matrix((np.ones(sinks.size), (sinks, np.arange(sinks.size))), shape=(n, sinks.size))
        make = csr_matrix((np.ones(sources.size), (sources, np.arange(sources.size))), shape=(n, sources.size))
        a_eq = hstack([a_eq, kill, -make], format="csr")
        cap_op = hstack([out_op, kill, csr_matrix((n, sources.size))], format="csr")
        obj = np.concatenate([c, np.full(extra, float(lp.price))])
    ub = {"A_ub": cap_op[capped], "b_ub": lp.a[capped]} if capped.any() else {}
    res = linprog(obj, A_eq=a_eq, b_eq=lp.a - lp.b, bounds=(0, None), method="highs-ipm", **ub, **lp.opts)
    if res.status == 2:
        return _Flow(math.inf, lp.offsets)
    if res.status != 0:
        raise RuntimeError(f"exact OT flow LP failed: {res.message}")
    flow = np.zeros((len(lp.offsets), n))
    rows = kind if arcs is lp.offsets else np.asarray([lp.offsets.index(o) for o in arcs])[kind]
    flow[rows, src] = res.x[: src.size]
    dead, born = np.zeros(n), np.zeros(n)
    if lp.price is not None:
        dead[sinks] = res.x[src.size : src.size + sinks.size]
        born[sources] = res.x[src.size + sinks.size :]
    for _ in range(2):
        _shortcut_relays(flow, lp.offsets, lp.h, lp.w, lp.r)
    return res, flow, dead, born


def _flow_through(lp: _FlowLP, flow: np.ndarray, dead: np.ndarray, born: np.ndarray) -> np.ndarray:
    """Mass passed through each pixel, ``min(out_j + d_j, in_j + a_j)`` (to compare with ``min(p_j, q_j)``)."""
    every = lp.every
    moved = flow[every[3], every[0]]
    return np.minimum(np.bincount(every[0], moved, lp.n) + dead, np.bincount(every[1], moved, lp.n) + born)


@dataclass
class TVPair:
    """TV-relaxed windowed OT of one channel pair (raw masses, see :func:`tv_pair`)."""

    raw: float  # cost of the plan found (an optimal one up to the certified bracket)
    lower: float  # certified lower bound on the optimum (a feasible dual point)
    transported: float  # mass matched by that plan, moved or staying in place


_BRACKET = 1e-6  # relative width of [lower, raw] above which the grid flow is solved again, tighter


def tv_pair(p: np.ndarray, q: np.ndarray, cost: LocalCost, price: float) -> TVPair:
    """Windowed transport plus destruction / creation at ``price`` per unit, between ``(H, W)`` arrays.

    ``D = min_{P >= 0, P1 <= p, P^T 1 <= q} <P, C> + price (|p| - |P|) + price (|q| - |P|)`` with ``P``
    supported in the window. Mass with no partner inside its window is settled first (destroyed or
    created). Small problems: POT's network simplex on the dense cost between the two supports, with
    out-of-window pairs at ``2 price`` (destroy one unit, create it elsewhere) and one extra row or column
    holding the mass difference at ``price``. Large ones: the same network simplex on the sparse in-window
    pairs plus an extra node holding the full masses (POT with sparse costs), else the grid min-cost flow
    with the extra node (:func:`_grid_flow_solve`), whose flow is turned into a plan (scaled down where a
    pixel would pass on more than it holds) whose cost is ``raw``. Every path returns a certified
    ``lower`` bound from the solver's potentials (:func:`_tv_dual_bound`).
    """
    h, w = p.shape
    pf, qf = p.ravel().astype(np.float64), q.ravel().astype(np.float64)
    mp, mq = float(pf.sum()), float(qf.sum())
    sp, sq = np.flatnonzero(pf > _SUPPORT_EPS), np.flatnonzero(qf > _SUPPORT_EPS)
    if np.array_equal(pf, qf):  # D = 0 exactly (the solvers would leave round-off)
        return TVPair(0.0, 0.0, mp)
    if 0.0 < max(mp, mq) < _TINY_MASS:
        # D is positively homogeneous: solve at unit scale (a power of two, so exactly) and scale back; masses
        # near 1e-170 underflow inside the network simplex (products of masses), which then crashes
        e = _unit_exponent(max(mp, mq))
        r = tv_pair(np.ldexp(p, e), np.ldexp(q, e), cost, price)
        return TVPair(math.ldexp(r.raw, -e), math.ldexp(r.lower, -e), math.ldexp(r.transported, -e))
    if sp.size == 0 or sq.size == 0:  # nothing to match: destroy all of one, create all of the other
        return TVPair(price * (mp + mq), price * (mp + mq), 0.0)
    # mass with no partner inside its window can only be destroyed / created: settle it up front
    from scipy.ndimage import binary_dilation

    box = np.ones((2 * cost.radius(h, w) + 1,) * 2, dtype=bool)
    lone_p = (p > _SUPPORT_EPS) & ~binary_dilation(q > _SUPPORT_EPS, box)
    lone_q = (q > _SUPPORT_EPS) & ~binary_dilation(p > _SUPPORT_EPS, box)
    if lone_p.any() or lone_q.any():
        settled = price * float(p[lone_p].sum() + q[lone_q].sum())
        rest = tv_pair(np.where(lone_p, 0.0, p), np.where(lone_q, 0.0, q), cost, price)
        return TVPair(settled + rest.raw, settled + rest.lower, rest.transported)
    if (sp.size + 1) * (sq.size + 1) <= _DENSE_LIMIT:
        raw, transported, g0 = _tv_dense(pf, qf, sp, sq, h, w, cost, price)
    elif _sparse_emd():
        raw, transported, g0 = _tv_sparse(pf, qf, sp, sq, h, w, cost, price)
    else:
        return _tv_flow(p, q, cost, price)
    return TVPair(raw, min(_tv_dual_bound(p, q, g0, cost, price), raw), transported)


def _unit_exponent(mass: float) -> int:
    """``e`` with ``mass * 2**e`` in ``[1, 2)`` (subnormal masses included, where ``2.0 ** e`` overflows)."""
    return 1 - math.frexp(mass)[1]


def _tv_dense(
    pf: np.ndarray, qf: np.ndarray, sp: np.ndarray, sq: np.ndarray, h: int, w: int, cost: LocalCost, price: float
) -> tuple[float, float, np.ndarray]:
    """:func:`tv_pair` by POT's network simplex on the dense cost between the supports ``sp`` and ``sq``.

    Out-of-window pairs (and pairs dearer than destroying and creating) cost ``2 price``; one extra row and
    column at ``price`` hold the mass difference. Returns the plan's cost, its matched mass and the
    simplex's column potentials (for the dual bound).
    """
    import ot

    mp, mq = float(pf.sum()), float(qf.sum())
    c, inside = _block_cost(h, w, sp, sq, cost)
    moves = inside & (c <= 2 * price)  # in-window pairs no dearer than destroying + creating
    m = np.full((sp.size + 1, sq.size + 1), float(price))
    m[:-1, :-1] = np.where(moves, c, 2 * price)
    m[-1, -1] = 0.0
    a = np.append(pf[sp], max(mq - mp, 0.0))
    b = np.append(qf[sq], max(mp - mq, 0.0))
    plan, log = ot.emd(a, b, m, numItermax=10_000_000, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"network simplex did not converge: {log.get('warning')}")
    g0 = np.zeros(h * w)
    g0[sq] = log["v"][:-1] - log["v"][-1]
    return float((plan * m).sum()), float(plan[:-1, :-1][moves].sum()), g0


def _tv_sparse(
    pf: np.ndarray, qf: np.ndarray, sp: np.ndarray, sq: np.ndarray, h: int, w: int, cost: LocalCost, price: float
) -> tuple[float, float, np.ndarray]:
    """:func:`tv_pair` by the same network simplex on the in-window pairs only (POT with a sparse cost), the
    extra node holding the full masses. Returns as :func:`_tv_dense`."""
    import ot
    from scipy.sparse import coo_matrix

    mp, mq = float(pf.sum()), float(qf.sum())
    src, dst, c, _ = _window_arcs(h, w, cost.offsets(h, w))
    use = (pf[src] > _SUPPORT_EPS) & (qf[dst] > _SUPPORT_EPS) & (c <= 2 * price)
    row_of, col_of = np.full(h * w, -1), np.full(h * w, -1)
    row_of[sp], col_of[sq] = np.arange(sp.size), np.arange(sq.size)
    rows = np.concatenate([row_of[src[use]], np.arange(sp.size), np.full(sq.size + 1, sp.size)])
    cols = np.concatenate([col_of[dst[use]], np.full(sp.size, sq.size), np.arange(sq.size), [sq.size]])
    vals = np.concatenate([c[use], np.full(sp.size + sq.size, float(price)), [0.0]])
    m = coo_matrix((vals, (rows, cols)), shape=(sp.size + 1, sq.size + 1)).tocsr()
    a, b = np.append(pf[sp], mq), np.append(qf[sq], mp)
    plan, log = ot.emd(a, b, m, numItermax=10_000_000, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"network simplex did not converge: {log.get('warning')}")
    plan = plan.tocoo()
    cij = np.asarray(m[plan.row, plan.col]).ravel()
    g0 = np.zeros(h * w)
    g0[sq] = log["v"][:-1] - log["v"][-1]
    return float((plan.data * cij).sum()), float(plan.data[(plan.row < sp.size) & (plan.col < sq.size)].sum()), g0


def _tv_flow(p: np.ndarray, q: np.ndarray, cost: LocalCost, price: float) -> TVPair:
    """:func:`tv_pair` by the grid min-cost flow with the extra node, solved again with tight tolerances
    when the bracket ``[lower, raw]`` is wider than ``_BRACKET`` relative."""
    sol = _grid_flow_solve(p, q, cost, price)
    raw, transported = _flow_plan_cost(sol, p, q, price)
    g0 = -np.asarray(sol.potential) if sol.potential is not None else np.zeros(p.size)
    lower = _tv_dual_bound(p, q, g0, cost, price)
    if raw - lower > _BRACKET * raw:
        sol = _grid_flow_solve(p, q, cost, price, tight=True)
        raw2, tr2 = _flow_plan_cost(sol, p, q, price)
        if raw2 < raw:
            raw, transported = raw2, tr2
        if sol.potential is not None:
            lower = max(lower, _tv_dual_bound(p, q, -np.asarray(sol.potential), cost, price))
    return TVPair(raw, min(lower, raw), transported)


@functools.cache
def _sparse_emd() -> bool:
    """Whether POT's network simplex takes a sparse cost (only the listed pairs are arcs; POT >= 0.9.6)."""
    import ot
    from scipy.sparse import coo_matrix

    try:
        m = coo_matrix((np.array([0.0, 1.0]), (np.array([0, 1]), np.array([0, 1]))), shape=(2, 2))
        plan = ot.emd(np.array([0.5, 0.5]), np.array([0.5, 0.5]), m)
    except Exception:  # older POT: dense costs only
        return False
    return bool(hasattr(plan, "tocoo"))


def _flow_plan_cost(sol: _Flow, p: np.ndarray, q: np.ndarray, price: float) -> tuple[float, float]:
    """Cost and matched mass of the plan read off a grid flow (a feasible plan: an upper bound).

    Negative round-off is dropped, the arcs leaving a pixel are scaled down where it would send more than
    it holds and those entering one where it would receive more than it may, the rest of each pixel's
    mass stays in place and what is left over is destroyed or created.
    """
    h, w = p.shape
    n = h * w
    a, b = p.ravel().astype(np.float64), q.ravel().astype(np.float64)
    src, dst, c, kind = _window_arcs(h, w, sol.offsets)
    f = np.clip(sol.flow[kind, src], 0.0, None)
    out = np.bincount(src, f, n)
    f *= np.where(out > a, a / np.where(out > a, out, 1.0), 1.0)[src]
    inn = np.bincount(dst, f, n)
    f *= np.where(inn > b, b / np.where(inn > b, inn, 1.0), 1.0)[dst]
    out, inn = np.bincount(src, f, n), np.bincount(dst, f, n)
    stay = np.clip(np.minimum(a - out, b - inn), 0.0, None)
    matched = float(f.sum() + stay.sum())
    return float((f * c).sum() + price * (a.sum() + b.sum() - 2 * matched)), matched


def _tv_dual_bound(p: np.ndarray, q: np.ndarray, g: np.ndarray, cost: LocalCost, price: float) -> float:
    """A certified lower bound on :func:`tv_pair`'s optimum from any potential ``g`` on the perturbed side.

    By LP duality ``D = max <f, p> + <g, q>`` over ``f, g <= price`` with ``f_i + g_j <= C_ij`` for in-window
    pairs (``i = j`` included, ``C_ii = 0``; only pixels holding mass count). Any ``g`` is made feasible by
    alternating window c-transforms ``f = min(price, min_j C_ij - g_j)``, ``g = min(price, min_i C_ij - f_i)``
    (each a k x k minimum on the grid), and the dual objective at the result bounds ``D`` from below.
    """
    h, w = p.shape
    r = cost.radius(h, w)
    offsets = cost.offsets(h, w)
    has_p, has_q = p.ravel() > _SUPPORT_EPS, q.ravel() > _SUPPORT_EPS

    def transform(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
        pad = np.full((h + 2 * r, w + 2 * r), -np.inf)
        pad[r : r + h, r : r + w] = np.where(mask, v, -np.inf).reshape(h, w)
        best = np.full((h, w), np.inf)
        for di, dj, c in offsets:
            np.minimum(best, c - pad[r + di : r + di + h, r + dj : r + dj + w], out=best)
        return np.minimum(best.ravel(), price)

    g = np.minimum(np.asarray(g, dtype=np.float64), price)
    f = transform(g, has_q)
    g = transform(f, has_p)
    f = transform(g, has_q)
    return float((f[has_p] * p.ravel()[has_p]).sum() + (g[has_q] * q.ravel()[has_q]).sum())


def exact_ot(x: torch.Tensor, z: torch.Tensor, cost: LocalCost) -> MeterResult:
    """Exact OT cost between mass-normalised ``x`` (clean) and ``z`` (perturbed), per example.

    Args:
        x, z: ``(B, C, H, W)`` images in ``[0, 1]`` (as :func:`~sinkhorn_attacks.projections.uot.uot_project`
            requires; any device; computed on CPU in float64).
        cost: the local ground cost; the value is in its units (``p=1``: W1, ``p=2``: W2^2) on images
            normalised to total mass 1.
    Returns:
        :class:`MeterResult` with ``.value`` (``inf`` where no in-window plan exists) and ``.mass_change``.
        Degenerate pairs follow the convention ``min over no plan = inf``: an all-zero ``z`` (or a channel of
        ``z`` empty where ``x``'s holds mass) against a non-zero ``x`` reads ``inf``, an all-zero ``x``
        against a non-zero ``z`` reads ``inf`` (``mass_change`` ``inf``), two all-zero images read ``0``;
        never NaN.
    """
    check_images(x, "x")
    check_images(z, "z")
    check_same(x, z, "x", "z")
    check_cost(cost)
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


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """Generalised KL ``sum p log(p/q) - p + q`` (``>= 0``: rounding below 0 is cut, as ``tau`` may be huge;
    NaN from an overflowing ratio reads ``inf``)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        v = float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0) - p + q))
    return math.inf if math.isnan(v) else max(v, 0.0)


def _kl_uot_objective(plan: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, tau: float) -> float:
    """``<P,C> + tau KL(P1|a) + tau KL(P^T1|b)`` (``c``: 0 where ``plan`` is 0 by construction)."""
    return float((plan * c).sum()) + tau * (_kl(plan.sum(1), a) + _kl(plan.sum(0), b))


def _uot_pair(a: np.ndarray, b: np.ndarray, c: np.ndarray, tau: float, max_iter: int, tol: float) -> float:
    """:func:`exact_uot` of one channel pair (flat raw masses; ``c`` dense, ``+inf`` outside the window).

    ``U_tau`` is positively homogeneous, so the pair is solved at unit scale (an exact power of two; masses near
    1e-200 crashed the network simplex). Candidates, the lowest wins: the empty plan, the exact balanced plan
    rescaled to ``a``'s mass (valued with its exact marginals: at large ``tau`` the rounding of its sums,
    times ``tau``, would exceed the cost itself) and the MM solver from POT's start and from that plan.
    """
    import ot

    if a.sum() == 0 and b.sum() == 0:
        return 0.0
    e = _unit_exponent(max(float(a.sum()), float(b.sum())))
    a, b = np.ldexp(a, e), np.ldexp(b, e)
    sa, sb = a > 0, b > 0
    if not sa.any() or not sb.any():
        return math.ldexp(tau * float(a.sum() + b.sum()), -e)
    aa, bb = a[sa], b[sb]
    cc = c[np.ix_(sa, sb)]
    inside = np.isfinite(cc)
    c0 = np.where(inside, cc, 0.0)
    big = float(c0.max() + 1.0) * 1e3 + 1e3  # out-of-window pairs for the network simplex (never a 1e6 tau)
    b_bal = bb * (aa.sum() / bb.sum())
    balanced = ot.emd(aa, b_bal, np.where(inside, cc, big), numItermax=10_000_000)
    values = [tau * float(aa.sum() + bb.sum())]
    if not (balanced[~inside] > 1e-12 * aa.sum()).any():  # a windowed plan exists
        values.append(float((balanced * c0).sum()) + tau * _kl(b_bal, bb))
    for start in (None, balanced):  # +inf outside the window: MM's kernel is exactly 0 there
        plan = ot.unbalanced.mm_unbalanced(aa, bb, cc, reg_m=tau, div="kl", G0=start, numItermax=max_iter,
                                           stopThr=tol)  # fmt: skip
        values.append(_kl_uot_objective(plan, aa, bb, c0, tau))
    return math.ldexp(min(values), -e)


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
    Every MM step lowers the objective, so the solver is run twice, from POT's default start and from the
    exact balanced plan between ``x`` and ``z`` rescaled to the mass of ``x`` (whose objective is the
    balanced cost plus the KL price of the rescaling), and the lowest of these and the empty plan's value is
    returned: for large ``tau``, where MM steps are tiny, the result never exceeds that balanced bound
    (:func:`_uot_pair`). Returns ``(B,)`` float64, summed over channels.
    """
    max_iter = check_count(max_iter, "max_iter")
    tol = check_nonnegative(tol, "tol")
    check_measure(x, "x")
    check_measure(z, "z")
    check_same(x, z, "x", "z")
    check_cost(cost)
    tau = check_positive(tau, "tau")
    c = cost.dense(*x.shape[-2:]).numpy()
    out = []
    for xb, zb in zip(x.detach().double().cpu().numpy(), z.detach().double().cpu().numpy()):
        out.append(sum(_uot_pair(xc.ravel(), zc.ravel(), c, tau, max_iter, tol) for xc, zc in zip(xb, zb)))
    return torch.tensor(out, dtype=torch.float64)
