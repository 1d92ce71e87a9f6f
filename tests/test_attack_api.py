"""The attack API users of torchattacks / Foolbox expect: radii lists, eps, random starts and restarts, model
mode, tuple outputs, repr, measuring cost and sample, units carried by results."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sinkhorn_attacks.attacks import from_preset
from sinkhorn_attacks.ot import Yardstick, measure


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _data(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return x


def test_sweep_gives_one_result_per_radius_and_eps_alias() -> None:
    model = _model()
    x = _data()
    y = model(x).argmax(1)
    atk = from_preset("linf-pgd", model, eps=0.05, steps=5, step_size=0.02)
    assert atk.radius == 0.05
    res = atk.sweep(x, y, [0.0, 0.02, 0.3])
    assert [len(r) for r in res] == [6, 6, 6]
    assert float(res[0].linf.max()) <= 1e-7  # radius 0: nothing moves
    for r, eps in zip(res, [0.0, 0.02, 0.3]):
        assert float(r.linf.max()) <= eps + 1e-6
    assert res[2].robust_accuracy <= res[0].robust_accuracy
    with pytest.raises(ValueError, match="not both"):
        from_preset("linf-pgd", model, eps=0.1, radius=0.1)


def test_random_start_and_restarts() -> None:
    model = _model()
    x = _data()
    y = model(x).argmax(1)
    torch.manual_seed(0)
    a = from_preset("linf-pgd", model, radius=0.05, steps=1, step_size=0.01, random_start=True, yardstick=None)
    r1 = a(x, y)
    assert float(r1.linf.max()) <= 0.05 + 1e-6  # the random start stays in the ball
    b = from_preset("linf-pgd", model, radius=0.05, steps=3, step_size=0.01, restarts=3, yardstick=None)
    r3 = b(x, y)
    r0 = from_preset("linf-pgd", model, radius=0.05, steps=3, step_size=0.01, yardstick=None)(x, y)
    assert r3.success.sum() >= r0.success.sum()  # restarts only add successes
    assert r3.grad_evals >= r0.grad_evals
    assert "restarts=3" in repr(b)
    with pytest.raises(ValueError, match="restarts"):
        from_preset("linf-pgd", model, restarts=0)


def test_model_mode_restored_and_tuple_outputs() -> None:
    class TupleNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.net(x)), {"aux": 1}

    m = TupleNet().train()
    x = _data()
    y = m.net(x).argmax(1)
    res = from_preset("linf-pgd", m, radius=0.1, steps=2, step_size=0.05)(x, y)
    assert m.training  # restored
    assert res.clean_accuracy == 1.0  # evaluated in eval mode (dropout off), first tuple element
    dict_model = lambda z: {"logits": m.net(z)}  # noqa: E731
    assert len(from_preset("fgsm", dict_model, radius=0.1)(x, y)) == 6


def test_result_carries_units_time_and_meter_sample() -> None:
    model = _model()
    x = _data()
    y = model(x).argmax(1)
    res = from_preset("linf-pgd", model, radius=0.3, steps=3, step_size=0.1)(x, y)
    assert res.yardstick == Yardstick() and res.summary()["yardstick"] == Yardstick().label
    assert 0 < res.meter_time_s <= res.time_s
    assert torch.allclose(res.metered_radius, measure(x, res.adv).value)
    assert torch.isfinite(res.metered_radius).all()  # created mass is priced, not inf
    part = from_preset("linf-pgd", model, radius=0.3, steps=3, step_size=0.1, meter_sample=2)(x, y)
    assert torch.isfinite(part.metered_radius[:2]).all() and torch.isnan(part.metered_radius[2:]).all()
    text = str(res)
    assert "yardstick" in text and "robust_accuracy" in text
    s = res.summary()
    assert all(not isinstance(v, float) or math.isnan(v) or len(repr(v)) < 12 for v in s.values())
    with pytest.raises(ValueError, match="meter_sample"):
        from_preset("linf-pgd", model, meter_sample=0)


def test_wrong_labels_and_black_images_per_example() -> None:
    model = _model()
    x = _data()
    y = model(x).argmax(1)
    with pytest.raises(ValueError, match=r"lie in \[0, 9\]"):
        from_preset("fgsm", model)(x, torch.full_like(y, 10))
    with pytest.raises(ValueError, match="shape"):
        from_preset("fgsm", model)(x, y[:, None])
    with pytest.raises(TypeError, match="int64"):
        from_preset("fgsm", model)(x, y.int())
    with pytest.raises(TypeError, match="float64"):
        from_preset("fgsm", model)(x.double(), y)
    xb = x.clone()
    xb[1] = 0  # a black image: Wong / Hu cannot normalise it; the rest of the batch is attacked
    yb = model(xb).argmax(1)
    res = from_preset("hu2020-mnist", model, steps=3)(xb, yb)
    assert res.extras["skipped_empty"][1] == 1 and res.extras["skipped_empty"][0] == 0
    assert torch.equal(res.adv[1], xb[1]) and not bool(res.success[1])


def test_registries_refuse_duplicates_and_list_by_wildcard() -> None:
    from sinkhorn_attacks.attacks import preset_names, register_preset
    from sinkhorn_attacks.zoo import ARCHITECTURES

    assert preset_names("wong2019-*") == ["wong2019-cifar", "wong2019-mnist"]
    with pytest.raises(ValueError, match="already registered"):
        register_preset("uot", lambda model, **kw: None)
    with pytest.raises(ValueError, match="did you mean 'linf-pgd'"):
        from_preset("linf-pdg", _model())
    with pytest.raises(ValueError, match="already registered"):
        ARCHITECTURES.register("mnist_cnn", lambda: None)
