"""The yardstick ball in plan coordinates: a local plan plus destroyed and created mass, and its projection.

A point of the ball around a clean image ``x`` (B, C, H, W) is a triple ``(pi, d, c)``:

* ``pi`` (B, C, K, H, W): a local plan stored per source pixel as in :mod:`.coupling` (``pi[..., o, i]`` is
  the mass sent from pixel ``i`` to ``i + delta_o``, zero offset first = mass that stays);
* ``d`` (B, C, H, W): clean mass destroyed at each pixel; ``c`` (B, C, H, W): mass created at each pixel.

The perturbed image and the cost are::

    z(pi, c)        = pi^T 1 + c                        (= x - outflow + inflow - d + c)
    cost(pi, d, c)  = <C, pi> + price (sum d + sum c)

and the ball of budget ``beta`` (raw units) is::

    S(x, beta) = { pi >= 0 on in-image offsets, d >= 0, pi 1 + d = x, 0 <= c <= cap, cost <= beta }

with ``cap = 1 - x`` (creation never lifts a pixel above 1 by itself). Every point of ``S`` is a feasible
plan of the yardstick's linear programme for the pair ``(x, z)`` (the matched mass is ``pi``, the rest of
``x`` is destroyed, the rest of ``z`` created), so the yardstick reading satisfies ``D(x, z) <= cost``.

* :func:`project_ball`: the exact Euclidean projection onto ``S``. With a multiplier ``mu >= 0`` for the
  budget, each source row ``(pi[:, i], d_i)`` is projected onto the simplex ``{v >= 0, sum v = x_i}`` after
  the shift ``-mu (C, price)`` and ``c = clip(c~ - mu price, 0, cap)``; ``cost(mu)`` is non-increasing and
  piecewise linear, and ``mu`` is found by a bracketed Newton iteration on it (exact on each linear piece,
  bisection as the safeguard), warm-started from the previous call. Only rows with clean mass are projected
  (by the active-set iteration of :func:`~.coupling.simplex_threshold`, started from the previous trial's
  thresholds), and each trial ``mu`` is evaluated only for the examples whose budget is not yet met.
* :func:`repair_box`: makes ``z <= 1`` without raising the cost: created mass is removed first where a pixel
  overflows, then the mass carried into it is sent back to its sources (Wu et al.'s return-to-source rule,
  extended to created mass), in rounds until no pixel overflows.
* :func:`plan_image`, :func:`plan_cost`, :func:`identity_plan`: the image and cost of a point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ot.cost import LocalCost
from ..ot.kernel import gather_window, offset_costs, scatter_window, valid_offsets
from .coupling import simplex_threshold

__all__ = [
    "BallPoint",
    "identity_plan",
    "plan_image",
    "plan_cost",
    "project_ball",
    "repair_box",
    "ball_lmo",
    "row_weights",
]

_BOX_MARGIN = 1e-9  # overflowing pixels are brought this far below 1 (float64), so rounding stays <= 1


@dataclass
class BallPoint:
    """A point ``(pi, d, c)`` of the yardstick ball (see the module docstring), float64."""

    pi: torch.Tensor  # (B, C, K, H, W)
    destroyed: torch.Tensor  # (B, C, H, W)
    created: torch.Tensor  # (B, C, H, W)

    def index(self, idx: torch.Tensor) -> BallPoint:
        return BallPoint(self.pi[idx], self.destroyed[idx], self.created[idx])

    def put(self, idx: torch.Tensor, other: BallPoint) -> None:
        self.pi[idx], self.destroyed[idx], self.created[idx] = other.pi, other.destroyed, other.created


def identity_plan(x: torch.Tensor, cost: LocalCost) -> BallPoint:
    """The clean image itself: all mass stays (``pi_ii = x_i``), nothing destroyed or created (float64)."""
    xd = x.detach().to(torch.float64)
    k = len(cost.offsets(x.shape[-2], x.shape[-1]))
    pi = torch.zeros(xd.shape[:-2] + (k,) + xd.shape[-2:], dtype=torch.float64, device=x.device)
    pi[..., 0, :, :] = xd
    return BallPoint(pi, torch.zeros_like(xd), torch.zeros_like(xd))


def plan_image(p: BallPoint, cost: LocalCost) -> torch.Tensor:
    """``z = pi^T 1 + c`` (B, C, H, W), float64."""
    return scatter_window(p.pi, cost) + p.created


def row_weights(cost: LocalCost, height: int, width: int, price: float, device=None) -> torch.Tensor:
    """Per-entry cost of a source row ``(offsets..., destroy)``: ``(K + 1,)`` float64."""
    c = offset_costs(cost, height, width, dtype=torch.float64, device=device or "cpu").reshape(-1)
    return torch.cat([c, torch.tensor([float(price)], dtype=torch.float64, device=c.device)])


def plan_cost(p: BallPoint, cost: LocalCost, price: float) -> torch.Tensor:
    """``<C, pi> + price (sum d + sum c)`` per example (summed over channels), float64."""
    c = offset_costs(cost, p.pi.shape[-2], p.pi.shape[-1], dtype=p.pi.dtype, device=p.pi.device)
    return (p.pi * c).flatten(1).sum(1) + price * (p.destroyed.flatten(1).sum(1) + p.created.flatten(1).sum(1))


@dataclass
class _Rows:
    """The source rows holding clean mass, gathered once per projection: ``(N, K + 1)``."""

    u: torch.Tensor  # values to project (pi entries then d), invalid offsets anywhere
    valid: torch.Tensor  # (N, K + 1) bool
    s: torch.Tensor  # (N,) row sums x_i
    owner: torch.Tensor  # (N,) example index
    where: torch.Tensor  # (B, C, H, W) bool: which pixels are rows


def _rows(p: BallPoint, x: torch.Tensor, cost: LocalCost) -> _Rows:
    h, w = x.shape[-2:]
    where = x > 0
    full = torch.cat([p.pi, p.destroyed.unsqueeze(-3)], dim=-3)  # (B, C, K+1, H, W)
    u = full.movedim(-3, -1)[where]  # (N, K+1)
    mask = valid_offsets(cost, h, w, device=x.device)
    mask = torch.cat([mask, torch.ones_like(mask[:1])], dim=0).movedim(0, -1)  # (H, W, K+1)
    valid = mask.expand(where.shape + (mask.shape[-1],))[where]
    owner = torch.arange(x.shape[0], device=x.device).reshape(-1, 1, 1, 1).expand_as(where)[where]
    return _Rows(u, valid, x.to(torch.float64)[where], owner, where)


def project_ball(
    p: BallPoint,
    x: torch.Tensor,
    cost: LocalCost,
    price: float,
    budget: torch.Tensor,
    *,
    mu0: torch.Tensor | None = None,
    rtol: float = 1e-9,
    max_iter: int = 100,
) -> tuple[BallPoint, torch.Tensor]:
    """Exact Euclidean projection of ``p`` (any real values) onto ``S(x, budget)``; returns ``(point, mu)``.

    Args:
        p: the point to project (float64; entries on offsets leaving the image are ignored).
        x: clean images (B, C, H, W) in [0, 1].
        cost, price: the yardstick's ground cost and its price per unit of destroyed or created mass.
        budget: (B,) raw budgets ``beta >= 0``.
        mu0: (B,) warm start for the budget multiplier (e.g. the previous call's).
        rtol: the multiplier is accepted once ``beta (1 - rtol) <= cost <= beta`` (or ``mu = 0`` is feasible).
        max_iter: cap on evaluations of ``cost(mu)`` per example (bracketed Newton; never reached in practice:
            the iteration is exact on each linear piece).
    Returns:
        The projected point, whose cost is at most ``budget`` (the returned ``mu`` is always on the feasible
        side), and the multiplier ``mu`` (B,).
    """
    B = x.shape[0]
    dev = x.device
    budget = torch.as_tensor(budget, dtype=torch.float64, device=dev).reshape(-1).expand(B)
    if bool((budget < 0).any()) or not bool(torch.isfinite(budget).all()):
        raise ValueError("budget must be finite and >= 0")
    h, w = x.shape[-2:]
    wt = row_weights(cost, h, w, price, dev)
    rows = _rows(p, x, cost)
    evaluate = _BallCost(rows, wt, p.created, (1.0 - x.to(torch.float64)).clamp_min(0), price)
    mu, v, c = _ball_multiplier(evaluate, budget, mu0, rtol, max_iter)
    full = torch.zeros(rows.where.shape + (wt.numel(),), dtype=torch.float64, device=dev)
    full[rows.where] = v
    full = full.movedim(-1, -3)
    return BallPoint(full[..., :-1, :, :].contiguous(), full[..., -1, :, :].contiguous(), c), mu


@dataclass
class _Evaluation:
    """:class:`_BallCost` at one ``mu`` for the examples asked: cost and slope (B,), and the point's rows and
    created mass for those examples only (in their order); ``picked``: the indices of those rows among all
    rows (None: all of them)."""

    cost: torch.Tensor
    slope: torch.Tensor
    rows: torch.Tensor
    created: torch.Tensor
    picked: torch.Tensor | None


class _BallCost:
    """``mu -> cost(mu)`` of :func:`project_ball`'s point at multiplier ``mu`` (B,), with its slope and point.

    Rows: the projection of ``u - mu w`` onto the simplex (:func:`~.coupling.simplex_threshold`, started from
    each row's threshold at the previous trial less ``max(mu - mu', 0) max w``, a lower bound since no entry
    falls further); creation ``c = clip(c_p - mu price, 0, 1 - x)``; ``cost = sum_rows <v, w> + price sum c``,
    and its slope on the current linear piece, ``-(sum_A w^2 - (sum_A w)^2 / |A|)`` per row (``A``: the row's
    positive entries) and ``-price^2`` per unclipped creation entry. ``only`` (B,) bool restricts the work to
    those examples (the others read 0); when it holds every example, nothing is copied.
    """

    def __init__(self, rows: _Rows, wt: torch.Tensor, created: torch.Tensor, cap: torch.Tensor, price: float):
        self.rows, self.wt, self.ct, self.cap, self.price = rows, wt, created, cap, price
        self.u = torch.where(rows.valid, rows.u, torch.full_like(rows.u, -math.inf))  # excluded entries: -inf
        self.w_max = wt.amax()
        self._tau: torch.Tensor | None = None  # each row's threshold at its last trial, and that trial's mu
        self._mu = torch.zeros_like(rows.s)

    def __call__(self, mu: torch.Tensor, only: torch.Tensor | None = None) -> _Evaluation:
        rows, wt, price = self.rows, self.wt, self.price
        u, s, owner, ct, cap, mu_x = self.u, rows.s, rows.owner, self.ct, self.cap, mu
        picked = None
        if only is not None and bool(only.all()):
            only = None
        if only is not None:
            picked = only[owner].nonzero().squeeze(1)
            u, s, owner = u[picked], s[picked], owner[picked]
            ct, cap, mu_x = ct[only], cap[only], mu[only]
        mu_row = mu[owner]
        a = u - mu_row[:, None] * wt[None, :]
        lower = None
        if self._tau is not None:
            tau0, mu0 = (self._tau, self._mu) if picked is None else (self._tau[picked], self._mu[picked])
            lower = tau0 - (mu_row - mu0).clamp_min(0) * self.w_max
        tau = simplex_threshold(a, s, lower=lower)
        if picked is None:
            self._tau, self._mu = tau, mu_row
        elif self._tau is not None:
            self._tau, self._mu = self._tau.index_copy(0, picked, tau), self._mu.index_copy(0, picked, mu_row)
        v = (a - tau[:, None]).clamp_min(0)
        shifted = ct - mu_x.reshape(-1, 1, 1, 1) * price
        c = torch.minimum(shifted.clamp_min(0), cap)
        act = (v > 0).to(v.dtype)
        sw = act @ wt
        per_row = torch.stack([v @ wt, sw * sw / act.sum(1).clamp_min(1) - act @ (wt * wt)], 1)
        fs = torch.zeros(mu.shape[0], 2, dtype=torch.float64, device=mu.device).index_add_(0, owner, per_row)
        free = ((shifted > 0) & (shifted < cap)).flatten(1).sum(1)
        creation = torch.stack([price * c.flatten(1).sum(1), -price * price * free], 1)
        if only is None:
            fs = fs + creation
        else:
            fs[only] += creation
        return _Evaluation(fs[:, 0], fs[:, 1], v, c, picked)


def _ball_multiplier(
    evaluate: _BallCost, budget: torch.Tensor, mu0: torch.Tensor | None, rtol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The budget multiplier ``mu`` (B,) of :func:`project_ball` and the point there (rows, created mass).

    ``mu = 0`` where ``cost(0) <= budget``, else the feasible end of a bracket ``[lo, hi]`` narrowed by Newton
    steps ``mu + (cost - budget) / -slope`` (bisection where a step leaves the bracket), until
    ``budget (1 - rtol) <= cost <= budget``. The first candidate is the warm start ``mu0`` where it lies inside
    the bracket, else 0; ``mu = 0`` is tried once a Newton step from a feasible point leaves the bracket on
    the left. Each step evaluates only the examples not yet settled, and the point at each example's feasible
    end is kept as it is found. ``hi`` starts at the multiplier above which every row keeps its mass in place
    and nothing is created.
    """
    rows, wt, ct, price = evaluate.rows, evaluate.wt, evaluate.ct, evaluate.price
    zero = torch.zeros_like(budget)
    # mu_max: every row keeps its mass in place (all other entries below the stay entry by x_i), no creation
    gap = (rows.u[:, :] - rows.u[:, :1] + rows.s[:, None]) / wt.clamp_min(1e-300)[None, :]
    gap = torch.where(rows.valid & (wt[None, :] > 0), gap, torch.full_like(gap, -math.inf)).amax(1)
    hi = torch.zeros_like(budget).scatter_reduce_(0, rows.owner, gap, "amax")
    hi = torch.maximum(hi, (ct / price).flatten(1).amax(1)).clamp_min(0) * (1 + 1e-12) + 1e-300
    lo = zero.clone()
    cur = zero.clone()
    if mu0 is not None:
        m0 = torch.as_tensor(mu0, dtype=torch.float64, device=budget.device).reshape(-1).expand(budget.shape[0])
        cur = torch.where((m0 > 0) & (m0 < hi), m0, cur)
    tried_zero = torch.zeros_like(budget, dtype=torch.bool)
    done = torch.zeros_like(tried_zero)
    best = hi.clone()  # the feasible end of each bracket
    stored = torch.zeros_like(tried_zero)  # examples whose point at `best` is in (v_best, c_best)
    v_best, c_best = torch.zeros_like(rows.u), torch.zeros_like(ct)
    for _ in range(max_iter):
        open_ = ~done
        e = evaluate(cur, open_)
        feas = e.cost <= budget
        at_zero = cur == 0
        tried_zero |= open_ & at_zero
        hit = feas & ((e.cost >= budget * (1 - rtol)) | at_zero)
        better = open_ & feas
        lo = torch.where(open_ & ~feas, torch.maximum(lo, cur), lo)
        hi = torch.where(better, torch.minimum(hi, cur), hi)
        best = torch.where(better, cur, best)
        take = better[rows.owner if e.picked is None else rows.owner[e.picked]]
        v_best[take if e.picked is None else e.picked[take]] = e.rows[take]
        c_best[better] = e.created[better if e.picked is None else better[open_]]
        stored |= better
        done = done | hit | ((hi - lo) <= 1e-15 * hi)
        if bool(done.all()):
            break
        nxt = cur + (e.cost - budget) / (-e.slope).clamp_min(1e-300)
        step = torch.where((nxt > lo) & (nxt < hi) & (e.slope < 0), nxt, 0.5 * (lo + hi))
        cur = torch.where(feas & (nxt <= lo) & ~tried_zero, zero, step)
    if not bool(stored.all()):  # an example whose bracket never had a feasible evaluation: its point at hi
        e = evaluate(best, ~stored)
        v_best[(~stored)[rows.owner] if e.picked is None else e.picked] = e.rows
        c_best[~stored] = e.created
    return best, v_best, c_best


