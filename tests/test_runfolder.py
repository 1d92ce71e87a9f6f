"""The run-folder engine under ``evaluate`` and ``leaderboard``: exact unit keys, paths inside ``--out``, the
stored configuration checked on resume, one lock for every command, unit files checked against their
examples, growth of the slice, limits beyond the data, folders of earlier versions."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from sinkhorn_attacks._runfolder import RunFolder, key_part
from sinkhorn_attacks._util import UserError
from sinkhorn_attacks.eval import AttackSpec, EvalConfig, run_evaluation
from sinkhorn_attacks.eval import runner as R
from sinkhorn_attacks.eval.io import read_csv, read_json
from sinkhorn_attacks.eval.leaderboard import load_board_config, run_leaderboard


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()


MODELS = {"a/model.pt": _cnn(1), "b/model.pt": _cnn(2), "m": _cnn(1)}


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5 + 0.25
    with torch.no_grad():
        y = MODELS["m"](x).argmax(1)
    return x, y


def _eval_cfg(out: Path, **kw) -> EvalConfig:
    d = dict(models=["m"], attacks=[AttackSpec("fgsm", params={"radius": 0.1})], limit=12, batch_size=5,
             out=str(out), radii=[0.1], radius_points=4)  # fmt: skip
    d.update(kw)
    return EvalConfig(**d)


def _evaluate(cfg: EvalConfig, **kw):
    return run_evaluation(cfg, models=kw.pop("models", MODELS), data=_data(), progress=False, **kw)


def _board_cfg(n: int = 4, **board):
    return load_board_config({
        "board": {"dataset": "digits", "n": n, "batch": 3, "radii": [0.1, 1.0], "line_search": 2,
                  "grid_examples": 2, **board},
        "models": [{"label": "m", "path": "m.pt"}],
        "attacks": [{"label": "linf", "preset": "linf-pgd", "radii": [0.1], "overrides": {"steps": 3}}],
    })  # fmt: skip


def _board(cfg, out: Path, **kw):
    x, y = _data()
    return run_leaderboard(cfg, out, load_model=kw.pop("load_model", lambda m: MODELS["m"]), images=x, labels=y, **kw)


def _tree(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ unit keys
def test_key_parts_are_exact_and_stay_inside_the_folder(tmp_path: Path) -> None:
    names = ["uot", "a/model.pt", "b/model.pt", "model", "linf pgd", "linf_pgd", "linf-pgd!", "..", ".", "x__y",
             "Uot", "/etc/passwd", "a" * 200]  # fmt: skip
    parts = [key_part(n) for n in names]
    assert len(set(parts)) == len(names)
    assert key_part("uot") == "uot" and key_part("linf_pgd") == "linf_pgd"  # plain names are their own key
    for p in parts:
        assert "/" not in p and "\\" not in p and p not in (".", "..") and "__" not in p and len(p) <= 64
    folder = RunFolder(tmp_path / "out", "evaluate")
    with pytest.raises(UserError, match="outside the output folder"):
        folder.path("units", "..", "..", "x.json")
    assert folder.path("units", key_part(".."), "x.json").parent.parent == folder.root / "units"


def test_evaluate_models_sharing_a_file_stem_and_labels_differing_in_punctuation(tmp_path: Path) -> None:
    attacks = [AttackSpec("fgsm", "fgsm a", {"radius": 0.01}), AttackSpec("fgsm", "fgsm_a", {"radius": 0.3})]
    cfg = _eval_cfg(tmp_path / "o", models=["a/model.pt", "b/model.pt"], attacks=attacks)
    res = _evaluate(cfg)
    x, y = _data()
    rows = read_csv(tmp_path / "o" / "examples.csv")
    assert len(rows) == 2 * 2 * 12
    for name in ("a/model.pt", "b/model.pt"):
        with torch.no_grad():
            pred = MODELS[name](x).argmax(1).tolist()
        for lab in ("fgsm a", "fgsm_a"):
            cell = [r for r in rows if r["model"] == name and r["attack"] == lab]
            assert [r["pred_clean"] for r in cell] == pred  # each model's own results, under its own name
    linf = {lab: max(r["linf"] for r in rows if r["attack"] == lab) for lab in ("fgsm a", "fgsm_a")}
    assert linf["fgsm a"] <= 0.01 + 1e-6 < 0.1 < linf["fgsm_a"]  # each label's own attack
    assert set(res["summary"]) == {"a/model.pt", "b/model.pt"}
    assert len(list((tmp_path / "o" / "grids").glob("*.npz"))) == 4


def test_leaderboard_labels_differing_in_punctuation_and_dot_dot_labels(tmp_path: Path) -> None:
    cfg = load_board_config({
        "board": {"dataset": "digits", "n": 4, "batch": 3, "radii": [0.1, 1.0], "line_search": 0},
        "models": [{"label": "..", "path": "m.pt"}],
        "attacks": [{"label": "linf a", "preset": "linf-pgd", "radii": [0.001], "overrides": {"steps": 2}},
                    {"label": "linf_a", "preset": "linf-pgd", "radii": [0.5], "overrides": {"steps": 5}},
                    {"label": "..", "preset": "linf-pgd", "radii": [0.5], "overrides": {"steps": 5}}],
    })  # fmt: skip
    box = tmp_path / "box"
    (box / "out").mkdir(parents=True)
    board = _board(cfg, box / "out")
    assert sorted(p.relative_to(box).parts[0] for p in box.rglob("*") if p.is_file()) == ["out"] * len(
        [p for p in box.rglob("*") if p.is_file()]
    )  # nothing written outside --out
    att = board["models"][0]["attacks"]
    assert att["linf a"]["not_fooled"] == 1.0 and att["linf_a"]["not_fooled"] < 1.0  # two labels, two results
    units = [json.loads(p.read_text()) for p in (box / "out" / "units").rglob("*.json") if ".grid" not in p.name]
    assert sorted({(u["model"], u["attack"]) for u in units}) == [("..", ".."), ("..", "linf a"), ("..", "linf_a")]


def test_nothing_written_outside_out_by_evaluate(tmp_path: Path) -> None:
    box = tmp_path / "box"
    cfg = _eval_cfg(box / "out", models=["m"], attacks=[AttackSpec("fgsm", "..", {"radius": 0.1}),
                                                       AttackSpec("fgsm", "../../x", {"radius": 0.2})])  # fmt: skip
    _evaluate(cfg, models={"m": MODELS["m"]})
    assert {p.relative_to(box).parts[0] for p in box.rglob("*")} == {"out"}


# ----------------------------------------------------------------------------------------- the stored configuration
def test_another_configuration_is_refused_naming_the_differing_keys(tmp_path: Path) -> None:
    cfg = _eval_cfg(tmp_path / "e")
    _evaluate(cfg)
    before = _tree(tmp_path / "e")
    with pytest.raises(UserError, match=r"another configuration \(differing keys: seed 0 -> 1\).*--fresh"):
        _evaluate(_eval_cfg(tmp_path / "e", seed=1))
    assert _tree(tmp_path / "e") == before
    _board(_board_cfg(), tmp_path / "b")
    with pytest.raises(UserError, match=r"another configuration \(differing keys: line_search 2 -> 0\)"):
        _board(_board_cfg(line_search=0), tmp_path / "b")


def test_a_folder_of_another_command_is_refused_even_with_fresh(tmp_path: Path) -> None:
    _board(_board_cfg(), tmp_path / "b")
    before = _tree(tmp_path / "b")
    for fresh in (False, True):
        with pytest.raises(UserError, match="holds a leaderboard run; use another --out"):
            _evaluate(_eval_cfg(tmp_path / "b"), fresh=fresh)
    assert _tree(tmp_path / "b") == before  # config.json, units and board untouched
    _evaluate(_eval_cfg(tmp_path / "e"))
    before = _tree(tmp_path / "e")
    with pytest.raises(UserError, match="holds a evaluate run|holds an evaluate run"):
        _board(_board_cfg(), tmp_path / "e", fresh=True)
    assert _tree(tmp_path / "e") == before


# ------------------------------------------------------------------------------------------------ one lock
def test_one_lock_for_every_command(tmp_path: Path) -> None:
    out = tmp_path / "o"
    refused: list[str] = []

    def evaluate_meanwhile(m):
        with pytest.raises(UserError) as err:
            _evaluate(_eval_cfg(out))
        refused.append(str(err.value))
        return MODELS["m"]

    _board(_board_cfg(), out, load_model=evaluate_meanwhile)
    assert refused and "another leaderboard run" in refused[0]

    out2 = tmp_path / "o2"

    def board_meanwhile(name):
        with pytest.raises(UserError) as err:
            _board(_board_cfg(), out2)
        refused.append(str(err.value))
        return MODELS["m"]

    _evaluate(_eval_cfg(out2), models=board_meanwhile)
    assert len(refused) == 2 and "another evaluate run" in refused[1]
    assert not list(out.glob(".lock*")) and not list(out2.glob(".lock*"))


def test_rank_locks_of_a_sharded_board(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / ".lock.1").write_text(f"{socket.gethostname()}:{os.getpid()}:leaderboard")  # rank 1 runs
    with pytest.raises(UserError, match="another leaderboard run"):
        _evaluate(_eval_cfg(out))
    assert not (out / "state.json").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    (out / ".lock.1").unlink()
    (out / ".lock").write_text(f"{socket.gethostname()}:{os.getpid()}:leaderboard")  # rank 0 runs
    assert _board(_board_cfg(), out) == {}  # rank 1 works beside its rank 0
    (out / ".lock").write_text(f"{socket.gethostname()}:{os.getpid()}:evaluate")
    with pytest.raises(UserError, match="another evaluate run"):
        _board(_board_cfg(), out)


# ------------------------------------------------------------------------------------------------ unit checks
def test_units_are_checked_against_the_examples_they_claim(tmp_path: Path) -> None:
    cfg = _eval_cfg(tmp_path / "e")
    _evaluate(cfg)
    unit = tmp_path / "e" / "units" / "grid__m__fgsm__b0001.json"
    d = json.loads(unit.read_text())
    for r in d["rows"]:
        r["index"] += 100  # another slice's rows, same count
    unit.write_text(json.dumps(d))
    with pytest.raises(
        UserError, match=r"holds examples 105\.\.109 but unit grid__m__fgsm__b0001 covers examples 5\.\.9"
    ):
        _evaluate(cfg)
    _board(_board_cfg(), tmp_path / "b")
    unit = tmp_path / "b" / "units" / "m" / "linf" / "000003.json"
    d = json.loads(unit.read_text())
    d["first"] = 0
    unit.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"holds examples 0\.\.0 but unit m / linf / 3 covers examples 3\.\.3"):
        _board(_board_cfg(), tmp_path / "b")


def test_partial_last_batch_is_recomputed_when_the_slice_grows(tmp_path: Path) -> None:
    ref = _eval_cfg(tmp_path / "ref")
    _evaluate(ref)
    grown = _eval_cfg(tmp_path / "g", limit=7)  # batches 0..4 and a partial 5..6
    _evaluate(grown)
    ran: list[str] = []
    _evaluate(_eval_cfg(tmp_path / "g"), after_unit=lambda u, k: ran.append(u.key))
    assert ran == ["grid__m__fgsm__b0001", "grid__m__fgsm__b0002"]  # the partial batch in full, then the new one
    assert (tmp_path / "g" / "examples.csv").read_text() == (tmp_path / "ref" / "examples.csv").read_text()
    board = _board(_board_cfg(n=4), tmp_path / "b")  # batches 0..2 and a partial 3..3
    assert _board(_board_cfg(n=6), tmp_path / "b")["models"][0]["n"] == 6
    full = _board(_board_cfg(n=6), tmp_path / "b6")
    assert (
        _board(_board_cfg(n=6), tmp_path / "b")["models"][0]["per_example_worst"]
        == full["models"][0]["per_example_worst"]
    )
    assert board["models"][0]["n"] == 4


def test_a_run_stopped_before_its_first_unit_after_a_limit_change_resumes(tmp_path: Path) -> None:
    _evaluate(_eval_cfg(tmp_path / "e", limit=7))

    def crash(name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped while the first unit of limit 12 runs
        _evaluate(_eval_cfg(tmp_path / "e"), models=crash)
    res = _evaluate(_eval_cfg(tmp_path / "e"))
    assert res["n_examples"] == 12


def test_a_limit_beyond_the_data_plans_units_for_the_data_only(tmp_path: Path, monkeypatch) -> None:
    made = {"n": 0}

    @dataclass(frozen=True)
    class CountedUnit(R.Unit):
        def __post_init__(self) -> None:
            made["n"] += 1
            assert made["n"] < 10_000, "units planned beyond the data"

    monkeypatch.setattr(R, "Unit", CountedUnit)
    res = _evaluate(_eval_cfg(tmp_path / "e", limit=1_000_000_000_000))
    assert res["n_examples"] == 12 and 0 < made["n"] < 100
    assert read_json(tmp_path / "e" / "config.json")["limit"] == 1_000_000_000_000
    with pytest.raises(UserError, match="--offset 50"):
        _evaluate(_eval_cfg(tmp_path / "o", offset=50))


# ------------------------------------------------------------------------------------------------ earlier versions
def _as_earlier_version(out: Path) -> None:
    """Rewrite a folder as earlier versions wrote it: lossy keys, no command or config in the records."""
    state = read_json(out / "state.json")
    done = {}
    for key, rec in state["done"].items():
        kind, m, a, b = key.split("__")
        old = f"{kind}__model__{a}__{b}" if m.startswith("a_model.pt+") else key
        d = read_json(out / "units" / f"{key}.json")
        d["unit"] = old
        (out / "units" / f"{key}.json").unlink()
        (out / "units" / f"{old}.json").write_text(json.dumps(d))
        done[old] = rec
    (out / "state.json").write_text(json.dumps({"fingerprint": state["fingerprint"], "done": done,
                                                "n_examples": state["n_examples"]}))  # fmt: skip
    cfg = read_json(out / "config.json")
    cfg.pop("command")
    (out / "config.json").write_text(json.dumps(cfg))
    for g in (out / "grids").glob("a_model.pt+*"):
        g.rename(g.with_name("model__" + g.name.split("__", 1)[1]))


def test_folders_of_earlier_versions_resume_without_recomputing(tmp_path: Path) -> None:
    cfg = _eval_cfg(tmp_path / "e", models=["a/model.pt", "m"])
    _evaluate(cfg)
    ref = (tmp_path / "e" / "examples.csv").read_text()
    _as_earlier_version(tmp_path / "e")
    assert (tmp_path / "e" / "units" / "grid__model__fgsm__b0000.json").exists()
    ran: list[str] = []
    _evaluate(cfg, after_unit=lambda u, k: ran.append(u.key))
    assert ran == []
    assert (tmp_path / "e" / "examples.csv").read_text() == ref
    assert not (tmp_path / "e" / "units" / "grid__model__fgsm__b0000.json").exists()
    assert sorted(p.name for p in (tmp_path / "e" / "grids").iterdir()) == sorted(
        [f"{key_part('a/model.pt')}__fgsm.npz", "m__fgsm.npz"]
    )
    assert read_json(tmp_path / "e" / "config.json")["command"] == "evaluate"
