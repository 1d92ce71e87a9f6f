"""Transport engine: local operator, UOT Sinkhorn vs POT, the exact meter vs ot.emd2."""

import math

import numpy as np
import ot
import pytest
import torch

from sinkhorn_attacks.ot import (
    LocalCost,
    exact_ot,
    exact_uot,
    gather_window,
    local_lse,
    local_max,
    scatter_window,
    uot_sinkhorn,
)
from sinkhorn_attacks.ot.kernel import empty_windows


def _dense_lse(v, cost, eta, power=0):
    h, w = v.shape[-2:]
    C = cost.dense(h, w, dtype=v.dtype)
    a = (v.reshape(-1, 1, h * w) - C) / eta
    if power:
        a = a + torch.where((C > 0) & torch.isfinite(C), power * torch.log(C), torch.full_like(C, -math.inf))
    return torch.logsumexp(a, -1).reshape(v.shape)


def test_local_cost_validation_and_units():
    with pytest.raises(ValueError, match="odd"):
        LocalCost(4)
    with pytest.raises(ValueError):
        LocalCost(3, p=0)
    c = LocalCost(3, 2.0)
    t = c.table(5, 5)
    assert t[1, 1] == 0 and t[0, 1] == 1 and t[0, 0] == pytest.approx(2.0)  # squared distance for p=2
    assert LocalCost(3, 1.0).table(5, 5)[0, 0] == pytest.approx(math.sqrt(2))
    assert LocalCost(None).window(4, 7) == 13 and LocalCost(None).covers(4, 7)


@pytest.mark.parametrize("k,p,shape", [(3, 1.0, (2, 3, 5, 7)), (5, 2.0, (1, 2, 6, 6)), (None, 1.0, (2, 1, 4, 5))])
@pytest.mark.parametrize("power", [0, 1, 2])
def test_window_lse_equals_dense(k, p, shape, power):
    torch.manual_seed(0)
    cost = LocalCost(k, p)
    v = torch.randn(shape, dtype=torch.float64)
    v[0, 0, :2] = -math.inf  # no mass there
    ours = local_lse(v, cost, 0.37, power)
    ref = _dense_lse(v, cost, 0.37, power)
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    assert (ours[fin] - ref[fin]).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eta", [1e-3, 0.05, 3.0])
def test_known_empty_windows_give_the_same_operator(dtype, eta):
    """``local_lse(..., empty=empty_windows(...))`` skips counting each window's finite entries; with sparse
    supports (MNIST-like: most windows empty), spread potentials (underflow, float64 retry, log-domain
    fallback) and batches large enough for float32's own path, it equals the counted form and the dense
    reference."""
    torch.manual_seed(3)
    cost = LocalCost(5, 1.0)
    v = (torch.randn(48, 1, 28, 28, dtype=torch.float64) * 3).to(dtype)
    v[torch.rand(v.shape) < 0.8] = -math.inf
    v[0] = -math.inf  # no mass at all
    v[1, 0, 10:18, 10:18] = -math.inf  # a hole bigger than the window
    v[2] *= 50  # a wide span
    empty = empty_windows(v, cost)
    ref = _dense_lse(v.double(), cost, eta)
    assert torch.equal(empty, torch.isneginf(ref))
    counted = local_lse(v, cost, eta)
    known = local_lse(v, cost, eta, empty=empty)
    assert torch.equal(torch.isneginf(known), torch.isneginf(counted))
    fin = torch.isfinite(ref)
    # float32: v / eta itself is rounded (|v / eta| up to ~1e4 at eta = 1e-3), hence the absolute slack
    tol = dict(rtol=1e-5, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    assert torch.allclose(known[fin].double(), ref[fin], **tol)
    assert torch.equal(known, counted)
    with pytest.raises(ValueError, match="empty"):
        local_lse(v, cost, eta, 1, empty=empty)


@pytest.mark.parametrize("path", ["scaling", "streamed"])
@pytest.mark.parametrize("k,p", [(5, 1.0), (7, 2.0), (3, 1.5)])
@pytest.mark.parametrize("power", [0, 1, 2])
@pytest.mark.parametrize("eta", [1e-3, 0.05, 3.0])
def test_both_operator_paths_equal_dense(path, k, p, power, eta, monkeypatch):
    """The scaling form (grouped convolution, log-domain fallback) and the streamed log-domain form, both
    against the dense float64 reference, at temperatures from near-exact (1e-3: huge dynamic range) to smooth."""
    import sinkhorn_attacks.ot.kernel as kernel

    monkeypatch.setattr(kernel, "_SCALING_FIRST", path == "scaling")
    torch.manual_seed(11)
    cost = LocalCost(k, p)
    v = torch.randn(3, 2, 9, 11, dtype=torch.float64)
    v[0, 0, :3] = -math.inf
    v[1, 1] = -math.inf  # a measure without mass
    v[2, 0] = -math.inf
    v[2, 0, 4, 5] = 0.0  # a single mass: its window's centre carries no weight for power > 0
    ours = local_lse(v, cost, eta, power)
    ref = _dense_lse(v, cost, eta, power)
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    assert ((ours[fin] - ref[fin]).abs() / ref[fin].abs().clamp(min=1)).max() < 1e-11
    etas = torch.tensor([eta, 2 * eta, 0.5 * eta], dtype=torch.float64).reshape(3, 1, 1, 1)
    per = local_lse(v, cost, etas, power)
    for i in range(3):
        ref_i = _dense_lse(v[i : i + 1], cost, float(etas[i]), power)[0]
        fin = torch.isfinite(ref_i)
        assert torch.equal(torch.isneginf(per[i]), torch.isneginf(ref_i))
        assert ((per[i][fin] - ref_i[fin]).abs() / ref_i[fin].abs().clamp(min=1)).max() < 1e-11
    o32 = local_lse(v.float(), cost, eta, power).double()
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isneginf(o32), torch.isneginf(ref))
    scale = 1.0 + v[torch.isfinite(v)].abs().max() / eta  # float32 holds v/eta to ~1e-7 of this
    assert (o32[fin] - ref[fin]).abs().max() < 1e-6 * scale