def repair_box(p: BallPoint, cost: LocalCost, *, max_rounds: int = 200) -> BallPoint:
    """Make ``z = pi^T 1 + c <= 1`` without raising the cost (float64, a new point).

    Where a pixel overflows by ``e``, created mass there is removed first (up to ``e``), then the mass carried
    into it from other pixels is scaled down by the remaining overflow over that inflow and left at its
    sources (on the zero offset). Row sums stay ``x - d``, every entry stays ``>= 0`` and the cost can only
    fall; a source that now overflows is treated in the next round (with ``c <= 1 - x`` a pixel's own
    staying mass never overflows it, so the rounds end). Overflowing pixels are brought to ``1 - 1e-9``.
    """
    pi, d, c = p.pi.clone(), p.destroyed.clone(), p.created.clone()
    idx = torch.arange(pi.shape[0], device=pi.device)  # examples still overflowing somewhere
    for _ in range(max_rounds):
        pa, ca = pi[idx], c[idx]
        col = scatter_window(pa, cost)
        over = col + ca - 1.0
        bad = (over > 0).flatten(1).any(1)
        if not bool(bad.any()):
            break
        idx, pa, ca, col, over = idx[bad], pa[bad], ca[bad], col[bad], over[bad]
        excess = torch.where(over > 0, over + _BOX_MARGIN, torch.zeros_like(over))
        cut = torch.minimum(ca, excess)
        ca = ca - cut
        excess = excess - cut
        incoming = col - pa[..., 0, :, :]
        frac = torch.where(excess > 0, (excess / incoming.clamp_min(1e-300)).clamp(max=1.0), torch.zeros_like(col))
        take = pa * gather_window(frac, cost, fill=0.0)
        take[..., 0, :, :] = 0
        pa = pa - take
        pa[..., 0, :, :] += take.sum(-3)
        pi[idx], c[idx] = pa, ca
    return BallPoint(pi, d, c)


