"""UOT engine: holes in the support, terminating loops, the one-solve budgeted projection, the tight bound."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from sinkhorn_attacks.ot import LocalCost, exact_uot, uot_sinkhorn
from sinkhorn_attacks.ot.sinkhorn import uot_upper_bound
from sinkhorn_attacks.projections import uot_project


def _dense_uot(x: torch.Tensor, z: torch.Tensor, cost: LocalCost, eta: float, tau: float, iters: int = 2000):
    """Dense float64 reference of (P) on one channel: log-domain Sinkhorn on explicit supports, then P."""
    h, w = x.shape[-2:]
    C = cost.dense(h, w).numpy()
    a, b = x.reshape(-1).numpy(), z.reshape(-1).numpy()
    k = tau / (tau + eta)
    with np.errstate(divide="ignore"):
        la, lb = np.log(a), np.log(b)
    g = np.where(b > 0, 0.0, -np.inf)
    for _ in range(iters):
        lg = logsumexp(np.where(b > 0, (g[None, :] - C) / eta, -np.inf), axis=1)
        f = np.where(a > 0, eta * k * (la - lg), -np.inf)
        f = np.where((a > 0) & np.isneginf(lg), np.inf, f)  # hole row: nothing in reach
        fe = np.where(np.isposinf(f), -np.inf, f)
        lf = logsumexp((fe[:, None] - C) / eta, axis=0)
        g = np.where(b > 0, eta * k * (lb - lf), -np.inf)
    fe = np.where(np.isposinf(f), -np.inf, f)
    with np.errstate(invalid="ignore"):
        lp = (fe[:, None] + g[None, :] - C) / eta
    lp = np.where(np.isnan(lp), -np.inf, lp)
    P = np.exp(lp)

    def kl(p, q):
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0) - p + q))

    H = float(np.where(P > 0, P * (np.where(P > 0, lp, 0.0) - 1), 0.0).sum())
    tr = float(np.where(P > 0, P * np.where(np.isfinite(C), C, 0.0), 0.0).sum())
    return tr + eta * H + tau * (kl(P.sum(1), a) + kl(P.sum(0), b)), P


def _finite(r) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (r.value, r.dual, r.gap, r.residual))


@pytest.mark.parametrize("eta,tau", [(1e-3, 1e-2), (0.1, 1.0), (0.5, 10.0)])
def test_hole_repro_matches_dense_reference(eta, tau):
    x = torch.full((1, 1, 7, 7), 0.5, dtype=torch.float64)
    z = x.clone()
    z[..., 1:6, 1:6] = 0
    r = uot_sinkhorn(x, z, LocalCost(3, 1.0), eta, tau, max_iter=50000)
    assert _finite(r) and bool(r.converged.all())
    ref, P = _dense_uot(x[0, 0], z[0, 0], LocalCost(3, 1.0), eta, tau)
    assert abs(float(r.value) - ref) <= 1e-9 * max(1.0, abs(ref))
    assert abs(float(r.gap)) < 1e-9 and abs(float(r.value - r.dual)) < 1e-9
    # the hole pixel (3, 3) has no z in its 3x3 window: its plan row is zero, f = +inf, all of x is destroyed
    assert P.reshape(49, 49)[3 * 7 + 3].sum() == 0
    assert math.isinf(float(r.f[0, 0, 3, 3])) and float(r.f[0, 0, 3, 3]) > 0


def test_hole_against_pot_unbalanced():
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(0.1, 0.9, (1, 1, 6, 6)))
    z = torch.tensor(rng.uniform(0.1, 0.9, (1, 1, 6, 6)))
    z[..., 1:5, 1:4] = 0  # hole rows at (2..3, 2)
    cost, eta, tau = LocalCost(3, 1.0), 0.2, 1.0
    r = uot_sinkhorn(x, z, cost, eta, tau, tol=1e-13, max_iter=100000)
    assert _finite(r)
    a, b = x.reshape(-1).numpy(), z.reshape(-1).numpy()
    sb = b > 0
    C = cost.dense(6, 6).numpy()
    C = np.where(np.isfinite(C), C, 50.0)  # forbidden pairs: a large cost (e^{-C/eta} ~ 1e-109)
    P = ot.unbalanced.sinkhorn_unbalanced(
        a, b[sb], C[:, sb], eta, tau, reg_type="entropy", numItermax=200000, stopThr=1e-15
    )
    Pc = P.copy()
    with np.errstate(divide="ignore"):
        Hp = np.where(P > 0, P * (np.log(np.where(P > 0, P, 1)) - 1), 0).sum()

    def kl(p, q):
        return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0) - p + q))

    val = (Pc * C[:, sb]).sum() + eta * Hp + tau * (kl(P.sum(1), a) + kl(P.sum(0), b[sb]))
    assert abs(float(r.value) - val) < 1e-7 * max(1.0, abs(val))


def test_degenerate_measures_are_finite():
    cost = LocalCost(3, 1.0)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    tau = 1.0
    r = uot_sinkhorn(x, zero, cost, 0.05, tau)  # all-zero z: everything destroyed
    assert _finite(r) and torch.allclose(r.value, tau * x.flatten(1).sum(1))
    r = uot_sinkhorn(zero, x, cost, 0.05, tau)  # all-zero x: everything created
    assert _finite(r) and torch.allclose(r.value, tau * x.flatten(1).sum(1))
    r = uot_sinkhorn(zero, zero, cost, 0.05, tau)
    assert _finite(r) and bool((r.value == 0).all())
    r = uot_sinkhorn(one, one, cost, 0.05, tau)  # saturated
    assert _finite(r) and bool(r.converged.all())
    # -inf warm-start potentials recover the cold solution
    cold = uot_sinkhorn(x, x.flip(-1), cost, 0.1, tau, tol=1e-12)
    ninf = torch.full_like(x, -math.inf)
    warm = uot_sinkhorn(x, x.flip(-1), cost, 0.1, tau, tol=1e-12, f0=ninf, g0=ninf)
    assert _finite(warm) and torch.allclose(warm.value, cold.value, atol=1e-10)


def _digit(shift: int) -> torch.Tensor:
    x = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    x[..., 3:9, 2 + shift : 4 + shift] = 1.0
    return x


def test_budgeted_inside_rule_with_disjoint_supports():
    x, w = _digit(0), _digit(6)  # strokes far apart: every pixel of x is a hole for w
    cost = LocalCost(5, 1.0)
    for eps in (3.0, 30.0, 1e3):
        r = uot_project(x, w, cost, 0.05, 10.0, radius=eps)
        assert bool(torch.isfinite(r.radius).all()) and float(r.radius) <= eps
        assert bool(torch.isfinite(r.lower_bound).all()) and float(r.lower_bound) <= float(r.radius) + 1e-9
        assert float(r.psi) == 0 or float(r.psi) > 1e-12
    big = uot_project(x, w, cost, 0.05, 10.0, radius=1e3)  # destroy + create costs 10 * 24: inside the ball
    assert torch.equal(big.z, w) and float(big.psi) == 0 and float(big.radius) < 250


CASES = {
    "eta": dict(eta=1e-9),
    "tau": dict(tau=1e12),
    "gamma": dict(gamma=1e12),
    "w+2": dict(shift=2.0),
    "w=-1e6": dict(const=-1e6),
    "w=1e30": dict(const=1e30),
}


@pytest.mark.parametrize("budget", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_every_loop_terminates(case, budget):
    c = CASES[case]
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)).clamp(0, 1)
    if "shift" in c:
        w = x + c["shift"]
    if "const" in c:
        w = torch.full_like(x, c["const"])
    eta, tau, gamma = c.get("eta", 0.05), c.get("tau", 10.0), c.get("gamma", 1.0)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = uot_project(x, w, LocalCost(3, 1.0), eta, tau, gamma, radius=1.0 if budget else None, max_iter=300)
    # bounded work, not wall time (a loaded CI machine must not fail it): the caps are max_iter sweeps
    # (penalised) and 3 max_iter in all (budgeted); 20 s only catches a hang
    assert bool((r.iterations <= (3 if budget else 1) * 300).all()), r.iterations
    assert time.perf_counter() - t0 < 20.0
    assert bool(torch.isfinite(r.z).all()) and bool(((r.z >= 0) & (r.z <= 1)).all())
    assert bool(torch.isfinite(r.radius).all())
    if budget:
        assert bool((r.radius <= 1.0).all())
    if not bool(r.converged.all()):
        msgs = [str(m.message) for m in rec]
        assert any("did not converge" in m for m in msgs)
        if case in ("eta", "tau"):
            assert any("eta=" in m for m in msgs)


def test_radius_zero_returns_x_immediately():
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    w = x + 0.3
    t0 = time.perf_counter()
    r = uot_project(x, w, LocalCost(3, 1.0), 0.05, 10.0, radius=0.0)
    assert time.perf_counter() - t0 < 0.5
    assert torch.equal(r.z, x) and bool((r.radius == 0).all()) and bool(r.converged.all())


@pytest.mark.parametrize("eta,tau", [(0.05, 1.0), (0.1, 5.0)])
def test_interleaved_budget_has_the_search_fixed_point(eta, tau):
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.uniform(0.05, 0.95, (2, 1, 4, 4)))
    w = x + torch.tensor(rng.normal(0, 0.3, x.shape))
    cost = LocalCost(None, 1.0)
    free = uot_project(x, w, cost, eta, tau, 1.0, tol=1e-10, max_iter=50000)
    eps = 0.4 * free.radius
    kw = dict(radius=eps, tol=1e-13, max_iter=50000, radius_rtol=1e-13)
    one = uot_project(x, w, cost, eta, tau, 1.0, **kw)
    ref = uot_project(x, w, cost, eta, tau, 1.0, method="search", max_search=200, **kw)
    assert bool(one.converged.all())
    assert float(((one.psi - ref.psi) / ref.psi).abs().max()) < 1e-9
    assert float((one.z - ref.z).abs().max()) < 1e-9
    assert bool((one.radius <= eps).all())
    # dense reference: the penalised problem at (eta/psi, gamma/psi) on the dense cost reproduces z
    psi = float(one.psi[0])
    again = uot_project(x[:1], w[:1], LocalCost(9, 1.0), eta / psi, tau, 1.0 / psi, tol=1e-13, max_iter=200000)
    assert float((again.z - one.z[:1]).abs().max()) < 1e-9


def test_warm_started_budget_needs_fewer_sweeps():
    torch.manual_seed(4)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 0.8 + 0.1
    w = x + 0.3 * torch.randn_like(x)
    cost = LocalCost(3, 1.0)
    cold = uot_project(x, w, cost, 0.05, 5.0, radius=0.5, tol=1e-9)
    warm = uot_project(x, w + 1e-3, cost, 0.05, 5.0, radius=0.5, tol=1e-9, state=cold.state)
    assert bool(cold.converged.all()) and bool(warm.converged.all())
    assert int(warm.iterations.sum()) < int(cold.iterations.sum()) // 2


def test_upper_bound_is_certified_and_tight():
    x, w = _digit(0), _digit(1)
    cost, tau = LocalCost(5, 1.0), 10.0
    r = uot_project(x, w, cost, 0.05, tau, radius=3.0)
    ub = uot_upper_bound(x, r.z, cost, tau, (0.02, 0.005), sweeps=300)
    exact = exact_uot(x, r.z, cost, tau)
    assert bool((ub >= exact - 1e-9).all()) and bool((ub <= 1.05 * exact).all())
    assert bool((r.lower_bound <= exact + 1e-9).all()) and bool((ub <= r.radius + 1e-12).all())