def test_scaling_form_flags_underflow_and_falls_back():
    """A potential with a dynamic range far beyond exp's is computed in the log domain, still exactly."""
    from sinkhorn_attacks.ot.kernel import _scaling_lse

    torch.manual_seed(12)
    cost = LocalCost(5, 1.0)
    v = torch.randn(2, 12, 12, dtype=torch.float32)
    v[0, :6] -= 50.0  # at eta = 0.1 the top half is e^-500 below the image max: the scaling sum underflows
    _, redo = _scaling_lse(v / 0.1, cost, 0.1, 0)
    assert redo[0, :4].all() and not redo[0, 6:].any() and not redo[1].any()  # only pixels far below the max
    ref = _dense_lse(v.double(), cost, 0.1)
    assert (local_lse(v, cost, 0.1).double() - ref).abs().max() < 1e-4


def test_window_covering_image_equals_whole_image():
    torch.manual_seed(1)
    v = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    a = local_lse(v, LocalCost(9, 1.0), 0.2)
    b = local_lse(v, LocalCost(None, 1.0), 0.2)
    assert (a - b).abs().max() < 1e-12


def test_per_measure_eta_and_float32():
    torch.manual_seed(2)
    v = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    eta = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    out = local_lse(v, LocalCost(5), eta)
    for i in range(3):
        assert (out[i] - local_lse(v[i : i + 1], LocalCost(5), float(eta[i]))[0]).abs().max() < 1e-12
    o32 = local_lse(v.float(), LocalCost(5), 0.1)
    assert (o32.double() - local_lse(v, LocalCost(5), 0.1)).abs().max() < 1e-4


def test_local_max_is_eta_to_zero_limit_and_gather_scatter_adjoint():
    torch.manual_seed(3)
    cost = LocalCost(3, 1.0)
    v = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    eta = 1e-4
    assert (eta * local_lse(v, cost, eta) - local_max(v, cost)).abs().max() < 1e-3
    g = gather_window(v, cost)
    t = torch.randn_like(g)
    u = torch.randn_like(v)
    # <gather(u), t> == <u, scatter(t)> on the valid offsets
    valid = gather_window(torch.ones_like(v), cost) > 0
    lhs = (gather_window(u, cost) * t * valid).sum()
    rhs = (u * scatter_window(t * valid, cost)).sum()
    assert abs(float(lhs - rhs)) < 1e-10


