"""Evaluation runner: config parsing, result files, curves, worst case, kill-and-resume (tiny random CNN)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sinkhorn_attacks.eval import (
    AttackSpec,
    EvalConfig,
    accuracy_at_radii,
    accuracy_vs_iteration,
    config_from_dict,
    load_config,
    run_evaluation,
    worst_case,
)
from sinkhorn_attacks.eval.io import read_csv, read_json


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def tiny_data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5 + 0.25
    models = {"a": tiny_cnn(1)}
    with torch.no_grad():
        y = models["a"](x).argmax(1)
    y[::4] = (y[::4] + 1) % 3  # a few clean errors
    return x, y


def make_cfg(out: Path, **kw) -> EvalConfig:
    d = dict(
        models=["a", "b"],
        attacks=[
            AttackSpec("linf-pgd", params={"steps": 4, "radius": 0.05, "step_size": 0.02}),
            AttackSpec("fgsm", params={"radius": 0.05}),
        ],
        limit=12,
        batch_size=5,
        out=str(out),
        radii=[0.01, 0.1, 1.0],
        radius_points=10,
    )
    d.update(kw)
    return EvalConfig(**d)


MODELS = {"a": tiny_cnn(1), "b": tiny_cnn(2)}


def test_config_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        """
[run]
seed = 3
batch_size = 7
[data]
dataset = "mnist"
limit = 20
[models]
names = ["wong2019-mnist-vanilla", "x.pth"]
[[attacks]]
preset = "linf-pgd"
params = { steps = 5 }
[[attacks]]
preset = "fgsm"
label = "f"
[curves]
radii = [0.5, 1]
[worst_case]
attacks = ["f", "linf-pgd", { preset = "l2-pgd", params = { steps = 2 } }]
"""
    )
    cfg = load_config(p)
    assert cfg.seed == 3 and cfg.batch_size == 7 and cfg.limit == 20
    assert [a.label for a in cfg.attacks] == ["linf-pgd", "f"]
    assert cfg.attacks[0].params == {"steps": 5}
    assert cfg.radii == [0.5, 1.0]
    assert cfg.worst_case_labels == ["f", "linf-pgd", "l2-pgd"]
    assert [a.preset for a in cfg.cascade_attacks] == ["l2-pgd"]
    with pytest.raises(ValueError):
        config_from_dict({"models": ["m"], "attacks": ["a", "a"]})
    with pytest.raises(ValueError):
        config_from_dict({"models": ["m"], "attacks": ["a"], "bogus": {}})


@pytest.mark.parametrize("name", ["thesis_mnist.toml", "thesis_mnist_small.toml"])
def test_packaged_config_parses(name: str) -> None:
    p = Path(__file__).resolve().parents[1] / "src" / "sinkhorn_attacks" / "configs" / name
    cfg = load_config(p)
    assert cfg.dataset == "mnist" and cfg.models and cfg.attacks


def test_curves_and_worst_case_logic() -> None:
    rows = [
        dict(index=0, clean_correct=False, success=False, first_fooled=0, metered_radius=math.inf),
        dict(index=1, clean_correct=True, success=True, first_fooled=2, metered_radius=0.3),
        dict(index=2, clean_correct=True, success=False, first_fooled=-1, metered_radius=0.0),
        dict(index=3, clean_correct=True, success=True, first_fooled=1, metered_radius=math.inf),
    ]
    assert accuracy_vs_iteration(rows, 3) == [0.75, 0.5, 0.25, 0.25]
    assert accuracy_at_radii(rows, [0.1, 0.3, 100]) == [0.75, 0.5, 0.5]  # inf never within r
    other = [
        dict(index=1, clean_correct=True, success=True, first_fooled=1, metered_radius=0.5),
        dict(index=2, clean_correct=True, success=True, first_fooled=3, metered_radius=0.2),
    ]
    w = {r["index"]: r for r in worst_case({"p": rows, "q": other}, ["p", "q"])}
    assert not w[0]["clean_correct"]
    assert w[1]["worst_attack"] == "p" and w[1]["metered_radius"] == 0.3 and w[1]["first_fooled"] == 1
    assert w[2]["worst_attack"] == "q" and w[2]["success"]
    assert w[3]["worst_attack"] == "p"


def _run(cfg: EvalConfig, **kw):
    x, y = tiny_data()
    return run_evaluation(cfg, models=MODELS, data=(x, y), progress=False, **kw)


def test_results_files_and_consistency(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "r")
    res = _run(cfg)
    out = Path(cfg.out)
    for f in ("examples.csv", "worst_case.csv", "curves.json", "results.json", "state.json", "evaluate.log"):
        assert (out / f).exists(), f
    rows = read_csv(out / "examples.csv")
    assert len(rows) == 2 * 2 * 12
    assert {"success", "metered_radius", "iterations", "linf", "l2", "first_fooled"} <= set(rows[0])
    curves = read_json(out / "curves.json")
    for m in ("a", "b"):
        for lab in ("linf-pgd", "fgsm"):
            s = res["summary"][m][lab]
            it = curves["iteration"][f"{m}|{lab}"]
            assert len(it) == s["steps"] + 1
            assert it[0] == pytest.approx(s["clean_accuracy"])
            assert it[-1] == pytest.approx(s["robust_accuracy"])
            assert all(b <= a + 1e-12 for a, b in zip(it, it[1:]))  # monotone
            rc = curves["radius"][f"{m}|{lab}"]
            assert all(b <= a + 1e-12 for a, b in zip(rc, rc[1:]))
            assert rc[0] <= s["clean_accuracy"] + 1e-12 and rc[-1] >= s["robust_accuracy"] - 1e-12
        wc = res["summary"][m]["worst-case"]
        assert wc["robust_accuracy"] <= min(res["summary"][m][lab]["robust_accuracy"] for lab in ("linf-pgd", "fgsm"))
    json.dumps(res)  # strict-JSON friendly
    assert sorted((out / "grids").glob("*.npz"))


class Killed(Exception):
    pass


def test_kill_and_resume_identical(tmp_path: Path) -> None:
    full = make_cfg(tmp_path / "full")
    _run(full)
    part = make_cfg(tmp_path / "part")

    def kill(unit, k):
        if k == 5:
            raise Killed

    with pytest.raises(Killed):
        _run(part, after_unit=kill)
    state = read_json(Path(part.out) / "state.json")
    assert len(state["done"]) == 5
    assert not (Path(part.out) / "results.json").exists()
    seen = []
    _run(part, after_unit=lambda u, k: seen.append(u.key))
    assert len(seen) == 12 - 5  # only the missing units ran
    a = (Path(full.out) / "examples.csv").read_text()
    b = (Path(part.out) / "examples.csv").read_text()
    assert a == b
    assert (Path(full.out) / "curves.json").read_text() == (Path(part.out) / "curves.json").read_text()
    with pytest.raises(RuntimeError):  # another config in the same folder
        _run(make_cfg(tmp_path / "part", seed=1))


def test_cascade_only_attacks_still_robust(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path / "wc",
        models=["a"],
        worst_case=["fgsm", "l2"],
        cascade_attacks=[AttackSpec("l2-pgd", "l2", {"steps": 3, "radius": 0.5, "step_size": 0.2})],
    )
    res = _run(cfg)
    wc = read_csv(Path(cfg.out) / "worst_case.csv")
    ex = [r for r in read_csv(Path(cfg.out) / "examples.csv") if r["attack"] == "fgsm"]
    robust_after_fgsm = sum(r["clean_correct"] and not r["success"] for r in ex)
    assert res["summary"]["a"]["worst-case"]["cascade_examples_attacked"]["l2"] == robust_after_fgsm
    assert len(wc) == 12
    assert {r["attack"] for r in read_csv(Path(cfg.out) / "examples.csv")} == {"linf-pgd", "fgsm"}


def test_cli_evaluate_help(capsys) -> None:
    from sinkhorn_attacks.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "W1" in out and "window" in out
