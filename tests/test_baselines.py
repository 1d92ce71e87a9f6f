"""Baseline Wasserstein attacks (Wong, Hu, Wu) on the transport engine: agreement and feasibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from sinkhorn_attacks.ot.cost import LocalCost
from sinkhorn_attacks.projections.sinkhorn import (
    HuProjection,
    WongProjection,
    conjugate_sinkhorn,
    hu_project,
    sinkhorn_project,
    wright_omega,
)

# ------------------------------------------------------------------------------------------------ omega


def test_wright_omega_float64_matches_scipy() -> None:
    y = np.concatenate([np.linspace(-700, 50, 4001), np.logspace(0, 5, 400), [-1.0, 0.0, 1.0]])
    ref = special.wrightomega(y)
    got = wright_omega(torch.tensor(y, dtype=torch.float64)).numpy()
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - ref) / ref) < 1e-12


def test_wright_omega_float32_and_limits() -> None:
    y = np.concatenate([np.linspace(-80, 50, 2001), np.logspace(0, 5, 200)])
    ref = special.wrightomega(y.astype(np.float32).astype(np.float64))
    got = wright_omega(torch.tensor(y, dtype=torch.float32)).double().numpy()
    assert np.max(np.abs(got - ref) / ref) < 2e-6
    special_in = torch.tensor([-math.inf, -1e4, -700.0, 1e5], dtype=torch.float32)
    out = wright_omega(special_in)
    assert out[0] == 0 and out[1] == 0 and torch.isfinite(out).all()
    assert abs(float(out[3]) - special.wrightomega(1e5)) / 1e5 < 1e-6


# ---------------------------------------------------------------------------------- dense reference


def _dense_wong(x, w, cost: LocalCost, eps, lam, sweeps):
    """Brute-force float64 projected Sinkhorn with a dense cost (same block updates, scipy Lambert-W)."""
    B, c, h, wd = x.shape
    C = cost.dense(h, wd).numpy()
    n = h * wd
    out = []
    for b in range(B):
        N = float(x[b].sum())
        X = (x[b] / N).reshape(c, n).numpy().astype(np.float64)
        Y = (w[b] / N).reshape(c, n).numpy().astype(np.float64)
        m = c * n
        alpha = np.full((c, n), math.log(1 / m))
        beta = np.full((c, n), math.log(1 / m))
        psi = 1.0
        for _ in range(sweeps):
            K = np.exp(-psi * C - 1)  # exp(-inf) = 0 outside the window
            with np.errstate(divide="ignore"):
                alpha = np.log(np.exp(-beta) @ K.T) - np.log(X)
            ea = np.exp(-alpha)
            a = ea @ K  # K symmetric
            beta = np.real(special.lambertw(lam * np.exp(lam * Y) * a)) - lam * Y
            eb = np.exp(-beta)
            CK = np.where(np.isfinite(C), C, 0) * K
            g = -eps + np.sum(ea * (eb @ CK.T))
            hh = -np.sum(ea * (eb @ (np.where(np.isfinite(C), C, 0) * CK).T))
            d = g / hh
            t = 1.0
            while psi - t * d < 0 and t > 1e-2:
                t /= 2
            psi = max(psi - t * d, 0.0)
        out.append((Y + beta / lam) * N)
    return np.stack(out).reshape(x.shape)


def _toy(B=2, c=1, h=4, w=4, seed=0, bright=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, c, h, w, generator=g, dtype=torch.float64)
    x[x < 0.3] = 0.0  # zero pixels (alpha = +inf)
    x[:, :, 0, 0] = 0.5
    step = 0.1 * torch.randn(B, c, h, w, generator=g, dtype=torch.float64).sign()
    wimg = x + step
    if bright:
        wimg = wimg * 3
    return x, wimg


@pytest.mark.parametrize(
    "cost,shape",
    [(LocalCost(3, 2.0), (2, 1, 4, 4)), (LocalCost(None, 2.0), (2, 2, 4, 4)), (LocalCost(3, 1.0), (1, 1, 5, 5))],
)
def test_wong_projection_matches_dense_reference(cost: LocalCost, shape) -> None:
    x, w = _toy(*shape)
    lam, eps, sweeps = 50.0, 0.05, 60
    ref = _dense_wong(x, w, cost, eps, lam, sweeps)
    r = sinkhorn_project(x, w, cost, eps, lam, max_iter=sweeps - 1, rtol=0.0, atol=0.0)
    assert int(r.iterations.max()) == sweeps
    assert np.max(np.abs(r.z.numpy() - ref)) < 1e-9 * max(1.0, np.abs(ref).max())


def test_wong_projection_feasible_at_convergence() -> None:
    cost = LocalCost(3, 2.0)
    x, w = _toy(3, 1, 5, 5, seed=1)
    eps = 0.02
    r = sinkhorn_project(x, w, cost, eps, 200.0, max_iter=3000, stopping="dual", rtol=1e-12, atol=1e-14)
    assert torch.isfinite(r.z).all()
    # budget active (psi > 0) => plan cost on the budget; mass conserved by z (column marginal)
    assert (r.psi > 0).all()
    assert torch.allclose(r.transport, torch.full_like(r.transport, eps), rtol=1e-4)
    N = x.flatten(1).sum(1)
    assert torch.allclose(r.z.flatten(1).sum(1) / N, torch.ones(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(r.mass, torch.ones(3, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("lam", [10.0, 100.0, 1000.0, 10000.0])
def test_wong_no_overflow_float32(lam: float) -> None:
    x, w = _toy(2, 1, 6, 6, seed=2, bright=True)
    x, w = x.float() * 0.05, w.float()  # a dim clean image: normalised w is large (lam * w >> 88.7)
    r = sinkhorn_project(x, w, LocalCost(5, 2.0), 0.5, lam, max_iter=50)
    assert torch.isfinite(r.z).all() and torch.isfinite(r.psi).all() and torch.isfinite(r.transport).all()
    h = hu_project(x, w, LocalCost(5, 1.0), 0.5, lam, max_iter=30, extra_iter=20)
    assert torch.isfinite(h.z).all() and torch.isfinite(h.transport).all()


def test_hu_box_and_budget() -> None:
    cost = LocalCost(3, 1.0)
    x, w = _toy(3, 1, 6, 6, seed=3)
    w = w + 0.6 * (w > 0.5)  # push bright pixels past 1
    r = hu_project(x, w, cost, 0.05, 200.0, max_iter=400, budget_tol=1e-4, mass_tol=1e-3)
    assert torch.isfinite(r.z).all()
    assert float(r.z.max()) <= 1.0 + 1e-6
    assert (r.transport <= 0.05 + 1e-4).all()
    N = x.flatten(1).sum(1)
    assert torch.allclose(r.z.flatten(1).sum(1) / N, torch.ones(3, dtype=torch.float64), atol=2e-3)
    assert r.converged.all()


def test_hu_hard_iteration_cap() -> None:
    x, w = _toy(2, 1, 5, 5, seed=4)
    r = hu_project(x, w, LocalCost(3, 1.0), 1e-9, 1000.0, max_iter=3, budget_tol=0.0, mass_tol=0.0, extra_iter=5)
    assert int(r.iterations.max()) <= 8


def test_conjugate_sinkhorn_moves_mass_within_budget() -> None:
    x, _ = _toy(2, 1, 5, 5, seed=5)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    z = conjugate_sinkhorn(x, grad, LocalCost(3, 2.0), 0.05, 100.0, max_iter=500, rtol=0.0, atol=0.0)
    assert torch.isfinite(z).all() and (z >= 0).all()
    N = x.flatten(1).sum(1)
    assert torch.allclose(z.flatten(1).sum(1) / N, torch.ones(2, dtype=torch.float64), atol=1e-3)


def test_projection_protocol() -> None:
    x, w = _toy(3, 1, 6, 6, seed=6)
    x, w = x.clamp(0, 1).float(), w.float()
    radius = torch.full((3,), 0.1)
    for proj in (WongProjection(LocalCost(3, 2.0), 100.0, 20), HuProjection(LocalCost(3, 1.0), 100.0, 20)):
        z, state, info = proj(x, w, radius, None)
        assert z.shape == x.shape and z.dtype == x.dtype and 0 <= float(z.min()) and float(z.max()) <= 1
        assert all(v.shape[0] == 3 for v in state.values())
        assert all(v.shape == (3,) for v in info.values()) and "plan_cost" in info and "certified_radius" not in info
        z2, _, _ = proj(x, w, radius, state)
        assert torch.isfinite(z2).all()


# ------------------------------------------------------------------------------------------------- Wu

from sinkhorn_attacks.attacks.frank_wolfe import WuFrankWolfe, WuPGD, wu_frank_wolfe  # noqa: E402
from sinkhorn_attacks.ot.kernel import gather_window  # noqa: E402
from sinkhorn_attacks.projections.coupling import (  # noqa: E402
    capacity_projection,
    column_marginal,
    coupling_cost,
    dual_projection,
    entropic_lmo,
    identity_coupling,
    simplex_project_flat,
    simplex_project_rows,
    simplex_threshold,
    window_mask,
)
from sinkhorn_attacks.projections.lp import L2Projection, LinfProjection  # noqa: E402


def _simplex_ref(g, s, mask):
    """Sort-free reference: bisection on theta for sum_d max(g_d - theta, 0) = s_i."""
    gm = torch.where(mask, g, torch.full_like(g, -1e30))
    lo = g.amin(-3, keepdim=True) - s.unsqueeze(-3) - 1
    hi = g.amax(-3, keepdim=True)
    for _ in range(200):
        th = (lo + hi) / 2
        over = (gm - th).clamp_min(0).sum(-3, keepdim=True) > s.unsqueeze(-3)
        lo, hi = torch.where(over, th, lo), torch.where(over, hi, th)
    return torch.where(mask, (g - hi).clamp_min(0), torch.zeros_like(g))


def _coupling_toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 2, 5, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 2, 9, 5, 5, generator=g, dtype=torch.float64)
    return x, noise


def test_simplex_projection_matches_sort_free_reference() -> None:
    cost = LocalCost(3, 1.0)
    x, g = _coupling_toy()
    mask = window_mask(x, cost)
    p = simplex_project_rows(g, x, mask)
    assert torch.allclose(p, _simplex_ref(g, x, mask), atol=1e-12)
    assert torch.allclose(p.sum(-3), x, atol=1e-12) and (p >= 0).all() and (p[..., ~mask] == 0).all()


def test_flat_simplex_projection_edge_rows() -> None:
    """Geometric rows (entries on every scale), large sums (many active entries), zero sums,
    rows with no valid entry, a single valid entry and float32 all match the KKT conditions: entries >= 0
    summing to s, and every positive entry is its value minus one common threshold that bounds the rest."""
    gen = torch.Generator().manual_seed(3)
    e = 26
    rows = [
        2.0 ** -torch.arange(e, dtype=torch.float64),
        torch.randn(e, generator=gen, dtype=torch.float64),  # s = 2.5: many active entries
        torch.randn(e, generator=gen, dtype=torch.float64),  # zero sum
        torch.randn(e, generator=gen, dtype=torch.float64),  # no valid entry
        torch.randn(e, generator=gen, dtype=torch.float64),  # one valid entry
        torch.full((e,), 0.3, dtype=torch.float64),  # ties
    ]
    a = torch.stack(rows)
    s = torch.tensor([0.7, 2.5, 0.0, 0.0, 0.4, 1.0], dtype=torch.float64)
    valid = torch.ones_like(a, dtype=torch.bool)
    valid[3] = False
    valid[4, 1:] = False
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        p = simplex_project_flat(a.to(dtype), s.to(dtype), valid).double()
        assert (p >= 0).all() and (p[~valid] == 0).all()
        assert torch.allclose(p.sum(1)[[0, 1, 2, 4, 5]], s[[0, 1, 2, 4, 5]], atol=tol)
        assert p[3].abs().sum() == 0 and p[2].abs().sum() == 0
        for i in (0, 1, 5):
            tau = (a[i] - p[i])[p[i] > 0]
            assert tau.numel() > 0 and float(tau.max() - tau.min()) < tol * 10
            assert bool((a[i][p[i] == 0] <= tau.mean() + tol * 10).all())


def test_threshold_from_a_lower_bound_is_the_threshold() -> None:
    """Started from any lower bound (far below, just below, or a few ulp above the threshold, as round-off
    can leave a warm start), the active-set iteration ends at the threshold of a cold start."""
    gen = torch.Generator().manual_seed(5)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a = torch.randn(400, 25, generator=gen, dtype=torch.float64).to(dtype)
        a[::7, 20:] = -math.inf  # offsets outside the image
        s = torch.rand(400, generator=gen, dtype=torch.float64).to(dtype) * 3
        cold = simplex_threshold(a, s)
        assert torch.allclose(((a - cold[:, None]).clamp_min(0)).sum(1), s, atol=tol)
        gaps = torch.rand(400, generator=gen, dtype=torch.float64).to(dtype)
        for lower in (cold - 10 * gaps, cold - 1e-3 * gaps, cold + 4 * torch.finfo(dtype).eps * cold.abs()):
            assert torch.allclose(simplex_threshold(a, s, lower=lower), cold, rtol=0, atol=tol)


def test_row_form_warm_starts_match_cold_projections() -> None:
    """The row layout of Wu's projections, warm-started from the previous call's thresholds over a sequence
    of multipliers (mu up and down, nu moving both ways), equals the cold projection of the same rows."""
    from sinkhorn_attacks.projections.coupling import _RowForm

    cost = LocalCost(3, 1.0)
    x, g = _coupling_toy(4)
    form = _RowForm(g, x, cost)
    mask = window_mask(x, cost)
    gen = torch.Generator().manual_seed(6)
    nu = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    for mu in (0.0, 0.5, 0.2, 0.9, 0.9, 0.1):
        nu = (nu + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp_min(0)
        m = torch.full((2,), mu, dtype=torch.float64)
        want = simplex_project_rows(g - mu * form.c.reshape(-1, 1, 1) - gather_window(nu, cost), x, mask)
        got = form.coupling(form.project(m, nu))
        assert torch.allclose(got, want, atol=1e-12)
        assert torch.allclose(form.column(form.project(m, nu)), column_marginal(want, cost), atol=1e-12)
        assert torch.allclose(form.cost_of(form.project(m, nu)), coupling_cost(want, cost), atol=1e-12)


def test_row_form_refresh_equals_a_full_projection() -> None:
    """Updating only the rows and columns that a change of nu at a few pixels reaches gives exactly (bitwise)
    the full projection and column marginal; too many changed pixels are left to the full path."""
    from sinkhorn_attacks.projections.coupling import _RowForm

    cost = LocalCost(5, 1.0)
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(3, 2, 9, 8, generator=gen)
    g = identity_coupling(x, cost) + torch.randn(3, 2, 25, 9, 8, generator=gen)
    form, full = _RowForm(g, x, cost), _RowForm(g, x, cost)
    mu = torch.tensor([0.1, 0.4, 0.0])
    nu = torch.rand(x.shape, generator=gen) * (torch.rand(x.shape, generator=gen) < 0.1)
    p = form.project(mu, nu)
    col = form.column(p)
    for step in range(6):
        nu = nu.clone()
        pick = torch.randint(0, nu.numel(), (3,), generator=gen)
        nu.view(-1)[pick] = torch.rand(3, generator=gen) * (step % 3 != 0)  # rises, falls, back to zero
        p, col = form.refresh(p, col, nu, limit=8)
        want = full.project(mu, nu)
        assert torch.equal(p, want) and torch.equal(col, full.column(want))
    assert form.refresh(p, col, torch.rand(x.shape, generator=gen), limit=8) is None


def _assert_feasible(pi, x, cost, budget, tol=1e-6):
    mask = window_mask(x, cost)
    assert (pi >= -1e-15).all() and (pi[..., ~mask].abs() < 1e-15).all()
    assert torch.allclose(pi.sum(-3), x, atol=1e-9)
    assert (coupling_cost(pi, cost) <= budget + tol).all()


def test_dual_projection_and_lmo_feasible() -> None:
    cost = LocalCost(3, 1.0)
    x, noise = _coupling_toy(1)
    budget = torch.tensor([0.3, 0.6], dtype=torch.float64) * x.flatten(1).sum(1) / 10
    q = dual_projection(identity_coupling(x, cost) + 0.5 * noise, x, cost, budget, max_iter=60, tol=1e-9, int_tol=1e-12)
    _assert_feasible(q, x, cost, budget)
    assert torch.allclose(coupling_cost(q, cost), budget, rtol=1e-4)  # budget active
    s = entropic_lmo(noise, x, cost, budget, 1e-3)
    _assert_feasible(s, x, cost, budget)
    # projection is the nearest feasible point: no feasible convex combination with the LMO vertex is closer
    G = identity_coupling(x, cost) + 0.5 * noise
    for t in (0.1, 0.3):
        other = (1 - t) * q + t * s
        assert ((other - G).flatten(1).norm(dim=1) >= (q - G).flatten(1).norm(dim=1) - 1e-9).all()


def test_capacity_projection_respects_budget_and_reduces_overflow() -> None:
    cost = LocalCost(3, 1.0)
    x, noise = _coupling_toy(2)
    x = x * 1.3
    budget = 0.3 * x.flatten(1).sum(1)
    pi = capacity_projection(identity_coupling(x, cost) + 0.1 * noise, x, cost, budget, iterations=200)
    _assert_feasible(pi, x, cost, budget, tol=1e-5)
    over_before = (x - 1).clamp_min(0).sum()
    over_after = (column_marginal(pi, cost) - 1).clamp_min(0).sum()
    assert over_after < 0.2 * over_before


def _capacity_reference(g, x, cost, budget, iterations, bisect_every=20, tol=1e-4, max_bisect=50):
    """Wu's capacity dual ascent, written out per example with the sort-free simplex reference, every iteration."""
    from sinkhorn_attacks.ot.kernel import offset_costs

    mask = window_mask(x, cost)
    c = offset_costs(cost, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)

    def project(mu, nu):
        return _simplex_ref(g - mu.reshape(-1, 1, 1, 1, 1) * c - gather_window(nu, cost, fill=0.0), x, mask)

    def solve_mu(nu):
        mus = []
        for b in range(g.shape[0]):

            def cost_at(m, b=b):
                mu = torch.zeros(g.shape[0], dtype=g.dtype)
                mu[b] = m
                return float(coupling_cost(project(mu, nu), cost)[b])

            if cost_at(0.0) <= float(budget[b]):
                mus.append(0.0)
                continue
            lo, hi = 0.0, float(2 * g[b].abs().max() + 2 * nu[b].abs().max() + x[b].max())
            for _ in range(max_bisect):
                mid = (lo + hi) / 2
                val = cost_at(mid)
                lo, hi = (mid, hi) if val > float(budget[b]) else (lo, mid)
                if abs(val - float(budget[b])) < tol or hi - lo < tol:
                    break
            mus.append(hi)
        return torch.tensor(mus, dtype=g.dtype)

    nu, y_prev = torch.ones_like(x), torch.zeros_like(x)
    for it in range(iterations):
        if it % bisect_every == 0:
            mu = solve_mu(nu)
        eta = 0.1 if it <= 0.2 * iterations else (0.01 if it <= 0.6 * iterations else 0.001)
        y = (nu + eta * (column_marginal(project(mu, nu), cost) - 1)).clamp_min(0)
        nu, y_prev = 1.9 * y - 0.9 * y_prev, y
    return project(solve_mu(y_prev), y_prev)