def test_window_layouts_and_window_max_against_loops():
    """The offsets-last layout of ``gather_window`` / ``scatter_window`` is the same operator as the default
    one, and ``window_max`` is the max over each window's in-image pixels (a Python loop)."""
    from sinkhorn_attacks.ot.kernel import window_max

    torch.manual_seed(4)
    for cost in (LocalCost(3, 1.0), LocalCost(5, 2.0)):
        v = torch.randn(2, 3, 6, 7, dtype=torch.float64)
        g = gather_window(v, cost)
        assert torch.equal(gather_window(v, cost, last=True), g.movedim(-3, -1))
        t = torch.randn_like(g)
        assert torch.equal(scatter_window(t.movedim(-3, -1).contiguous(), cost, last=True), scatter_window(t, cost))
        r = cost.radius(6, 7)
        want = torch.empty_like(v)
        for i in range(6):
            for j in range(7):
                want[..., i, j] = v[..., max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1].amax((-2, -1))
        assert torch.equal(window_max(v, cost), want)


def test_window_index_lists_the_window_and_the_scatter_sources():
    """``window_index`` evaluates ``gather_window`` at listed pixels (``sign=1``) and names the sources that
    ``scatter_window`` sums into each pixel (``sign=-1``): summed in offset order they give its result exactly."""
    from sinkhorn_attacks.ot.kernel import window_index

    torch.manual_seed(5)
    for cost, (h, w) in ((LocalCost(3, 1.0), (6, 7)), (LocalCost(5, 2.0), (5, 4))):
        v = torch.randn(2, h, w, dtype=torch.float64)
        targets, sources = window_index(cost, h, w), window_index(cost, h, w, sign=-1)
        padded = torch.cat([v.reshape(2, -1), torch.zeros(2, 1, dtype=v.dtype)], 1)
        assert torch.equal(padded[:, targets].movedim(-1, 1).reshape(2, -1, h, w), gather_window(v, cost))
        t = torch.randn(2, h, w, targets.shape[1], dtype=torch.float32)
        rows = torch.cat([t.reshape(2, h * w, -1), torch.zeros(2, 1, t.shape[-1])], 1)
        total = torch.zeros(2, h * w)
        for d in range(t.shape[-1]):
            total += rows[:, sources[:, d], d]
        assert torch.equal(total.reshape(2, h, w), scatter_window(t, cost, last=True))
        at = torch.randperm(h * w)[:5]  # listed pixels only: the same rows, in the listed order
        assert torch.equal(window_index(cost, h, w, at=at), targets[at])
        assert torch.equal(window_index(cost, h, w, sign=-1, at=at), sources[at])


def _pot_uot_objective(P, M, x, z, eta, tau):
    P = np.where(P > 0, P, 0.0)
    ent = np.sum(np.where(P > 0, P * (np.log(np.where(P > 0, P, 1.0)) - 1), 0.0))
    a, b = P.sum(1), P.sum(0)

    def kl(p, q):
        return np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0) - p + q)

    return (P * M).sum() + eta * ent + tau * (kl(a, x) + kl(b, z))


@pytest.mark.parametrize("eta,tau", [(0.1, 1.0), (0.05, 0.1), (0.5, 10.0), (1e-3, 1e-2)])
def test_uot_sinkhorn_matches_pot(eta, tau):
    rng = np.random.default_rng(0)
    h, w = 5, 6
    x = torch.tensor(rng.uniform(0.05, 0.95, (1, 1, h, w)))
    z = torch.tensor(rng.uniform(0.05, 0.95, (1, 1, h, w)))
    cost = LocalCost(None, 2.0)
    res = uot_sinkhorn(x, z, cost, eta, tau, tol=1e-12, max_iter=100000)
    assert bool(res.converged.all())
    M = cost.dense(h, w).numpy()
    P = ot.unbalanced.sinkhorn_unbalanced(
        x.flatten().numpy(),
        z.flatten().numpy(),
        M,
        eta,
        tau,
        reg_type="entropy",
        method="sinkhorn_stabilized",
        stopThr=1e-15,
        numItermax=200000,
    )
    ref = _pot_uot_objective(P, M, x.flatten().numpy(), z.flatten().numpy(), eta, tau)
    assert abs(float(res.value) - ref) < 1e-8 * max(1.0, abs(ref))
    assert abs(float(res.value - res.dual)) < 1e-9 and float(res.gap) < 1e-9
    # plan from the potentials
    f, g = res.f.flatten(), res.g.flatten()
    ours = torch.exp((f[:, None] + g[None, :] - torch.tensor(M)) / eta).numpy()
    assert np.abs(ours - P).max() < 1e-8


