"""The yardstick ``ot.measure``: exact W1-TV values, its three promises (a)-(c), both solver paths, the units."""

from __future__ import annotations

import json
import math

import numpy as np
import ot
import pytest
import torch

from sinkhorn_attacks.ot import LocalCost, Measurement, Yardstick, exact_ot, measure, meter

C5 = 2 * math.sqrt(2)  # default price: the 5x5 window's largest ground cost


def _augmented_emd(p: np.ndarray, q: np.ndarray, cost: LocalCost, price: float) -> float:
    """Independent reference for one channel: balanced network simplex on the pixels plus one extra node.

    Rows: the clean pixels and the extra node holding ``|q|``; columns: the perturbed pixels and the extra
    node holding ``|p|``. Pixel to pixel: the windowed cost (forbidden outside); pixel to the extra node and
    back: ``price``; extra node to itself: 0. Every unit of ``p`` is transported or sent to the extra node
    (destroyed), every unit of ``q`` is received or comes from it (created).
    """
    h, w = p.shape
    n = h * w
    c = cost.dense(h, w).numpy()
    inside = np.isfinite(c)
    m = np.zeros((n + 1, n + 1))
    big = 1e3 * (price + 1.0 + c[inside].max())
    m[:n, :n] = np.where(inside, c, big)
    m[:n, n] = price
    m[n, :n] = price
    a = np.append(p.ravel(), q.sum())
    b = np.append(q.ravel(), p.sum())
    plan = ot.emd(a, b, m, numItermax=10_000_000)
    assert plan[:n, :n][~inside].sum() <= 1e-12 * (a.sum() + 1.0)  # the forbidden pairs stay unused
    return float((plan * m).sum())


def _reference(x: torch.Tensor, z: torch.Tensor, cost: LocalCost, price: float) -> np.ndarray:
    """Sum over channels of :func:`_augmented_emd`, per example."""
    xs, zs = x.double().numpy(), z.double().numpy()
    return np.array([sum(_augmented_emd(xc, zc, cost, price) for xc, zc in zip(xb, zb)) for xb, zb in zip(xs, zs)])


