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