def test_uot_sinkhorn_rgb_equals_per_channel_and_balanced_limit():
    torch.manual_seed(4)
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64) + 0.01
    z = torch.rand(2, 3, 5, 5, dtype=torch.float64) + 0.01
    cost = LocalCost(3, 1.0)
    full = uot_sinkhorn(x, z, cost, 0.2, 2.0, tol=1e-11)
    per = sum(
        float(uot_sinkhorn(x[:1, c : c + 1], z[:1, c : c + 1], cost, 0.2, 2.0, tol=1e-11).value) for c in range(3)
    )
    assert abs(float(full.value[0]) - per) < 1e-9
    # balanced: POT sinkhorn2 with the same entropy convention on normalised images, whole-image cost
    cb = LocalCost(None, 1.0)
    xn = x[:1, :1] / x[:1, :1].sum()
    zn = z[:1, :1] / z[:1, :1].sum()
    bal = uot_sinkhorn(xn, zn, cb, 0.05, math.inf, tol=1e-12, max_iter=100000)
    M = cb.dense(5, 5).numpy()
    P = ot.sinkhorn(
        xn.flatten().numpy(), zn.flatten().numpy(), M, 0.05, method="sinkhorn_log", stopThr=1e-14, numItermax=100000
    )
    assert abs(float(bal.transport_cost) - (P * M).sum()) < 1e-8
    with pytest.raises(ValueError, match="equal mass"):
        uot_sinkhorn(x[:1], z[:1], cost, 0.1, math.inf)


def test_thesis_defaults_transport_nothing_and_tau10_transports():
    # a blob shifted by one pixel (docs/math.md, scale study)
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    blob = torch.exp(-((yy - 5.5) ** 2 + (xx - 5.5) ** 2) / 6).double()[None, None]
    shifted = torch.roll(blob, 1, dims=-1)
    cost = LocalCost(5, 2.0)
    thesis = uot_sinkhorn(blob, shifted, cost, 1e-3, 1e-2)
    assert float(thesis.transported_fraction) < 1e-30
    moved = uot_sinkhorn(blob, shifted, cost, 0.1, 10.0, max_iter=20000)
    assert float(moved.transported_fraction) > 0.3


def test_exact_ot_matches_emd2_and_rgb_convention():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.uniform(0, 1, (3, 2, 4, 5)))
    z = torch.tensor(rng.uniform(0, 1, (3, 2, 4, 5)))
    x[0, 0, 0, :3] = 0.0
    cost = LocalCost(None, 1.0)
    res = exact_ot(x, z, cost)
    M = cost.dense(4, 5).numpy()
    for b in range(3):
        tot = 0.0
        for c in range(2):
            share = float(x[b, c].sum() / x[b].sum())
            p = x[b, c].flatten().numpy() / float(x[b].sum())
            q = z[b, c].flatten().numpy() / float(z[b, c].sum()) * share
            tot += ot.emd2(p, q, M)
        assert abs(float(res.value[b]) - tot) < 1e-9
    assert float(exact_ot(x, x, LocalCost(3)).value.abs().max()) < 1e-12


def test_exact_ot_window_infeasible_is_inf():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    z = torch.zeros_like(x)
    x[0, 0, 0, 0] = 1.0
    z[0, 0, 8, 8] = 1.0
    assert math.isinf(float(exact_ot(x, z, LocalCost(5)).value))
    assert float(exact_ot(x, z, LocalCost(None, 1.0)).value) == pytest.approx(8 * math.sqrt(2))