def test_capacity_projection_matches_the_full_loop_when_examples_leave_early(monkeypatch) -> None:
    """Examples whose capacity never binds (x <= 0.1: no column can exceed 9 x 0.1) leave the batch once their
    multiplier reaches zero; their couplings, and the others', equal Wu's loop run to the end."""
    from sinkhorn_attacks.projections import coupling

    cost = LocalCost(3, 1.0)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    x[:2] *= 0.1
    x[2:] *= 1.3
    g = identity_coupling(x, cost) + 0.1 * torch.randn(4, 1, 9, 6, 6, generator=gen, dtype=torch.float64)
    budget = 0.3 * x.flatten(1).sum(1)
    left = []
    select = coupling._RowForm.select
    monkeypatch.setattr(
        coupling._RowForm, "select", lambda self, keep: left.append(keep.tolist()) or select(self, keep)
    )
    pi = capacity_projection(g, x, cost, budget, iterations=100)
    assert left == [[2, 3]]  # the two small images left the batch, the two others ran to the end
    ref = _capacity_reference(g, x, cost, budget, iterations=100)
    assert float((pi - ref).abs().max()) < 1e-9
    _assert_feasible(pi, x, cost, budget, tol=1e-6)


def test_capacity_projection_keeps_examples_whose_columns_overflow_at_zero_multiplier() -> None:
    """A tight budget and a rough gradient: after a re-bisection lowers mu, a column can overflow although
    nu = y = 0; such an example must stay in the loop (without the overflow check the result moves by ~0.07)."""
    cost = LocalCost(3, 1.0)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    x = x * torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=torch.float64).reshape(4, 1, 1, 1)
    g = identity_coupling(x, cost) + 0.5 * torch.randn(4, 1, 9, 6, 6, generator=gen, dtype=torch.float64)
    budget = 0.1 * x.flatten(1).sum(1)
    pi = capacity_projection(g, x, cost, budget, iterations=100)
    assert float((pi - _capacity_reference(g, x, cost, budget, iterations=100)).abs().max()) < 1e-9