def _cases(rng: np.random.Generator, h: int, w: int, c: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (B=2) covering the shapes of trouble: holes, saturation, colour, black, rescaling, far creation."""
    out = {}
    x = rng.uniform(0, 1, (2, c, h, w))
    z = (x + rng.normal(0, 0.2, x.shape)).clip(0, 1)
    x[rng.uniform(size=x.shape) < 0.4] = 0.0
    z[rng.uniform(size=z.shape) < 0.4] = 0.0
    out["holes"] = (x, z)
    xs = (rng.uniform(0, 2, (2, c, h, w))).clip(0, 1)  # about half the pixels at exactly 1
    out["saturated"] = (xs, (xs + rng.normal(0, 0.3, xs.shape)).clip(0, 1))
    out["black_clean"] = (
        np.zeros((2, c, h, w)),
        rng.uniform(0, 0.3, (2, c, h, w)) * (rng.uniform(size=(2, c, h, w)) < 0.5),
    )
    out["rescaled_0.7"] = (x, 0.7 * x)
    cast = x.copy()
    cast[:, 0] = (cast[:, 0] * 1.2 + 0.05).clip(0, 1)  # the first channel brighter (a colour cast on RGB)
    out["cast"] = (x, cast)
    far = np.zeros((2, c, h, w))
    far[:, :, :3, :3] = rng.uniform(0.5, 1, (2, c, 3, 3))  # ink in one corner
    far_z = far.copy()
    far_z[:, :, -1, -1] = 1e-3  # mass created far from any ink
    far_z[:, :, -2, -1] = 1e-10
    out["created_far"] = (far, far_z)
    return {k: (torch.tensor(a), torch.tensor(b)) for k, (a, b) in out.items()}


# the three solvers: network simplex on the dense cost between the supports, on the sparse in-window
# cost (POT >= 0.9.6), and the grid min-cost flow (HiGHS)
PATHS = ["dense", "sparse", "grid"] if meter._sparse_emd() else ["dense", "grid"]


def _force(monkeypatch, path: str) -> None:
    monkeypatch.setattr(meter, "_DENSE_LIMIT", 250_000 if path == "dense" else 0)
    monkeypatch.setattr(meter, "_sparse_emd", lambda: path != "grid")


@pytest.mark.parametrize(
    "k,p_exp,price,c,shape",
    [
        (5, 1.0, None, 1, (9, 11)),
        (5, 1.0, None, 3, (8, 8)),  # RGB
        (3, 1.0, None, 1, (7, 10)),
        (5, 2.0, None, 1, (8, 9)),
        (7, 1.0, 1.0, 1, (9, 9)),  # price below half the window's largest cost: long moves lose to 2 * price
        (5, 1.0, 10.0, 2, (6, 12)),
    ],
)
def test_matches_augmented_network_simplex_on_both_paths(monkeypatch, k, p_exp, price, c, shape):
    """Both solver paths equal POT's network simplex on the augmented dense problem (1e-9 relative)."""
    ys = Yardstick(kernel_size=k, p=p_exp, price=price)
    rng = np.random.default_rng(k * 100 + c * 10 + int(p_exp))
    for name, (x, z) in _cases(rng, *shape, c=c).items():
        ref = _reference(x, z, ys.cost, ys.price)
        for path in PATHS:
            _force(monkeypatch, path)
            m = measure(x, z, ys)
            np.testing.assert_allclose(m.raw.numpy(), ref, rtol=1e-9, atol=1e-12, err_msg=f"{name}, {path}")
            assert bool((m.raw_lower <= m.raw).all()) and bool((m.raw_lower <= torch.tensor(ref) * (1 + 1e-12)).all())
            assert bool((m.raw - m.raw_lower <= 1e-6 * m.raw + 1e-15).all()), name  # the certified bracket
            mass_x, mass_z = x.sum((1, 2, 3)), z.sum((1, 2, 3))
            torch.testing.assert_close(m.transported + m.destroyed, mass_x, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(m.transported + m.created, mass_z, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(m.value, m.raw / mass_x.clamp(min=1.0), rtol=1e-12, atol=0.0)


def test_large_image_paths_equal_the_small_one_on_digit_sized_images(monkeypatch):
    """The large-image paths (sparse network simplex, grid min-cost flow) against the dense one on 28x28."""
    rng = np.random.default_rng(11)
    x = np.zeros((3, 1, 28, 28))
    for b in range(3):  # a few thick strokes, like a digit
        for _ in range(4):
            i, j = rng.integers(4, 24, 2)
            x[b, 0, i - 2 : i + 2, j - 6 : j + 6] = rng.uniform(0.6, 1.0)
    x = torch.tensor(x)
    g = torch.Generator().manual_seed(0)
    z = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype).sign()).clamp(0, 1)  # l_inf sign step
    z2 = 0.8 * torch.roll(x, 1, -1) + 0.1 * x  # shifted and dimmer
    for zz in (z, z2):
        _force(monkeypatch, "dense")
        small = measure(x, zz)
        for path in PATHS[1:]:
            _force(monkeypatch, path)
            large = measure(x, zz)
            torch.testing.assert_close(large.raw, small.raw, rtol=1e-9, atol=0.0)
            torch.testing.assert_close(large.raw_lower, small.raw, rtol=1e-9, atol=0.0)


def test_a_zero_only_for_equal_images_and_every_change_is_charged():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.uniform(0, 0.9, (1, 3, 10, 10)) * (rng.uniform(size=(1, 3, 10, 10)) < 0.6))
    assert float(measure(x, x).value) == 0.0
    assert float(measure(torch.zeros_like(x), torch.zeros_like(x)).value) == 0.0
    mx = float(x.sum())
    # a mass change: z = 0.7 x costs exactly 0.3 * price per unit clean mass (destroy 30 % everywhere)
    m = measure(x, 0.7 * x)
    assert float(m.value) == pytest.approx(0.3 * C5, rel=1e-12)
    assert float(m.destroyed) == pytest.approx(0.3 * mx, rel=1e-9) and float(m.created) == pytest.approx(0, abs=1e-9)
    assert float(exact_ot(x, 0.7 * x, LocalCost(5)).value) == pytest.approx(0, abs=1e-12)  # the meter sees nothing
    # a colour cast: the red channel 10 % brighter costs 0.1 * price * red mass
    cast = x.clone()
    cast[:, 0] *= 1.1
    expected = 0.1 * C5 * float(x[:, 0].sum()) / mx
    assert float(measure(x, cast).value) == pytest.approx(expected, rel=1e-9)
    assert float(exact_ot(x, cast, LocalCost(5)).value) == pytest.approx(0, abs=1e-12)
    # swapping two channels of equal mass: exact_ot's renormalisation does not hide it either way
    swap = x[:, [1, 0, 2]]
    assert float(measure(x, swap).value) > 0.01
    # tiny changes anywhere are charged: mass moved one pixel, created, destroyed
    for i, j, delta in [(0, 0, 1e-9), (5, 5, 1e-6), (9, 9, 0.5)]:
        z = x.clone()
        z[0, 1, i, j] = (z[0, 1, i, j] + delta).clamp(0, 1) if z[0, 1, i, j] + delta <= 1 else z[0, 1, i, j] - delta
        d = float(measure(x, z).raw)
        assert d == pytest.approx(C5 * delta, rel=1e-6)  # the cheapest fix of a lone excess is to create it
    z = x.clone()
    z[0, 2] = torch.roll(x[0, 2], 1, -1)
    assert float(measure(x, z).value) > 0


