"""Attacks in the yardstick's geometry: the ball projection and oracle against dense references, the box
repair, certified radii on the yardstick, bad arguments, and the TV-marginal UOT projection and attack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import train_digits_cnn
from scipy.optimize import linprog, minimize
from torch import nn

from sinkhorn_attacks.attacks import UOTTVAttack, YardstickPGD, from_preset, preset_names
from sinkhorn_attacks.attacks.yardstick_pgd import certify_within, margin_loss
from sinkhorn_attacks.ot import LocalCost, Yardstick, measure
from sinkhorn_attacks.projections.uot_tv import _solve_gz, uot_tv_functional, uot_tv_project
from sinkhorn_attacks.projections.yardstick_ball import (
    BallPoint,
    ball_lmo,
    identity_plan,
    plan_cost,
    plan_image,
    project_ball,
    repair_box,
)

C3 = LocalCost(3, 1.0)
PRICE3 = math.sqrt(2)  # the 3x3 window's largest ground cost


# ------------------------------------------------------------------ a dense, independent form of the ball
def _dense(x: torch.Tensor, cost: LocalCost, price: float):
    """Variables of one (1, 1, h, w) image as a flat vector, with the ball's constraints written out densely.

    Returns ``(pack, unpack, weights, A_eq, b_eq, bounds)``: rows are the pixels holding mass (one variable
    per in-image offset plus one for destruction), then one creation variable per pixel.
    """
    h, w = x.shape[-2:]
    xs = x[0, 0].double().numpy()
    offs = cost.offsets(h, w)
    keys, wts = [], []
    for i in range(h):
        for j in range(w):
            if xs[i, j] <= 0:
                continue
            for o, (di, dj, c) in enumerate(offs):
                if 0 <= i + di < h and 0 <= j + dj < w:
                    keys.append(("pi", o, i, j))
                    wts.append(c)
            keys.append(("d", i, j))
            wts.append(price)
    for i in range(h):
        for j in range(w):
            keys.append(("c", i, j))
            wts.append(price)
    n = len(keys)
    rows = [(i, j) for i in range(h) for j in range(w) if xs[i, j] > 0]
    a_eq = np.zeros((len(rows), n))
    for k, key in enumerate(keys):
        if key[0] == "pi":
            a_eq[rows.index((key[2], key[3])), k] = 1.0
        elif key[0] == "d":
            a_eq[rows.index((key[1], key[2])), k] = 1.0
    b_eq = np.array([xs[r] for r in rows])
    bounds = [(0.0, 1.0 - xs[k[1], k[2]]) if k[0] == "c" else (0.0, None) for k in keys]

    def pack(p: BallPoint) -> np.ndarray:
        v = np.zeros(n)
        for k, key in enumerate(keys):
            if key[0] == "pi":
                v[k] = float(p.pi[0, 0, key[1], key[2], key[3]])
            elif key[0] == "d":
                v[k] = float(p.destroyed[0, 0, key[1], key[2]])
            else:
                v[k] = float(p.created[0, 0, key[1], key[2]])
        return v

    return pack, np.array(wts), a_eq, b_eq, bounds


def _random_point(x: torch.Tensor, cost: LocalCost, gen: torch.Generator, scale: float) -> BallPoint:
    p = identity_plan(x, cost)
    p.pi = p.pi + scale * torch.randn(p.pi.shape, generator=gen, dtype=torch.float64)
    p.destroyed = scale * torch.randn(p.destroyed.shape, generator=gen, dtype=torch.float64)
    p.created = scale * torch.randn(p.created.shape, generator=gen, dtype=torch.float64)
    return p


def _image(gen: torch.Generator, h: int = 4, w: int = 4, density: float = 0.6) -> torch.Tensor:
    x = torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)
    return torch.where(torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64) < density, x, torch.zeros_like(x))


@pytest.mark.parametrize("seed", range(6))
def test_projection_matches_a_dense_qp(seed: int) -> None:
    """The exact projection agrees with SLSQP on the dense problem (an independent solver), inactive budgets too."""
    gen = torch.Generator().manual_seed(seed)
    x = _image(gen)
    p = _random_point(x, C3, gen, 0.3)
    pack, wts, a_eq, b_eq, bounds = _dense(x, C3, PRICE3)
    target = pack(p)
    budget = [0.05, 0.3, 1.0, 50.0][seed % 4] * float(x.sum())
    proj, mu = project_ball(p, x, C3, PRICE3, torch.tensor([budget], dtype=torch.float64))
    got = pack(proj)
    cons = [
        {"type": "eq", "fun": lambda v: a_eq @ v - b_eq, "jac": lambda v: a_eq},
        {"type": "ineq", "fun": lambda v: budget - wts @ v, "jac": lambda v: -wts},
    ]
    start = np.clip(got + 0.01, 0, None)
    ref = minimize(
        lambda v: 0.5 * ((v - target) ** 2).sum(),
        start,
        jac=lambda v: v - target,
        bounds=bounds,
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    assert ref.success, ref.message
    assert np.abs(got - ref.x).max() < 1e-5
    # feasibility, exactly as the attack relies on it
    assert float(plan_cost(proj, C3, PRICE3)) <= budget * (1 + 1e-12)
    assert np.abs(a_eq @ got - b_eq).max() < 1e-12 and got.min() >= 0
    assert bool((proj.created <= 1 - x + 1e-15).all())
    assert float(mu) >= 0


def test_batched_projection_equals_one_example_at_a_time() -> None:
    """The multiplier search settles examples at different steps and keeps each one's point as it is found:
    a batch (inactive, tight and loose budgets, an image without mass) gives every example the point it gets
    alone, and a search cut short after one step still returns feasible points (cost <= budget, rows = x)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.cat([_image(gen, 5, 6) for _ in range(5)])
    x[4] = 0.0
    p = _random_point(x, C3, gen, 0.3)
    budget = torch.tensor([0.02, 0.2, 1.0, 50.0, 0.1], dtype=torch.float64) * x.flatten(1).sum(1).clamp_min(1)
    batch, mu = project_ball(p, x, C3, PRICE3, budget)
    for i in range(5):
        alone, mu_i = project_ball(p.index(torch.tensor([i])), x[i : i + 1], C3, PRICE3, budget[i : i + 1])
        assert torch.allclose(batch.pi[i], alone.pi[0], atol=1e-13) and float(mu[i]) == pytest.approx(float(mu_i))
        assert torch.allclose(batch.created[i], alone.created[0], atol=1e-13)
    short, _ = project_ball(p, x, C3, PRICE3, budget, max_iter=1)
    assert bool((plan_cost(short, C3, PRICE3) <= budget * (1 + 1e-12)).all())
    rows = short.pi.sum(-3) + short.destroyed
    assert torch.allclose(rows, x.to(torch.float64), atol=1e-12) and bool((short.pi >= 0).all())


