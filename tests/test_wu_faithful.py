"""Wu, Wang, Yu (2020) attacks step by step on a tiny fixture, and their reported radii against the exact meter."""

from __future__ import annotations

import math

import torch

from sinkhorn_attacks.attacks.frank_wolfe import (
    WuFrankWolfe,
    WuPGD,
    _coupling_grad,
    coupling_radii,
    wu_frank_wolfe,
    wu_pgd,
)
from sinkhorn_attacks.ot.cost import LocalCost
from sinkhorn_attacks.ot.meter import exact_ot
from sinkhorn_attacks.projections.coupling import (
    capacity_projection,
    column_marginal,
    coupling_cost,
    dual_projection,
    entropic_lmo,
    identity_coupling,
    repair_capacity,
    window_mask,
)

COST = LocalCost(3, 1.0)


class _Lin(torch.nn.Module):
    def __init__(self, h=6, w=6, k=3, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(scale * torch.randn(k, h * w, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1).to(self.w.dtype) @ self.w.T


def _fixture(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 6, 6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x[:, :, 2:4, 2:4] = 1.0  # saturated pixels: transport into them leaves [0, 1]
    return x, torch.arange(b) % 3


def _assert_in_pi(pi, x, budget, tol=1e-9):
    mask = window_mask(x, COST)
    assert (pi >= 0).all()
    assert (pi[..., ~mask] == 0).all()
    assert torch.allclose(pi.sum(-3), x, atol=1e-12, rtol=0)  # row marginals = x
    assert (coupling_cost(pi, COST) <= budget + tol).all()


def test_frank_wolfe_step_is_two_over_t_plus_two() -> None:
    x, y = _fixture()
    net = _Lin()
    eps = 0.2
    budget = eps * x.flatten(1).sum(1)
    pi = identity_coupling(x, COST)
    for t in range(4):
        g = _coupling_grad(net, pi, y, COST)
        assert torch.allclose(g.flatten(1).abs().amax(1), torch.ones(3, dtype=x.dtype))  # l_inf-normalised
        s = entropic_lmo(g, x, COST, budget, 1e-3)
        _assert_in_pi(s, x, budget)
        pi = pi + 2.0 / (t + 2) * (s - pi)
        _assert_in_pi(pi, x, budget)
        if t == 0:
            assert torch.allclose(pi, s, rtol=0, atol=1e-15)  # step 1 at t = 0: the first iterate is the vertex
        _, pi_fn = wu_frank_wolfe(net, x, y, COST, eps, t + 1)
        assert torch.allclose(pi_fn, pi, atol=1e-12)


def test_pgd_step_is_projected_gradient_step() -> None:
    x, y = _fixture(1)
    net = _Lin()
    eps = 0.2
    budget = eps * x.flatten(1).sum(1)
    pi = identity_coupling(x, COST)
    for _ in range(3):
        g = _coupling_grad(net, pi, y, COST)
        pi = dual_projection(pi + 0.1 * g, x, COST, budget, max_iter=25, check_zero=False)
        _assert_in_pi(pi, x, budget)
    _, pi_fn = wu_pgd(net, x, y, COST, eps, 3, postprocess=False)
    assert torch.allclose(pi_fn, pi, atol=1e-12)


def test_tiny_gradients_are_normalised_to_one() -> None:
    """A confident model's summed cross-entropy has gradients far below 1e-12; they must still have norm 1."""
    x, _ = _fixture(2)
    x = x.float()
    net = _Lin(scale=8.0).float()
    with torch.no_grad():
        y = net(x).argmax(1)  # confident and correct: image gradients of 1e-21 .. 10 (float32)
    xr = x.clone().requires_grad_(True)
    (raw,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xr), y, reduction="sum"), xr)
    assert float(raw.flatten(1).abs().amax(1).min()) < 1e-15
    g = _coupling_grad(net, identity_coupling(x, COST), y, COST)
    assert torch.allclose(g.flatten(1).abs().amax(1), torch.ones(3), rtol=1e-6)


def test_bisection_without_zero_test_stays_feasible_and_close() -> None:
    x, _ = _fixture(3)
    g = identity_coupling(x, COST) + 0.01 * torch.randn((3, 1, 9, 6, 6), dtype=torch.float64)
    budget = 10.0 * x.flatten(1).sum(1)  # inactive budget: the exact projection has mu = 0
    exact = dual_projection(g, x, COST, budget)
    wu = dual_projection(g, x, COST, budget, check_zero=False)
    _assert_in_pi(exact, x, budget)
    _assert_in_pi(wu, x, budget)
    assert 0 < float((exact - wu).abs().max()) < 1e-3  # off by ~int_tol * C


def test_postprocessed_output_in_box_mass_preserved_and_certified() -> None:
    x, y = _fixture(4)
    net = _Lin()
    eps = 0.3
    budget = eps * x.flatten(1).sum(1)
    adv, pi = wu_frank_wolfe(net, x, y, COST, eps, 10)
    assert float(adv.max()) > 1  # the fixture makes plain FW leave the box
    cap = capacity_projection(pi, x, COST, budget, iterations=300)
    _assert_in_pi(cap, x, budget, tol=1e-6)
    rep, moved = repair_capacity(cap, COST)
    _assert_in_pi(rep, x, budget, tol=1e-6)
    assert float(coupling_cost(rep, COST).sub(coupling_cost(cap, COST)).max()) <= 1e-12  # repair only lowers cost
    out = column_marginal(rep, COST)
    assert float(out.max()) <= 1.0 and float(out.min()) >= 0.0
    assert torch.allclose(out.flatten(1).sum(1), x.flatten(1).sum(1), rtol=1e-12)  # mass preserved
    assert (moved >= 0).all()
    adv2, pi2 = wu_frank_wolfe(net, x, y, COST, eps, 10, postprocess=True, post_iterations=300)
    assert float(adv2.max()) <= 1.0 and torch.allclose(adv2, out.to(adv2.dtype))
    r = coupling_radii(adv2, pi2, x, COST)
    assert (r["clipped_mass"] == 0).all() and torch.equal(r["certified_radius"], r["nominal_radius"])
    assert (r["nominal_radius"] <= eps + 1e-9).all()


def _check_certified(res, x, cost):
    meter = exact_ot(x, res.adv, cost).value
    for i in range(len(res)):
        c = float(res.certified_radius[i])
        if math.isnan(c):
            continue
        assert float(meter[i]) <= c * (1 + 1e-6) + 1e-9, (i, float(meter[i]), c)


def test_certified_radius_is_nan_or_bound_for_returned_image() -> None:
    x, y = _fixture(5, b=4)
    x = x.float()
    net = _Lin().float()
    fw = WuFrankWolfe(net, cost=COST, eps=0.3, steps=10, meter_cost=COST)
    res = fw(x, y)
    assert "nominal_radius" in res.extras and "clipped_mass" in res.extras
    attacked = res.clean_correct
    clipped = res.extras["clipped_mass"][attacked] > 0
    assert clipped.any()  # without post-processing mass is cut ...
    assert torch.isnan(res.certified_radius[attacked][clipped]).all()  # ... and nothing is certified there
    assert (res.extras["nominal_radius"][attacked] <= 0.3 + 1e-6).all()
    _check_certified(res, x, COST)
    for atk in (
        WuFrankWolfe(net, cost=COST, eps=0.3, steps=10, postprocess=True, post_iterations=300, meter_cost=COST),
        WuPGD(net, cost=COST, eps=0.3, steps=10, post_iterations=300, meter_cost=COST),
    ):
        res = atk(x, y)
        a = res.clean_correct
        assert (res.extras["clipped_mass"][a] == 0).all()
        assert torch.isfinite(res.certified_radius[a]).all()
        assert torch.allclose(res.certified_radius[a], res.extras["nominal_radius"][a])
        _check_certified(res, x, COST)