class _TinyNet(torch.nn.Module):
    def __init__(self, c=1, h=6, w=6, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(c * h * w, k)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(k, c * h * w, generator=g))

    def forward(self, x):
        return self.lin(x.flatten(1).to(self.lin.weight.dtype))


def test_frank_wolfe_iterates_feasible() -> None:
    cost = LocalCost(3, 1.0)
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2])
    net = _TinyNet()
    budget = 0.2 * x.flatten(1).sum(1)
    for steps in (1, 3, 6):
        adv, pi = wu_frank_wolfe(net, x, y, cost, 0.2, steps)
        assert (pi >= 0).all() and torch.allclose(pi.sum(-3), x, atol=1e-5)
        assert (coupling_cost(pi, cost) <= budget * (1 + 1e-4) + 1e-5).all()
        assert torch.allclose(adv.flatten(1).sum(1), x.flatten(1).sum(1), rtol=1e-5)


def test_attack_classes_and_presets_run() -> None:
    from sinkhorn_attacks.attacks.presets import from_preset

    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2])
    net = _TinyNet()
    for atk in (WuFrankWolfe(net, cost=LocalCost(3, 1.0), eps=0.2, steps=3, meter_cost=None),
                WuPGD(net, cost=LocalCost(3, 1.0), eps=0.2, steps=3, post_iterations=20, meter_cost=None)):  # fmt: skip
        res = atk(x, y)
        assert res.adv.shape == x.shape and len(res) == 3
    for name in ("wong2019-mnist", "hu2020-mnist", "fair-wong", "fair-hu"):
        atk = from_preset(name, net, steps=2, sinkhorn_iters=5, kernel_size=3, meter_cost=None)
        res = atk(x, y)
        assert torch.isfinite(res.adv).all() and 0 <= float(res.adv.min()) and float(res.adv.max()) <= 1


