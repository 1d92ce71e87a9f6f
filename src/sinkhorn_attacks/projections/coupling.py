"""Local couplings and their projections (Wu, Wang, Yu 2020), on the window shifts of ``ot/kernel.py``.

A local coupling of an image ``x`` (B, C, H, W) is stored per source pixel as ``pi`` (B, C, K, H, W):
``pi[..., d, i]`` is the mass sent from pixel ``i`` to ``i + delta_d`` (``K = k*k`` offsets in the order of
``cost.offsets``, zero offset first). Offsets leaving the image are invalid and carry no mass. Then

    row marginal     pi 1       = pi.sum(K)                         (must equal x)
    column marginal  pi^T 1     = scatter_window(pi)                (the adversarial image)
    cost             <C, pi>    = sum_d c_d pi[d]                   (c_d = |delta_d|^p, pixel units)

Wu's constraint set (raw units, budget on the normalised image)::

    Pi(x, eps) = { pi >= 0,  pi 1 = x,  <C, pi> <= eps ||x||_1 }     [+ pi^T 1 <= 1 with the capacity step]

* Euclidean projection onto ``Pi``: ``pi*(mu) = rowsimplex(G - mu C)`` (each row projected onto
  ``{p >= 0, sum p = x_i}``), ``mu >= 0`` found by bisection so that ``<C, pi*(mu)> = eps ||x||_1``.
* Entropic LMO: ``argmax_{pi 1 = x, <C,pi> <= eps} <G, pi> + gamma H(pi)`` is
  ``pi*(mu)_i = x_i softmax_d((G_id - mu c_d) / gamma)``, ``mu`` again by bisection.
* Capacity-constrained projection: adds ``pi^T 1 <= 1`` with a column dual ``nu >= 0``:
  ``pi*(mu, nu) = rowsimplex(G - mu C - gather_window(nu))``, projected (momentum) dual ascent on ``nu``.
"""

from __future__ import annotations

import math

import torch

from ..ot.cost import LocalCost
from ..ot.kernel import gather_window, offset_costs, scatter_window, valid_offsets, window_index, window_max

__all__ = [
    "identity_coupling",
    "column_marginal",
    "coupling_cost",
    "window_mask",
    "simplex_project_flat",
    "simplex_project_rows",
    "dual_projection",
    "entropic_lmo",
    "capacity_projection",
    "repair_capacity",
]


