"""UOT projections: KKT conditions, an independent dense float64 reference, budget and warm starts."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp

from sinkhorn_attacks.ot import LocalCost, exact_uot
from sinkhorn_attacks.projections import solve_z, uot_project


def _dense_reference(x, w, C, eta, tau, gamma, sweeps=20000, tol=1e-13):
    """Algorithm A written densely in numpy with a scalar root finder (independent of the package)."""
    kappa, lam = tau / (tau + eta), eta / (tau + eta)
    n = x.size
    f, g = np.zeros(n), np.zeros(n)
    z = np.clip(w, 0, 1)
    K = -C / eta
    for _ in range(sweeps):
        f_old = f.copy()
        f = eta * kappa * (np.log(x) - logsumexp(K + g[None, :] / eta, axis=1))
        q = logsumexp(K + f[:, None] / eta, axis=0)
        for j in range(n):

            def phi(u, j=j, q=q):
                return gamma * (math.exp(u) - w[j]) + tau * (1 - math.exp(lam * (q[j] - u)))

            if phi(0.0) <= 0:
                z[j] = 1.0
            else:
                z[j] = math.exp(brentq(phi, -200.0, 0.0, xtol=1e-15, rtol=1e-15))
        g = eta * kappa * (np.log(z) - q)
        if np.abs(f - f_old).max() < tol:
            break
    return z, f, g


@pytest.mark.parametrize("eta,tau,gamma", [(0.05, 0.1, 0.5), (0.1, 1.0, 1.0), (1e-3, 1e-2, 0.5)])
def test_penalised_matches_dense_reference_and_kkt(eta, tau, gamma):
    rng = np.random.default_rng(0)
    h = w_ = 4
    x = rng.uniform(0.05, 0.95, (1, 1, h, w_))
    w = x + rng.normal(0, 0.25, x.shape)
    cost = LocalCost(None, 2.0)
    res = uot_project(torch.tensor(x), torch.tensor(w), cost, eta, tau, gamma, tol=1e-11, max_iter=100000)
    C = cost.dense(h, w_).numpy()
    z_ref, _, _ = _dense_reference(x.ravel(), w.ravel(), C, eta, tau, gamma)
    z = res.z.flatten().numpy()
    assert np.abs(z - z_ref).max() < 1e-8
    assert ((z >= 0) & (z <= 1)).all()
    # KKT: row marginal a = a* (residual), column b = z^kappa Q^lambda, z-stationarity with the box
    f, g = res.state["f"].flatten().numpy(), res.state["g"].flatten().numpy()
    P = np.exp((f[:, None] + g[None, :] - C) / eta)
    a, b = P.sum(1), P.sum(0)
    assert np.abs(np.log(a / (x.ravel() * np.exp(-f / tau)))).max() < 1e-8
    grad = gamma * (z - w.ravel()) + tau * (1 - b / z)
    proj_grad = np.where(z >= 1 - 1e-12, np.maximum(grad, 0), grad)  # at z = 1 a negative gradient is KKT
    assert np.abs(proj_grad).max() < 1e-7
    assert float(res.gap.abs()) < 1e-9


def test_penalised_is_identity_like_at_thesis_defaults_but_not_for_large_tau():
    torch.manual_seed(1)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64) * 0.8 + 0.1
    w = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    small = uot_project(x, w, LocalCost(5, 2.0), 1e-3, 1e-2, 0.5)
    assert float((small.z - w).abs().max()) < 0.05  # moves each pixel by O(tau / gamma)
    assert float(small.transported_fraction) < 1e-12  # zero up to the round-off of (plan - diagonal)
    big = uot_project(x, w, LocalCost(5, 2.0), 0.1, 10.0, 0.5, max_iter=20000)
    assert float((big.z - w).abs().max()) > 0.1


def test_solve_z_roots_and_unreachable_pixels():
    torch.manual_seed(2)
    q = torch.randn(200, dtype=torch.float64)
    q[:5] = -math.inf
    w = torch.rand(200, dtype=torch.float64) * 1.6 - 0.3
    lam, tau, gamma = 0.09, 1.0, 0.7
    z = solve_z(q, w, lam, tau, gamma)
    phi = gamma * (z - w) + tau * (1 - torch.exp(lam * (q - torch.log(z))))
    inner = (z < 1) & torch.isfinite(q)
    assert phi[inner].abs().max() < 1e-10
    assert (phi[(z == 1) & torch.isfinite(q)] <= 1e-12).all()
    assert torch.allclose(z[:5], (w[:5] - tau / gamma).clamp(0, 1))


@pytest.mark.parametrize("eta,tau", [(0.05, 1.0), (0.1, 5.0)])
def test_budgeted_meets_budget_and_certifies_exact_uot(eta, tau):
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.uniform(0.05, 0.95, (2, 1, 4, 4)))
    w = x + torch.tensor(rng.normal(0, 0.3, x.shape))
    cost = LocalCost(None, 1.0)
    free = uot_project(x, w, cost, eta, tau, 1.0, tol=1e-10, max_iter=50000)
    eps = 0.4 * free.radius
    res = uot_project(x, w, cost, eta, tau, 1.0, radius=eps, tol=1e-10, max_iter=50000, radius_rtol=1e-6)
    assert (res.radius <= eps * (1 + 1e-9)).all() and (res.radius >= eps * (1 - 1e-5)).all()
    assert (res.psi > 0).all()
    assert ((res.z >= 0) & (res.z <= 1)).all()
    exact = exact_uot(x, res.z, cost, tau)
    assert (exact <= res.radius + 1e-8).all()  # certified upper bound on the exact UOT distance
    assert (res.lower_bound <= exact + 1e-8).all()  # certified lower bound
    # psi is the multiplier: the penalised problem at (eta/psi, gamma/psi) reproduces z
    psi = float(res.psi[0])
    again = uot_project(x[:1], w[:1], cost, eta / psi, tau, 1.0 / psi, tol=1e-11, max_iter=100000)
    assert float((again.z - res.z[:1]).abs().max()) < 1e-6


def test_budgeted_returns_w_inside_the_ball_and_warm_start_is_faster():
    torch.manual_seed(4)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64) * 0.8 + 0.1
    w = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    cost = LocalCost(3, 1.0)
    res = uot_project(x, w, cost, 0.05, 5.0, radius=100.0)
    assert torch.equal(res.z, w) and (res.psi == 0).all()
    w2 = x + 0.3 * torch.randn_like(x)
    cold = uot_project(x, w2, cost, 0.05, 5.0, radius=0.2, tol=1e-9)
    warm = uot_project(x, w2 + 1e-3, cost, 0.05, 5.0, radius=0.2, tol=1e-9, state=cold.state)
    assert warm.iterations.sum() < cold.iterations.sum()


def test_rgb_projection_equals_per_channel_penalised():
    torch.manual_seed(5)
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64) * 0.8 + 0.1
    w = x + 0.2 * torch.randn_like(x)
    cost = LocalCost(3, 1.0)
    full = uot_project(x, w, cost, 0.1, 2.0, 0.5, tol=1e-11, max_iter=20000)
    for c in range(3):
        one = uot_project(x[:, c : c + 1], w[:, c : c + 1], cost, 0.1, 2.0, 0.5, tol=1e-11, max_iter=20000)
        assert float((one.z - full.z[:, c : c + 1]).abs().max()) < 1e-9


def test_float32_close_to_float64():
    torch.manual_seed(6)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.9
    x[0, 0, :2] = 0.0
    w = x + 0.2 * torch.randn_like(x)
    cost = LocalCost(5, 1.0)
    r64 = uot_project(x, w, cost, 0.05, 1.0, 0.5, tol=1e-10, max_iter=20000)
    r32 = uot_project(x.float(), w.float(), cost, 0.05, 1.0, 0.5, tol=1e-5, max_iter=20000)
    assert float((r32.z.double() - r64.z).abs().max()) < 1e-4


@pytest.mark.parametrize("relax", [1.0, 1.5, 1.8, 1.95])
def test_over_relaxation_keeps_the_solution_and_cannot_diverge(relax, monkeypatch):
    """Over-relaxed sweeps reach the plain sweeps' fixed point; at 1.95 one image of this problem diverges
    without the damping safeguard (checked below), so that case exercises it."""
    d = np.random.default_rng(3)
    x = torch.tensor(d.uniform(0.0, 1.0, (3, 1, 12, 12)) * (d.uniform(size=(3, 1, 12, 12)) < 0.5))
    w = x + 0.1 * torch.tensor(np.sign(d.normal(size=x.shape)))
    cost = LocalCost(5, 1.0)
    ref = uot_project(x, w, cost, 0.05, 10.0, 1.0, tol=1e-12, max_iter=50000, relax=1.0)
    res = uot_project(x, w, cost, 0.05, 10.0, 1.0, tol=1e-12, max_iter=50000, relax=relax)
    assert bool((res.residual <= 1e-12).all())
    assert (res.z - ref.z).abs().max() < 1e-9
    assert res.gap.abs().max() < 1e-9
    if relax == 1.8:
        assert int(res.iterations.max()) * 3 < int(ref.iterations.max())  # the point of relaxing
    if relax == 1.95:
        import sinkhorn_attacks.ot.engine as engine

        monkeypatch.setattr(engine, "DIVERGED", math.inf)  # safeguards off
        monkeypatch.setattr(engine, "STALL", 10**9)
        bad = uot_project(x, w, cost, 0.05, 10.0, 1.0, tol=1e-12, max_iter=3000, relax=relax)
        assert float(bad.residual.max()) > 1.0
    with pytest.raises(ValueError, match="relax"):
        uot_project(x, w, cost, 0.05, 10.0, 1.0, relax=2.0)


def test_over_relaxation_converges_in_float32():
    """In float32 over-relaxation amplifies rounding noise; the stall guard returns to plain sweeps and stops
    at the rounding floor (before the guard, solves ran to max_iter just above the tolerance)."""
    d = np.random.default_rng(4)
    x = torch.tensor(d.uniform(0.0, 1.0, (2, 3, 32, 32)) * (d.uniform(size=(2, 3, 32, 32)) < 0.6), dtype=torch.float32)
    w = x + 0.1 * torch.tensor(np.sign(d.normal(size=x.shape)), dtype=torch.float32)
    cost = LocalCost(5, 1.0)
    plain = uot_project(x, w, cost, 0.05, 10.0, 1.0, max_iter=3000, relax=1.0)
    fast = uot_project(x, w, cost, 0.05, 10.0, 1.0, max_iter=3000, relax=1.8)
    assert bool((fast.residual <= 1e-4).all()) and int(fast.iterations.max()) < 3000  # tol, or the float32 floor
    assert int(fast.iterations.sum()) < int(plain.iterations.sum())
    assert (fast.z - plain.z).abs().max() < 1e-3
    assert fast.gap.abs().max() < 1e-3 * fast.radius.max()
