"""The command line reports user errors in one line (exit code 2) and keeps tracebacks for real bugs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sinkhorn_attacks._util import Registry, UserError, atomic_write
from sinkhorn_attacks.cli import main
from sinkhorn_attacks.eval.config import ConfigError, bundled_configs, load_config, resolve_config
from sinkhorn_attacks.eval.io import plain_float, write_json


def _cfg(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


BASE = '[models]\nnames = ["m"]\n[[attacks]]\npreset = "fgsm"\n'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[run]\nbatchsize = 2\n" + BASE, "did you mean 'batch_size'"),
        ("[data]\nlimit = 2.9\n" + BASE, "limit = 2.9: expected an integer"),
        ('[models]\nnames = "x"\n[[attacks]]\npreset = "fgsm"\n', 'write ["x"]'),
        ("[models\n", "TOML syntax error"),
        ('[models]\nnames = ["m"]\n[[attacks]]\npreset = "fgsm"\nparams = { stepz = 2 }\n', "has no parameter 'stepz'"),
        ('[models]\nnames = ["m"]\n[[attacks]]\npresett = "fgsm"\n', "did you mean 'preset'"),
        ("[runn]\n" + BASE, "did you mean 'run'"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, capsys, text: str, needle: str) -> None:
    assert main(["evaluate", "--config", _cfg(tmp_path, text), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.count("\n") <= 5  # one line, or the pre-flight list


def test_flag_errors(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    assert main(["attack", "m", "--set", "steps=abc", "--out", out]) == 2
    assert "steps = 'abc'" in capsys.readouterr().err
    assert main(["attack", "m", "--preset", "uott", "--out", out]) == 2
    assert "did you mean 'uot'" in capsys.readouterr().err
    assert main(["evaluate", "--config", "thesis_mnistt"]) == 2
    assert "did you mean 'thesis_mnist'" in capsys.readouterr().err
    assert main(["attack", "no-such-model", "--dataset", "digits", "--limit", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "nothing was run" in err and "no-such-model" in err
    assert main(["attack", "m", "--device", "nonsense", "--dataset", "digits", "--out", out]) == 2


def test_cuda_on_cpu_build_is_one_line(tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    assert main(["attack", "m", "--device", "cuda", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_bundled_configs_by_name_and_path() -> None:
    assert {"thesis_mnist", "thesis_mnist_small"} <= set(bundled_configs())
    for name in ("thesis_mnist", "thesis_mnist.toml", "configs/thesis_mnist.toml"):
        assert resolve_config(name).name == "thesis_mnist.toml"
    assert load_config("thesis_mnist_small").limit == 50
    with pytest.raises(ConfigError):
        resolve_config("nope")


def test_larger_limit_reuses_finished_units(tmp_path: Path) -> None:
    import torch

    from sinkhorn_attacks.eval import AttackSpec, EvalConfig, run_evaluation

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(7, 1, 4, 4), torch.randint(0, 3, (7,))

    def cfg(limit: int) -> EvalConfig:
        return EvalConfig(["m"], [AttackSpec("fgsm", params={"radius": 0.1})], limit=limit, batch_size=2,
                          out=str(tmp_path / "o"), device="cpu")  # fmt: skip

    run_evaluation(cfg(3), models={"m": net}, data=(x, y), progress=False)
    ran: list[str] = []
    run_evaluation(cfg(7), models={"m": net}, data=(x, y), progress=False, after_unit=lambda u, k: ran.append(u.key))
    assert ran == ["grid__m__fgsm__b0001", "grid__m__fgsm__b0002", "grid__m__fgsm__b0003"]  # b0000 reused
    fresh = tmp_path / "fresh"
    run_evaluation(EvalConfig(**{**cfg(7).__dict__, "out": str(fresh)}), models={"m": net}, data=(x, y), progress=False)
    assert (tmp_path / "o" / "examples.csv").read_text() == (fresh / "examples.csv").read_text()
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert isinstance(res["summary"]["m"]["fgsm"]["attack_config"]["schedule"], dict)


def test_json_floats_and_helpers(tmp_path: Path) -> None:
    import numpy as np

    assert plain_float(float(np.float32(0.3))) == 0.3
    write_json(tmp_path / "a.json", {"x": np.float32(0.1), "y": float("inf")})
    assert (tmp_path / "a.json").read_text().split() == ["{", '"x":', "0.1,", '"y":', '"inf"', "}"]
    reg: Registry[int] = Registry("thing", [("wong2019-a", 1), ("wong2019-b", 2), ("hu", 3)])
    assert reg.names("wong2019-*") == ["wong2019-a", "wong2019-b"]
    with pytest.raises(ValueError):
        reg.register("hu", 4)
    with pytest.raises(KeyError, match="did you mean 'hu'"):
        reg["hux"]
    atomic_write(tmp_path / "b.txt", "hi")
    assert (tmp_path / "b.txt").read_text() == "hi" and len(list(tmp_path.iterdir())) == 2
    assert issubclass(ConfigError, UserError)


# ------------------------------------------------------- issue 24: every user mistake in one line
def _ckpts(tmp_path: Path) -> dict[str, str]:
    """Checkpoint files: a good digits CNN, and files that fail to load in every way the audit tried."""
    import torch

    from sinkhorn_attacks.zoo.models import small_cnn

    good = tmp_path / "cnn.pt"
    torch.save(small_cnn(1, 10, 8).state_dict(), good)
    files = {"good": good, "corrupt": tmp_path / "corrupt.pt", "text": tmp_path / "text.pt",
             "list": tmp_path / "list.pt", "empty": tmp_path / "empty.pt", "keys": tmp_path / "keys.pt",
             "rgb": tmp_path / "rgb.pt"}  # fmt: skip
    files["corrupt"].write_bytes(good.read_bytes()[:200])  # truncated download
    files["text"].write_text("not a checkpoint\n")
    torch.save([1, 2, 3], files["list"])
    files["empty"].write_bytes(b"")
    torch.save({"foo.weight": torch.zeros(3)}, files["keys"])
    torch.save(small_cnn(3, 10, 8).state_dict(), files["rgb"])  # a colour model, not for the 8x8 digits
    return {k: str(v) for k, v in files.items()}


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and all(n in err for n in needles), err
    return err


def _board(tmp_path: Path, model: str, attack: str = 'preset = "fgsm"', arch: str | None = "small_cnn") -> str:
    p = tmp_path / "board.toml"
    line = f'arch = "{arch}"\n' if arch else ""
    p.write_text(f'[board]\ndataset = "digits"\nn = 2\nbatch = 2\n[[models]]\nlabel = "m"\npath = "{model}"\n{line}'
                 f'[[attacks]]\nlabel = "a"\n{attack}\n')  # fmt: skip
    return str(p)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--limit", "0"], "--limit ([data] limit) must be an integer >= 1, got 0"),
        (["--limit", "-3"], "--limit ([data] limit) must be an integer >= 1, got -3"),
        (["--batch-size", "-1"], "--batch-size ([run] batch_size) must be an integer >= 1, got -1"),
        (["--batch-size", "0"], "--batch-size ([run] batch_size) must be an integer >= 1, got 0"),
        (["--offset", "-1"], "--offset ([data] offset) must be an integer >= 0, got -1"),
        (["--grid", "-1"], "--grid ([run] grid_examples) must be an integer >= 0, got -1"),
        (["--set", "steps=0"], "steps must be an integer >= 1, got 0"),
        (["--set", "steps=-2"], "steps must be an integer >= 1, got -2"),
    ],
)
def test_attack_zero_or_negative_sizes(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    out = tmp_path / "o"
    ck = _ckpts(tmp_path)["good"]
    rc = main(["attack", ck, "--dataset", "digits", "--preset", "fgsm", "--out", str(out), "--quiet", *flags])
    _one_line_error(capsys, rc, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--radii", "nan"], "--radii ([curves] radii) must be finite numbers >= 0, got [nan]"),  # was ValueError
        (["--radii", "-1"], "--radii ([curves] radii) must be finite numbers >= 0, got [-1.0]"),  # was accepted
        (["--limit", "0"], "--limit ([data] limit)"),
    ],
)
def test_evaluate_sizes_and_radii(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    out = tmp_path / "o"
    ck = _ckpts(tmp_path)["good"]
    argv = ["evaluate", "--models", ck, "--attacks", "fgsm", "--dataset", "digits", "--out", str(out), "--quiet"]
    _one_line_error(capsys, main(argv + flags), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "device, needle",
    [("foo", "--device 'foo': use auto, cpu, cuda, cuda:N or mps"), ("cuda:x", "--device 'cuda:x'"),
     ("cuda", "--device cuda"), ("cuda:7", "--device cuda:7"), ("mps", "--device mps")],
)  # fmt: skip
def test_devices_the_machine_lacks(tmp_path: Path, capsys, device: str, needle: str) -> None:
    import torch

    if device.startswith("cuda:7") and torch.cuda.device_count() > 7 or device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has that device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has that device")
    ck = _ckpts(tmp_path)["good"]
    out = tmp_path / "o"
    for argv in (
        ["attack", ck, "--dataset", "digits", "--out", str(out)],
        ["evaluate", "--models", ck, "--attacks", "fgsm", "--dataset", "digits", "--out", str(out)],
        ["leaderboard", "--config", _board(tmp_path, ck), "--out", str(out)],
        ["benchmark", ck, "--out", str(out)],
    ):
        _one_line_error(capsys, main([*argv, "--device", device, "--quiet"]), needle)
        assert not out.exists()


@pytest.mark.parametrize(
    "kind, needle",
    [("corrupt", "not a readable torch checkpoint"), ("text", "not a readable torch checkpoint"),
     ("empty", "not a readable torch checkpoint (0 bytes"), ("keys", "does not fit the architecture"),
     ("rgb", "does not fit the architecture")],
)  # fmt: skip
def test_checkpoint_that_fails_to_load_or_to_run(tmp_path: Path, capsys, kind: str, needle: str) -> None:
    """With --arch the checkpoint was not opened before the run (a traceback mid-run); now every command loads it
    and runs it on one image of the data first."""
    ck = _ckpts(tmp_path)[kind]
    out = tmp_path / "o"
    for argv in (
        ["attack", ck, "--arch", "small_cnn", "--dataset", "digits", "--preset", "fgsm", "--out", str(out)],
        ["evaluate", "--models", ck, "--arch", "small_cnn", "--attacks", "fgsm", "--dataset", "digits", "--out",
         str(out)],
        ["leaderboard", "--config", _board(tmp_path, ck), "--out", str(out)],
    ):  # fmt: skip
        _one_line_error(capsys, main([*argv, "--quiet"]), needle)
        assert not out.exists()


def test_model_for_other_images(tmp_path: Path, capsys) -> None:
    """A colour model on the grey 8x8 digits: a RuntimeError traceback from the first attack step before."""
    ck = _ckpts(tmp_path)["rgb"]
    out = tmp_path / "o"
    for argv in (
        ["attack", ck, "--dataset", "digits", "--preset", "fgsm", "--out", str(out)],
        ["evaluate", "--models", ck, "--attacks", "fgsm", "--dataset", "digits", "--out", str(out)],
        ["leaderboard", "--config", _board(tmp_path, ck, arch=None), "--out", str(out)],
    ):
        _one_line_error(capsys, main([*argv, "--quiet"]), "cannot take digits/", "images of shape (1, 8, 8)")
        assert not out.exists()


def test_mnist_model_with_cifar10(tmp_path: Path, capsys) -> None:
    from conftest import data_dir, models_dir

    data, models = str(data_dir()), str(models_dir())
    out = tmp_path / "o"
    common = ["--data-dir", data, "--models-dir", models, "--out", str(out), "--quiet"]
    needle = "cannot take cifar10/test"
    rc = main(["attack", "wong2019-mnist-vanilla", "--dataset", "cifar10", "--preset", "fgsm", "--limit", "2", *common])
    _one_line_error(capsys, rc, needle, "(3, 32, 32)")
    rc = main(["benchmark", "wong2019-mnist-vanilla", "--dataset", "cifar10", "--n", "2", *common])
    _one_line_error(capsys, rc, needle)
    assert not out.exists()


def test_output_folder_that_cannot_be_written(tmp_path: Path, capsys) -> None:
    import os

    ck = _ckpts(tmp_path)["good"]
    blocked = f"{ck}/sub"  # under a file: no folder can be made there, whoever runs the test
    for argv in (
        ["attack", ck, "--dataset", "digits", "--preset", "fgsm", "--limit", "2", "--out", blocked],
        ["attack", ck, "--dataset", "digits", "--preset", "fgsm", "--limit", "2", "--out", str(tmp_path / "o"),
         "--save-adv", blocked],
        ["evaluate", "--models", ck, "--attacks", "fgsm", "--dataset", "digits", "--limit", "2", "--out", blocked],
        ["leaderboard", "--config", _board(tmp_path, ck), "--out", blocked],
        ["benchmark", ck, "--n", "2", "--out", blocked],
    ):  # fmt: skip
        flag = "--save-adv" if "--save-adv" in argv else "--out"
        _one_line_error(capsys, main([*argv, "--quiet"]), f"{flag} {blocked}: {ck} is a file")
    assert not (tmp_path / "o").exists()
    if os.geteuid() == 0:
        return  # root writes into read-only folders: the mode check below cannot be seen
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        rc = main(["attack", ck, "--dataset", "digits", "--preset", "fgsm", "--limit", "2", "--out", str(ro / "o")])
        _one_line_error(capsys, rc, f"--out {ro / 'o'}: {ro} is not writable")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(
    "attack, needle",
    [
        ('preset = "fgsm"\noverrides = { bogus = 1 }', "'a' overrides: preset 'fgsm' has no parameter 'bogus'"),
        ('preset = "fgsm"\noverrides = { steps = -1 }', "steps must be an integer >= 1, got -1"),
        ('preset = "fgsm"\noverrides = { radius = nan }', "radius must be a finite number >= 0, got nan"),
        ('preset = "fgsm"\nradii = [-0.1]', "[[attacks]] 'a': radii must be a non-empty list of finite numbers >= 0"),
        ('preset = "fgsm"\nradii = []', "[[attacks]] 'a': radii must be a non-empty list"),
        ('preset = "wu2020-fw-mnist"\noverrides = { gamma = -1.0 }', "[[attacks]] 'a' overrides"),
    ],
)  # fmt: skip
def test_leaderboard_overrides_and_radii_checked_before_any_work(tmp_path: Path, capsys, attack: str, needle: str):
    """A bad override was a traceback after the first units had run (or, for radii, never noticed)."""
    ck = _ckpts(tmp_path)["good"]
    out = tmp_path / "o"
    _one_line_error(capsys, main(["leaderboard", "--config", _board(tmp_path, ck, attack), "--out", str(out)]), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, needle",
    [(["--n", "0"], "--n must be >= 1, got 0"), (["--n", "-2"], "--n must be >= 1, got -2"),
     (["--first", "-1"], "--first must be >= 0, got -1"), (["--batch-size", "0"], "--batch-size must be >= 1, got 0")],
)  # fmt: skip
def test_benchmark_sizes_name_their_flag(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    out = tmp_path / "o"
    _one_line_error(capsys, main(["benchmark", _ckpts(tmp_path)["good"], "--out", str(out), *flags]), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [(["zoo", "verify", "-n", "0"], "-n/--num must be >= 1, got 0"),  # was ZeroDivisionError
     (["zoo", "verify", "-n", "-1"], "-n/--num must be >= 1, got -1"),
     (["zoo", "verify", "--tolerance", "nan"], "--tolerance must be a finite number >= 0, got nan"),
     (["zoo", "verify", "--tolerance", "-1"], "--tolerance must be a finite number >= 0"),
     (["zoo", "download", "nosuch"], "unknown model 'nosuch'"),  # was exit 1
     (["zoo", "list", "--dataset", "nosuch"], "--dataset 'nosuch': no checkpoints for it; datasets: cifar10")],
)  # fmt: skip
def test_zoo_mistakes(capsys, argv: list[str], needle: str) -> None:
    _one_line_error(capsys, main(argv), needle)


def test_zoo_verify_models_dir_must_be_a_folder(tmp_path: Path, capsys) -> None:
    ck = _ckpts(tmp_path)["good"]
    _one_line_error(capsys, main(["zoo", "verify", "--models-dir", ck, "wong2019-mnist-vanilla"]), "not a folder")


# ------------------------------------------------------- issue 24: train and retrieval mistakes in one line
_TRAIN = ["train", "--dataset", "digits", "--arch", "small_cnn", "--train-limit", "32", "--batch-size", "16",
          "--no-plot", "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize(
    "flags, needle",
    [(["--attack", "fgsm", "--attack-arg", "bogus=1"], "--attack-arg: preset 'fgsm' has no parameter 'bogus'"),
     (["--attack", "fgsm", "--attack-arg", "steps=abc"], "--attack-arg: steps = 'abc': expected int"),
     (["--attack", "fgsm", "--eval-attack-arg", "stepz=1"], "--eval-attack-arg: preset 'fgsm' has no parameter"),
     (["--attack", "fgsmm"], "--attack: unknown attack preset 'fgsmm' (did you mean 'fgsm'?)"),
     (["--arch-arg", "bogus=1"], "--arch-arg bogus: architecture small_cnn has no parameter 'bogus'; its parameters: "
      "in_ch, n_classes, size"),  # was TypeError
     (["--arch", "small_cnnn"], "--arch 'small_cnnn' is unknown (did you mean 'small_cnn'?)"),
     (["--arch", "mnist_cnn"], "--arch mnist_cnn cannot take digits/train images of shape (1, 8, 8)"),  # RuntimeError
     (["--arch", "resnet18_cifar"], "--arch resnet18_cifar cannot take digits/train images of shape (1, 8, 8)"),
     (["--train-limit", "0"], "--train-limit must be an integer >= 1, got 0"),  # was RuntimeError
     (["--train-offset", "-1"], "--train-offset must be an integer >= 0, got -1"),
     (["--train-offset", "100000"], "--train-offset 100000: offset 100000 is past the end"),
     (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),  # the flag was not named
     (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
     (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),  # was exit 1 after the first step
     (["--lr", "-0.1"], "--lr must be a finite number > 0, got -0.1"),
     (["--momentum", "1.5"], "--momentum must be a number in [0, 1), got 1.5"),
     (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
     (["--gamma", "-1"], "--gamma must be a finite number > 0, got -1.0"),
     (["--milestones", "0"], "--milestones must be integers >= 1, got 0"),
     (["--max-steps-per-epoch", "0"], "--max-steps-per-epoch must be an integer >= 1, got 0"),
     (["--eval-batch-size", "0"], "--eval-batch-size must be an integer >= 1, got 0"),
     (["--meter-n", "-1"], "--meter-n must be an integer >= 0, got -1"),
     (["--device", "foo"], "--device 'foo': use auto, cpu, cuda, cuda:N or mps"),  # was RuntimeError
     (["--dataset", "digitz"], "--dataset digitz: unknown dataset 'digitz'"),
     (["--dataset", "synthetic:x"], "--dataset 'synthetic:x': write synthetic or synthetic:C:S"),
     (["--init", "{tmp}/none.pt"], "--init checkpoint {tmp}/none.pt does not exist"),
     (["--init", "{rgb}"], "--init {rgb}: does not fit the architecture")],
)  # fmt: skip
def test_train_mistakes_before_any_work(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    """Each was a traceback (or exit 1, or a message without its flag); now refused before the folder exists."""
    rgb = _ckpts(tmp_path)["rgb"] if "{rgb}" in flags else ""
    flags = [f.format(tmp=tmp_path, rgb=rgb) for f in flags]
    out = tmp_path / "o"
    _one_line_error(capsys, main([*_TRAIN, "--out", str(out), *flags]), needle.format(tmp=tmp_path, rgb=rgb))
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, needle",
    [(["--arch-arg", "n_classes=5"], "--arch small_cnn has 5 outputs but the digits/train labels go up to 9"),
     (["--batch-size", "1000"], "--batch-size must be at most the 32 training examples, got 1000")],
)  # fmt: skip
def test_train_mistakes_seen_on_the_whole_data(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    out = tmp_path / "o"
    _one_line_error(capsys, main([*_TRAIN, "--out", str(out), *flags]), needle)
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "line, needle",
    [("epochs = 0", "--epochs must be an integer >= 1, got 0"), ("lr = -1.0", "--lr must be a finite number > 0"),
     ("milestones = 3", "--milestones must be a list of integers >= 1, got 3"),  # was TypeError
     ("arch_kwargs = 3", "{recipe}: arch_kwargs must be a table of KEY = VALUE, got 3"),  # was TypeError
     ("meter_kernel = 0", "meter_kernel ({recipe}) must be an integer >= 1, got 0")],
)  # fmt: skip
def test_train_recipe_values_name_their_flag(tmp_path: Path, capsys, line: str, needle: str) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[train]\ndataset = "digits"\narch = "small_cnn"\n{line}\n')
    out = tmp_path / "o"
    rc = main(["train", "--config", str(recipe), "--device", "cpu", "--out", str(out)])
    _one_line_error(capsys, rc, needle.format(recipe=recipe))
    assert not out.exists()


def test_train_config_error_names_the_field() -> None:
    from sinkhorn_attacks.train import TrainConfig, TrainConfigError

    with pytest.raises(TrainConfigError, match=r"^lr must be a finite number > 0, got nan$") as info:
        TrainConfig(lr=float("nan"))
    assert info.value.field == "lr" and isinstance(info.value, ValueError)
    with pytest.raises(TrainConfigError, match="label_smoothing must be a number in"):
        TrainConfig(label_smoothing=1.0)


@pytest.fixture(scope="module")
def tiny_heads(tmp_path_factory) -> Path:
    """Retrieval heads with a 4-d embedding on synthetic data (one epoch, a second or two)."""
    from sinkhorn_attacks.retrieval.experiment import TrainRun, run_train
    from sinkhorn_attacks.retrieval.train import TrainConfig as HeadsConfig

    out = tmp_path_factory.mktemp("heads")
    cfg = HeadsConfig(epochs=1, batch_size=16, embed_dim=4)
    run = TrainRun(data="synthetic:24", out=str(out), image_backbone="small-cnn", text_backbone="hashing",
                   image_size=None, train=cfg, cache_dir=str(out))  # fmt: skip
    run_train(run, log=None)
    return out / "heads.pt"


@pytest.mark.parametrize(
    "flags, needle",
    [(["--epochs", "0"], "--epochs must be >= 1, got 0"),  # was AttributeError
     (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),  # was ValueError: range() arg 3
     (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
     (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
     (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
     (["--embed-dim", "0"], "--embed-dim must be >= 1, got 0"),  # was accepted
     (["--image-size", "-5"], "--image-size must be >= 0, got -5"),
     (["--model-input-size", "-1"], "--model-input-size must be >= 0, got -1"),
     (["--image-backbone", "bogus"], "--image-backbone 'bogus': unknown; known: efficientnet-lite0, small-cnn"),
     (["--text-backbone", "bogus"], "--text-backbone 'bogus': unknown"),
     (["--eval-split", "bogus"], "--data synthetic:24 --eval-split bogus: unknown split 'bogus'")],
)  # fmt: skip
def test_retrieval_train_mistakes(tmp_path: Path, capsys, flags: list[str], needle: str) -> None:
    out = tmp_path / "o"
    argv = ["retrieval", "train", "--data", "synthetic:24", "--out", str(out), "--image-backbone", "small-cnn",
            "--text-backbone", "hashing", "--image-size", "0", "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    _one_line_error(capsys, main([*argv, *flags]), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, needle",
    [(["--steps", "0"], "--steps must be >= 1, got 0"), (["--n-images", "0"], "--n-images must be >= 1, got 0"),
     (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
     (["--batch-size", "5"], "--batch-size must be at most the embedding size 4 of the heads, got 5"),
     (["--objective", "bogus"], "--objective 'bogus': unknown"), (["--directions", "bogus"], "--directions 'bogus'"),
     (["--record", "1,x"], "--record must be a comma list of iterations in [0, --steps 1], got '1,x'"),
     (["--record", "5"], "--record must be a comma list"),
     (["--meter-kernel", "4"], "--meter-kernel must be a positive odd integer (0: the yardstick's), got 4"),
     (["--meter-p", "nan"], "--meter-p must be a finite number > 0, got nan"),
     (["--meter-images", "-1"], "--meter-images must be >= 0, got -1"),
     (["--time-budget", "-1"], "--time-budget must be a finite number >= 0, got -1.0"),
     (["--time-budget", "nan"], "--time-budget must be a finite number >= 0, got nan"),
     (["--split", "bogus"], "--split bogus (data synthetic:24 of the heads): unknown split 'bogus'"),  # was KeyError
     (["--data", "nosuch:x"], "--data nosuch:x --split test: unknown dataset kind 'nosuch'"),
     (["--heads", "{text}"], "--heads {text}: {text} is not a readable torch checkpoint")],  # was UnpicklingError
)  # fmt: skip
def test_retrieval_attack_mistakes(tmp_path: Path, capsys, tiny_heads: Path, flags: list[str], needle: str) -> None:
    text = tmp_path / "heads.txt"
    text.write_text("not a checkpoint\n")
    out = tmp_path / "o"
    argv = ["retrieval", "attack", "--heads", str(tiny_heads), "--out", str(out), "--steps", "1", "--n-images", "2",
            "--batch-size", "2", "--cache-dir", str(tiny_heads.parent)]  # fmt: skip
    flags = [f.format(text=text) for f in flags]
    _one_line_error(capsys, main([*argv, *flags]), needle.format(text=text))
    assert not out.exists()


def test_retrieval_attack_more_images_than_embedding_dimensions(tmp_path: Path, tiny_heads: Path) -> None:
    """Gallery indices were the attack's labels: image 4 and up of 4-d heads failed the attack's label check."""
    out = tmp_path / "o"
    argv = ["retrieval", "attack", "--heads", str(tiny_heads), "--out", str(out), "--steps", "1", "--n-images", "6",
            "--batch-size", "3", "--no-plots", "--no-library-meter", "--cache-dir", str(tiny_heads.parent)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "attack.json").read_text())["cells"]


def test_retrieval_evaluate_experiment_and_report_mistakes(tmp_path: Path, capsys, tiny_heads: Path) -> None:
    text = tmp_path / "heads.txt"
    text.write_text("not a checkpoint\n")
    cache = ["--cache-dir", str(tiny_heads.parent)]
    ev = ["retrieval", "evaluate", "--heads", str(tiny_heads), *cache]
    _one_line_error(capsys, main(["retrieval", "evaluate", "--heads", str(text)]), f"--heads {text}: {text} is not a")
    _one_line_error(capsys, main([*ev, "--split", "bogus"]), "--split bogus (data synthetic:24 of the heads)")
    _one_line_error(capsys, main([*ev, "--data", "nosuch:x"]), "--data nosuch:x --split test: unknown dataset kind")
    cfg = tmp_path / "x.toml"
    cfg.write_text('[experiment]\ntitle = "t"\ndata = "synthetic:24"\nsplit = "test"\nn_images = 2\niterations = 1\n'
                   'batch_size = 2\nexpect_images = 24\n[[attacks]]\npreset = "linf-pgd"\nlabel = "linf"\n'
                   "radii = [0.01]\n")  # fmt: skip
    out = tmp_path / "x"
    xp = ["retrieval", "experiment", "--config", str(cfg), "--out", str(out), "--heads", str(tiny_heads), "--quiet"]
    _one_line_error(capsys, main([*xp, "--n-images", "0"]), "--n-images must be >= 1, got 0")  # was accepted
    _one_line_error(capsys, main([*xp, "--n-images", "-2"]), "--n-images must be >= 1, got -2")  # was ValueError
    _one_line_error(capsys, main([*xp, "--time-budget", "-1"]), "--time-budget must be a finite number >= 0")
    assert not out.exists()
    _one_line_error(capsys, main([*xp, "--heads", str(text)]), f"--heads {text}: {text} is not a readable torch")
    train_json = tiny_heads.parent / "train.json"
    rc = main(["retrieval", "report", str(train_json), "--out", str(tmp_path / "r")])
    _one_line_error(capsys, rc, f"{train_json}: not the results.json of `retrieval experiment` (no dataset, n_images")
