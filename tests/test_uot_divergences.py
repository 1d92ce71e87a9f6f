"""Marginal penalties of ``uot_sinkhorn`` other than KL: total variation and the quadratic penalty.

References: an independent float64 solve of the dense dual by L-BFGS-B (box constraints for TV) and POT's
``ot.unbalanced.lbfgsb_unbalanced`` (primal, ``reg_div="entropy"``) on small dense problems.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from sinkhorn_attacks.ot import LocalCost, uot_sinkhorn
from sinkhorn_attacks.ot.sinkhorn import marginal_prox

DIVS = ("kl", "tv", "l2")


def _dual_reference(a: np.ndarray, b: np.ndarray, C: np.ndarray, eta: float, tau: float, div: str) -> float:
    """max_{f,g} -eta sum_ij exp((f_i + g_j - C_ij)/eta) + sum psi(f; a) + sum psi(g; b), by L-BFGS-B."""
    n = C.shape[0]
    K = np.isfinite(C)
    Cf = np.where(K, C, 0.0)

    def psi(u, w):  # -D*(-u | w) and its derivative
        if div == "kl":
            return tau * w * (1 - np.exp(-u / tau)), w * np.exp(-u / tau)
        if div == "tv":
            return w * u, w  # on the box [-tau, tau]
        ins = u <= tau * w
        return np.where(ins, w * u - u * u / (2 * tau), tau * w * w / 2), np.where(ins, w - u / tau, 0.0)

    def obj(v):
        f, g = v[:n], v[n:]
        P = np.where(K, np.exp((f[:, None] + g[None, :] - Cf) / eta), 0.0)
        pf, dpf = psi(f, a)
        pg, dpg = psi(g, b)
        D = -eta * P.sum() + pf.sum() + pg.sum()
        return -D, -np.concatenate([-P.sum(1) + dpf, -P.sum(0) + dpg])

    bounds = [(-tau, tau)] * (2 * n) if div == "tv" else None
    opts = dict(maxiter=20000, ftol=1e-16, gtol=1e-13, maxcor=50)
    r = minimize(obj, np.zeros(2 * n), jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
    return -float(r.fun)


def _primal(G: np.ndarray, a, b, C, eta, tau, div) -> float:
    """<G, C> + eta H(G) + tau D(G1 | a) + tau D(G^T 1 | b) of any plan G >= 0 (finite C)."""
    H = float(np.sum(np.where(G > 0, G * np.log(np.where(G > 0, G, 1.0)), 0.0) - G))

    def D(p, q):
        if div == "kl":
            return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0) - p + q))
        if div == "l2":
            return 0.5 * float(np.sum((p - q) ** 2))
        return float(np.sum(np.abs(p - q)))

    return float(np.sum(G * C)) + eta * H + tau * (D(G.sum(1), a) + D(G.sum(0), b))


def _pair(hw: int, seed: int, zeros: bool = True, lo: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (1 - lo) * torch.rand(1, 1, hw, hw, generator=g, dtype=torch.float64)
    z = lo + (1 - lo) * torch.rand(1, 1, hw, hw, generator=g, dtype=torch.float64)
    if zeros:
        x[0, 0, 0, 0] = 0
        z[0, 0, 1, 1] = 0
    return x, z


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("k,hw,eta,tau", [(None, 4, 0.3, 0.5), (3, 6, 0.3, 0.5), (3, 5, 0.1, 2.0)])
def test_matches_dense_dual_reference(div, k, hw, eta, tau):
    x, z = _pair(hw, 1)
    cost = LocalCost(k, 1.0)
    r = uot_sinkhorn(x, z, cost, eta, tau, divergence=div, max_iter=50000)
    assert bool(r.converged.all())
    ref = _dual_reference(x.numpy().ravel(), z.numpy().ravel(), cost.dense(hw, hw).numpy(), eta, tau, div)
    assert abs(float(r.value) - ref) <= 1e-8 * abs(ref)
    # certified pair: value - dual is the (non-negative) gap, and it is small
    assert float(r.gap) >= 0
    assert abs(float(r.value - r.dual - r.gap)) <= 1e-12 * abs(ref)
    assert float(r.gap) <= 1e-8 * abs(ref)
    assert ref <= float(r.value) + 1e-12 * abs(ref)  # any dual point is below the primal value of any plan


@pytest.mark.parametrize("div", DIVS)
def test_against_pot_lbfgsb(div):
    ot = pytest.importorskip("ot")
    x, z = _pair(3, 2, zeros=False, lo=0.1)
    cost = LocalCost(None, 1.0)
    C = cost.dense(3, 3).numpy()
    a, b = x.numpy().ravel(), z.numpy().ravel()
    eta, tau = 0.3, 0.5
    r = uot_sinkhorn(x, z, cost, eta, tau, divergence=div, max_iter=50000)
    G = ot.unbalanced.lbfgsb_unbalanced(
        a, b, C, eta, tau, reg_div="entropy", regm_div=div, numItermax=100000, stopThr=1e-16
    )
    pot = _primal(G, a, b, C, eta, tau, div)
    # any plan's value is an upper bound; our dual is a lower bound on the optimum
    assert float(r.dual) <= pot + 1e-12
    if div == "tv":  # POT's primal L-BFGS-B on the non-smooth TV term stops ~5e-3 above the optimum
        assert float(r.value) <= pot + 1e-12 and abs(float(r.value) - pot) <= 1e-2 * abs(pot)
    else:
        assert abs(float(r.value) - pot) <= 1e-9 * abs(pot)


@pytest.mark.parametrize("div,eta", [("tv", 0.2), ("l2", 0.05)])  # tv contracts only where clipped: slow at small eta
def test_batch_channels_float32_and_warm_start(div, eta):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, 12, 12, generator=g)
    z = (x + 0.2 * torch.randn(3, 2, 12, 12, generator=g)).clamp(0, 1)
    cost = LocalCost(5, 1.0)
    r32 = uot_sinkhorn(x, z, cost, eta, 1.0, divergence=div)
    assert bool(r32.converged.all()) and bool(torch.isfinite(r32.value).all())
    r64 = uot_sinkhorn(x.double(), z.double(), cost, eta, 1.0, divergence=div)
    assert torch.allclose(r32.value.double(), r64.value, rtol=1e-4, atol=1e-4)
    assert bool((r64.gap >= 0).all()) and bool((r64.gap <= 1e-7 * r64.value.abs()).all())
    one = uot_sinkhorn(x[1:2].double(), z[1:2].double(), cost, eta, 1.0, divergence=div)
    assert torch.allclose(one.value, r64.value[1:2], rtol=1e-10)
    warm = uot_sinkhorn(x.double(), z.double(), cost, eta, 1.0, divergence=div, f0=r64.f, g0=r64.g)
    assert int(warm.iterations.max()) <= 2
    assert torch.allclose(warm.value, r64.value, rtol=1e-10)


@pytest.mark.parametrize("div", ("tv", "l2"))
def test_zero_images_and_no_mass_in_reach(div):
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    z = torch.zeros_like(x)
    z[..., 0, 0] = 0.7
    x[..., 5, 5] = 0.4  # out of each other's 3x3 windows: all of x destroyed, all of z created
    r = uot_sinkhorn(x, z, LocalCost(3, 1.0), 0.01, 1.0, divergence=div, max_iter=20000)
    assert bool(r.converged.all()) and bool(torch.isfinite(r.value).all())
    assert float(r.gap) >= 0 and float(r.gap) <= 1e-9
    assert float(r.moved_mass) <= 1e-6
    if div == "tv":  # destroying and creating cost tau per unit (minus the entropic gain)
        assert abs(float(r.value) - 1.1) <= 0.05
    empty = uot_sinkhorn(torch.zeros_like(x), torch.zeros_like(x), LocalCost(3, 1.0), 0.1, 1.0, divergence=div)
    assert bool(torch.isfinite(empty.value).all()) and float(empty.value) <= 0


def test_prox_is_the_block_maximiser():
    """Each half step maximises the dual over its block: perturbing the returned potential lowers it."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(50, dtype=torch.float64, generator=g)
    x[:5] = 0
    ell = 3 * torch.randn(50, dtype=torch.float64, generator=g)
    eta, tau = 0.2, 0.7
    lx = torch.log(x)
    for div in DIVS:
        f = marginal_prox(lx, x, ell, eta, tau, div)

        def obj(u, div=div):
            if div == "kl":
                psi = tau * x * (1 - torch.exp(-u / tau))
            elif div == "tv":
                psi = torch.where(u < -tau, torch.full_like(u, -math.inf), x * u.clamp_max(tau))
            else:
                psi = torch.where(u <= tau * x, x * u - u * u / (2 * tau), tau * x * x / 2)
            return -eta * torch.exp(u / eta + ell) + psi

        ok = torch.isfinite(f)
        base = obj(f)
        for d in (1e-3, -1e-3):
            assert bool((obj(f + d)[ok] <= base[ok] + 1e-12).all()), div


def test_argument_errors():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="divergence"):
        uot_sinkhorn(x, x, LocalCost(3), 0.1, 1.0, divergence="hellinger")
    with pytest.raises(ValueError, match="finite tau"):
        uot_sinkhorn(x, x, LocalCost(3), 0.1, math.inf, divergence="tv")
