"""Training recipes and the training loop's schedule, augmentation and safety checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sinkhorn_attacks._util import UserError
from sinkhorn_attacks.train import TrainConfig, TrainingDiverged, train
from sinkhorn_attacks.train import loop as train_loop
from sinkhorn_attacks.train.loop import augment_flip_crop
from sinkhorn_attacks.train.recipes import bundled_recipes, load_recipe
from sinkhorn_attacks.zoo import build


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        dataset="synthetic", arch="small_cnn", train_limit=64, batch_size=16, epochs=2, attack="none",
        optimizer="sgd", lr=0.1, meter_n=0, seed=1, plot=False, device="cpu", out_dir=str(out),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_flip_crop_moves_whole_images() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, dtype=torch.float64)
    y = augment_flip_crop(x, g, pad=2)
    assert y.shape == x.shape and y.dtype == x.dtype
    # every output is a flipped or unflipped copy of its input shifted by at most 2 px (reflected border):
    # its central 4x4 block appears in the padded (possibly flipped) input at one of the 25 offsets
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    padded_flipped = torch.nn.functional.pad(x.flip(-1), (2, 2, 2, 2), mode="reflect")
    kinds = set()
    for i in range(x.shape[0]):
        found = [
            (f, dy, dx)
            for f, p in ((0, padded), (1, padded_flipped))
            for dy in range(5)
            for dx in range(5)
            if torch.equal(y[i], p[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert found, i
        kinds.add(found[0][0])
    assert kinds == {0, 1}  # both flipped and unflipped images occur
    again = augment_flip_crop(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(again, y)  # seeded: the same generator seed gives the same batch


def test_onecycle_rises_then_falls_to_zero(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path, schedule="onecycle", warmup=0.25, epochs=4, lr=0.4), verbose=False)
    lrs = [row["lr"] for row in res.history]  # the rate at the start of each epoch (4 steps per epoch)
    assert lrs[0] == pytest.approx(0.1)  # step 0 of 4 rising steps
    assert lrs[1] == pytest.approx(0.4 * 12 / 12)  # peak reached after the 4 rising steps
    assert lrs[1] > lrs[2] > lrs[3] > 0
    assert lrs[3] == pytest.approx(0.4 * (16 - 12) / 12)


def test_non_finite_weights_are_never_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = torch.optim.SGD.step

    def poisoned(self: torch.optim.SGD, closure: object = None) -> None:
        real_step(self)
        for group in self.param_groups:
            for p in group["params"]:
                p.data.fill_(float("nan"))

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite weights after epoch 1"):
        train(_cfg(tmp_path, train_limit=16, epochs=1), verbose=False)  # one step: its loss is still finite
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "checkpoint.pt").exists()


def test_attack_that_changes_nothing_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, attack="fgsm", attack_overrides={"radius": 0.1})
    real = train_loop._make_attack

    def lazy(cfg: TrainConfig, model: torch.nn.Module, overrides: dict) -> object:
        atk = real(cfg, model, overrides)
        atk.loss_fn = lambda out, y: (out * 0).sum(1)  # zero gradient: sign steps of 0 leave images unchanged
        return atk

    monkeypatch.setattr(train_loop, "_make_attack", lazy)
    with pytest.raises(
        TrainingDiverged, match=r"returned all \d+ correctly classified images of the batch unchanged at epoch 1"
    ):
        train(cfg, verbose=False)


def test_bundled_recipes_are_valid_configs() -> None:
    names = bundled_recipes()
    assert "cifar10_clean" in names
    for name in names:
        cfg = TrainConfig.from_dict(load_recipe(name))
        build(cfg.arch, **cfg.arch_kwargs)  # the architecture exists
    with pytest.raises(UserError, match="bundled: .*cifar10_clean"):
        load_recipe("cifar10_clen")


def test_recipe_unknown_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\ndataset = "mnist"\nlearning_rate = 0.1\n')
    with pytest.raises(UserError, match="unknown key.*learning_rate"):
        load_recipe(bad)


def test_cli_recipe_with_override_and_bare_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sinkhorn_attacks.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[train]\ndataset = "synthetic"\narch = "small_cnn"\ntrain_limit = 32\nbatch_size = 16\nlr = 0.3\n'
        "epochs = 1\nattack_overrides = {radius = 0.1}\nmeter_n = 0\nplot = false\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--lr", "0.05", "--device", "cpu", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == 0.05 and cfg["train_limit"] == 32 and cfg["attack_overrides"] == {"radius": 0.1}
    assert cfg["plot"] is False and cfg["out_dir"] == str(out)
    capsys.readouterr()
    assert main(["train"]) == 0  # bare: prints help, starts nothing
    assert "--config RECIPE" in capsys.readouterr().out


def test_resnet9_cifar_takes_unit_interval_images() -> None:
    torch.manual_seed(0)
    net = build("resnet9_cifar")
    assert sum(p.numel() for p in net.parameters()) == 927_000  # the width-24 network of the zoo's CIFAR-10 models
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 10)
    manual = net.net((x - net.preprocess.mean) / net.preprocess.std)
    assert torch.allclose(out, manual)


def test_killed_inside_an_epoch_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(train_limit=96, epochs=2, attack="fgsm", attack_overrides={"radius": 0.1}, clean_weight=0.5,
              augment="flip-crop", schedule="onecycle", meter_n=4, checkpoint_every=2)  # fmt: skip
    full = train(_cfg(tmp_path / "full", **kw), verbose=False)
    real = train_loop._compute_loss
    calls = {"n": 0}

    def killed(*args: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 19:  # two losses a step, 6 steps an epoch: epoch 2, step 4 (after the step-2 checkpoint)
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_loop, "_compute_loss", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "part", **kw), verbose=False)
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["step"] == 2
    monkeypatch.setattr(train_loop, "_compute_loss", real)
    resumed = train(_cfg(tmp_path / "part", **kw), resume=True, verbose=False)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in resumed.history]


def test_a_finished_run_extends_with_more_epochs(tmp_path: Path) -> None:
    short = train(_cfg(tmp_path / "ext", epochs=1), verbose=False)
    assert len(short.history) == 1 and (tmp_path / "ext" / "model.pt").is_file()
    longer = train(_cfg(tmp_path / "ext", epochs=3), resume=True, verbose=False)
    train(_cfg(tmp_path / "straight", epochs=3), verbose=False)
    assert longer.start_epoch == 1 and len(longer.history) == 3
    a = torch.load(tmp_path / "ext" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # constant rate: the same as a 3-epoch run
    with pytest.raises(ValueError, match="another configuration.*lr"):
        train(_cfg(tmp_path / "ext", epochs=4, lr=0.2), resume=True, verbose=False)
