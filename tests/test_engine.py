"""The shared block-ascent loop (ot.engine) on fixed-point problems whose iterates are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from sinkhorn_attacks.ot.engine import Decision, SweepOptions, relaxed, run_sweeps


def _affine(a: torch.Tensor, b: torch.Tensor):
    """Sweep of the fixed-point iteration ``x <- x + omega (a x + b - x)`` per image; residual ``|T(x) - x|``."""

    def sweep(ws, it):
        t = ws["a"] * ws["x"] + ws["b"]
        r = (t - ws["x"]).abs().flatten(1).amax(1)
        ws["x"] = relaxed(ws["x"], t, ws["omega"]) if "omega" in ws else t
        return r

    return sweep


def _plain_reference(x0: float, a: float, b: float, tol: float, cap: int) -> tuple[int, float]:
    x = x0
    for it in range(1, cap + 1):
        t = a * x + b
        r = abs(t - x)
        x = t
        if r <= tol:
            return it, x
    return cap, x


def test_each_image_leaves_when_done_and_is_written_back():
    a = torch.tensor([0.5, 0.9, 0.1, 0.99], dtype=torch.float64).reshape(-1, 1, 1, 1)
    b = torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64).reshape(-1, 1, 1, 1)
    x = torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    x[2] = 3.0
    left = []
    state = {"x": x}
    log = run_sweeps(
        state, _affine(a, b), SweepOptions(tol=1e-9, max_iter=300), out=("x",), extra={"a": a, "b": b},
        on_leave=lambda ws, m, idx: left.extend(idx[m].tolist()),
    )  # fmt: skip
    assert state["x"] is x  # written in place
    for i in range(4):
        it, xr = _plain_reference(float([0, 0, 3, 0][i]), float(a[i]), float(b[i]), 1e-9, 300)
        assert int(log.iterations[i]) == it
        assert float(x[i]) == pytest.approx(xr, rel=0, abs=1e-15)
        assert bool(log.converged[i]) == (it < 300 or abs(float(a[i]) * xr + float(b[i]) - xr) <= 1e-9)
    assert sorted(left) == [0, 1, 2, 3]  # every image leaves exactly once
    assert not bool(log.converged[3])  # a = 0.99 needs more than 300 sweeps for 1e-9


def test_retire_all_runs_the_batch_until_every_image_is_done():
    a = torch.tensor([0.5, 0.9], dtype=torch.float64).reshape(-1, 1, 1, 1)
    b = torch.ones(2, 1, 1, 1, dtype=torch.float64)
    state = {"x": torch.zeros(2, 1, 1, 1, dtype=torch.float64)}
    log = run_sweeps(state, _affine(a, b), SweepOptions(1e-9, 1000, retire="all"), out=("x",), extra={"a": a, "b": b})
    slow, _ = _plain_reference(0.0, 0.9, 1.0, 1e-9, 1000)
    assert log.iterations.tolist() == [slow, slow]
    assert bool(log.converged.all())


def test_decide_overrides_the_tolerance():
    a = torch.full((3, 1, 1, 1), 0.5, dtype=torch.float64)
    b = torch.ones(3, 1, 1, 1, dtype=torch.float64)
    state = {"x": torch.zeros(3, 1, 1, 1, dtype=torch.float64)}

    def decide(ws, r, ok, it, idx):
        return Decision(ok | (idx == 1) & (it >= 3))  # image 1 is declared done after 3 sweeps

    log = run_sweeps(state, _affine(a, b), SweepOptions(1e-12, 500), out=("x",), extra={"a": a, "b": b}, decide=decide)
    assert int(log.iterations[1]) == 3
    assert int(log.iterations[0]) == int(log.iterations[2]) > 3


def test_guards_damp_a_diverging_relaxation_and_keep_the_fixed_point():
    # T(x) = -0.9 x + 1: omega = 1.95 multiplies the error by 1 + 1.95 (a - 1) = -2.7 per sweep (diverges);
    # the guard halves omega towards 1 until the iteration contracts
    a = torch.full((2, 1, 1, 1), -0.9, dtype=torch.float64)
    b = torch.ones(2, 1, 1, 1, dtype=torch.float64)
    state = {"x": torch.tensor([0.0, 5.0], dtype=torch.float64).reshape(-1, 1, 1, 1)}
    extra = {"a": a, "b": b}
    log = run_sweeps(state, _affine(a, b), SweepOptions(1e-10, 2000, relax=1.95), out=("x",), extra=extra, guarded=True)
    assert bool(log.converged.all())
    assert torch.allclose(state["x"], b / (1 - a), atol=1e-9)


def test_guarded_loop_restarts_or_stops_a_non_finite_iterate():
    def sweep(ws, it):
        r = torch.where(
            ws["x"].flatten(1)[:, 0] > 0, torch.full_like(ws["x"][:, 0, 0, 0], math.nan), ws["x"][:, 0, 0, 0]
        )
        ws["x"] = ws["x"] * 0.5
        return r.abs()

    state = {"x": torch.tensor([1.0, -1.0], dtype=torch.float64).reshape(-1, 1, 1, 1)}
    log = run_sweeps(state, sweep, SweepOptions(1e-8, 100), out=("x",), guarded=True)  # no restart: stops
    assert not bool(log.converged[0]) and int(log.iterations[0]) == 1
    assert bool(log.converged[1])

    starts = []

    def restart(ws, bad, idx):
        starts.extend(idx[bad].tolist())
        ws["x"][bad] = -1.0  # a finite start from which the sweep converges

    state = {"x": torch.tensor([1.0, -1.0], dtype=torch.float64).reshape(-1, 1, 1, 1)}
    log = run_sweeps(state, sweep, SweepOptions(1e-8, 100), out=("x",), guarded=True, restart=restart)
    assert starts == [0] and bool(log.converged.all())


def test_relaxed_keeps_infinite_potentials_exact():
    vals = torch.tensor([0.5, math.inf, -math.inf], dtype=torch.float64)
    old, new = torch.meshgrid(vals, vals, indexing="ij")
    out = relaxed(old, new, torch.tensor(1.8, dtype=torch.float64))
    both = torch.isfinite(old) & torch.isfinite(new)
    assert torch.equal(out[~both], new[~both])
    assert torch.allclose(out[both], old[both] + 1.8 * (new[both] - old[both]))


@pytest.mark.parametrize(
    "kw",
    [dict(tol=0.0), dict(tol=-1.0), dict(max_iter=0), dict(max_iter=True), dict(relax=2.0), dict(retire="some")],
)
def test_options_refuse_bad_values(kw):
    with pytest.raises(ValueError):
        SweepOptions(**kw)