def _pot_windowed(p: np.ndarray, q: np.ndarray, cost: LocalCost) -> float:
    """Independent reference: POT's network simplex on the full dense windowed cost (float64)."""
    h, w = p.shape
    c = cost.dense(h, w).numpy()
    inside = np.isfinite(c)
    plan = ot.emd(p.ravel(), q.ravel(), np.where(inside, c, 1e6), numItermax=10_000_000)
    if plan[~inside].sum() > 1e-12:
        return math.inf
    return float((plan * np.where(inside, c, 0.0)).sum())


@pytest.mark.parametrize("k,p_exp", [(3, 1.0), (5, 1.0), (5, 2.0), (7, 1.5)])
def test_grid_flow_meter_matches_network_simplex(monkeypatch, k, p_exp):
    """The grid min-cost-flow path of the meter equals POT's exact transport on full, holed and dark images."""
    from sinkhorn_attacks.ot import meter

    monkeypatch.setattr(meter, "_DENSE_LIMIT", 0)  # force the flow path
    cost = LocalCost(k, p_exp)
    rng = np.random.default_rng(k * 10 + int(p_exp * 2))
    gaps = []
    for trial in range(9):
        h, w = rng.integers(6, 13, size=2)
        p = rng.uniform(0.2, 1.0, (h, w))
        q = p + rng.normal(0, 0.15, (h, w))
        if trial % 3:  # black (trial 1) or nearly black (trial 2) pixels: little mass to relay through
            fill = 0.0 if trial % 3 == 1 else 1e-3
            p[rng.uniform(size=(h, w)) < 0.4] = fill
            q[rng.uniform(size=(h, w)) < 0.4] = fill
        q = q.clip(0, None)
        q = q / q.sum() * p.sum()
        ref = _pot_windowed(p, q, cost)
        got = meter.exact_ot_pair(p, q, cost)
        if math.isinf(ref):
            assert math.isinf(got)
            continue
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
        monkeypatch.setattr(meter, "_CAP_BELOW", -1.0)  # no capacity up front: found by the cut rounds
        assert meter.exact_ot_pair(p, q, cost) == pytest.approx(ref, rel=1e-9, abs=1e-12)
        monkeypatch.setattr(meter, "_CUT_TOL", math.inf)  # the relaxation alone (empty pixels still exact)
        gaps.append(ref - meter.exact_ot_pair(p, q, cost))
        monkeypatch.setattr(meter, "_CUT_TOL", 1e-7)
        monkeypatch.setattr(meter, "_CAP_BELOW", 0.05)
    assert min(gaps) > -1e-9  # a relaxation: never above the optimum
    if p_exp == 1.0:
        assert max(gaps) > 1e-6  # the capacities were needed on the dark images


def test_grid_flow_meter_all_capacities_and_infeasible(monkeypatch):
    from sinkhorn_attacks.ot import meter

    monkeypatch.setattr(meter, "_DENSE_LIMIT", 0)
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, (9, 11))
    q = (p + rng.normal(0, 0.2, p.shape)).clip(0, None)
    q = q / q.sum() * p.sum()
    ref = _pot_windowed(p, q, LocalCost(5))
    monkeypatch.setattr(meter, "_CUT_ROUNDS", 0)  # every capacity from the start: the full LP at once
    assert meter.exact_ot_pair(p, q, LocalCost(5)) == pytest.approx(ref, rel=1e-9)
    monkeypatch.setattr(meter, "_CUT_ROUNDS", 6)
    # mass at one end of a row, demand at the other, nothing to relay through: no in-window plan
    p = np.zeros((1, 7))
    q = np.zeros((1, 7))
    p[0, 0], q[0, 6] = 1.0, 1.0
    p[0, 3] = q[0, 3] = 0.25  # too little mass in the middle to relay the whole unit
    assert math.isinf(_pot_windowed(p, q, LocalCost(5)))
    assert math.isinf(meter.exact_ot_pair(p, q, LocalCost(5)))
    p[0, 3] = q[0, 3] = 1.0  # enough: 0 -> 3 -> 6 through the common mass, cost 3 + 3 of 2.25 moved
    assert meter.exact_ot_pair(p, q, LocalCost(7)) == pytest.approx(_pot_windowed(p, q, LocalCost(7)), rel=1e-9)


