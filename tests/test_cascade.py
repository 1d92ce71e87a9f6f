"""``sinkhorn_attacks.benchmark``: the cascade keeps, per example, the smallest yardstick radius any of its
attacks found (checked against each attack run alone), the radius belongs to the returned image, a stopped
run resumes, AutoAttack's model checks warn, and bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sinkhorn_attacks
from sinkhorn_attacks.eval.cascade import BenchmarkResult, benchmark, cascade_attacks
from sinkhorn_attacks.eval.leaderboard import minimal_radii
from sinkhorn_attacks.ot import measure

CHEAP = ["l2-pgd", "linf-pgd"]  # fixed-radius attacks: fast enough for unit tests


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


def _data(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g) * (torch.rand(n, 1, 28, 28, generator=g) > 0.7)
    with torch.no_grad():
        y = _model()(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean errors
    return x, y


def test_radius_is_the_minimum_over_the_attacks_that_ran_and_belongs_to_the_returned_image() -> None:
    model, (x, y) = _model(), _data()
    res = benchmark(model, x, y, attacks=CHEAP, radii=[0.05, 0.1, 0.5], batch_size=12)
    cascade, cfg = cascade_attacks("mnist", CHEAP)
    alone = [torch.tensor(minimal_radii(a, model, x, y, cfg.yardstick, cfg.line_search)["min_radius"]) for a in cascade]
    r = res.per_example_radius
    assert r[:2].tolist() == [0.0, 0.0] and not res.clean_correct[:2].any()
    for i in range(len(x)):
        if r[i] > 0.05:  # every attack ran on it: the minimum over all of them
            assert float(r[i]) == pytest.approx(
                min(float(a[i]) for a in alone), rel=1e-6, abs=1e-9
            )  # float32 images: batch order
        else:  # settled by the first attack
            assert float(r[i]) == pytest.approx(float(alone[0][i]), rel=1e-6, abs=1e-9)  # float32 images: batch order
    fooled = torch.isfinite(r) & (r > 0)
    assert fooled.any()
    with torch.no_grad():
        assert (model(res.adversarial[fooled]).argmax(1) != y[fooled]).all()
    measured = measure(x[fooled], res.adversarial[fooled], cfg.yardstick).value
    assert torch.allclose(measured, r[fooled], rtol=1e-9, atol=1e-12)
    assert torch.equal(res.adversarial[~fooled], x[~fooled])
    rows = res.robust_accuracy()
    assert [row["radius"] for row in rows] == [0.05, 0.1, 0.5]
    assert all(row["ci95"][0] <= row["robust_accuracy"] <= row["ci95"][1] for row in rows)
    assert rows[0]["robust_accuracy"] == float((r > 0.05).double().mean())


def test_public_entry_point_json_and_resume(tmp_path) -> None:
    model, (x, y) = _model(), _data()
    kw = {"attacks": CHEAP, "radii": [0.05, 0.1], "batch_size": 6, "card": {"name": "tiny", "architecture": "cnn"}}
    first = sinkhorn_attacks.benchmark(model, x, y, out=tmp_path, **kw)
    assert isinstance(first, BenchmarkResult)
    doc = first.to_json()
    for key in ("label", "arch", "n", "clean_accuracy", "robust_accuracy", "attacks", "per_example_worst", "cpu_s"):
        assert key in doc
    assert doc["label"] == "tiny" and doc["n"] == len(x)
    text = (tmp_path / "benchmark.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    again = benchmark(model, x, y, out=tmp_path, **kw)  # every unit finished: nothing runs again
    assert torch.equal(again.per_example_radius, first.per_example_radius)
    assert torch.equal(again.adversarial, first.adversarial)
    assert again.attacks == first.attacks
    with pytest.raises(ValueError, match="another configuration .differing keys: labels"):
        benchmark(model, x, (y + 1) % 10, out=tmp_path, **kw)
    other = benchmark(model, x, (y + 1) % 10, out=tmp_path, fresh=True, **kw)  # discards the previous run
    assert not torch.equal(other.clean_correct, first.clean_correct)
    foreign = tmp_path / "evaluate-run"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"command": "evaluate", "fingerprint": "0"}')
    with pytest.raises(ValueError, match="holds a evaluate run"):
        benchmark(model, x, y, out=foreign, **kw)


def test_an_interrupted_run_continues_where_it_stopped(tmp_path, monkeypatch) -> None:
    import sinkhorn_attacks.eval.cascade as cascade_mod

    model, (x, y) = _model(), _data()
    kw = {"attacks": CHEAP, "radii": [0.05, 0.1], "batch_size": 6}
    full = benchmark(model, x, y, **kw)
    calls = {"n": 0}
    real = cascade_mod._run_unit

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cascade_mod, "_run_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        benchmark(model, x, y, out=tmp_path, **kw)
    monkeypatch.setattr(cascade_mod, "_run_unit", real)
    resumed = benchmark(model, x, y, out=tmp_path, **kw)
    assert torch.equal(resumed.per_example_radius, full.per_example_radius)


class _Softmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


class _Noisy(_Softmax):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.randn(len(x), 10)


class _Rounded(_Softmax):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x))  # zero gradient almost everywhere


@pytest.mark.parametrize(("model", "match"), [(_Softmax(), "probabilities"), (_Noisy(), "changes between two calls"),
                                              (_Rounded(), "gradient is exactly zero")])  # fmt: skip
def test_autoattack_checks_warn(model: nn.Module, match: str) -> None:
    x, y = _data(4)
    with pytest.warns(UserWarning, match=match):
        res = benchmark(model, x, y, attacks=["linf-pgd"], radii=[0.1])
    assert any(match in w for w in res.warnings)


def test_bad_input_is_refused() -> None:
    model, (x, y) = _model(), _data(4)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    cases = [
        ((model, x[:0], y[:0]), {}, "non-empty"),
        ((model, x * 2, y), {}, r"\[0, 1\]"),
        ((model, nan, y), {}, "finite"),
        ((model, x, y.float()), {}, "integers"),
        ((model, x, y), {"radii": [0.1, 0.05]}, "increasing"),
        ((model, x, y), {"radii": [0.0]}, "positive"),
        ((model, x, y), {"attacks": ["nope"]}, "unknown cascade attack"),
        ((model, x, y), {"dataset": "svhn"}, "no cascade for dataset"),
        ((model, x, y), {"batch_size": 0}, "batch_size"),
    ]
    for args, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            benchmark(*args, **kw)

    class NaNModel(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.full((len(z), 10), math.nan)

    with pytest.raises(ValueError, match="non-finite outputs"):
        benchmark(NaNModel(), x, y, attacks=CHEAP)


def test_known_radii_skip_the_yardstick_radii_that_cannot_improve_them() -> None:
    """With ``known`` radii, an attack whose radii are yardstick values runs each radius of its list only on
    the examples whose known radius exceeds the previous radius of the list (counted by gradient evaluations
    on a model never fooled); attacks in other units run as before."""

    class Never(nn.Module):  # always predicts class 0, with a gradient
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            s = t.flatten(1).sum(1, keepdim=True)
            return torch.cat([10 + 0 * s, 0.01 * s, torch.zeros_like(s)], 1)

    x = torch.rand(3, 1, 8, 8)
    y = torch.zeros(3, dtype=torch.long)
    from sinkhorn_attacks.eval.leaderboard import BoardAttack
    from sinkhorn_attacks.ot import Yardstick

    ypgd = BoardAttack("yardstick-pgd", "yardstick-pgd", {"steps": 4}, (0.05, 0.1, 0.5))
    known = torch.tensor([0.03, 0.3, math.inf], dtype=torch.float64)
    full = minimal_radii(ypgd, Never(), x, y, Yardstick(), 0)
    capped = minimal_radii(ypgd, Never(), x, y, Yardstick(), 0, known=known)
    assert full["grad_evals"] == 4 * 3 * 3  # every example at every radius
    assert capped["grad_evals"] == 4 * (1 + 3 + 3)  # 0.05 | all three (0.3 > 0.1) | all three
    assert capped["clean_correct"] == full["clean_correct"] == [True] * 3
    assert capped["min_radius"] == full["min_radius"] == [math.inf] * 3
    l2 = BoardAttack("l2-pgd", "l2-pgd", {"steps": 4}, (0.5, 1.0))  # l_2 radii: not comparable, not skipped
    assert (
        minimal_radii(l2, Never(), x, y, Yardstick(), 0, known=known)["grad_evals"]
        == minimal_radii(l2, Never(), x, y, Yardstick(), 0)["grad_evals"]
    )