def ball_lmo(
    g_pi: torch.Tensor, g_c: torch.Tensor, x: torch.Tensor, cost: LocalCost, price: float, budget: torch.Tensor
) -> BallPoint:
    """Linear maximisation over ``S(x, budget)``: ``argmax <g_pi, pi> + <g_c, c>`` (``d`` has no gain).

    A fractional knapsack: every source row offers its best move per unit cost (from staying to another
    offset or to destruction, gain ``g_pi[o] - g_pi[0]``, capacity ``x_i``), every pixel offers creation (gain
    ``g_c``, cost ``price``, capacity ``1 - x``); the items are taken by decreasing gain per unit cost until the
    budget is spent (the last one in part).
    """
    B = x.shape[0]
    dev = x.device
    h, w = x.shape[-2:]
    wt = row_weights(cost, h, w, price, dev)  # (K+1,)
    p = identity_plan(x, cost)
    rows = _rows(BallPoint(g_pi, torch.zeros_like(g_c), g_c), x, cost)  # u = gains of (offsets, destroy)
    gain = rows.u - rows.u[:, :1]
    ratio = torch.where(rows.valid & (wt[None, :] > 0) & (gain > 0), gain / wt.clamp_min(1e-300)[None, :], -1.0)
    best_r, best_e = ratio.max(1)
    cap = (1.0 - x.to(torch.float64)).clamp_min(0)
    cr = torch.where((g_c > 0) & (cap > 0), g_c / price, torch.full_like(g_c, -1.0)).flatten(1)  # (B, M)
    # one padded item list per example: rows first, then pixels
    n_rows = torch.bincount(rows.owner, minlength=B)
    width = int(n_rows.max()) if rows.owner.numel() else 0
    slot = torch.arange(rows.owner.numel(), device=dev) - torch.cumsum(n_rows, 0).sub(n_rows)[rows.owner]
    r_ratio = torch.full((B, width), -1.0, dtype=torch.float64, device=dev)
    r_cost = torch.zeros((B, width), dtype=torch.float64, device=dev)
    r_ratio[rows.owner, slot] = best_r
    r_cost[rows.owner, slot] = rows.s * wt[best_e]
    ratio_all = torch.cat([r_ratio, cr], 1)
    cost_all = torch.cat([r_cost, cap.flatten(1) * price], 1)
    order = torch.argsort(ratio_all, 1, descending=True)
    rs, cs = ratio_all.gather(1, order), cost_all.gather(1, order)
    cs = torch.where(rs > 0, cs, torch.zeros_like(cs))
    before = torch.cumsum(cs, 1) - cs
    frac_sorted = ((budget[:, None] - before) / cs.clamp_min(1e-300)).clamp(0, 1)
    frac_sorted = torch.where(cs > 0, frac_sorted, torch.zeros_like(frac_sorted))
    frac = torch.zeros_like(frac_sorted).scatter_(1, order, frac_sorted)
    # rows: move frac * x_i from staying to the best entry
    fr = frac[rows.owner, slot]
    full = torch.zeros(rows.where.shape + (wt.numel(),), dtype=torch.float64, device=dev)
    v = torch.zeros_like(rows.u)
    v[:, 0] = rows.s * (1 - fr)
    v[torch.arange(v.shape[0], device=dev), best_e] += rows.s * fr
    full[rows.where] = v
    full = full.movedim(-1, -3)
    p.pi = full[..., :-1, :, :].contiguous()
    p.destroyed = full[..., -1, :, :].contiguous()
    p.created = frac[:, width:].reshape(x.shape) * cap
    return p