def test_lp_projections() -> None:
    x = torch.rand(2, 1, 4, 4)
    w = x + torch.randn(2, 1, 4, 4)
    r = torch.tensor([0.1, 0.5])
    z, _, info = LinfProjection()(x, w, r, None)
    assert ((z - x).flatten(1).abs().amax(1) <= r + 1e-6).all() and z.min() >= 0 and z.max() <= 1
    z, _, info = L2Projection()(x, w, r, None)
    assert ((z - x).flatten(1).norm(dim=1) <= r + 1e-6).all() and z.min() >= 0 and z.max() <= 1


def test_wu_projection_benchmark_smoke(tmp_path, monkeypatch) -> None:
    """The benchmark of Wu's projections runs (smoke sizes) on real CIFAR-10 images, and the shipped row
    layout agrees with the previous layout on every recorded call (within the bisection's tolerance)."""
    import json
    import sys

    from conftest import data_dir

    data_dir()
    from benchmarks import wu_projection

    monkeypatch.setenv("SINKHORN_ATTACKS_SMOKE", "2")
    monkeypatch.setattr(sys, "argv", ["wu_projection", "--out", str(tmp_path / "wu.json")])
    assert wu_projection.main() == 0
    result = json.loads((tmp_path / "wu.json").read_text())
    assert result["dual_projection"]["calls"] == 2 and result["capacity_projection"]["iterations"] == 3
    assert result["dual_projection"]["max_abs_difference"] < 1e-4
    assert result["capacity_projection"]["max_abs_difference"] < 1e-4
