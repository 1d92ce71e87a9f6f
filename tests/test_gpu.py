"""CUDA against CPU: the window operator, UOT Sinkhorn (every marginal penalty), the projection, one attack step.

Run with ``pytest -m gpu`` on a machine with a CUDA device (``scripts/gpu_check.sh``); without one every test
is skipped with the reason below.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sinkhorn_attacks.attacks import UOTAttack
from sinkhorn_attacks.ot import LocalCost, local_lse, uot_sinkhorn
from sinkhorn_attacks.projections import uot_project

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("k,hw", [(5, 32), (3, 64), (None, 6)])
@pytest.mark.parametrize("power", [0, 1])
def test_local_lse(dtype, rtol, k, hw, power):
    v = 4 * torch.randn(3, 2, hw, hw, generator=_gen(0), dtype=torch.float64)
    v[0, 0, :4, :4] = -torch.inf  # empty windows and the log-domain path
    v[1, 1] = v[1, 1] * 50  # a wide dynamic range (float64 rescue in float32)
    v = v.to(dtype)
    cost = LocalCost(k, 1.0)
    eta = torch.tensor([0.05, 0.3, 1.0], dtype=dtype).reshape(3, 1, 1, 1)
    cpu = local_lse(v, cost, eta, power=power)
    gpu = local_lse(v.cuda(), cost, eta.cuda(), power=power).cpu()
    assert torch.equal(torch.isneginf(cpu), torch.isneginf(gpu))
    fin = torch.isfinite(cpu)
    assert torch.allclose(gpu[fin], cpu[fin], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("divergence", ["kl", "tv", "l2"])
def test_uot_sinkhorn(divergence):
    x = torch.rand(2, 3, 24, 24, generator=_gen(1), dtype=torch.float64)
    z = (x + 0.2 * torch.randn(x.shape, generator=_gen(2), dtype=torch.float64)).clamp(0, 1)
    x[0, 0, :5, :5] = 0  # zeros and a hole in the KL case
    eta = 0.5 if divergence == "tv" else 0.05  # tv contracts only where clipped: slow at small eta
    cost = LocalCost(5, 1.0)
    cpu = uot_sinkhorn(x, z, cost, eta, 2.0, divergence=divergence)
    gpu = uot_sinkhorn(x.cuda(), z.cuda(), cost, eta, 2.0, divergence=divergence)
    assert bool(cpu.converged.all()) and bool(gpu.converged.cpu().all())
    for name in ("value", "dual", "transport_cost", "plan_mass"):
        a, b = getattr(cpu, name), getattr(gpu, name).cpu()
        assert torch.allclose(b, a, rtol=1e-8, atol=1e-10), name
    assert bool((gpu.gap >= -1e-12).all())


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_uot_project(dtype, atol):
    x = torch.rand(3, 3, 20, 20, generator=_gen(3), dtype=dtype)
    w = x + 0.1 * torch.sign(torch.randn(x.shape, generator=_gen(4), dtype=dtype))
    eps = 0.3 * x.flatten(1).sum(1)
    cost = LocalCost(5, 1.0)
    cpu = uot_project(x, w, cost, 0.05, 10.0, 1.0, eps)
    gpu = uot_project(x.cuda(), w.cuda(), cost, 0.05, 10.0, 1.0, eps.cuda())
    assert float((gpu.z.cpu() - cpu.z).abs().max()) <= atol
    assert bool((gpu.radius.cpu() <= eps * (1 + 1e-6)).all())
    assert torch.allclose(gpu.radius.cpu().double(), cpu.radius.double(), rtol=10 * atol)


def test_uot_attack_step():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)
    ).eval()
    x = torch.rand(4, 3, 32, 32, generator=_gen(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(steps=1, meter_cost=None, early_stop=False)
    cpu = UOTAttack(model, **kw)(x, y)
    gpu = UOTAttack(model.cuda(), **kw)(x.cuda(), y.cuda())
    diff = (gpu.adv.cpu() - cpu.adv).abs()
    # a sign step can flip where the gradient is at rounding level; everything else agrees to float32 accuracy
    assert float((diff > 1e-3).float().mean()) < 1e-3
    cc, cg = cpu.certified_radius, gpu.certified_radius.cpu()
    assert torch.allclose(cg, cc, rtol=1e-3, atol=1e-6)
    assert bool((cg <= 0.3 * (1 + 1e-6)).all())
