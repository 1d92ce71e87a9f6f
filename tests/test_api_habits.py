"""The Python API's habits: clear errors for misused keywords and targets, thread and mode hygiene,
non-finite logits never counted as a class, ``AttackResult.save``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sinkhorn_attacks.attacks import from_preset


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("preset", ["uot", "linf-pgd", "wong2019-mnist", "wu2020-fw-mnist"])
def test_unknown_keyword_lists_the_accepted_ones(preset: str) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'alpha'; accepted keywords: .*steps"):
        from_preset(preset, _model(), alpha=0.1)


def test_target_needs_a_targeted_attack() -> None:
    x, y = _batch()
    with pytest.raises(ValueError, match="untargeted attack"):
        from_preset("linf-pgd", _model(), steps=2)(x, y, target=(y + 1) % 3)
    targeted = from_preset("linf-pgd", _model(), steps=2, targeted=True)
    with pytest.raises(ValueError, match="target equals the label for image 3"):
        targeted(x, y, target=torch.tensor([1, 2, 0, 0]))
    res = targeted(x, y, target=(y + 1) % 3)
    assert res.success.dtype == torch.bool


def test_attack_runs_on_one_thread_and_restores_the_setting() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return self.lin(x.flatten(1))

    x, y = _batch()
    torch.set_num_threads(2)
    try:
        from_preset("linf-pgd", Spy(), steps=2)(x, y)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        from_preset("linf-pgd", Spy(), steps=2, threads=None)(x, y)  # None: leave the setting alone
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_each_submodule_keeps_its_own_mode() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(16, 3))
    model.train()
    model[1].eval()  # a mixed tree: the attack must restore exactly this
    x, y = _batch()
    from_preset("linf-pgd", model, steps=2)(x, y)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_non_finite_logits_are_not_a_class() -> None:
    class NanOnBright(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.lin(x.flatten(1))
            bad = (x.flatten(1).amax(1) > 0.999).unsqueeze(1)  # NaN logits once a pixel saturates
            return torch.where(bad, torch.full_like(out, float("nan")), out)

    x, y = _batch()
    x = x * 0.9
    model = NanOnBright()
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correctly classified
    with pytest.warns(RuntimeWarning, match="non-finite logits"):
        res = from_preset("linf-pgd", model, radius=0.2, step_size=0.2, steps=1)(x, y)
    nan = res.extras["nonfinite_logits"].bool()
    assert nan.any()
    assert not res.success[nan].any()


def test_save_writes_npz_and_summary(tmp_path: Path) -> None:
    x, y = _batch()
    res = from_preset("linf-pgd", _model(), steps=2)(x, y)
    res.save(tmp_path / "out")
    d = np.load(tmp_path / "out" / "adversarial.npz")
    assert np.array_equal(d["adv"], res.adv.numpy()) and np.array_equal(d["success"], res.success.numpy())
    meta = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert meta["summary"]["robust_accuracy"] == pytest.approx(res.robust_accuracy)


def test_sweep_on_a_search_preset_holds_each_radius() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = _batch()
    search = from_preset("linf-pgd", model, steps=6, schedule={"kind": "multiply", "factor": 2.0, "every": 1})
    results = search.sweep(x, y, [0.01, 0.05])
    for r, res in zip([0.01, 0.05], results):
        assert float(res.linf.max()) <= r + 1e-6  # never beyond the radius it was asked for
        assert res.config["schedule"]["kind"] == "fixed"
    assert search.schedule.kind == "multiply"  # the attack itself is unchanged


def test_attack_cli_bare_checkpoint_needs_arch_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sinkhorn_attacks.cli import main
    from sinkhorn_attacks.zoo import small_cnn

    opaque = tmp_path / "opaque.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).state_dict(), opaque)
    out = tmp_path / "run"
    common = ["--dataset", "digits", "--limit", "4", "--quiet", "--preset", "fgsm", "--out", str(out)]
    assert main(["attack", str(opaque), *common]) == 2
    assert "pass --arch" in capsys.readouterr().err and not out.exists()  # refused: nothing written
    assert main(["attack", str(opaque), "--arch", "nope", *common]) == 2
    assert "unknown; known: mnist_cnn" in capsys.readouterr().err and not out.exists()
    cnn = tmp_path / "cnn.pt"
    torch.save(small_cnn(1, 10, 8).state_dict(), cnn)
    assert main(["attack", str(cnn), "--arch", "small_cnn", *common]) == 0


def test_an_unconverged_projection_warns_once_per_call_site_not_per_batch() -> None:
    import warnings

    from sinkhorn_attacks.ot import LocalCost
    from sinkhorn_attacks.projections import uot_project

    cost = LocalCost(kernel_size=5, p=1.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")  # Python's own rule: one message per text and call site
        for seed in range(4):  # four batches, different images, different counts of unconverged ones
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
            w = (x + 0.3 * torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)).clamp(0, 1)
            r = uot_project(x, w, cost, 0.05, 10.0, 1.0, radius=0.05, max_iter=2, tol=1e-12)
            assert not bool(r.converged.all())
    assert len([m for m in rec if "did not converge" in str(m.message)]) == 1


@pytest.mark.parametrize(
    "preset", ["uot", "linf-pgd", "hu2020-mnist", "wong2019-mnist", "wu2020-fw-mnist", "wu2020-pgd-mnist"]
)
def test_every_attack_family_honours_output_fn(preset: str) -> None:
    class TupleOut(nn.Module):  # e.g. a model returning (logits, features)
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return self.lin(x.flatten(1)), "aux"

    torch.manual_seed(0)
    x, y = _batch()
    res = from_preset(preset, TupleOut(), steps=2, output_fn=lambda out: out[0])(x, y)
    assert res.success.shape == (4,)


def test_progress_bar_counts_steps_and_keeps_the_users_callback(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[int] = []
    x, y = _batch()
    atk = from_preset(
        "linf-pgd", _model(), steps=3, early_stop=False, progress=True, callback=lambda t, c, d: seen.append(t)
    )
    atk(x, y)
    assert seen == [1, 2, 3] and atk.callback is not None
    err = capsys.readouterr().err
    assert "linf-pgd on 4 images" in err and "3/3" in err
