"""``exact_uot`` is exact at every tau: certified by weak duality, never above the balanced cost."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from sinkhorn_attacks.ot import LocalCost, exact_uot


def _dual_lower_bound(a: np.ndarray, b: np.ndarray, c: np.ndarray, tau: float, plan: np.ndarray) -> float:
    """Weak duality for KL-UOT: for any f, g with f_i + g_j <= C_ij,
    U_tau(a, b) >= sum_i tau a_i (1 - e^{-f_i / tau}) + sum_j tau b_j (1 - e^{-g_j / tau}).
    f from the plan's row marginal (optimal at the optimum), g the largest feasible partner of f."""
    f = -tau * np.log(np.maximum(plan.sum(1), 1e-300) / a)
    g = np.min(c - f[:, None], axis=0)
    return float(np.sum(tau * a * (-np.expm1(-f / tau))) + np.sum(tau * b * (-np.expm1(-g / tau))))


@pytest.mark.parametrize("tau", [0.5, 5.0, 50.0, 500.0, 5000.0])
def test_exact_uot_is_certified_by_duality_at_every_tau(tau: float) -> None:
    rng = np.random.default_rng(int(tau * 10))
    cost = LocalCost(None, 1.0)
    c = cost.dense(5, 5).numpy()
    for _ in range(3):
        a, b = rng.random(25), rng.random(25) * rng.uniform(0.5, 2.0)
        value = float(exact_uot(torch.tensor(a).view(1, 1, 5, 5), torch.tensor(b).view(1, 1, 5, 5), cost, tau))
        best_dual = max(
            _dual_lower_bound(
                a, b, c, tau, ot.unbalanced.mm_unbalanced(a, b, c, tau, div="kl", G0=g0, numItermax=20000)
            )
            for g0 in (None, ot.emd(a, b * a.sum() / b.sum(), c))
        )
        assert best_dual <= value * (1 + 1e-12)  # a true lower bound
        assert (value - best_dual) / value < 1e-4  # the returned value is within 0.01 % of the optimum


def test_exact_uot_never_exceeds_the_balanced_cost_and_grows_with_tau() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    z = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    z = z / z.sum((1, 2, 3), keepdim=True) * x.sum((1, 2, 3), keepdim=True)  # equal masses
    cost = LocalCost(None, 1.0)
    c = cost.dense(6, 6).numpy()
    balanced = torch.tensor([ot.emd2(x[i].ravel().numpy(), z[i].ravel().numpy(), c) for i in range(2)])
    values = torch.stack([exact_uot(x, z, cost, tau) for tau in (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)])
    assert bool((values <= balanced * (1 + 1e-12)).all())
    assert bool((values[1:] >= values[:-1] - 1e-9).all())  # U_tau is non-decreasing in tau
    assert bool(((balanced - values[-1]) / balanced < 1e-3).all())  # and tends to the balanced cost


def test_exact_uot_refuses_a_non_positive_iteration_cap() -> None:
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_iter"):
            exact_uot(x, x, LocalCost(None, 1.0), 1.0, max_iter=bad)


def test_measure_survives_tiny_masses_and_scales_exactly() -> None:
    """Masses near 1e-170 once crashed the process inside the LP solver: run in a child process."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from sinkhorn_attacks.ot import Yardstick, measure\n"
        "torch.manual_seed(0)\n"
        "x, z = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.rand(2, 1, 8, 8, dtype=torch.float64)\n"
        "ref = measure(x, z, Yardstick(normalisation='none')).value\n"
        "for s in (1e-120, 1e-170, 1e-250, 1e-300):\n"
        "    v = measure(x * s, z * s, Yardstick(normalisation='none')).value / s\n"
        "    assert torch.allclose(v, ref, rtol=1e-9), (s, v, ref)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