def window_mask(x: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """Valid offsets ``(K, H, W)`` (bool) for images shaped like ``x`` (.., H, W)."""
    return valid_offsets(cost, x.shape[-2], x.shape[-1], device=x.device)


def _cvec(x: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    return offset_costs(cost, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)  # (K, 1, 1)


def identity_coupling(x: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """``pi_ii = x_i`` (no transport): all mass on the zero offset. Shape (B, C, K, H, W)."""
    k = len(cost.offsets(x.shape[-2], x.shape[-1]))
    pi = torch.zeros(x.shape[:-2] + (k,) + x.shape[-2:], dtype=x.dtype, device=x.device)
    pi[..., 0, :, :] = x
    return pi


def column_marginal(pi: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """``pi^T 1``: the transported image (B, C, H, W)."""
    return scatter_window(pi, cost)


def coupling_cost(pi: torch.Tensor, cost: LocalCost) -> torch.Tensor:
    """``<C, pi>`` per example (summed over channels), raw units."""
    c = _cvec(pi, cost)
    return (pi * c).flatten(1).sum(1)


def _b(t: torch.Tensor, nd: int) -> torch.Tensor:
    return t.reshape((-1,) + (1,) * (nd - 1))


def simplex_threshold(
    a: torch.Tensor, s: torch.Tensor, valid: torch.Tensor | None = None, lower: torch.Tensor | None = None
) -> torch.Tensor:
    """The threshold ``tau`` (N,) of the projection of each row ``a[n, :]`` onto ``{p >= 0, sum_e p_e = s_n}``.

    ``tau`` solves ``sum_e max(a_ne - tau, 0) = s_n``; it is found by Michelot's (1986) active-set
    iteration ``tau <- (sum_{a_e > tau} a_e - s) / |{a_e > tau}|``, which rises monotonically from any lower
    bound to the exact threshold in at most E steps (a Newton iteration on a convex piecewise-linear function;
    from a start just above the threshold, e.g. a lower bound off by round-off, its first step lands below
    it). It starts from ``lower`` where given (a lower bound, such as a previous threshold less a bound on how
    far the row fell since), else from the larger of ``(sum_e a_e - s) / E`` and ``max_e a_e - s``, and keeps
    iterating only the rows whose active set still changes. Entries where ``valid`` is False (or ``-inf``)
    are excluded.

    Args:
        a: (N, E) values; s: (N,) non-negative row sums; valid: (N, E) bool or None; lower: (N,) or None.
    """
    if valid is not None:
        a = torch.where(valid, a, torch.full_like(a, -math.inf))
    return _threshold(a, s, valid, lower)


def _threshold(
    a: torch.Tensor, s: torch.Tensor, valid: torch.Tensor | None, lower: torch.Tensor | None
) -> torch.Tensor:
    """:func:`simplex_threshold` of rows already ``-inf`` outside ``valid``."""
    if lower is not None:
        tau = lower
    elif valid is not None:
        total = torch.where(valid, a, torch.zeros_like(a)).sum(-1)
        tau = torch.maximum((total - s) / valid.sum(-1).clamp_min(1), a.amax(-1) - s)
    else:
        tau = torch.maximum((a.sum(-1) - s) / a.shape[-1], a.amax(-1) - s)  # -inf entries: the second bound
    rows, sums, t = a, s, tau
    work: torch.Tensor | None = None  # indices of the rows still iterated (None: all)
    before: torch.Tensor | None = None
    for _ in range(a.shape[-1] + 2):
        active = rows > t[:, None]
        n = active.sum(-1)
        if before is not None:
            moving = n != before  # from a lower bound the active set only shrinks: an unchanged count is final
            k = int(moving.sum())
            if k == 0:
                break
            if 2 * k < moving.numel():
                keep = moving.nonzero().squeeze(1)
                rows, sums, n, active, t = rows[keep], sums[keep], n[keep], active[keep], t[keep]
                work = keep if work is None else work[keep]
        inside = torch.where(active, rows, torch.zeros_like(rows)).sum(-1)
        t = torch.where(n > 0, (inside - sums) / n.clamp_min(1), t)
        tau = t if work is None else tau.index_copy(0, work, t)
        before = n
    return tau


def simplex_project_flat(a: torch.Tensor, s: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Project every row ``a[n, :]`` (N, E) onto ``{p >= 0, sum_e p_e = s_n}``: ``p = max(a - tau_n, 0)``
    with the threshold of :func:`simplex_threshold`. Entries where ``valid`` is False are excluded (0).

    Args:
        a: (N, E) values; s: (N,) non-negative row sums; valid: (N, E) bool or None.
    """
    if valid is not None:
        a = torch.where(valid, a, torch.full_like(a, -math.inf))
    return (a - _threshold(a, s, valid, None)[:, None]).clamp_min(0)


def simplex_project_rows(g: torch.Tensor, s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Project every row ``g[..., :, i]`` (the K axis is dim -3) onto ``{p >= 0, sum_d p_d = s_i}``.

    :func:`simplex_project_flat` on the rows laid out along the last axis. Entries where ``mask`` is False
    are excluded (set to 0).

    Args:
        g: (..., K, H, W); s: (..., H, W) non-negative row sums; mask: (K, H, W) bool or None.
    """
    k = g.shape[-3]
    a = g.movedim(-3, -1)
    valid = None if mask is None else mask.movedim(-3, -1).expand(a.shape).reshape(-1, k)
    sums = s.to(g.dtype).expand(a.shape[:-1]).reshape(-1)
    return simplex_project_flat(a.reshape(-1, k), sums, valid).reshape(a.shape).movedim(-1, -3)


class _RowForm:
    """A projection problem on ``Pi(x)`` laid out one row per source pixel (the offsets last), so that every
    trial multiplier costs one pass over the coupling and no change of layout.

    ``rows(mu, nu) = g - mu C - gather_window(nu)`` as ``(N, K)`` rows (``N = B C H W``), ``-inf`` on the
    offsets that leave the image; :meth:`project` projects them onto ``{p >= 0, sum p = x_i}``, starting the
    threshold iteration from the previous call's thresholds less a bound on how far each row fell:
    ``rows`` changes entrywise by ``-(mu - mu') c_d - (nu - nu')_j >= -max(mu - mu', 0) max_d c_d -
    max_{j in W(i)} (nu - nu')_j``.
    """

    def __init__(self, g: torch.Tensor, x: torch.Tensor, cost: LocalCost) -> None:
        b, _, k, h, w = g.shape
        self.cost, self.shape = cost, g.shape
        self.c = _cvec(x, cost).reshape(k)
        self.c_max = self.c.amax()
        base = torch.where(window_mask(x, cost), g, torch.full_like(g, -math.inf))
        self.base = base.movedim(-3, -1).reshape(b, -1, k)  # (B, C H W, K)
        self.sums = x.reshape(-1)
        self.targets = window_index(cost, h, w, device=g.device)  # (H W, K): i + delta_d, H W outside
        self.sources = window_index(cost, h, w, sign=-1, device=g.device)  # (H W, K): j - delta_d
        self._last: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
        self._window: tuple[torch.Tensor, torch.Tensor] | None = None

    def rows(self, mu: torch.Tensor, nu: torch.Tensor | None = None) -> torch.Tensor:
        a = (self.base - mu.reshape(-1, 1, 1) * self.c).reshape(-1, self.c.shape[0])
        if nu is not None:
            if self._window is None or self._window[0] is not nu:  # one gather per nu (a bisection's trials)
                self._window = (nu, gather_window(nu, self.cost, fill=0.0, last=True).reshape(a.shape))
            a = a.sub_(self._window[1])
        return a

    def project(self, mu: torch.Tensor, nu: torch.Tensor | None = None) -> torch.Tensor:
        """The rows' projection at ``(mu, nu)``, shape ``(N, K)``."""
        a = self.rows(mu, nu)
        lower = None
        if self._last is not None and (nu is None) == (self._last[1] is None):
            mu0, nu0, tau0 = self._last
            fall = ((mu - mu0).clamp_min(0) * self.c_max).reshape(-1, 1)
            if nu is not None and nu0 is not None:
                fall = fall + window_max(nu - nu0, self.cost).reshape(fall.shape[0], -1)
            lower = tau0 - fall.expand(-1, tau0.shape[0] // max(fall.shape[0], 1)).reshape(-1)
        tau = _threshold(a, self.sums, None, lower)
        self._last = (mu, nu, tau)
        return a.sub_(tau[:, None]).clamp_min_(0)

    def refresh(
        self, p: torch.Tensor, col: torch.Tensor, nu: torch.Tensor, limit: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`project` and :meth:`column` at the last call's ``mu`` and a new ``nu``, updating ``p`` (N, K)
        and ``col`` (B, C, H, W) of the last call where ``nu`` changed (in place; ``col`` made contiguous).

        Only the rows whose window holds a pixel where ``nu`` changed are projected again (the others are
        unchanged, their thresholds exact), and only the columns those rows reach are summed again, over the
        offsets in :func:`scatter_window`'s order: the result equals a full :meth:`project` and
        :meth:`column`. Returns ``None`` (nothing done) when more than ``limit`` pixels changed.
        """
        mu, nu0, tau = self._last
        hw = self.targets.shape[0]
        delta = (nu - nu0).reshape(-1, hw)
        changed = delta.ne(0).nonzero()
        if changed.shape[0] > limit:
            return None
        if changed.shape[0]:
            planes, k = delta.shape[0], self.c.shape[0]
            ch = planes // self.shape[0]
            # the rows whose window holds a changed pixel, then the columns those rows reach
            src = self.sources[changed[:, 1]]
            rows = (changed[:, :1] * hw + src)[src < hw].unique()
            plane, pix = rows // hw, rows % hw
            near = self.targets[pix]
            pad = torch.zeros(planes, 1, dtype=nu.dtype, device=nu.device)
            a = self.base.reshape(-1, k)[rows] - mu[plane // ch].unsqueeze(1) * self.c
            a = a.sub_(torch.cat([nu.reshape(planes, hw), pad], 1)[plane.unsqueeze(1), near])
            fall = torch.cat([delta, pad], 1)[plane.unsqueeze(1), near].amax(1)
            t = _threshold(a, self.sums[rows], None, tau[rows] - fall)
            p[rows] = a.sub_(t[:, None]).clamp_min_(0)
            tau = tau.clone().index_copy_(0, rows, t)
            cols = (plane.unsqueeze(1) * hw + near)[near < hw].unique()
            plane, pix = cols // hw, cols % hw
            src = self.sources[pix]
            entries = p[(plane.unsqueeze(1) * hw + src).clamp_max(p.shape[0] - 1), torch.arange(k, device=p.device)]
            entries = torch.where(src < hw, entries, torch.zeros_like(entries))
            total = torch.zeros_like(entries[:, 0])
            for d in range(k):  # the order of scatter_window's sum
                total += entries[:, d]
            col = col.contiguous()
            col.view(-1)[cols] = total
        self._last = (mu, nu, tau)
        return p, col

    def cost_of(self, p: torch.Tensor) -> torch.Tensor:
        """``<C, pi>`` per example (B,)."""
        return (p @ self.c).reshape(self.shape[0], -1).sum(1)

    def column(self, p: torch.Tensor) -> torch.Tensor:
        """``pi^T 1`` (B, C, H, W)."""
        b, ch, _, h, w = self.shape
        return scatter_window(p.reshape(b, ch, h, w, -1), self.cost, last=True)

    def coupling(self, p: torch.Tensor) -> torch.Tensor:
        """The rows back in the coupling's layout (B, C, K, H, W)."""
        b, ch, k, h, w = self.shape
        return p.reshape(b, ch, h, w, k).movedim(-1, -3).contiguous()

    def select(self, keep: torch.Tensor) -> _RowForm:
        """The same problem restricted to the examples ``keep`` (indices), warm state included."""
        b = self.shape[0]
        form = object.__new__(_RowForm)
        form.cost, form.c, form.c_max = self.cost, self.c, self.c_max
        form.targets, form.sources = self.targets, self.sources
        form.shape = (keep.numel(),) + tuple(self.shape[1:])
        form.base = self.base[keep]
        form.sums = self.sums.reshape(b, -1)[keep].reshape(-1)
        form._last, form._window = None, None
        if self._last is not None:
            mu0, nu0, tau0 = self._last
            form._last = (mu0[keep], None if nu0 is None else nu0[keep], tau0.reshape(b, -1)[keep].reshape(-1))
        return form


def _bisect(fn, lo: torch.Tensor, hi: torch.Tensor, target: torch.Tensor, max_iter: int, tol: float, int_tol: float):
    """Per-example bisection on a decreasing ``fn(mu)`` for ``fn(mu) = target``; returns the right end.

    Wu's rule (``utils.bisection_search``), applied per example: the midpoint replaces the left end when
    ``fn(mid) > target`` and the right end otherwise; an example stops once ``|fn(mid) - target| < tol``
    (on either side) or its interval is shorter than ``int_tol``. The right end is returned, which is
    feasible (``fn <= target``) whenever the initial right end is. Wu stops the whole batch together; the
    per-example stop makes each result independent of the other images of the batch.
    """
    done = torch.zeros_like(lo, dtype=torch.bool)
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        val = fn(mid)
        over = val > target
        lo = torch.where(over & ~done, mid, lo)
        hi = torch.where(~over & ~done, mid, hi)
        done |= ((val - target).abs() < tol) | ((hi - lo) < int_tol)
        if bool(done.all()):
            break
    return hi


def dual_projection(
    g: torch.Tensor,
    x: torch.Tensor,
    cost: LocalCost,
    budget: torch.Tensor,
    *,
    max_iter: int = 25,
    tol: float = 1e-4,
    int_tol: float = 1e-4,
    check_zero: bool = True,
) -> torch.Tensor:
    """Euclidean projection of ``g`` (B, C, K, H, W) onto ``Pi(x)`` with ``<C, pi> <= budget`` (B,).

    ``pi(mu) = rowsimplex(g - mu C)``; if ``pi(0)`` is within budget it is the answer, otherwise ``mu``
    is bisected on ``[0, 2 ||g||_inf + ||x||_inf]`` (Wu's bracket) until ``|<C,pi> - budget| < tol`` or
    the interval is below ``int_tol`` (at most ``max_iter`` halvings), returning the right (feasible) end.
    ``check_zero=False`` skips the ``mu = 0`` test as Wu's code does: an inactive budget is then bisected
    down to ``mu ~ int_tol`` instead of 0, so the result is off the exact projection by ``~int_tol * C``.
    """
    form = _RowForm(g, x, cost)
    zero = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
    p0 = form.project(zero)
    ok = form.cost_of(p0) <= budget
    if not check_zero:
        ok = torch.zeros_like(ok)
    elif bool(ok.all()):
        return form.coupling(p0)
    hi = 2 * g.flatten(1).abs().amax(1) + x.flatten(1).amax(1)
    mu = _bisect(lambda m: form.cost_of(form.project(m)), zero, hi, budget, max_iter, tol, int_tol)
    return form.coupling(form.project(torch.where(ok, zero, mu)))


def entropic_lmo(
    g: torch.Tensor,
    x: torch.Tensor,
    cost: LocalCost,
    budget: torch.Tensor,
    gamma: float = 1e-3,
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    int_tol: float = 1e-4,
    check_zero: bool = True,
) -> torch.Tensor:
    """Entropy-smoothed linear maximisation oracle over ``Pi(x)`` (Wu's dual LMO).

    ``pi*(mu)[d, i] = x_i softmax_d((g[d, i] - mu c_d) / gamma)``; ``mu = 0`` if that is within budget,
    else bisection on Wu's bracket ``[0, max(0, 2 ||g||_inf + gamma log(sum_i x_i sum_d c_d(i) / budget))]``
    (``sum_d`` over the offsets that stay inside the image; the bracket is widened by doubling in the rare
    case that its right end is still infeasible), returning the right end. ``check_zero`` as in
    :func:`dual_projection`.
    """
    mask = window_mask(x, cost)
    c = _cvec(x, cost)
    nd = g.dim()
    g_in = torch.where(mask, g, torch.full_like(g, -math.inf))  # -inf stays -inf under (. - mu c) / gamma

    def lmo(mu: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-3) * torch.softmax((g_in - _b(mu, nd) * c) / gamma, dim=-3)

    zero = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
    p0 = lmo(zero)
    ok = coupling_cost(p0, cost) <= budget
    if not check_zero:
        ok = torch.zeros_like(ok)
    elif bool(ok.all()):
        return p0
    row_cost = (c * mask).sum(-3)  # (H, W): sum of the costs of the valid offsets of each pixel
    total = (x * row_cost).flatten(1).sum(1)
    hi = (2 * g.flatten(1).abs().amax(1) + gamma * torch.log(total / budget.clamp_min(1e-30))).clamp_min(0)
    hi = torch.where(hi > 0, hi, torch.full_like(hi, 1e-12))
    for _ in range(60):
        bad = coupling_cost(lmo(hi), cost) > budget
        if not bool(bad.any()):
            break
        hi = torch.where(bad, hi * 2, hi)
    mu = _bisect(lambda m: coupling_cost(lmo(m), cost), zero, hi, budget, max_iter, tol, int_tol)
    return torch.where(_b(ok, nd), p0, lmo(torch.where(ok, zero, mu)))


def capacity_projection(
    g: torch.Tensor,
    x: torch.Tensor,
    cost: LocalCost,
    budget: torch.Tensor,
    *,
    capacity: float = 1.0,
    iterations: int = 5000,
    momentum: float = 0.9,
    bisect_every: int = 20,
    max_bisect: int = 50,
    tol: float = 1e-4,
    check_zero: bool = True,
) -> torch.Tensor:
    """Wu's capacity-constrained projection: ``Pi(x)`` plus ``pi^T 1 <= capacity`` (pixels stay <= 1).

    Dual ascent with Nesterov-style extrapolation on the column multiplier ``nu`` (started at 1), as in
    Wu et al.'s post-processing: with ``pi(mu, nu) = rowsimplex(g - mu C - gather_window(nu))``,

        y_t = max(nu_t + eta_t (pi(mu, nu_t)^T 1 - capacity), 0),   nu_{t+1} = y_t + momentum (y_t - y_{t-1}),

    ``eta = 0.1 / 0.01 / 0.001`` up to 20 % / 60 % / the rest of the iterations, the cost multiplier ``mu``
    re-bisected (``max_bisect`` halvings, tolerance ``tol``) every ``bisect_every`` iterations, and after the
    loop ``nu = y`` and a final bisection so that the budget holds. The capacity is only approached, not
    guaranteed: follow with :func:`repair_capacity` for an exactly box-feasible coupling.

    An example whose ``nu`` and ``y`` are both zero just after a re-bisection, with every column within
    capacity, stays there: ``y = max(eta (pi^T 1 - capacity), 0) = 0`` at every later iteration and every
    later bisection repeats the same ``mu``, so its coupling is final and it leaves the batch (the result is
    the one the whole loop would return).
    """
    form = _RowForm(g, x, cost)
    budget = budget.expand(g.shape[0])
    out = torch.empty_like(g)
    index = torch.arange(g.shape[0], device=g.device)  # the examples still iterated
    nu = torch.ones_like(x)
    y_prev = torch.zeros_like(x)
    zero = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
    g_max = g.flatten(1).abs().amax(1)
    x_max = x.flatten(1).amax(1)

    def solve_mu(nu_: torch.Tensor) -> torch.Tensor:
        ok = form.cost_of(form.project(zero, nu_)) <= budget if check_zero else torch.zeros_like(zero, dtype=torch.bool)
        if bool(ok.all()):
            return zero
        hi = 2 * g_max + 2 * nu_.flatten(1).abs().amax(1) + x_max
        m = _bisect(lambda m_: form.cost_of(form.project(m_, nu_)), zero, hi, budget, max_bisect, tol, tol)
        return torch.where(ok, zero, m)

    mu = zero
    p = col = None
    for it in range(iterations):
        rebisect = it % bisect_every == 0
        if rebisect:
            mu = solve_mu(nu)
        eta = 0.1 if it <= 0.2 * iterations else (0.01 if it <= 0.6 * iterations else 0.001)
        # between re-bisections nu changes at few pixels once it settles: update only the rows it reaches
        local = None if rebisect or p is None else form.refresh(p, col, nu, limit=nu.numel() // 128)
        if local is None:
            p = form.project(mu, nu)
            col = form.column(p)
        else:
            p, col = local
        if rebisect:
            live = (nu != 0).flatten(1).any(1) | (y_prev != 0).flatten(1).any(1) | (col > capacity).flatten(1).any(1)
            if not bool(live.all()):
                out[index[~live]] = form.coupling(p)[~live]
                keep = live.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return out
                form, index, p = form.select(keep), index[keep], None
                nu, y_prev, col, mu = nu[keep], y_prev[keep], col[keep], mu[keep]
                zero, g_max, x_max, budget = zero[keep], g_max[keep], x_max[keep], budget[keep]
        y = (nu + eta * (col - capacity)).clamp_min(0)
        nu = (1 + momentum) * y - momentum * y_prev
        y_prev = y
    nu = y_prev
    out[index] = form.coupling(form.project(solve_mu(nu), nu))
    return out


def repair_capacity(
    pi: torch.Tensor, cost: LocalCost, *, capacity: float = 1.0, max_rounds: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``pi^T 1 <= capacity`` exact by sending transported mass back to its source (float64).

    For every pixel ``j`` whose column sum exceeds ``capacity`` by ``e_j``, the mass transported into
    ``j`` from other pixels is scaled down by ``e_j / in_j`` and returned to the zero offset of each source.
    Row marginals and non-negativity are kept and the cost ``<C, pi>`` can only decrease, so a coupling in
    ``Pi(x, eps)`` stays in it; sources that overflow in turn are treated in the next round. When
    ``x <= capacity`` the identity coupling is feasible and the rounds converge towards a feasible point.

    Returns ``(pi in float64, moved mass per example)``. Overflowing pixels are brought to
    ``capacity (1 - 1e-12)`` so that round-off cannot leave them above ``capacity``; pixels still above
    ``capacity`` after ``max_rounds`` (not observed on the attacks' outputs) are left to the caller to detect.
    """
    p = pi.to(torch.float64).clone()
    moved = torch.zeros(p.shape[0], dtype=torch.float64, device=p.device)
    for _ in range(max_rounds):
        col = column_marginal(p, cost)
        if not bool((col > capacity).any()):
            break
        # aim 1e-12 below the capacity so that the float64 round-off of the new sums cannot overshoot it
        excess = torch.where(col > capacity, col - capacity * (1 - 1e-12), torch.zeros_like(col))
        incoming = col - p[..., 0, :, :]
        frac = torch.where(excess > 0, (excess / incoming.clamp_min(1e-300)).clamp(max=1.0), torch.zeros_like(col))
        take = p * gather_window(frac, cost, fill=0.0)
        take[..., 0, :, :] = 0
        back = take.sum(-3)
        p = p - take
        p[..., 0, :, :] += back
        moved += back.flatten(1).sum(1)
    return p, moved