@pytest.mark.parametrize("seed", range(4))
def test_linear_oracle_matches_linprog(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    x = _image(gen, 5, 4)
    g = torch.randn(1, 1, 5, 4, generator=gen, dtype=torch.float64)
    from sinkhorn_attacks.ot import gather_window

    g_pi = gather_window(g, C3, fill=0.0)
    budget = [0.1, 0.5, 2.0, 100.0][seed] * float(x.sum())
    s = ball_lmo(g_pi, g, x, C3, PRICE3, torch.tensor([budget], dtype=torch.float64))
    pack, wts, a_eq, b_eq, bounds = _dense(x, C3, PRICE3)
    gains = pack(BallPoint(g_pi, torch.zeros_like(g), g))
    ref = linprog(-gains, A_ub=wts[None], b_ub=[budget], A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    assert ref.status == 0
    got = pack(s)
    assert gains @ got == pytest.approx(-ref.fun, rel=1e-9, abs=1e-12)
    assert wts @ got <= budget * (1 + 1e-12) and np.abs(a_eq @ got - b_eq).max() < 1e-12


def test_box_repair_keeps_rows_lowers_cost_and_bounds_pixels() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, 2, 6, 6, generator=gen, dtype=torch.float64).pow(0.3)  # many pixels near 1
    p = identity_plan(x, C3)
    q = _random_point(x, C3, gen, 0.4)
    budget = 0.5 * x.flatten(1).sum(1)
    q, _ = project_ball(q, x, C3, PRICE3, budget)
    assert bool((plan_image(q, C3) > 1).any())  # the projection alone leaves overflowing pixels
    r = repair_box(q, C3)
    z = plan_image(r, C3)
    assert float(z.max()) <= 1.0 and float(z.min()) >= 0.0
    assert torch.allclose(r.pi.sum(-3) + r.destroyed, x, atol=1e-12)
    assert bool((plan_cost(r, C3, PRICE3) <= plan_cost(q, C3, PRICE3) + 1e-12).all())
    assert bool((r.pi >= 0).all()) and bool((r.created >= 0).all())
    assert torch.equal(repair_box(p, C3).pi, p.pi)  # nothing to repair


def test_plan_cost_bounds_the_yardstick() -> None:
    """Any point of the ball is a feasible plan of the yardstick: D(x, z) <= cost."""
    gen = torch.Generator().manual_seed(3)
    ys = Yardstick(3)
    x = torch.rand(4, 1, 7, 7, generator=gen, dtype=torch.float64)
    q = repair_box(project_ball(_random_point(x, C3, gen, 0.3), x, C3, ys.price, 0.4 * x.flatten(1).sum(1))[0], C3)
    raw = measure(x, plan_image(q, C3).clamp(0, 1), Yardstick(3, normalisation="none")).value
    assert bool((raw <= plan_cost(q, C3, ys.price) * (1 + 1e-9)).all())


# ------------------------------------------------------------------ the attack
class _Linear(nn.Module):
    def __init__(self, c: int, h: int, w: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(c * h * w, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("radius", [0.01, 0.1, 0.5, 3.0])
@pytest.mark.parametrize("shape", [(1, 9, 9), (3, 6, 7)])
def test_returned_images_meter_within_the_radius(radius: float, shape: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(int(radius * 100) + shape[0])
    x = torch.rand((6,) + shape, generator=gen)
    x[0] = 0.0  # black image: creation only (mass floor)
    x[1] = x[1] * 0.01  # clean mass below the floor
    x[2] = (x[2] > 0.5).float()  # saturated pixels: the box repair is needed
    model = _Linear(*shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    for loss in ("ce", "margin"):
        res = YardstickPGD(model, radius=radius, steps=6, loss=loss)(x, y)
        assert bool((res.metered_radius <= radius).all()), res.metered_radius
        assert bool((res.certified_radius <= radius).all())
        assert bool(((res.adv >= 0) & (res.adv <= 1)).all())
        with torch.no_grad():
            assert torch.equal(res.success, model(res.adv).argmax(1) != y)


def test_other_units_and_frank_wolfe_stay_within() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    model = _Linear(1, 8, 8)
    y = model(x).argmax(1).detach()
    raw = Yardstick(3, p=2.0, normalisation="none")
    res = YardstickPGD(model, radius=2.0, steps=5, yardstick=raw)(x, y)
    assert bool((res.metered_radius <= 2.0).all()) and res.yardstick == raw
    fw = YardstickPGD(model, radius=0.2, steps=5, method="fw", restarts=2)(x, y)
    assert bool((fw.metered_radius <= 0.2).all())


def test_certify_within_pulls_back_an_image_outside() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 6, 6, generator=gen)
    z = torch.rand(3, 1, 6, 6, generator=gen)
    ys = Yardstick()
    before = measure(x, z, ys).value
    out, value, moved = certify_within(x, z, 0.05, ys)
    assert bool(moved.all()) and bool((before > 0.05).all())
    assert bool((value <= 0.05).all()) and bool((measure(x, out, ys).value <= 0.05).all())
    assert bool((value > 0.03).all())  # pulled back along the segment, not to the clean image


def test_fools_a_weak_model() -> None:
    from sinkhorn_attacks.data import load_dataset

    te = load_dataset("digits", "test", limit=24)
    model = train_digits_cnn(8)
    res = from_preset("yardstick-pgd", model, radius=0.5, steps=30)(te.images, te.labels)
    assert res.clean_accuracy > 0.8
    assert res.robust_accuracy < 0.5 * res.clean_accuracy
    assert bool((res.metered_radius <= 0.5).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius=0.0), "radius"),
        (dict(radius=-0.1), "radius"),
        (dict(radius=math.nan), "radius"),
        (dict(radius=math.inf), "radius"),
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(step_size=0.0), "step_size"),
        (dict(loss="hinge"), "loss"),
        (dict(method="newton"), "method"),
        (dict(schedule="linear"), "schedule"),
        (dict(restarts=0), "restarts"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        YardstickPGD(_Linear(1, 4, 4), **kwargs)


def test_bad_inputs_and_nan_models() -> None:
    model = _Linear(1, 5, 5)
    x = torch.rand(3, 1, 5, 5)
    y = torch.zeros(3, dtype=torch.long)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        YardstickPGD(model, steps=2)(bad, y)
    with pytest.raises(TypeError, match="ball"):
        YardstickPGD(model, ball=LocalCost(5))

    class NaNOnClean(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.full((t.shape[0], 3), math.nan)

    with pytest.raises(ValueError, match="NaN or inf logits"):
        YardstickPGD(NaNOnClean(), steps=2)(x, y)

    class NaNOffClean(nn.Module):
        """Finite logits on the clean images only: every perturbed iterate gives NaN."""

        def __init__(self, clean: torch.Tensor) -> None:
            super().__init__()
            self.clean, self.inner = clean, _Linear(1, 5, 5)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = self.inner(t)
            same = (t == self.clean[: t.shape[0]]).flatten(1).all(1, keepdim=True)
            return torch.where(same, out, torch.full_like(out, math.nan))

    m = NaNOffClean(x)
    y = m(x).argmin(1).detach()  # a wrong label... kept correct below
    y = m.inner(x).argmax(1).detach()
    with pytest.warns(RuntimeWarning, match="non-finite logits"):
        res = YardstickPGD(m, radius=0.2, steps=3)(x, y)
    assert not bool(res.success.any())  # a NaN prediction never counts as fooled
    assert bool((res.extras["nonfinite_steps"] > 0).all())
    assert bool((res.metered_radius <= 0.2).all())


def test_presets_registered_with_the_call_convention() -> None:
    for name in ("yardstick-pgd", "yardstick-pgd-cifar", "uot-tv", "uot-tv-search"):
        assert name in preset_names()
    model = _Linear(1, 6, 6)
    atk = from_preset("yardstick-pgd", model, eps=0.3, steps=2)
    assert isinstance(atk, YardstickPGD) and atk.radius == 0.3 and atk.config()["steps"] == 2
    assert from_preset("yardstick-pgd-cifar", model).radius == 0.02
    x = torch.rand(2, 1, 6, 6)
    res = atk(x, model(x).argmax(1).detach())
    assert res.name == "yardstick-pgd" and len(res) == 2
    assert margin_loss(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1])).item() == -1.0


# ------------------------------------------------------------------ the TV-marginal UOT ball
def test_gz_block_matches_bisection() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4000, 1, 1, 1, generator=gen, dtype=torch.float64) * 5
    w = torch.rand(4000, 1, 1, 1, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    eta = torch.full((4000, 1, 1, 1), 0.03, dtype=torch.float64)
    gam = torch.full_like(eta, 0.7)
    tau = 2.0
    g, z = _solve_gz(q, w, eta, tau, gam)
    lo, hi = torch.full_like(q, -tau), torch.full_like(q, tau)
    for _ in range(200):  # the root of the monotone equation, by bisection, clipped to [-tau, tau]
        mid = (lo + hi) / 2
        pos = (w - mid / gam).clamp(0, 1) - torch.exp(mid / eta + q) > 0
        lo, hi = torch.where(pos, mid, lo), torch.where(pos, hi, mid)
    assert float((g - (lo + hi) / 2).abs().max()) < 1e-9
    assert torch.allclose(z, (w - g / gam).clamp(0, 1))


@pytest.mark.parametrize("eta", [0.05, 0.01])
def test_tv_projection_certifies_the_yardstick(eta: float) -> None:
    gen = torch.Generator().manual_seed(11)
    ys = Yardstick()
    x = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64) * (torch.rand(3, 1, 8, 8, generator=gen) > 0.4)
    w = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    eps = 0.1 * x.flatten(1).sum(1)
    r = uot_tv_project(x, w, ys.cost, eta, ys.price, eps, relax=1.8)
    assert bool((r.radius <= eps).all()) and bool((r.radius >= eps * 0.85).all())
    if eta == 0.05:  # the band is met; at eta = 0.01 the sweeps are slower and the search may end below it
        assert bool(r.converged.all()) and bool((r.radius >= eps * (1 - 2e-2)).all())
    raw = measure(x, r.z, Yardstick(normalisation="none")).value
    assert bool((raw <= r.radius * (1 + 1e-9)).all())  # F of the plan bounds the yardstick
    assert bool(((r.z >= 0) & (r.z <= 1)).all())
    # F recomputed from the returned potentials is the reported certificate; a warm start lands in the band
    again = uot_tv_project(x, w, ys.cost, eta, ys.price, eps, relax=1.8, state=r.state)
    assert bool((again.radius <= eps).all()) and int(again.iterations.sum()) < int(r.iterations.sum())
    f = uot_tv_functional(r.state["f"], r.state["g"], x, r.z, ys.cost, eta / r.psi.reshape(-1, 1, 1, 1), ys.price)
    assert torch.allclose(f, r.radius)


def test_uot_tv_attack_stays_within_the_radius() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 8, 8, generator=gen)
    model = _Linear(1, 8, 8)
    y = model(x).argmax(1).detach()
    for name in ("uot-tv", "uot-tv-search"):
        res = from_preset(name, model, radius=0.2, steps=4)(x, y)
        assert bool((res.metered_radius <= res.radius + 1e-12).all())
        ok = torch.isfinite(res.certified_radius)
        assert bool((res.metered_radius[ok] <= res.certified_radius[ok] * (1 + 1e-6)).all())
    with pytest.raises(TypeError, match="ball"):
        UOTTVAttack(model, ball=LocalCost(5))