def test_exact_uot_between_sinkhorn_bounds():
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.uniform(0.05, 1, (1, 1, 4, 4)))
    z = torch.tensor(rng.uniform(0.05, 1, (1, 1, 4, 4)))
    cost = LocalCost(None, 1.0)
    u = float(exact_uot(x, z, cost, 1.0))
    s = uot_sinkhorn(x, z, cost, 1e-3, 1.0, tol=1e-11, max_iter=50000)
    ub = float(s.transport_cost + 1.0 * (s.kl_rows + s.kl_cols))
    assert u <= ub + 1e-9 and ub - u < 1e-2


def test_large_float32_calls_take_the_float32_scaling_path_and_match_float64():
    """Calls above the small-call size run the float32 scaling form (with the range check and float64
    retries); they agree with the float64 result, including an image far too wide for float32's exp."""
    import sinkhorn_attacks.ot.kernel as kernel

    torch.manual_seed(13)
    v = 0.05 * torch.randn(2, 3, 80, 80, dtype=torch.float64)
    assert v.numel() > kernel._SMALL_CALL
    v[0, 0, :10] = -math.inf
    v[1, 2, 40:] -= 30.0  # v/eta spans > 600 in this channel: float64 from the start
    ref = local_lse(v, LocalCost(5, 1.0), 0.05)
    o32 = local_lse(v.float(), LocalCost(5, 1.0), 0.05).double()
    assert torch.equal(torch.isneginf(o32), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    assert ((o32[fin] - ref[fin]).abs() / ref[fin].abs().clamp(min=1)).max() < 1e-5


def test_shortcut_relays_keeps_divergence_never_raises_cost_and_removes_ties():
    from sinkhorn_attacks.ot import meter

    h, w = 7, 9
    for p_exp in (1.0, 2.0):
        cost = LocalCost(5, p_exp)
        offsets = cost.offsets(h, w)[1:]
        src, dst, c, kind = meter._window_arcs(h, w, offsets)
        rng = np.random.default_rng(int(p_exp))
        flow = np.zeros((len(offsets), h * w))
        flow[kind, src] = rng.exponential(1.0, src.size) * (rng.uniform(size=src.size) < 0.3)

        def stats(f, kind=kind, src=src, dst=dst, c=c):
            moved = f[kind, src]
            out, inn = np.bincount(src, moved, h * w), np.bincount(dst, moved, h * w)
            return float((moved * c).sum()), out - inn, np.minimum(out, inn).sum()

        cost0, div0, thr0 = stats(flow)
        meter._shortcut_relays(flow, offsets, h, w, cost.radius(h, w))
        cost1, div1, thr1 = stats(flow)
        assert flow.min() >= -1e-12  # nothing negative, nothing on arcs that leave the image
        assert np.abs(flow.sum() - flow[kind, src].sum()) < 1e-9
        np.testing.assert_allclose(div1, div0, atol=1e-9)  # same supplies and demands
        assert cost1 <= cost0 + 1e-9
        if p_exp == 1.0:
            assert thr1 < 0.5 * thr0  # most relays were shortcuts (random flows relay a lot)
            assert cost1 < cost0  # and many were strictly dearer than the direct arc
        else:  # d^2 is superadditive along a line: only bent relays with a no-dearer direct arc go
            assert thr1 <= thr0


def test_grid_flow_moves_across_a_dark_pixel_directly(monkeypatch):
    """A two-pixel move across a dark (capacitated) pixel must use the direct arc, not a relay."""
    from sinkhorn_attacks.ot import meter

    monkeypatch.setattr(meter, "_DENSE_LIMIT", 0)
    p = np.array([[1.0, 0.01, 0.01]])
    q = np.array([[0.01, 0.01, 1.0]])
    ref = _pot_windowed(p, q, LocalCost(5))
    assert ref == pytest.approx(0.99 * 2)
    assert meter.exact_ot_pair(p, q, LocalCost(5)) == pytest.approx(ref, rel=1e-9)
