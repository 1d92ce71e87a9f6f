"""The ``uot`` preset on RGB and larger images with default settings (a tiny random conv net as the model)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sinkhorn_attacks.attacks import from_preset
from sinkhorn_attacks.ot import LocalCost
from sinkhorn_attacks.ot.sinkhorn import uot_upper_bound


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def _run(side: int, batch: int, **overrides):
    model = _net()
    x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(side))
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = from_preset("uot", model, meter_cost=None, **overrides)
    seen: list[dict[str, torch.Tensor]] = []
    inner = atk.projection

    def recorded(x_, w_, r_, s_):
        z, st, info = inner(x_, w_, r_, s_)
        seen.append({"eps": r_.double(), **{k: v.double() for k, v in info.items()}})
        return z, st, info

    atk.projection = recorded
    return x, atk(x, y), seen


def _check(x, res, seen, radius: float = 0.3):
    assert res.adv.shape == x.shape and float(res.adv.min()) >= 0 and float(res.adv.max()) <= 1
    cert = res.certified_radius
    assert bool(torch.isfinite(cert).all())
    assert bool((cert <= radius * (1 + 1e-6)).all()), cert  # no infeasible returns
    # every projection of the run: certified within its budget, and converged
    over = torch.cat([s["certified_radius"] / s["eps"] for s in seen])
    assert float(over.max()) <= 1 + 1e-6
    conv = torch.cat([s["inner_converged"] for s in seen])
    assert float(conv.mean()) >= 0.9
    # independent bound from re-solved plans agrees with the certificate's feasibility
    mass = x.double().flatten(1).sum(1)
    ub = uot_upper_bound(x, res.adv, LocalCost(5, 1.0), 10.0) / mass
    assert bool((ub <= radius * (1 + 1e-3)).all()), ub


def test_uot_preset_64x64x3_defaults():
    x, res, seen = _run(64, 1)
    assert len(seen) == int(res.iterations.max())  # one projection per step (and no random start)
    _check(x, res, seen)


@pytest.mark.slow
def test_uot_preset_128x128x3_default_projection():
    x, res, seen = _run(128, 1, steps=8)  # projection settings are the preset's; fewer steps to stay quick
    _check(x, res, seen)
