"""The leaderboard: per-example minimal radii on the yardstick, worst case, intervals, resume, CLI."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_digits_cnn

from sinkhorn_attacks._util import UserError
from sinkhorn_attacks.eval.leaderboard import (
    BoardAttack,
    load_board_config,
    minimal_radii,
    run_leaderboard,
    wilson_interval,
)
from sinkhorn_attacks.ot import Yardstick, measure


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    from sinkhorn_attacks.data import load_dataset

    te = load_dataset("digits", "test", limit=8)
    model = train_digits_cnn(6)
    path = tmp_path_factory.mktemp("ckpt") / "digits_cnn.pt"
    torch.save(model.state_dict(), path)
    return model, te.images, te.labels, path


def _config(path: Path, n: int = 6) -> dict:
    return {
        "board": {"dataset": "digits", "split": "test", "n": n, "batch": 3, "radii": [0.05, 0.2, 0.5, 2.0],
                  "line_search": 4, "grid_examples": 2},
        "models": [{"label": "digits-cnn", "path": str(path), "arch": "small_cnn"}],
        "attacks": [
            {"label": "linf", "preset": "linf-pgd", "radii": [0.05, 0.2], "overrides": {"steps": 5, "step_size": 0.05}},
            {"label": "hu", "preset": "hu2020-mnist", "overrides": {"steps": 8}},
        ],
    }  # fmt: skip


def _counting_loader(model):
    """A model loader for run_leaderboard that records the labels it loads (a load means a unit ran)."""
    calls: list[str] = []

    def load(m):
        calls.append(m.label)
        return model

    return load, calls


def test_minimal_radius_is_the_yardstick_value_of_a_fooling_image(digits_setup) -> None:
    model, x, y, _ = digits_setup
    ys = Yardstick()
    r = minimal_radii(BoardAttack("linf", "linf-pgd", {"steps": 5, "step_size": 0.05}, (0.05, 0.3)), model, x, y, ys, 5)
    rad = torch.tensor(r["min_radius"], dtype=torch.float64)
    adv = r["adv"]
    cc = torch.tensor(r["clean_correct"])
    fooled = torch.isfinite(rad) & cc
    assert fooled.any()
    with torch.no_grad():
        assert (model(adv[fooled]).argmax(1) != y[fooled]).all()  # the measured image does fool the model
    assert torch.allclose(rad[fooled], measure(x[fooled], adv[fooled], ys).value, rtol=1e-9)
    assert (rad[~cc] == 0).all()
    # the line search only shortens: without it the radius is at least as large
    r0 = minimal_radii(
        BoardAttack("linf", "linf-pgd", {"steps": 5, "step_size": 0.05}, (0.05, 0.3)), model, x, y, ys, 0
    )
    both = fooled & torch.isfinite(torch.tensor(r0["min_radius"]))
    assert (rad[both] <= torch.tensor(r0["min_radius"], dtype=torch.float64)[both] + 1e-9).all()


def test_board_worst_case_intervals_resume_and_growth(digits_setup, tmp_path) -> None:
    model, x, y, path = digits_setup
    cfg = load_board_config(_config(path))
    calls = []

    def load(m):
        calls.append(m.label)
        return model

    out = tmp_path / "board"
    board = run_leaderboard(cfg, out, load_model=load, images=x, labels=y)
    m = board["models"][0]
    assert m["n"] == 6 and m["attacks_complete"]
    worst = np.asarray(m["per_example_worst"])
    for a in m["attacks"].values():
        accs = [row["robust_accuracy"] for row in a["robust_accuracy"]]
        assert all(b <= a_ + 1e-12 for a_, b in zip(accs, accs[1:]))  # non-increasing in r
        for row_w, row_a in zip(m["robust_accuracy"], a["robust_accuracy"]):
            assert row_w["robust_accuracy"] <= row_a["robust_accuracy"] + 1e-12  # worst case <= each attack
    for row in m["robust_accuracy"]:
        k = int(np.sum(worst > row["radius"]))
        assert row["robust_accuracy"] == k / 6
        assert row["ci95"] == list(wilson_interval(k, 6)) or tuple(row["ci95"]) == wilson_interval(k, 6)
    assert json.loads((out / "leaderboard.json").read_text())["yardstick"]["label"] == Yardstick().label
    # resume: nothing recomputed, identical document body
    n_calls = len(calls)
    again = run_leaderboard(cfg, out, load_model=load, images=x, labels=y)
    assert len(calls) == n_calls
    assert again["models"][0]["per_example_worst"] == m["per_example_worst"]
    # a larger n reuses the finished batches and adds new ones; n = 7 leaves a partial last batch (6..6) that
    # n = 8 recomputes in full (6..7)
    assert (
        run_leaderboard(load_board_config(_config(path, n=7)), out, load_model=load, images=x, labels=y)["models"][0][
            "n"
        ]
        == 7
    )
    big = load_board_config(_config(path, n=8))
    grown = run_leaderboard(big, out, load_model=load, images=x, labels=y)
    assert grown["models"][0]["n"] == 8
    assert grown["models"][0]["per_example_worst"][:6] == m["per_example_worst"]
    # a smaller n whose batch would cut a finished unit is refused, changes nothing and deletes nothing
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    with pytest.raises(UserError, match="run with that n") as refused:
        run_leaderboard(load_board_config(_config(path, n=2)), out, load_model=load, images=x, labels=y)
    assert "delete" not in str(refused.value)
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before
    # another configuration in the same folder is refused; a corrupt unit names its file
    other = _config(path)
    other["board"]["line_search"] = 0
    with pytest.raises(UserError, match="another configuration"):
        run_leaderboard(load_board_config(other), out, load_model=load, images=x, labels=y)
    unit = next((out / "units").glob("**/000000.json"))
    unit.write_text("{broken")
    with pytest.raises(UserError, match="corrupt"):
        run_leaderboard(cfg, out, load_model=load, images=x, labels=y)


def test_board_gains_an_attack_keeping_finished_units_and_those_of_earlier_versions(digits_setup, tmp_path) -> None:
    from sinkhorn_attacks.eval.leaderboard import board_fingerprint

    model, x, y, path = digits_setup
    load, calls = _counting_loader(model)

    one = _config(path)
    one["attacks"] = one["attacks"][:1]
    out = tmp_path / "board"
    first = run_leaderboard(load_board_config(one), out, load_model=load, images=x, labels=y)
    linf_units = {p: p.read_bytes() for p in (out / "units").glob("*/linf/*.json")}
    assert linf_units
    both = load_board_config(_config(path))
    grown = run_leaderboard(both, out, load_model=load, images=x, labels=y)
    assert {p: p.read_bytes() for p in (out / "units").glob("*/linf/*.json")} == linf_units  # not recomputed
    assert set(grown["models"][0]["attacks"]) == {"linf", "hu"}
    worst = np.asarray(grown["models"][0]["per_example_worst"])
    assert (worst <= np.asarray(first["models"][0]["per_example_worst"]) + 1e-12).all()
    # the same label defined differently is refused, naming it
    changed = _config(path)
    changed["attacks"][0]["overrides"]["steps"] = 6
    with pytest.raises(UserError, match=r"defined differently.*linf|linf.*defined differently"):
        run_leaderboard(load_board_config(changed), out, load_model=load, images=x, labels=y)
    # a folder written by an earlier version (one fingerprint for the whole board, in every unit) is resumed
    legacy = board_fingerprint(both)
    (out / "config.json").write_text(json.dumps({"digest": legacy, "n": both.n, **both.identity()}, default=str))
    for p in (out / "units").glob("**/0*.json"):
        if not p.name.endswith(".grid.json"):
            p.write_text(json.dumps({**json.loads(p.read_text()), "config": legacy}))
    n_calls = len(calls)
    again = run_leaderboard(both, out, load_model=load, images=x, labels=y)
    assert len(calls) == n_calls
    assert again["models"][0]["per_example_worst"] == grown["models"][0]["per_example_worst"]
    # ... and its units count only for the model and attack definitions it held
    for p in (out / "units").glob("*/hu/*.json"):
        if not p.name.endswith(".grid.json"):
            p.write_text(json.dumps({**json.loads(p.read_text()), "config": "0123456789abcdef"}))
    with pytest.raises(UserError, match="another configuration"):
        run_leaderboard(both, out, load_model=load, images=x, labels=y)


def test_reporting_radii_change_recomputes_nothing_and_scheme2_folders_resume(digits_setup, tmp_path) -> None:
    from sinkhorn_attacks.eval.leaderboard import _digest, _settings_scheme2, board_fingerprint

    model, x, y, path = digits_setup
    load, calls = _counting_loader(model)

    out = tmp_path / "board"
    cfg = load_board_config(_config(path))
    first = run_leaderboard(cfg, out, load_model=load, images=x, labels=y)
    units = {p: p.read_bytes() for p in (out / "units").glob("**/*.json")}
    # a folder of unit scheme 2 (the reporting radii were part of every unit's digest)
    body = {"digest": board_fingerprint(cfg), "n": cfg.n, **cfg.identity(), "unit_scheme": 2, "legacy_units": None}
    (out / "config.json").write_text(json.dumps({"command": "leaderboard", "fingerprint": body["digest"], **body}))
    old = _settings_scheme2(json.loads(json.dumps(cfg.identity())))
    for p in units:
        if not p.name.endswith(".grid.json"):
            u = json.loads(p.read_text())
            a = next(a for a in cfg.attacks if a.label == u["attack"])
            p.write_text(json.dumps({**u, "config": _digest(old, cfg.models[0], a)}))
    finer = _config(path)
    finer["board"]["radii"] = [0.01, 0.03, 0.1]
    n_calls = len(calls)
    again = run_leaderboard(load_board_config(finer), out, load_model=load, images=x, labels=y)
    assert len(calls) == n_calls  # nothing recomputed
    assert again["models"][0]["per_example_worst"] == first["models"][0]["per_example_worst"]
    rows = again["models"][0]["robust_accuracy"]
    assert [row["radius"] for row in rows] == [0.01, 0.03, 0.1]
    worst = np.asarray(first["models"][0]["per_example_worst"], dtype=float)
    for row in rows:
        assert row["robust_accuracy"] == np.mean(worst > row["radius"])
    # the rewritten record keeps accepting those units, and a settings change is still refused
    assert json.loads((out / "config.json").read_text())["unit_scheme"] == 3
    run_leaderboard(load_board_config(_config(path)), out, load_model=load, images=x, labels=y)
    assert len(calls) == n_calls
    other = _config(path)
    other["board"]["line_search"] = 2
    with pytest.raises(UserError):
        run_leaderboard(load_board_config(other), out, load_model=load, images=x, labels=y)


def test_config_errors_are_one_line_user_errors(tmp_path) -> None:
    base = _config(tmp_path / "m.pt")
    bad = json.loads(json.dumps(base))
    bad["board"]["batchsize"] = 2
    with pytest.raises(UserError, match="did you mean 'batch'"):
        load_board_config(bad)
    bad = json.loads(json.dumps(base))
    bad["attacks"][0]["preset"] = "linf-pdg"
    with pytest.raises(UserError, match="linf-pgd"):
        load_board_config(bad)
    bad = json.loads(json.dumps(base))
    bad["board"]["n"] = 2.5
    with pytest.raises(UserError, match="n must be int"):
        load_board_config(bad)
    bad = json.loads(json.dumps(base))
    bad["attacks"].append(dict(bad["attacks"][0]))
    with pytest.raises(UserError, match="duplicate"):
        load_board_config(bad)


def test_cli_leaderboard_writes_json_html_and_markdown(digits_setup, tmp_path, capsys) -> None:
    from sinkhorn_attacks.cli import main

    *_, path = digits_setup
    cfg = _config(path, n=3)
    lines = ["[board]", 'dataset = "digits"', 'split = "test"', "n = 3", "batch = 3", "radii = [0.1, 1.0]",
             "line_search = 2", "[[models]]", 'label = "cnn"', f'path = "{path}"', 'arch = "small_cnn"',
             "[[attacks]]", 'preset = "linf-pgd"', "radii = [0.1]", "overrides = { steps = 3 }"]  # fmt: skip
    toml = tmp_path / "board.toml"
    toml.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["leaderboard", "--config", str(toml), "--out", str(out), "--quiet"]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["schema"] == 1 and board["models"][0]["n"] == 3 and cfg
    html = (out / "index.html").read_text()
    assert Yardstick().label in html and "<table class='sortable'>" in html and "data:image/png;base64" in html
    assert "| cnn | 3 |" in (out / "leaderboard.md").read_text()
    # the example grid shows every returned image at its own pixels (8-bit), the clean row first
    from PIL import Image

    from sinkhorn_attacks.eval.leaderboard import read_grid

    (grid,) = (out / "units").rglob("*.grid.json")
    clean, adv, _ = read_grid(grid)
    px = re.findall(r'<img class="px" alt="[^"]*" src="data:image/png;base64,([^"]*)"', html)
    assert len(px) == 2 * clean.shape[0]
    for b64, want in zip(px, [*clean, *adv]):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.float64) / 255
        assert got.shape == want.shape[1:] and np.abs(got - want[0]).max() <= 0.5 / 255 + 1e-6
    # a missing checkpoint is refused before any work, in one line
    toml.write_text("\n".join(lines).replace(str(path), str(tmp_path / "missing.pt")) + "\n")
    assert main(["leaderboard", "--config", str(toml), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "nothing was run" in capsys.readouterr().err
    assert not math.isnan(0.0)


def test_head_to_head_sign_and_counts() -> None:
    from sinkhorn_attacks.report.leaderboard import head_to_head

    def acc(vals):
        return [{"radius": r, "robust_accuracy": v, "ci95": [0, 1]} for r, v in zip((0.1, 0.2), vals)]

    board = {"models": [{"label": "m", "n": 10, "attacks": {"uot": {"robust_accuracy": acc([0.5, 0.2])},
                                                            "hu": {"robust_accuracy": acc([0.6, 0.1])}}}]}  # fmt: skip
    (row,) = head_to_head(board, "uot")
    assert row["versus"] == "hu" and row["radii_stronger"] == 1 and row["radii_weaker"] == 1
    assert math.isclose(row["mean_difference_points"], 0.0, abs_tol=1e-9)
    board["models"][0]["attacks"]["hu"]["robust_accuracy"] = acc([0.9, 0.9])
    assert head_to_head(board, "uot")[0]["mean_difference_points"] < 0  # uot leaves fewer robust: stronger


def test_cascade_entry_is_the_minimum_over_the_cascade_attacks_only() -> None:
    from sinkhorn_attacks.eval.leaderboard import _cascade_entry

    inf = math.inf
    done = {
        "yardstick-pgd": {"min_radius": np.array([0.1, 0.5, inf, 0.0]), "cpu_s": np.array([2.0])},
        "hu2020": {"min_radius": np.array([0.2, 0.3, inf, 0.0]), "cpu_s": np.array([3.0])},
        "wu2020-pgd": {"min_radius": np.array([0.05, 0.4, 0.7, 0.0]), "cpu_s": np.array([50.0])},
    }
    worst = np.array([0.05, 0.3, 0.7, 0.0])
    e = _cascade_entry(done, 4, 0, worst, (0.1, 0.35))
    assert e["attacks"] == ["yardstick-pgd", "hu2020"]
    assert e["per_example"] == [0.1, 0.3, inf, 0.0]
    assert e["at_or_below_worst"] == 0.5  # examples 1 and 3
    assert e["cpu_s_upper_bound"] == 5.0
    assert [r["robust_accuracy"] for r in e["robust_accuracy"]] == [0.5, 0.25]
    assert _cascade_entry({"wu2020-pgd": done["wu2020-pgd"]}, 4, 0, worst, (0.1,)) is None


def test_ranks_share_the_unfinished_units_and_rank_0_runs_what_none_ran(digits_setup, tmp_path, monkeypatch) -> None:
    model, x, y, path = digits_setup
    one = _config(path)
    one["attacks"] = one["attacks"][1:]  # hu only: its units finished first
    out = tmp_path / "board"
    run_leaderboard(load_board_config(one), out, load_model=lambda m: model, images=x, labels=y)
    both = load_board_config(_config(path))  # linf is new: every unfinished unit is a linf unit
    runs: dict[int, list[str]] = {0: [], 1: []}
    from sinkhorn_attacks.eval import leaderboard as lb

    real = lb._run_unit

    def spy(folder, cfg, digest, unit, *a, **k):
        runs[folder.rank].append(f"{unit[1].label}@{unit[2]}")
        return real(folder, cfg, digest, unit, *a, **k)

    monkeypatch.setattr(lb, "_run_unit", spy)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_leaderboard(both, out, load_model=lambda m: model, images=x, labels=y) == {}
    assert runs[1] == ["linf@3"]  # half of the two unfinished units, not the finished hu units of its stride
    monkeypatch.setenv("RANK", "0")
    board = run_leaderboard(both, out, load_model=lambda m: model, images=x, labels=y)
    assert runs[0] == ["linf@0"] and board["models"][0]["attacks_complete"]
    # a unit that no rank ran (here: deleted after the split) is run by rank 0 once the others have stopped
    next((out / "units").glob("*/linf/000000.json")).unlink()
    runs[0].clear()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(lb, "_run_units", _skipping_first(lb._run_units))
    board = run_leaderboard(both, out, load_model=lambda m: model, images=x, labels=y)
    assert runs[0] == ["linf@0"] and board["models"][0]["attacks_complete"]


def _skipping_first(run_units):
    """_run_units whose first call (this rank's share) runs nothing, as if the split had given it nothing."""
    calls = []

    def wrapped(folder, cfg, accepted, mine, *a, **k):
        calls.append(1)
        return run_units(folder, cfg, accepted, [] if len(calls) == 1 else mine, *a, **k)

    return wrapped


def test_cli_runs_the_chosen_attacks_now_and_reports_every_finished_unit(digits_setup, tmp_path, capsys) -> None:
    """``--attacks`` runs only the named attacks' units; a later run without it runs the rest and keeps them."""
    from sinkhorn_attacks.cli import main

    *_, path = digits_setup
    lines = ["[board]", 'dataset = "digits"', "n = 3", "batch = 3", "radii = [0.1, 1.0]", "line_search = 2",
             "[[models]]", 'label = "cnn"', f'path = "{path}"', 'arch = "small_cnn"',
             "[[attacks]]", 'label = "linf"', 'preset = "linf-pgd"', "radii = [0.1]", "overrides = { steps = 3 }",
             "[[attacks]]", 'label = "l2"', 'preset = "l2-pgd"', "radii = [1.0]",
             "overrides = { steps = 3 }"]  # fmt: skip
    toml = tmp_path / "board.toml"
    toml.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["leaderboard", "--config", str(toml), "--out", str(out), "--quiet"]
    assert main([*args, "--attacks", "l2"]) == 0
    assert sorted(p.parent.name for p in (out / "units").glob("*/*/0*[0-9].json")) == ["l2"]
    entry = json.loads((out / "leaderboard.json").read_text())["models"][0]
    assert set(entry["attacks"]) == {"l2"} and entry["attacks_complete"] is False
    l2 = {p: p.read_bytes() for p in (out / "units").glob("*/l2/*.json")}
    assert main([*args, "--models", "cnn"]) == 0
    entry = json.loads((out / "leaderboard.json").read_text())["models"][0]
    assert set(entry["attacks"]) == {"linf", "l2"} and entry["attacks_complete"] is True
    assert {p: p.read_bytes() for p in (out / "units").glob("*/l2/*.json")} == l2  # kept, not rerun
    capsys.readouterr()
    for flag, value in (("--attacks", "l1"), ("--models", "mlp"), ("--attacks", ",")):
        assert main([*args, flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and flag in err and "unknown label" in err, err


class _NaNOffData(torch.nn.Module):
    """Finite logits on the clean images it was given, NaN on every other image (gradient masking by NaN)."""

    def __init__(self, model: torch.nn.Module, bank: torch.Tensor) -> None:
        super().__init__()
        self.model, self.bank = model, bank.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        on_data = torch.cdist(x.flatten(1).double(), self.bank.double()).amin(1) < 1e-9
        return torch.where(on_data[:, None], out, torch.full_like(out, math.nan))


def test_an_image_with_no_class_is_not_robust_and_is_flagged(digits_setup, tmp_path) -> None:
    """Before: non-finite logits were neither a success nor an error, so every example read as never fooled
    (robust at every radius) on a model that answers NaN off its data."""
    from sinkhorn_attacks.eval.cascade import benchmark

    model, x, y, _ = digits_setup
    blank = _NaNOffData(model, x).eval()
    attack = BoardAttack("linf", "linf-pgd", {"steps": 3, "step_size": 0.05}, (0.05, 0.2))
    res = minimal_radii(attack, blank, x, y, Yardstick(), line_search=3)
    cc = torch.tensor(res["clean_correct"])
    r = torch.tensor(res["min_radius"], dtype=torch.float64)
    assert cc.any() and res["no_class"] == cc.tolist()  # every attacked image has no class
    assert (r[cc] > 0).all() and torch.isfinite(r[cc]).all() and (r[~cc] == 0).all()
    assert torch.allclose(r[cc], measure(x[cc], res["adv"][cc]).value.double())  # the returned image's radius
    with torch.no_grad():
        assert torch.isnan(blank(res["adv"][cc])).all()
    # the model that answers normally is unaffected: no example flagged
    plain = minimal_radii(attack, model, x, y, Yardstick(), line_search=3)
    assert not any(plain["no_class"])
    # the board says so per attack and per model, and the cascade per example
    cfg = load_board_config(
        {"board": {"dataset": "digits", "n": 4, "batch": 4, "radii": [0.05, 0.5], "line_search": 2},
         "models": [{"label": "blank", "path": "unused.pt", "arch": "small_cnn"}],
         "attacks": [{"label": "linf", "preset": "linf-pgd", "radii": [0.2], "overrides": {"steps": 3}}]}
    )  # fmt: skip
    board = run_leaderboard(cfg, tmp_path / "b", load_model=lambda m: blank, images=x[:4], labels=y[:4])
    entry = board["models"][0]
    n_cc = int(cc[:4].sum())
    assert entry["no_class"] == entry["attacks"]["linf"]["no_class"] == n_cc
    assert entry["robust_accuracy"][-1]["robust_accuracy"] == 0.0
    bench = benchmark(blank, x[:4], y[:4], dataset="mnist", attacks=["linf-pgd"], radii=(0.05, 0.5))
    assert sum(bench.no_class) == n_cc and bench.to_json()["no_class"] == n_cc


@pytest.mark.parametrize("name", ["leaderboard_mnist", "leaderboard_cifar10"])
def test_bundled_boards_load_and_their_yardstick_attack_starts_below_the_reporting_radii(name) -> None:
    """Each bundled board parses, and yardstick-pgd's own list starts at or below the smallest reporting radius
    (its minimal radii come from its list; the line search alone overstates them)."""
    from sinkhorn_attacks.eval.config import resolve_config

    cfg = load_board_config(resolve_config(name))
    ypgd = next(a for a in cfg.attacks if a.label == "yardstick-pgd")
    assert ypgd.radii is not None and ypgd.radii[0] <= cfg.radii[0]
    assert list(cfg.radii) == sorted(set(cfg.radii))
