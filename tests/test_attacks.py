"""Attack loop, presets, honest budgets, bad inputs and a numerical-robustness sweep."""

import math

import pytest
import torch
from conftest import train_digits_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinkhorn_attacks.attacks import RadiusSchedule, UOTAttack, from_preset, preset_names
from sinkhorn_attacks.ot import LocalCost, exact_uot, uot_sinkhorn
from sinkhorn_attacks.projections import uot_project


@pytest.fixture(scope="module")
def digits_model():
    from sinkhorn_attacks.data import load_dataset

    te = load_dataset("digits", "test", limit=24)
    return train_digits_cnn(8), te.images, te.labels


def test_presets_listed_and_unknown_name():
    names = preset_names()
    for n in ("thesis", "uot", "linf-pgd", "wong2019-mnist", "hu2020-mnist", "wu2020-fw-mnist"):
        assert n in names
    with pytest.raises(ValueError, match="unknown attack preset"):
        from_preset("nope", torch.nn.Identity())


def test_uot_attack_lowers_accuracy_with_certified_budget(digits_model):
    model, x, y = digits_model
    atk = UOTAttack(model, radius=0.3, steps=8, step_size=0.1)
    res = atk(x, y)
    assert res.clean_accuracy > 0.8
    assert res.robust_accuracy < res.clean_accuracy
    assert ((res.adv >= 0) & (res.adv <= 1)).all()
    # honest budget: every returned image is certified inside the UOT ball (raw units: radius * ||x||_1) ...
    attacked = res.clean_correct
    mass = x.flatten(1).sum(1).double()
    cert = res.certified_radius[attacked]
    assert (cert <= 0.3 * (1 + 1e-4)).all()
    # ... and the exact UOT distance of the returned image is below the certificate
    idx = attacked.nonzero().squeeze(1)[:4]
    exact = exact_uot(x[idx].double(), res.adv[idx].double(), LocalCost(5, 1.0), 10.0)
    assert (exact <= res.certified_radius[idx] * mass[idx] * (1 + 1e-3) + 1e-6).all()
    # success is recomputed on exactly the returned images
    with torch.no_grad():
        assert torch.equal(res.success, model(res.adv).argmax(1) != y)
    assert res.metered_radius.shape == (len(y),) and torch.isfinite(res.metered_radius[idx]).all()
    assert res.grad_evals > 0 and (res.iterations[~res.clean_correct] == 0).all()


def test_thesis_preset_reports_no_transport(digits_model):
    model, x, y = digits_model
    res = from_preset("thesis", model, steps=2)(x[:6], y[:6])
    tf = res.extras["transported_fraction"]
    assert float(tf[torch.isfinite(tf)].max()) < 1e-6


def test_linf_pgd_and_targeted_and_search(digits_model):
    model, x, y = digits_model
    res = from_preset("linf-pgd", model, radius=0.2, steps=10, step_size=0.05)(x, y)
    assert float((res.adv - x).abs().max()) <= 0.2 + 1e-6
    assert res.robust_accuracy < res.clean_accuracy
    target = (y + 1) % 10
    atk = from_preset("linf-pgd", model, radius=0.5, steps=20, step_size=0.05, targeted=True)
    rt = atk(x, y, target=target)
    with torch.no_grad():
        assert torch.equal(rt.success, model(rt.adv).argmax(1) == target)
    assert rt.success.float().mean() > 0.3
    search = from_preset(
        "linf-pgd",
        model,
        radius=0.02,
        steps=12,
        step_size=0.02,
        schedule=RadiusSchedule("add", increment=0.02, every=1),
    )(x, y)
    fooled = search.success & search.clean_correct
    assert (search.radius[~search.clean_correct] == 0).all()  # clean errors count as radius 0
    assert (search.linf[fooled] <= search.radius[fooled] + 1e-6).all()


def test_bad_inputs_raise_clear_errors(digits_model):
    model, x, y = digits_model
    atk = from_preset("linf-pgd", model, steps=1)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        atk(bad, y)
    with pytest.raises(ValueError, match="negative"):
        atk(x - 0.5, y)
    with pytest.raises(ValueError, match="above 1"):
        atk(x * 3, y)
    with pytest.raises(ValueError, match="rank"):
        atk(x[0], y)
    with pytest.raises(ValueError, match="empty"):
        atk(x[:0], y[:0])
    with pytest.raises(ValueError, match="labels"):
        atk(x, y[:3])
    with pytest.raises(ValueError, match="odd"):
        LocalCost(4)
    with pytest.raises(ValueError, match="eta"):
        uot_sinkhorn(x, x, LocalCost(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        uot_sinkhorn(x, x[:, :, :4], LocalCost(3), 0.1, 1.0)
    with pytest.raises(TypeError, match="dtype|float"):
        uot_sinkhorn(x, x.double(), LocalCost(3), 0.1, 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        uot_sinkhorn((x * 255).to(torch.uint8), (x * 255).to(torch.uint8), LocalCost(3), 0.1, 1.0)
    with pytest.raises(ValueError, match="radius"):
        from_preset("uot", model, radius=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_device_mismatch():
    x = torch.rand(2, 3, 8, 8)
    w = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    cpu = uot_project(x, w, LocalCost(5), 0.05, 5.0, radius=0.5)
    gpu = uot_project(x.cuda(), w.cuda(), LocalCost(5), 0.05, 5.0, radius=0.5)
    assert float((gpu.z.cpu() - cpu.z).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="device"):
        uot_project(x, w.cuda(), LocalCost(5), 0.05, 5.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    eta=st.floats(1e-3, 10.0),
    tau=st.floats(1e-2, 1e3),
    kind=st.sampled_from(["random", "zeros", "ones", "sparse"]),
    budget=st.booleans(),
)
def test_no_nan_or_inf_anywhere(eta, tau, kind, budget):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 6, 6, generator=g)
    if kind == "zeros":
        x = torch.zeros_like(x)
    elif kind == "ones":
        x = torch.ones_like(x)
    elif kind == "sparse":
        x = x * (x > 0.7)
    w = x + 0.3 * torch.randn(x.shape, generator=g)
    res = uot_project(
        x, w, LocalCost(3, 1.0), eta, tau, 1.0, radius=0.5 if budget else None, max_iter=200, max_search=8
    )
    assert torch.isfinite(res.z).all() and ((res.z >= 0) & (res.z <= 1)).all()
    assert torch.isfinite(res.radius).all()
    s = uot_sinkhorn(x, res.z, LocalCost(3, 1.0), eta, tau, max_iter=200)
    assert torch.isfinite(s.value).all() or kind in ("zeros",)
    assert not math.isnan(float(s.value.sum()))
