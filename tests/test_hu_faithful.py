"""Hu et al. (2020) as the authors run it: step rule, pre-projection cap, box projection, schedule, radii."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import data_dir, models_dir

from sinkhorn_attacks.attacks import from_preset
from sinkhorn_attacks.attacks.steps import get_step
from sinkhorn_attacks.ot.cost import LocalCost
from sinkhorn_attacks.projections.sinkhorn import HuProjection, hu_project


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("scale", [1.0, 1e-14])
def test_mass_scaled_step_is_hus_grad_rule(channels: int, scale: float) -> None:
    """``w = x + (a / c) ||x||_1 g / ||g||_inf``: the largest pixel moves by a * N / c (raw units), however
    small the gradient (a confident model's cross-entropy gradient is ~1e-14)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, channels, 8, 8, generator=g)
    grad = torch.randn(3, channels, 8, 8, generator=g, dtype=torch.float64).float() * scale
    w = get_step("mass_scaled")(x, grad, 0.06, x)
    step = (w - x).flatten(1)
    mass = x.flatten(1).sum(1)
    assert torch.allclose(step.abs().amax(1), 0.06 / channels * mass, rtol=1e-5)
    assert torch.equal(step.sign(), grad.flatten(1).sign())
    # proportional to the gradient, not its sign
    ratio = step / grad.flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)
    # a zero gradient is no step (no division by zero)
    assert torch.equal(get_step("mass_scaled")(x, torch.zeros_like(x), 0.06, x), x)


def _digit(seed: int = 0, size: int = 12) -> torch.Tensor:
    """A stroke on a black background: most pixels have no clean mass in their 5x5 window."""
    x = torch.zeros(2, 1, size, size)
    x[0, 0, 2:5, 2:8] = torch.rand(3, 6, generator=torch.Generator().manual_seed(seed))
    x[1, 0, 6:9, 3:5] = 0.8
    return x


def test_hu_projection_puts_no_mass_where_no_clean_mass_can_reach() -> None:
    """Pixels farther than the window from any ink get at most 1e-12 of the clean mass (Hu's 1e-15 offset
    histogram), exactly zero without the offset; no float32 cancellation in z = w + beta / lam."""
    x = _digit()
    g = torch.Generator().manual_seed(1)
    mass = x.flatten(1).sum(1).reshape(-1, 1, 1, 1)
    w = x + 0.06 * mass * torch.randn(x.shape, generator=g)  # Hu-sized step: pixels pushed far above 1
    proj = HuProjection(LocalCost(5, 1.0), 1000.0, 100, extra_iter=1000)  # Hu's loop has no cap
    z, _, info = proj(x, w, torch.full((2,), 0.1), None)
    assert bool(info["converged"].all())
    unreachable = F.max_pool2d(x, 5, 1, 2) == 0
    assert unreachable.any()
    far = (z * unreachable).flatten(1).sum(1) / mass.flatten()
    assert float(far.max()) <= 1e-11  # Hu's 1e-15 offset histogram, not float32 cancellation (was ~1e-7)
    z0, _, _ = HuProjection(LocalCost(5, 1.0), 1000.0, 100, extra_iter=1000, offset=0.0)(
        x, w, torch.full((2,), 0.1), None
    )
    assert float(z0[unreachable].abs().max()) == 0.0  # without the offset: exactly nothing there
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert ((z.flatten(1).sum(1) / mass.flatten() - 1).abs() <= 0.0101).all()  # Hu's 1 % mass tolerance
    assert "plan_cost" in info and "certified_radius" not in info


def test_hu_projection_caps_the_iterate_before_projecting() -> None:
    """Hu's loop caps the normalised iterate at 60 / (H W C) before projecting (on by default)."""
    x = _digit()
    mass = x.flatten(1).sum(1).reshape(-1, 1, 1, 1)
    w = x + 50.0 * mass * torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    cap = 60.0 / x[0].numel()
    radius = torch.full((2,), 0.05)
    z, _, _ = HuProjection(LocalCost(5, 1.0), 1000.0, 60)(x, w, radius, None)
    ref = hu_project(x, torch.minimum(w / mass, torch.full_like(w, cap)) * mass, LocalCost(5, 1.0), radius, 1000.0, 60)
    assert torch.equal(z, ref.z.clamp(0, 1))
    z_off, _, _ = HuProjection(LocalCost(5, 1.0), 1000.0, 60, pre_clamp=False)(x, w, radius, None)
    assert not torch.equal(z, z_off)


def test_hu_preset_schedule_and_radii_are_nominal_not_certified() -> None:
    """Radius 0.01 at the first projection, +0.01 per step; each example's radius is the one it was fooled at;
    ``certified_radius`` is NaN (Hu's plan cost bounds neither the clamped image nor its mass)."""
    torch.manual_seed(0)
    x = _digit().repeat(2, 1, 1, 1)
    weights = torch.randn(10, x[0].numel())

    def model(z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ weights.T

    y = model(x).argmax(1)
    res = from_preset("hu2020-mnist", model, steps=30, meter_cost=None)(x, y)
    fooled = res.success & res.clean_correct
    assert fooled.any()
    it = res.iterations[fooled].double()
    assert torch.allclose(res.radius[fooled], 0.01 * it, atol=1e-6)
    assert torch.isnan(res.certified_radius).all()
    assert "plan_cost" in res.extras


@pytest.mark.data
def test_hu_fools_every_vanilla_mnist_image_within_60_steps() -> None:
    """The authors' code fools every one of the first 100 test images of Wong's vanilla model within 56
    steps; a step that is 784x too small fooled none of 30 in 60 steps."""
    from sinkhorn_attacks import zoo
    from sinkhorn_attacks.data import load_dataset

    data_dir()
    net = zoo.load("wong2019-mnist-vanilla", models_dir=models_dir(), download=False)
    d = load_dataset("mnist", "test", limit=12)
    res = from_preset("hu2020-mnist", net, steps=60, meter_cost=None)(d.images, d.labels)
    assert bool((res.success | ~res.clean_correct).all())
    assert float(res.radius[res.clean_correct].max()) <= 0.6 + 1e-6
    assert not math.isnan(float(res.extras["plan_cost"][res.clean_correct].mean()))
