"""``sinkhorn_attacks.train``: resume equivalence, config mismatch, NaN stop, weights-only checkpoints, and a
real 2-process gloo run (torchrun) matching the single-process run. Synthetic data only (no files)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sinkhorn_attacks.train import ConfigMismatchError, TrainConfig, TrainingDiverged, load_checkpoint, train
from sinkhorn_attacks.train import loop as train_loop


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        dataset="synthetic",
        arch="small_cnn",
        train_limit=96,
        batch_size=32,
        epochs=3,
        attack="fgsm",
        attack_overrides={"radius": 0.1},
        clean_weight=0.5,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        schedule="cosine",
        meter_n=2,
        seed=3,
        plot=False,
        device="cpu",
        out_dir=str(out),
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _strip_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in history]


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full"), verbose=False)
    part = train(_cfg(tmp_path / "part"), stop_after_epochs=1, verbose=False)
    assert len(part.history) == 1 and not part.files  # "killed" after the first epoch's checkpoint
    ck = load_checkpoint(tmp_path / "part" / "checkpoint.pt")  # weights_only=True
    assert ck["epoch"] == 1 and {"optimizer", "scheduler", "rng", "model"} <= set(ck)
    assert json.loads(ck["config_json"])["lr"] == 0.1
    resumed = train(_cfg(tmp_path / "part"), resume=True, verbose=False)
    assert resumed.start_epoch == 1 and len(resumed.history) == 3
    a, b = _state(tmp_path / "full" / "checkpoint.pt"), _state(tmp_path / "part" / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _strip_times(full.history) == _strip_times(resumed.history)
    assert full.history[-1]["lr"] < full.history[0]["lr"]  # the cosine schedule was restored, not restarted
    for name in ("history.csv", "history.json", "model.pt", "config.json"):
        assert (tmp_path / "part" / name).is_file(), name
    weights = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], a[k]) for k in a)
    assert (tmp_path / "part" / "history.csv").read_text().count("\n") == 4


def test_config_mismatch_and_existing_run(tmp_path: Path) -> None:
    train(_cfg(tmp_path, epochs=1, attack="none"), verbose=False)
    with pytest.raises(ConfigMismatchError, match=r"differing keys: lr 0\.1 -> 0\.2"):
        train(_cfg(tmp_path, epochs=1, attack="none", lr=0.2), resume=True, verbose=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, epochs=1, attack="none"), verbose=False)
    # runtime-only fields may change; a finished run resumes to a no-op
    again = train(_cfg(tmp_path, epochs=1, attack="none", log_every=5), resume=True, verbose=False)
    assert again.start_epoch == 1 and len(again.history) == 1


def test_cli_mismatch_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sinkhorn_attacks.cli import main

    common = ["train", "--dataset", "synthetic", "--arch", "small_cnn", "--train-limit", "64", "--batch-size", "32",
              "--device", "cpu", "--meter-n", "0", "--no-plot", "--out", str(tmp_path)]  # fmt: skip
    assert main(common) == 0
    assert main([*common, "--resume", "--seed", "5"]) == 2  # a user error: one line, exit code 2
    assert "another configuration" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, attack="none", train_limit=64)  # 2 steps per epoch
    calls = {"n": 0}
    real = train_loop._compute_loss

    def flaky(outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        calls["n"] += 1
        loss = real(outputs, labels, label_smoothing)
        return loss * float("nan") if calls["n"] == 4 else loss  # second step of epoch 2

    monkeypatch.setattr(train_loop, "_compute_loss", flaky)
    ck_path = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingDiverged, match="non-finite training loss at epoch 2, step 2"):
        train(cfg, verbose=False)
    ck = load_checkpoint(ck_path)
    assert ck["epoch"] == 1 and len(ck["history"]) == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    monkeypatch.setattr(train_loop, "_compute_loss", real)
    done = train(cfg, resume=True, verbose=False)  # the kept checkpoint resumes normally
    assert len(done.history) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    args = ["train", "--dataset", "synthetic", "--arch", "small_cnn", "--train-limit", "64", "--batch-size", "16",
            "--epochs", "2", "--attack", "fgsm", "--attack-arg", "radius=0.1", "--clean-weight", "0.5",
            "--lr", "0.1", "--schedule", "cosine", "--meter-n", "0", "--device", "cpu", "--seed", "1",
            "--no-plot"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    from sinkhorn_attacks.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # single process, in this process
    for _attempt in range(2):  # a free port can be taken between choosing and binding it: try a second one
        two = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(_free_port()), "-m", "sinkhorn_attacks", *args, "--out", str(tmp_path / "two")],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        if two.returncode == 0 or "address already in use" not in two.stderr.lower():
            break
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stderr
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)
    ha = json.loads((tmp_path / "one" / "history.json").read_text())
    hb = json.loads((tmp_path / "two" / "history.json").read_text())
    for ra, rb in zip(ha, hb, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
        assert ra["train_clean_acc"] == rb["train_clean_acc"] and ra["train_adv_acc"] == rb["train_adv_acc"]
    assert len(load_checkpoint(tmp_path / "two" / "checkpoint.pt")["rng"]) == 2
