"""Faults: ``kill -9`` of a running command, then resume, gives the results of an uninterrupted run; a second
process on the same output folder is refused while the first runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_digits_cnn

ROOT = Path(__file__).resolve().parents[1]

BOARD = """[board]
dataset = "digits"
split = "test"
n = 24
batch = 2
radii = [0.1, 0.5, 2.0]
line_search = 3
[[models]]
label = "cnn"
path = "{path}"
arch = "small_cnn"
[[attacks]]
label = "linf"
preset = "linf-pgd"
radii = [0.05, 0.2]
overrides = {{ steps = 6, step_size = 0.03 }}
[[attacks]]
label = "hu"
preset = "hu2020-mnist"
overrides = {{ steps = 40 }}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "cnn.pt"
    torch.save(train_digits_cnn(4).state_dict(), path)
    return path


def _cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sinkhorn_attacks", "leaderboard", "--config", str(cfg), "--out", str(out), "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT / "src")}


def _units(out: Path) -> list[Path]:
    found = sorted((out / "units").glob("*/*/*.json")) if (out / "units").exists() else []
    return [p for p in found if not p.name.endswith(".grid.json")]


def test_kill9_then_resume_equals_an_uninterrupted_run_and_second_process_is_refused(checkpoint, tmp_path) -> None:
    cfg = tmp_path / "board.toml"
    cfg.write_text(BOARD.format(path=checkpoint))
    ref = tmp_path / "ref"
    assert subprocess.run(_cmd(cfg, ref), env=_env(), capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cfg, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(_units(out)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    # a second process on the same folder while the first one runs: refused, one line, exit 2
    second = subprocess.run(_cmd(cfg, out), env=_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "another leaderboard run" in second.stderr and "Traceback" not in second.stderr
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = _units(out)
    assert 2 <= len(done) < 24  # 2 attacks x 12 batches
    for u in done:  # every unit on disk is complete (atomic writes)
        json.loads(u.read_text())
    assert not list(out.glob("units/**/*.tmp"))
    resumed = subprocess.run(_cmd(cfg, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the dead process's lock is stale and taken over
    a = json.loads((ref / "leaderboard.json").read_text())["models"][0]
    b = json.loads((out / "leaderboard.json").read_text())["models"][0]
    assert a["per_example_worst"] == b["per_example_worst"]
    assert a["robust_accuracy"] == b["robust_accuracy"]
    for u in _units(ref):  # per-unit results identical, unit by unit
        v = out / u.relative_to(ref)
        ka, kb = json.loads(u.read_text()), json.loads(v.read_text())
        assert ka["min_radius"] == kb["min_radius"] and ka["nominal"] == kb["nominal"]