def test_b_finite_for_any_pair_in_the_unit_box():
    rng = np.random.default_rng(2)
    shape = (4, 1, 12, 12)
    black, white = torch.zeros(shape), torch.ones(shape)
    noise = torch.tensor(rng.uniform(0, 1, shape), dtype=torch.float32)
    for x, z in [(black, noise), (noise, black), (black, white), (white, black), (black, black), (noise, white)]:
        m = measure(x, z)
        assert bool(torch.isfinite(m.value).all()) and bool(torch.isfinite(m.raw).all())
    # a black clean image: everything is created; per unit of the mass floor (one full pixel)
    m = measure(black, noise)
    torch.testing.assert_close(m.value, C5 * noise.double().sum((1, 2, 3)), rtol=1e-9, atol=0.0)
    # nearly black: below the floor the value is D itself, not D / ||x|| (which would blow up)
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    x[0, 0, 2, 2] = 1e-8
    z = torch.zeros_like(x)
    z[0, 0, 4, 5] = 0.2
    m = measure(x, z)
    assert float(m.value) == pytest.approx(C5 * (0.2 + 1e-8), rel=1e-9)
    assert math.isinf(float(exact_ot(x, z, LocalCost(5)).value))  # the balanced meter: no in-window plan


def _clusters(rng: np.random.Generator, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass-preserving local changes that provably keep D = W1: clusters fitting in a 3x3 box, 3 apart.

    Inside a cluster every pair is in a 5x5 window at distance <= 2 sqrt 2 <= 2 * price, so destroying and
    creating never beats moving; no window reaches from one cluster into another, so both problems split.
    """
    x = np.zeros((3, channels, 21, 21))
    z = np.zeros_like(x)
    for b in range(3):
        for c in range(channels):
            for i0 in range(0, 21, 6):
                for j0 in range(0, 21, 6):
                    if rng.uniform() < 0.3:
                        continue
                    blk = (slice(i0, i0 + 3), slice(j0, j0 + 3))
                    xb = rng.uniform(0, 1, (3, 3)) * (rng.uniform(size=(3, 3)) < 0.7)
                    zb = rng.uniform(0, 1, (3, 3)) * (rng.uniform(size=(3, 3)) < 0.7)
                    if xb.sum() == 0 or zb.sum() == 0:
                        continue
                    zb *= xb.sum() / zb.sum()
                    if zb.max() > 1:
                        continue
                    x[b, c][blk], z[b, c][blk] = xb, zb
    return torch.tensor(x), torch.tensor(z)


@pytest.mark.parametrize("channels", [1, 3])
def test_c_equals_windowed_w1_on_mass_preserving_local_changes(channels):
    rng = np.random.default_rng(5 + channels)
    x, z = _clusters(rng, channels)
    w1 = exact_ot(x, z, LocalCost(5, 1.0)).value
    m = measure(x, z)
    assert bool((w1 > 0.05).all())  # real transport, not a trivial pair
    assert bool((x.sum((1, 2, 3)) >= 1).all())  # above the mass floor: value = D / ||x||_1
    torch.testing.assert_close(m.value, w1, rtol=1e-9, atol=1e-12)
    assert bool((m.destroyed <= 1e-9 * x.sum((1, 2, 3))).all())  # all of it transported


def test_c_one_hop_moves_of_a_digit_and_the_chain_limit():
    """Any single unit moved inside the window is charged its distance; long chains of moves are where
    D drops below W1 (D <= W1 always on mass-preserving pairs)."""
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    x[0, 0, 3:13, 7] = 0.8  # a vertical stroke, 10 pixels
    w1 = LocalCost(5, 1.0)
    # moving a few separated pixels of it sideways by up to 2 pixels: D = W1 exactly
    z = x.clone()
    for i, dj in [(3, 2), (7, -1), (11, 1)]:
        z[0, 0, i, 7] -= 0.5
        z[0, 0, i + 1, 7 + dj] += 0.5
    torch.testing.assert_close(measure(x, z).value, exact_ot(x, z, w1).value, rtol=1e-9, atol=0.0)
    # translating the whole stroke down by one pixel: W1 moves all 8 units by 1 (cost 8, per unit mass 1),
    # D destroys the top pixel and creates one below the bottom: 2 * price * 0.8 = 4.53 < 8
    z = torch.roll(x, 1, -2)
    assert float(exact_ot(x, z, w1).value) == pytest.approx(1.0, rel=1e-9)
    assert float(measure(x, z).raw) == pytest.approx(2 * C5 * 0.8, rel=1e-9)
    # a short stroke (5 pixels, chain of total length 5 < 2 * price): D = W1 again
    y = torch.zeros_like(x)
    y[0, 0, 3:8, 7] = 0.8
    torch.testing.assert_close(measure(y, torch.roll(y, 1, -2)).value, exact_ot(y, torch.roll(y, 1, -2), w1).value)
    # and on any mass-preserving pair D <= W1
    rng = np.random.default_rng(9)
    for _ in range(5):
        a = torch.tensor(rng.uniform(0, 1, (1, 1, 8, 8)))
        b = a.flatten()[torch.randperm(64, generator=torch.Generator().manual_seed(int(rng.integers(1e6))))]
        b = b.reshape(a.shape)
        ref = exact_ot(a, b, w1).value
        assert float(measure(a, b).value) <= float(ref) * (1 + 1e-9)


def test_symmetry_homogeneity_bounds_and_triangle_where_it_holds():
    rng = np.random.default_rng(4)
    x, y, z = (torch.tensor(rng.uniform(0, 1, (3, 2, 7, 7)) * (rng.uniform(size=(3, 2, 7, 7)) < 0.5)) for _ in "xyz")
    raw = lambda a, b, ys=None: measure(a, b, ys).raw  # noqa: E731
    torch.testing.assert_close(raw(x, z), raw(z, x), rtol=1e-9, atol=0.0)  # D is symmetric
    torch.testing.assert_close(raw(0.5 * x, 0.5 * z), 0.5 * raw(x, z), rtol=1e-9, atol=0.0)  # 1-homogeneous
    for ch in range(2):  # per channel: price * |mass difference| <= D <= price * (||x|| + ||z||)
        xc, zc = x[:, ch : ch + 1], z[:, ch : ch + 1]
        d, mx, mz = raw(xc, zc), xc.sum((1, 2, 3)), zc.sum((1, 2, 3))
        assert bool((d >= C5 * (mx - mz).abs() * (1 - 1e-9)).all()) and bool((d <= C5 * (mx + mz) * (1 + 1e-9)).all())
    # with a window covering the image the cost is a metric and D is a metric (Kantorovich-Rubinstein norm)
    whole = Yardstick(kernel_size=13, price=3.0)
    assert bool((raw(x, y, whole) <= (raw(x, z, whole) + raw(z, y, whole)) * (1 + 1e-9)).all())
    # with a small window it is not: a unit hopping 2 + 2 pixels vs 4 pixels (outside the window)
    a, b, c = (torch.zeros(1, 1, 1, 7, dtype=torch.float64) for _ in "abc")
    a[..., 0], b[..., 2], c[..., 4] = 1.0, 1.0, 1.0
    assert float(raw(a, b)) == pytest.approx(2.0) and float(raw(b, c)) == pytest.approx(2.0)
    assert float(raw(a, c)) == pytest.approx(2 * C5)  # > 4: destroyed and created, not moved


def test_yardstick_units_as_data():
    ys = Yardstick()
    assert ys.price == pytest.approx(2 * math.sqrt(2)) and ys.kernel_size == 5 and ys.p == 1.0
    assert ys.label == "W1-TV, 5x5, price 2.83, per unit clean mass" == str(ys)
    assert "2.82843" in ys.describe() and "destroying" in ys.describe()
    d = json.loads(json.dumps(ys.to_dict()))
    assert Yardstick.from_dict(d) == ys and Yardstick.from_dict(json.loads(ys.to_json())) == ys
    assert d == {
        "kernel_size": 5,
        "p": 1.0,
        "price": ys.price,
        "normalisation": "clean_mass",
        "mass_floor": 1.0,
        "name": "W1-TV",
    }
    with pytest.raises(AttributeError):
        ys.price = 1.0  # frozen
    assert Yardstick(kernel_size=3).price == pytest.approx(math.sqrt(2))
    assert Yardstick(kernel_size=5, p=2.0).price == pytest.approx(8.0) and Yardstick(p=2).name == "W2^2-TV"
    assert Yardstick(price=4).price == 4.0 and isinstance(Yardstick(price=4).price, float)
    assert Yardstick(normalisation="none").label.endswith("raw (unnormalised)")
    with pytest.raises(ValueError, match="give price"):
        Yardstick(kernel_size=None)
    with pytest.raises(ValueError, match="price"):
        Yardstick(price=0.0)
    with pytest.raises(ValueError, match="normalisation"):
        Yardstick(normalisation="per pixel")
    with pytest.raises(ValueError, match="does not match"):
        Yardstick.from_dict({**d, "p": 2.0, "price": 8.0})  # a W1 name on W2^2 units
    with pytest.raises(ValueError, match="unknown Yardstick fields"):
        Yardstick.from_dict({**d, "tau": 1.0})
    with pytest.raises(ValueError, match="odd"):
        Yardstick(kernel_size=4)
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    z = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    m = measure(x, z, Yardstick(normalisation="none"))
    assert isinstance(m, Measurement) and len(m) == 2 and m.yardstick.normalisation == "none"
    torch.testing.assert_close(m.value, m.raw)
    torch.testing.assert_close(measure(x, z).value, m.raw / x.double().sum((1, 2, 3)).clamp(min=1.0))
    assert measure(x, z).yardstick == Yardstick() and m.value.dtype == torch.float64


def test_input_validation():
    x = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        measure(x, x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        measure(bad, x)
    with pytest.raises(ValueError, match="above 1"):
        measure(x, x * 0 + 1.01)
    with pytest.raises(ValueError, match="negative"):
        measure(x, x - 0.5)
    with pytest.raises(ValueError, match="different shapes"):
        measure(x, x[:, :, :4])
    with pytest.raises(ValueError, match="empty batch"):
        measure(x[:0], x[:0])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        measure(x[0], x[0])
    with pytest.raises(TypeError, match="dtype|float"):
        measure(x, x.double())
    with pytest.raises(TypeError, match="Yardstick"):
        measure(x, x, LocalCost(5))
    ok = (x + 1e-7).clamp(max=1.0 + 1e-7)  # within the tolerance of [0, 1]
    assert bool(torch.isfinite(measure(x, ok).value).all())


def test_the_yardstick_is_not_a_metric_across_windows() -> None:
    """docs/math.md section 4 (c) 5: unit pixels at columns 0, 2, 3 of a row break the triangle inequality."""

    def pixel(col: int) -> torch.Tensor:
        x = torch.zeros(1, 1, 5, 8, dtype=torch.float64)
        x[0, 0, 2, col] = 1.0
        return x

    ys = Yardstick(normalisation="none")
    a, b, c = (float(measure(pixel(i), pixel(j), ys).value) for i, j in ((0, 2), (2, 3), (0, 3)))
    assert a == pytest.approx(2.0) and b == pytest.approx(1.0)
    assert c == pytest.approx(4 * 2**0.5) and c > a + b
