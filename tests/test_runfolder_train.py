"""The run-folder engine under ``train`` and ``retrieval attack``: one lock for every command, the stored
configuration checked on resume (folders of earlier versions accepted), ``--fresh``, collision-free cell keys,
cells and examples files checked; and the training outputs of fixed seeds, unchanged by the split of the loop."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sinkhorn_attacks._runfolder import RunFolder
from sinkhorn_attacks._util import UserError
from sinkhorn_attacks.train import ConfigMismatchError, TrainConfig, load_checkpoint, train
from sinkhorn_attacks.train import loop as train_loop


def _cfg(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(dataset="synthetic", arch="small_cnn", train_limit=64, batch_size=16, epochs=2,
                                seed=7, plot=False, device="cpu", out_dir=str(out), meter_n=2,
                                attack="none")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _live_lock(folder: Path, name: str, command: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"{socket.gethostname()}:{os.getpid()}:{command}")


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------------------ regression of the loop
#: Recorded with the loop before it was split into helpers (torch 2.13 CPU, AVX2, one thread): the final weights'
#: SHA-256, per-tensor sums and per-epoch losses of two runs of fixed seeds.
_A = dict(attack="fgsm", attack_overrides={"radius": 0.1}, clean_weight=0.5, augment="flip-crop", schedule="cosine",
          eval_limit=8, checkpoint_every=2, log_every=2, lr=0.1)  # fmt: skip
_B = dict(optimizer="adam", lr=0.01, schedule="onecycle", label_smoothing=0.1, checkpoint_every=1)
_RECORDED = {
    "a": ("db71cd8e72b6a7616626549b5cc45e07", [2.311590075492859, 2.2920162081718445],
          {"0.weight": "-0x1.f3f0718400000p-2", "0.bias": "-0x1.5b10105000000p-1", "2.weight": "0x1.5f034564f4800p+2",
           "2.bias": "-0x1.893e4f6000000p-4", "5.weight": "-0x1.65bf26f694c80p+1", "5.bias": "0x1.5747c27600000p-3",
           "7.weight": "-0x1.6b5adb5a00000p+0", "7.bias": "0x1.14b9454000000p-2"}),
    "b": ("a9c5e5733e0fc1b998a4c897b9dad95e", [2.3166595697402954, 2.259068250656128],
          {"0.weight": "-0x1.016f597c80000p+1", "0.bias": "-0x1.b201cfd200000p-1", "2.weight": "-0x1.fd084f2acf800p+2",
           "2.bias": "-0x1.b74fd9ed00000p-2", "5.weight": "-0x1.5a74958431820p+6", "5.bias": "-0x1.b62cc8ea00000p-4",
           "7.weight": "-0x1.eea0c53680000p+1", "7.bias": "0x1.0cacf90800000p-2"}),
}  # fmt: skip
_RECORDING_PLATFORM = ("2.13", "AVX2")


def _check_recorded(name: str, result: Any) -> None:
    digest, losses, sums = _RECORDED[name]
    state = result.model.state_dict()
    here = (torch.__version__.split("+")[0].rsplit(".", 1)[0], torch.backends.cpu.get_cpu_capability())
    if here == _RECORDING_PLATFORM:  # bitwise where recorded; other kernels differ in the last bits
        assert _digest(state) == digest
        assert [r["loss"] for r in result.history] == losses
    for k, v in sums.items():
        assert float(state[k].double().sum()) == pytest.approx(float.fromhex(v), rel=1e-4, abs=1e-6), k
    assert [r["loss"] for r in result.history] == pytest.approx(losses, rel=1e-5)


def test_training_outputs_are_those_recorded_before_the_loop_was_split(tmp_path: Path, monkeypatch) -> None:
    _check_recorded("a", train(_cfg(tmp_path / "a", **_A), verbose=False))
    train(_cfg(tmp_path / "a2", **_A), stop_after_epochs=1, verbose=False)  # killed after an epoch, resumed
    _check_recorded("a", train(_cfg(tmp_path / "a2", **_A), resume=True, verbose=False))
    real, calls = train_loop._compute_loss, {"n": 0}

    def killed_at_step_6(outputs: torch.Tensor, labels: torch.Tensor, ls: float = 0.0) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(outputs, labels, ls)

    monkeypatch.setattr(train_loop, "_compute_loss", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", **_B), verbose=False)
    monkeypatch.setattr(train_loop, "_compute_loss", real)
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"]) == (1, 1)  # inside the second epoch
    _check_recorded("b", train(_cfg(tmp_path / "b", **_B), resume=True, verbose=False))


def test_no_function_of_train_exceeds_80_lines() -> None:
    import ast

    import sinkhorn_attacks.train as pkg

    long = []
    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}:{node.name}")
    assert not long


# ------------------------------------------------------------------------------------------ train: one lock
def test_train_is_refused_beside_a_live_run_of_any_command(tmp_path: Path) -> None:
    out = tmp_path / "t"
    _live_lock(out, ".lock.1", "leaderboard")  # rank 1 of a sharded leaderboard (the old train lock missed it)
    with pytest.raises(UserError, match=r"^another leaderboard run \(pid \d+\) is writing to .*; wait for it"):
        train(_cfg(out), verbose=False)
    assert not (out / "checkpoint.pt").exists() and not (out / "config.json").exists()


def test_a_running_train_refuses_evaluate_and_a_second_train(tmp_path: Path, monkeypatch) -> None:
    out, refused = tmp_path / "t", []
    real = train_loop._compute_loss

    def meanwhile(outputs: torch.Tensor, labels: torch.Tensor, ls: float = 0.0) -> torch.Tensor:
        if not refused:
            for command in ("evaluate", "leaderboard"):
                with pytest.raises(UserError) as err, RunFolder(out, command).lock():
                    pass
                refused.append(str(err.value))
            with pytest.raises(UserError) as err:
                train(_cfg(out), verbose=False)
            refused.append(str(err.value))
        return real(outputs, labels, ls)

    monkeypatch.setattr(train_loop, "_compute_loss", meanwhile)
    train(_cfg(out, epochs=1), verbose=False)
    assert len(refused) == 3 and all(r.startswith("another train run (pid ") for r in refused), refused
    assert not list(out.glob(".lock*"))


# ------------------------------------------------------------------------------------------ train: stored config
def test_resume_with_another_configuration_is_refused_naming_the_keys(tmp_path: Path) -> None:
    train(_cfg(tmp_path, lr=0.1), stop_after_epochs=1, verbose=False)
    rec = json.loads((tmp_path / "config.json").read_text())
    assert rec["command"] == "train" and len(rec["fingerprint"]) == 16 and rec["lr"] == 0.1
    with pytest.raises(ConfigMismatchError, match=r"holds a train run of another configuration \(differing keys: "
                       r"lr 0\.1 -> 0\.2, seed 7 -> 8\); use another --out, or --fresh"):  # fmt: skip
        train(_cfg(tmp_path, lr=0.2, seed=8), resume=True, verbose=False)
    done = train(_cfg(tmp_path, lr=0.1, device="cpu", log_every=3, epochs=3), resume=True, verbose=False)
    assert len(done.history) == 3  # runtime options may change, a larger --epochs extends the run


def test_a_run_killed_before_its_first_checkpoint_keeps_its_configuration(tmp_path: Path, monkeypatch) -> None:
    def killed(*_a: Any, **_k: Any) -> torch.Tensor:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "_compute_loss", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path), verbose=False)
    monkeypatch.undo()
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(ConfigMismatchError, match=r"differing keys: arch_kwargs \{\} -> \{\"n_classes\": 12\}"):
        train(_cfg(tmp_path, arch_kwargs={"n_classes": 12}), verbose=False)  # earlier versions started over silently
    assert len(train(_cfg(tmp_path), verbose=False).history) == 2  # the same configuration starts normally


def test_fresh_discards_the_run_and_another_command_is_refused(tmp_path: Path, capsys) -> None:
    train(_cfg(tmp_path / "t"), verbose=False)
    with pytest.raises(FileExistsError, match="--fresh to discard it"):
        train(_cfg(tmp_path / "t"), verbose=False)
    again = train(_cfg(tmp_path / "t", lr=0.2, epochs=1), fresh=True, verbose=False)
    assert again.start_epoch == 0 and len(again.history) == 1
    assert load_checkpoint(tmp_path / "t" / "checkpoint.pt")["epoch"] == 1
    assert json.loads((tmp_path / "t" / "config.json").read_text())["lr"] == 0.2
    with pytest.raises(UserError, match="give one of them"):
        train(_cfg(tmp_path / "t"), resume=True, fresh=True, verbose=False)
    ev = tmp_path / "e"
    ev.mkdir()
    (ev / "config.json").write_text(json.dumps({"command": "evaluate", "fingerprint": "0" * 16, "limit": 5}))
    before = (ev / "config.json").read_bytes()
    for fresh in (False, True):
        with pytest.raises(UserError, match="holds a evaluate run; use another --out for this train run"):
            train(_cfg(ev), fresh=fresh, verbose=False)
    assert (ev / "config.json").read_bytes() == before and sorted(p.name for p in ev.iterdir()) == ["config.json"]
    from sinkhorn_attacks.cli import main

    args = ["train", "--dataset", "synthetic", "--arch", "small_cnn", "--train-limit", "32", "--batch-size", "16",
            "--device", "cpu", "--meter-n", "0", "--no-plot", "--out", str(tmp_path / "t")]  # fmt: skip
    assert main([*args, "--resume", "--fresh"]) == 2
    assert main([*args, "--fresh"]) == 0
    assert main(["train", "--config", str(tmp_path / "t" / "config.json"), "--resume"]) == 0  # a run's record
    capsys.readouterr()


_OLD_CHECKPOINT_KEYS = {"format", "config_json", "epoch", "step", "model", "optimizer", "scheduler", "scaler", "rng",
                        "history", "world_size"}  # fmt: skip


def test_a_folder_written_the_old_way_still_resumes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "old", **_A)
    train(cfg, stop_after_epochs=1, verbose=False)
    # as earlier versions left it: the bare configuration, a lock of a dead process without a command
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n")
    (tmp_path / "old" / ".lock").write_text(f"{socket.gethostname()}:999999999")
    ck = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    assert set(ck) == _OLD_CHECKPOINT_KEYS and ck["format"] == 1  # the checkpoint format is unchanged
    rec = RunFolder(tmp_path / "old", "train").record()
    assert rec is not None and rec["command"] == "train" and rec["fingerprint"] is None
    with pytest.raises(ConfigMismatchError, match=r"differing keys: lr 0\.1 -> 0\.3"):  # its checkpoint is checked
        train(_cfg(tmp_path / "old", **{**_A, "lr": 0.3}), resume=True, verbose=False)
    _check_recorded("a", train(cfg, resume=True, verbose=False))
    rec = json.loads((tmp_path / "old" / "config.json").read_text())
    assert rec["command"] == "train" and len(rec["fingerprint"]) == 16  # recorded now
    assert set(torch.load(tmp_path / "old" / "model.pt", weights_only=True)) == set(ck["model"])


def test_non_finite_weights_are_never_saved(tmp_path: Path, monkeypatch) -> None:
    from sinkhorn_attacks.train import TrainingDiverged

    def nan_decay(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:  # the config refuses weight_decay=nan
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=float("nan"))

    monkeypatch.setattr(train_loop, "_make_optimizer", nan_decay)
    with pytest.raises(TrainingDiverged, match="non-finite weights after epoch 1, step 1"):
        train(_cfg(tmp_path, checkpoint_every=1), verbose=False)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "model.pt").exists()


# ------------------------------------------------------------------------------------------ retrieval attack
class _Shift:
    """A stand-in attack: every pixel moved by ``radius`` (no gradients), calls counted."""

    calls: list[tuple[str, float]] = []

    def __init__(self, preset: str, radius: float, callback: Any, steps: int) -> None:
        self.preset, self.radius, self.callback, self.steps = preset, radius, callback, steps

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> SimpleNamespace:
        _Shift.calls.append((self.preset, self.radius))
        adv = (x + self.radius).clamp(0, 1)
        for t in range(1, self.steps + 1):
            if self.callback is not None:
                self.callback(t, adv)
        return SimpleNamespace(adv=adv)


def _factory(preset: str, model: Any, loss_fn: Any = None, success_fn: Any = None, callback: Any = None,
             steps: int = 2, radius: float = 0.01, **_kw: Any) -> _Shift:  # fmt: skip
    return _Shift(preset, radius, callback, steps)


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> tuple[Path, Path]:
    from sinkhorn_attacks.retrieval.experiment import TrainRun, run_train
    from sinkhorn_attacks.retrieval.train import TrainConfig as HeadsConfig

    root = tmp_path_factory.mktemp("heads")
    run_train(TrainRun(data="synthetic:16", out=str(root), image_backbone="small-cnn", text_backbone="hashing",
                       image_size=None, train=HeadsConfig(epochs=1, embed_dim=16), cache_dir=str(root / "cache")),
              log=None)  # fmt: skip
    return root / "heads.pt", root / "cache"


def _attack(heads: tuple[Path, Path], out: Path, specs: list[str], **kw: Any) -> dict:
    from sinkhorn_attacks.retrieval.experiment import parse_attack_spec, run_attack

    args = dict(n_images=4, steps=2, batch_size=2, cache_dir=str(heads[1]), attack_factory=_factory, log=None,
                plots=False)  # fmt: skip
    args.update(kw)
    return run_attack(str(heads[0]), [parse_attack_spec(s) for s in specs], out, **args)


def test_retrieval_attack_cells_have_exact_keys_and_resume(heads, tmp_path: Path) -> None:
    specs = ["fgsm:eps=0.01#A b", "fgsm:eps=0.02#A_b", "fgsm:eps=0.03|0.04"]  # old slugs: "A_b" twice
    _Shift.calls.clear()
    res = _attack(heads, tmp_path / "o", specs)
    assert {k: c["overrides"]["radius"] for k, c in res["cells"].items()} == {
        "A b": 0.01, "A_b": 0.02, "fgsm@radius=0.03": 0.03, "fgsm@radius=0.04": 0.04}  # fmt: skip
    assert len(list((tmp_path / "o" / "parts").glob("*.json"))) == 4
    first = len(_Shift.calls)
    again = _attack(heads, tmp_path / "o", specs)
    assert len(_Shift.calls) == first and again["cells"] == res["cells"]  # every cell reused, none recomputed
    with pytest.raises(UserError, match="two --attack specs make the cell 'A b'"):
        _attack(heads, tmp_path / "o", ["fgsm:eps=0.01#A b", "linf-pgd:eps=0.01#A b"])


def test_retrieval_attack_of_another_configuration_is_refused(heads, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _attack(heads, out, ["fgsm:eps=0.01#A"])
    with pytest.raises(UserError, match=r"holds a retrieval attack run of another configuration \(differing keys: "
                       r"n_images 4 -> 3, record_steps .*, steps 2 -> 3\); use another --out, or --fresh"):  # fmt: skip
        _attack(heads, out, ["fgsm:eps=0.01#A"], steps=3, n_images=3)
    # the same label with other overrides: earlier versions reported the old cell under it
    with pytest.raises(UserError, match=r"holds the cell 'A' of other settings \(differing keys: overrides\)"):
        _attack(heads, out, ["fgsm:eps=0.02#A"])
    res = _attack(heads, out, ["fgsm:eps=0.02#A"], steps=3, fresh=True)
    assert res["cells"]["A"]["overrides"]["radius"] == 0.02 and res["steps"] == 3
    assert json.loads((out / "config.json").read_text())["steps"] == 3
    board = tmp_path / "board"
    board.mkdir()
    (board / "config.json").write_text(json.dumps({"digest": "x", "n": 4}))
    with pytest.raises(UserError, match="holds a leaderboard run; use another --out for this retrieval attack"):
        _attack(heads, board, ["fgsm:eps=0.01"], fresh=True)


def test_retrieval_attack_takes_the_shared_lock(heads, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _live_lock(out, ".lock", "evaluate")
    with pytest.raises(UserError, match=r"^another evaluate run \(pid \d+\) is writing to"):
        _attack(heads, out, ["fgsm:eps=0.01"])
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    (out / ".lock").unlink()
    _attack(heads, out, ["fgsm:eps=0.01"])
    assert not (out / ".lock").exists()


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the radius plot of cells without a metered radius
def test_retrieval_attack_refuses_a_truncated_or_missing_examples_file(heads, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _attack(heads, out, ["fgsm:eps=0.01#A"], plots=True)
    (examples,) = (out / "parts").glob("*.examples.pt")
    full = examples.read_bytes()
    examples.write_bytes(full[: len(full) // 2])  # as a full disk left it in earlier versions
    with pytest.raises(UserError, match=r"examples\.pt is truncated or not the file .* lists .*; delete"):
        _attack(heads, out, ["fgsm:eps=0.01#A"])
    examples.unlink()
    with pytest.raises(UserError, match=r"examples\.pt is missing but .* lists it"):
        _attack(heads, out, ["fgsm:eps=0.01#A"])
    examples.write_bytes(full)
    _attack(heads, out, ["fgsm:eps=0.01#A"])  # the intact file is accepted again
    (part,) = (out / "parts").glob("*.json")
    doc = json.loads(part.read_text())
    doc["image_indices"] = [0, 1, 2, 5]
    part.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"holds 4 examples from 0 to 5 but unit A covers examples 0\.\.3"):
        _attack(heads, out, ["fgsm:eps=0.01#A"])
    part.write_text(json.dumps(doc)[:40])
    with pytest.raises(UserError, match="is corrupt"):
        _attack(heads, out, ["fgsm:eps=0.01#A"])


def test_retrieval_attack_recomputes_cells_of_earlier_versions(heads, tmp_path: Path) -> None:
    out = tmp_path / "o"
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "a.json").write_text(json.dumps({"attack": "a", "final": {}}))  # no format, no fingerprint
    _Shift.calls.clear()
    res = _attack(heads, out, ["fgsm:eps=0.01#a"])
    assert _Shift.calls and res["cells"]["a"]["overrides"] == {"radius": 0.01}
