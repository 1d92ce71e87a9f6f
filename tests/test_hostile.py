"""The hostile-input audit: every call returns (finite, or with a clear error naming the parameter).

Each case of the audit is one test. Cases fixed before this file existed are kept as regression tests.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from sinkhorn_attacks._runfolder import FolderLock
from sinkhorn_attacks._util import UserError
from sinkhorn_attacks.attacks.pgd import RadiusSchedule
from sinkhorn_attacks.ot import LocalCost, exact_ot, exact_uot, uot_sinkhorn
from sinkhorn_attacks.projections.sinkhorn import HuProjection, WongProjection, hu_project, sinkhorn_project
from sinkhorn_attacks.projections.uot import UOTProjection, uot_project

C3 = LocalCost(3, 1.0)
C3P2 = LocalCost(3, 2.0)


def _pair(b: int = 2, h: int = 6, w: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) * 0.8 + 0.1
    return x, (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"kind": "multiply", "factor": 0.0}, "factor"),  # uot-search with factor=0: the radius collapses to 0
        ({"kind": "multiply", "factor": -1.1}, "factor"),
        ({"kind": "multiply", "factor": math.nan}, "factor"),
        ({"kind": "multiply", "factor": math.inf}, "factor"),
        ({"kind": "add", "increment": -1.0}, "increment"),  # Hu schedule increment=-1
        ({"kind": "add", "increment": math.nan}, "increment"),
        ({"kind": "add", "every": 0}, "every"),
    ],
)
def test_radius_schedule_rejects_bad_parameters(kw, name) -> None:
    with pytest.raises(ValueError, match=f"schedule.{name}"):
        RadiusSchedule(**kw)


def test_uot_search_preset_with_factor_zero_is_refused() -> None:
    from sinkhorn_attacks.attacks import from_preset

    with pytest.raises(ValueError, match="schedule.factor"):
        from_preset("uot-search", nn.Identity(), schedule=RadiusSchedule("multiply", factor=0))


@pytest.mark.parametrize("rtol", [-0.1, math.nan, 1.0, math.inf])
def test_uot_project_radius_rtol_checked(rtol) -> None:
    x, w = _pair()
    with pytest.raises(ValueError, match="radius_rtol"):
        uot_project(x, w, C3, 0.1, 1.0, 1.0, 0.1, radius_rtol=rtol)
    with pytest.raises(ValueError, match="radius_rtol"):
        UOTProjection(C3, 0.1, 1.0, radius_rtol=rtol)


@pytest.mark.parametrize("method", ["search", "interleaved"])
def test_uot_project_max_search_zero(method) -> None:  # was KeyError: 'z' (search)
    x, w = _pair()
    with pytest.raises(ValueError, match="max_search"):
        uot_project(x, w, C3, 0.1, 1.0, 1.0, 0.1, max_search=0, method=method)


def test_uot_attack_rejects_bad_search_parameters() -> None:
    from sinkhorn_attacks.attacks.uot import UOTAttack

    with pytest.raises(ValueError, match="max_search"):
        UOTAttack(nn.Identity(), max_search=0)
    with pytest.raises(ValueError, match="radius_rtol"):
        UOTAttack(nn.Identity(), radius_rtol=math.nan)
    with pytest.raises(ValueError, match="tau"):
        UOTAttack(nn.Identity(), tau=math.inf)


@pytest.mark.parametrize("fn", [sinkhorn_project, hu_project])
def test_balanced_projections_reject_negative_iterations(fn) -> None:  # sinkhorn_iters=-3
    x, w = _pair()
    with pytest.raises(ValueError, match="max_iter"):
        fn(x, w, C3P2, 0.1, max_iter=-3)


def test_baseline_preset_sinkhorn_iters_negative() -> None:
    from sinkhorn_attacks.attacks import from_preset

    with pytest.raises(ValueError, match="max_iter"):
        from_preset("wong2019-mnist", nn.Identity(), sinkhorn_iters=-3)


@pytest.mark.parametrize("lam", [math.inf, math.nan, 0.0, -1.0])
def test_lam_must_be_finite_positive(lam) -> None:
    x, w = _pair()
    for fn in (sinkhorn_project, hu_project):
        with pytest.raises(ValueError, match="lam"):
            fn(x, w, C3P2, 0.1, lam=lam)
    for cls in (WongProjection, HuProjection):
        with pytest.raises(ValueError, match="lam"):
            cls(C3P2, lam=lam)


def test_projection_radius_nan_rejected() -> None:
    x, w = _pair()
    with pytest.raises(ValueError, match="radius"):
        sinkhorn_project(x, w, C3P2, math.nan)
    with pytest.raises(ValueError, match="radius"):
        hu_project(x, w, C3P2, torch.tensor([0.1, -1.0]))


# ------------------------------------------------------------------------------ costs and warm-start states
def test_cost_must_be_a_local_cost() -> None:
    x, w = _pair()
    for call in (
        lambda: uot_sinkhorn(x, x, 5, 0.1, 1.0),
        lambda: uot_project(x, w, 5, 0.1, 1.0),
        lambda: sinkhorn_project(x, w, 5, 0.1),
        lambda: hu_project(x, w, 5, 0.1),
        lambda: exact_ot(x.clamp(0, 1), x.clamp(0, 1), 5),
        lambda: exact_uot(x, x, 5, 1.0),
        lambda: WongProjection(5),
    ):
        with pytest.raises(TypeError, match=r"LocalCost\(5\)"):
            call()


def test_warm_start_of_wrong_shape() -> None:
    x, w = _pair()
    small = torch.zeros(3, 1, 2, 2, dtype=x.dtype)
    with pytest.raises(ValueError, match="f0 has shape"):
        uot_sinkhorn(x, x, C3, 0.1, 1.0, f0=small)
    with pytest.raises(ValueError, match="g0 has shape"):
        uot_sinkhorn(x, x, C3, 0.1, 1.0, g0=small)
    with pytest.raises(ValueError, match=r"state\['f'\]"):
        uot_project(x, w, C3, 0.1, 1.0, state={"f": small})
    with pytest.raises(ValueError, match=r"state\['psi'\]"):
        uot_project(x, w, C3, 0.1, 1.0, radius=0.1, state={"psi": torch.ones(5)})
    with pytest.raises(TypeError, match="state"):
        uot_project(x, w, C3, 0.1, 1.0, state=[1, 2])
    bad = {"log_u": small, "beta": small, "psi": torch.ones(3)}
    for fn in (sinkhorn_project, hu_project):
        with pytest.raises(ValueError, match=r"state\['log_u'\] has shape"):
            fn(x, w, C3P2, 0.1, state=bad)
        with pytest.raises(ValueError, match=r"state\['log_u'\] is missing"):
            fn(x, w, C3P2, 0.1, state={"beta": x})


def test_warm_start_of_the_right_shape_still_works() -> None:
    x, w = _pair()
    r = sinkhorn_project(x, w, C3P2, 0.1)
    r2 = sinkhorn_project(x, w, C3P2, 0.1, state=r.state)
    assert torch.isfinite(r2.z).all()
    s = uot_sinkhorn(x, x * 0.9, C3, 0.1, 1.0)
    s2 = uot_sinkhorn(x, x * 0.9, C3, 0.1, 1.0, f0=s.f, g0=s.g)
    assert s2.iterations.max() <= 2 and torch.allclose(s.value, s2.value)


# ------------------------------------------------------------------------------------------- the meters
def test_exact_ot_rejects_pixels_above_one_like_uot_project() -> None:
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    z = x.clone()
    z[0, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="above 1"):
        exact_ot(x, z, C3)
    with pytest.raises(ValueError, match="above 1"):
        exact_ot(z, x, C3)
    with pytest.raises(ValueError, match="above 1"):
        uot_project(z, x, C3, 0.1, 1.0)


def test_exact_ot_all_zero_images_never_nan() -> None:
    x, _ = _pair()
    x = x.clamp(0, 1)
    zero = torch.zeros_like(x)
    # convention: a minimum over no plan is +inf; two empty images are at distance 0
    assert torch.isinf(exact_ot(x, zero, C3).value).all()
    assert torch.isinf(exact_ot(zero, x, C3).value).all()
    assert (exact_ot(zero, zero, C3).value == 0).all()
    for a, b in ((x, zero), (zero, x), (zero, zero)):
        assert not torch.isnan(exact_ot(a, b, C3).value).any()
        assert torch.isfinite(exact_uot(a, b, C3, 1.0)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 1e3])
def test_uot_sinkhorn_all_zero_measure_is_finite_and_fast(dtype, tau) -> None:
    x, _ = _pair()
    x = x.to(dtype)
    zero = torch.zeros_like(x)
    for a, b in ((x, zero), (zero, x), (zero, zero)):
        r = uot_sinkhorn(a, b, C3, 0.1, tau)
        assert torch.isfinite(r.value).all() and torch.isfinite(r.dual).all()
        assert int(r.iterations.max()) <= 2 and bool(r.converged.all())
        # everything is destroyed / created: U = tau (|a| + |b|)
        ref = tau * (a.double().sum((1, 2, 3)) + b.double().sum((1, 2, 3)))
        assert torch.allclose(r.value.double(), ref, rtol=1e-5)
    r = uot_sinkhorn(zero, zero, C3, 0.1)  # balanced, both empty
    assert (r.value == 0).all()


def test_balanced_uot_sinkhorn_infeasible_pair_has_no_certificate() -> None:
    # Hall's condition fails without a hole row: the mass of (0, 0) and (0, 3) must all reach (0, 1),
    # but (0, 3) is two pixels away (3x3 window). Before: a finite value with a gap of -173.
    a = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    a[0, 0, 0, 0] = a[0, 0, 0, 3] = 0.5
    b = torch.zeros_like(a)
    b[0, 0, 0, 1] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = uot_sinkhorn(a, b, C3, 0.1, max_iter=300)
    assert math.isinf(float(r.value)) and not bool(r.converged)
    assert not float(r.gap) < 0  # no negative "certified" gap
    b2 = torch.zeros_like(a)
    b2[0, 0, 0, 1] = b2[0, 0, 5, 5] = 0.5
    src = torch.zeros_like(a)
    src[0, 0, 0, 0] = 1.0
    r2 = uot_sinkhorn(src, b2, C3, 0.1, max_iter=300)
    assert math.isinf(float(r2.value)) and not float(r2.gap) < 0
    # a feasible balanced pair still converges with a non-negative gap
    x, _ = _pair(1)
    r3 = uot_sinkhorn(x, torch.roll(x, 1, -1), C3, 0.5)
    assert bool(r3.converged) and math.isfinite(float(r3.value)) and float(r3.gap) >= -1e-9


# ------------------------------------------------------------- uot_project hangs (fixed earlier, kept)
@pytest.mark.parametrize(
    "kw",
    [
        dict(radius=0.0),
        dict(eta=1e-9, radius=0.5),
        dict(tau=1e12, radius=0.5),
        dict(gamma=1e12, radius=0.5),
        dict(far=True, radius=0.5),
        dict(far=True),
    ],
)
def test_uot_project_degenerate_parameters_return(kw) -> None:
    x, w = _pair(h=5, w=5)
    x = x.clamp(0, 1)
    if kw.pop("far", False):
        w = w * 1e6 - 3e5
    args = dict(eta=0.1, tau=1.0, gamma=1.0) | kw
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = uot_project(x, w, C3, args.pop("eta"), args.pop("tau"), args.pop("gamma"), max_iter=300, **args)
    assert time.perf_counter() - t0 < 60
    assert torch.isfinite(r.z).all() and (r.z >= 0).all() and (r.z <= 1).all()
    assert torch.isfinite(r.radius).all()
    if kw.get("radius") == 0.0:
        assert torch.equal(r.z, x)


# ---------------------------------------------------------------------- attack calls (fixed earlier, kept)
class _Tiny(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _attack(model: nn.Module | None = None):
    from sinkhorn_attacks.attacks import from_preset

    return from_preset("linf-pgd", model or _Tiny(), steps=2)


def test_attack_call_validation() -> None:
    x = torch.rand(2, 1, 4, 4)
    atk = _attack()
    with pytest.raises(ValueError, match="shape"):
        atk(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        atk(x, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="lie in"):
        atk(x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="meta"):
        atk(torch.empty(2, 1, 4, 4, device="meta"), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError):
        atk(x.double(), torch.zeros(2, dtype=torch.long))  # dtype mismatch with the model


def test_attack_model_output_checked() -> None:
    class Bad(nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind = kind
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            if self.kind == "shape":
                return torch.zeros(x.shape[0] + 1, 3) + self.p
            return torch.full((x.shape[0], 3), math.nan) + self.p

    x, y = torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="logits"):
        _attack(Bad("shape"))(x, y)
    with pytest.raises(ValueError, match="NaN"):
        _attack(Bad("nan"))(x, y)


def test_black_images_skipped_per_example_for_hu() -> None:
    from sinkhorn_attacks.attacks import from_preset

    x = torch.rand(3, 1, 8, 8)
    x[1] = 0
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    res = from_preset("hu2020-mnist", model, steps=2)(x, torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(res.adv).all()
    assert torch.equal(res.adv[1], x[1])


# --------------------------------------------------------------------------------------------- zoo
def test_zoo_checkpoint_with_nan_weights_is_refused(tmp_path: Path) -> None:
    from sinkhorn_attacks import zoo
    from sinkhorn_attacks.zoo.models import small_cnn

    net = small_cnn(1, 10, 8)
    sd = net.state_dict()
    sd = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "nan_cnn.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"nan_cnn\.pt.*non-finite"):
        zoo.load(str(path))
    sd = net.state_dict()
    sd["0.weight"][0, 0, 0, 0] = math.inf
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"0\.weight \(1 of"):
        zoo.load(str(path))


# ------------------------------------------------------------------------- CLI (fixed earlier, kept)
def test_cli_user_error_is_one_line(tmp_path: Path, capsys) -> None:
    from sinkhorn_attacks.cli import main

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[run]\nout = "x"\nnot_a_key = 1\n[models]\nnames = ["a"]\n[[attacks]]\npreset = "fgsm"\n')
    assert main(["evaluate", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not_a_key" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ folder lock and resume
def test_folder_lock_refuses_live_owner_and_takes_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.write_text(f"{socket.gethostname()}:{os.getppid()}")  # a live process
    with pytest.raises(UserError, match=rf"another evaluate run \(pid {os.getppid()}\) is writing to"):
        with FolderLock(tmp_path, what="evaluate run"):
            pass
    lock.write_text(f"{socket.gethostname()}:{_dead_pid()}")  # killed with -9: stale
    with FolderLock(tmp_path, what="evaluate run"):
        assert lock.read_text() == f"{socket.gethostname()}:{os.getpid()}"
        with pytest.raises(UserError, match="another evaluate run"):  # not re-entrant: one writer
            with FolderLock(tmp_path, what="evaluate run"):
                pass
    assert not lock.exists()


def test_leaderboard_keeps_its_lock_message(tmp_path: Path) -> None:
    from sinkhorn_attacks._runfolder import RunFolder
    from sinkhorn_attacks.eval import leaderboard

    assert not hasattr(leaderboard, "_Lock")
    (tmp_path / ".lock.0").write_text(f"{socket.gethostname()}:{os.getppid()}")  # an earlier version's rank-0 lock
    with pytest.raises(UserError, match="another leaderboard run .* wait for it or use another --out"):
        with RunFolder(tmp_path, "leaderboard").lock():
            pass


def _eval_cfg(out: Path, **kw):
    from sinkhorn_attacks.eval import AttackSpec, EvalConfig

    d = dict(models=["a"], attacks=[AttackSpec("fgsm", params={"radius": 0.05})], limit=6, batch_size=3,
             out=str(out), radii=[0.1], radius_points=4)  # fmt: skip
    d.update(kw)
    return EvalConfig(**d)


def _eval_data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def _run_eval(cfg, **kw):
    from sinkhorn_attacks.eval import run_evaluation

    return run_evaluation(cfg, models={"a": _Tiny().eval()}, data=_eval_data(), progress=False, **kw)


def test_evaluate_refuses_a_folder_in_use(tmp_path: Path) -> None:
    cfg = _eval_cfg(tmp_path / "o")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".lock").write_text(f"{socket.gethostname()}:{os.getppid()}")
    with pytest.raises(UserError, match="another evaluate run"):
        _run_eval(cfg)
    assert not (tmp_path / "o" / "state.json").exists()  # nothing was mixed in
    (tmp_path / "o" / ".lock").write_text(f"{socket.gethostname()}:{_dead_pid()}")
    _run_eval(cfg)  # a stale lock is taken over
    assert not (tmp_path / "o" / ".lock").exists()


def test_evaluate_corrupt_state_is_one_line_with_fresh_remedy(tmp_path: Path) -> None:
    cfg = _eval_cfg(tmp_path / "o")
    _run_eval(cfg)
    state = tmp_path / "o" / "state.json"
    state.write_text('{"fingerprint": "x", "done": {')
    with pytest.raises(UserError, match=r"state\.json is corrupt .*--fresh"):
        _run_eval(cfg)
    state.write_text("[1, 2]")
    with pytest.raises(UserError, match=r"not an evaluate state file.*--fresh"):
        _run_eval(cfg)
    _run_eval(cfg, fresh=True)


def test_evaluate_corrupt_or_emptied_unit_files(tmp_path: Path) -> None:
    cfg = _eval_cfg(tmp_path / "o")
    _run_eval(cfg)
    ref = (tmp_path / "o" / "examples.csv").read_text()
    unit = next((tmp_path / "o" / "units").glob("*b0000.json"))
    good = unit.read_text()
    unit.write_text(good[: len(good) // 2])  # truncated
    with pytest.raises(UserError, match=rf"{unit.name} is corrupt.*--fresh"):
        _run_eval(cfg)
    d = json.loads(good)
    d["rows"] = []  # emptied rows were used silently before
    unit.write_text(json.dumps(d))
    with pytest.raises(UserError, match=rf"{unit.name} holds 0 rows but unit .* has 3 examples"):
        _run_eval(cfg)
    unit.unlink()  # a missing unit file is recomputed
    _run_eval(cfg)
    assert (tmp_path / "o" / "examples.csv").read_text() == ref


def _train_cfg(out: Path, epochs: int = 2):
    from sinkhorn_attacks.train import TrainConfig

    return TrainConfig(dataset="digits", arch="small_cnn", epochs=epochs, batch_size=16, attack="none",
                       out_dir=str(out), train_limit=32, eval_limit=0, device="cpu", plot=False)  # fmt: skip


def _train_data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(32, 1, 8, 8, generator=g), torch.arange(32) % 10, None, None


@pytest.mark.parametrize("epoch, history, msg", [(99, None, "99 finished epochs"),
                                                 (-5, None, "integer >= 0"),
                                                 (2, [], "history of 0 rows")])  # fmt: skip
def test_train_checkpoint_epoch_range(tmp_path: Path, epoch, history, msg) -> None:
    from sinkhorn_attacks.train import train

    cfg = _train_cfg(tmp_path / "t")
    train(cfg, data=_train_data(), stop_after_epochs=1, verbose=False)
    ck_path = tmp_path / "t" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    ck["epoch"] = epoch
    if history is not None:
        ck["history"] = history
    elif epoch > 0:
        ck["history"] = ck["history"] * epoch
    torch.save(ck, ck_path)
    with pytest.raises(ValueError, match=msg):
        train(cfg, data=_train_data(), resume=True, verbose=False)
    assert not (tmp_path / "t" / "model.pt").exists()


def test_train_refuses_a_folder_in_use(tmp_path: Path) -> None:
    from sinkhorn_attacks.train import train

    out = tmp_path / "t"
    out.mkdir()
    (out / ".lock").write_text(f"{socket.gethostname()}:{os.getppid()}")
    with pytest.raises(UserError, match="another train run"):
        train(_train_cfg(out), data=_train_data(), verbose=False)
    assert not (out / "checkpoint.pt").exists()


# ------------------------------------------------- issue 24: the remaining public numerical helpers
def _images(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 6, 6, generator=g, dtype=torch.float64) * 0.8 + 0.1
    return x, x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)


def _helpers():
    from sinkhorn_attacks.projections.lp import L2Projection, LinfProjection
    from sinkhorn_attacks.projections.sinkhorn import conjugate_sinkhorn

    r = torch.tensor([0.1, 0.1], dtype=torch.float64)
    return {
        "sinkhorn_project": lambda x, w, r=0.1: sinkhorn_project(x, w, C3P2, r, max_iter=5),
        "hu_project": lambda x, w, r=0.1: hu_project(x, w, C3P2, r, max_iter=5, extra_iter=0),
        "conjugate_sinkhorn": lambda x, w, r=0.1: conjugate_sinkhorn(x, w, C3P2, r, max_iter=5),
        "LinfProjection": lambda x, w, r=r: LinfProjection()(x, w, r, None),
        "L2Projection": lambda x, w, r=r: L2Projection()(x, w, r, None),
    }


def _poison(t: torch.Tensor, v: float) -> torch.Tensor:
    t = t.clone()
    t[0, 0, 0, 0] = v
    return t


@pytest.mark.parametrize("fn", list(_helpers()))
@pytest.mark.parametrize(
    "case, err, msg",
    [
        ("x_nan", ValueError, "x contains NaN"),
        ("w_inf", ValueError, r"(w|grad) contains NaN or inf"),
        ("x_negative", ValueError, "x has negative entries"),
        ("x_above_one", ValueError, "x has entries above 1"),
        ("int_images", TypeError, "x must be float32 or float64, got torch.int64"),
        ("float16", TypeError, "x must be float32 or float64, got torch.float16"),
        ("dtype_mismatch", TypeError, "x is torch.float64 but (w|grad) is torch.float32"),
        ("rank3", ValueError, r"x must have shape \(B, C, H, W\)"),
        ("radius_nan", ValueError, "radius must be finite and >= 0, got nan"),
        ("radius_negative", ValueError, "radius must be finite and >= 0, got -1.0"),
        ("radius_inf", ValueError, "radius must be finite and >= 0, got inf"),
        ("radius_length", ValueError, r"radius must be a scalar or have one entry per image \(2\)"),
    ],
)
def test_public_helpers_refuse_hostile_arguments(fn: str, case: str, err: type, msg: str) -> None:
    call = _helpers()[fn]
    x, w = _images()
    args = {
        "x_nan": (_poison(x, math.nan), w),
        "w_inf": (x, _poison(w, math.inf)),
        "x_negative": (_poison(x, -0.5), w),
        "x_above_one": (_poison(x, 2.0), w),
        "int_images": ((x * 255).long(), (w * 255).long()),
        "float16": (x.half(), w.half()),
        "dtype_mismatch": (x, w.float()),
        "rank3": (x[0], w[0]),
    }.get(case, (x, w))
    radius = {
        "radius_nan": torch.tensor([math.nan, 0.1]),
        "radius_negative": torch.tensor([-1.0, 0.1]),
        "radius_inf": math.inf,
        "radius_length": torch.tensor([0.1, 0.1, 0.1]),
    }.get(case)
    with pytest.raises(err, match=msg):
        call(*args) if radius is None else call(*args, radius)


def test_lp_projections_take_a_scalar_radius_like_the_others() -> None:
    from sinkhorn_attacks.projections.lp import L2Projection, LinfProjection

    x, w = _images()
    for proj in (LinfProjection(), L2Projection()):
        z, _, info = proj(x, w, 0.01, None)  # was AttributeError: 'float' object has no attribute 'to'
        assert torch.isfinite(z).all() and bool((info["certified_radius"] <= 0.01 + 1e-12).all())


@pytest.mark.parametrize(
    "kw, err, msg",
    [
        (dict(lam=math.nan), ValueError, "conjugate_sinkhorn: lam"),
        (dict(lam=math.inf), ValueError, "conjugate_sinkhorn: lam"),
        (dict(max_iter=0), ValueError, "conjugate_sinkhorn: max_iter must be an integer >= 1, got 0"),
        (dict(max_iter=-3), ValueError, "conjugate_sinkhorn: max_iter"),
        (dict(rtol=math.nan), ValueError, "conjugate_sinkhorn: rtol"),
        (dict(dtype=torch.float16), TypeError, "conjugate_sinkhorn: dtype"),
        (dict(cost=3), TypeError, r"LocalCost\(3\)"),
    ],
)
def test_conjugate_sinkhorn_checks_its_parameters(kw: dict, err: type, msg: str) -> None:
    from sinkhorn_attacks.projections.sinkhorn import conjugate_sinkhorn

    x, g = _images()
    args = dict(cost=C3P2, radius=0.1) | kw
    with pytest.raises(err, match=msg):
        conjugate_sinkhorn(x, g, args.pop("cost"), args.pop("radius"), **args)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(offset=math.nan), "hu_project: offset must be a finite number >= 0"),
        (dict(budget_tol=-1.0), "hu_project: budget_tol"),
        (dict(mass_tol=math.inf), "hu_project: mass_tol"),
        (dict(extra_iter=-1), "hu_project: extra_iter must be an integer >= 0"),
        (dict(atol="1e-3"), "hu_project: atol must be a number"),
    ],
)
def test_hu_project_tolerances_checked_once(kw: dict, msg: str) -> None:
    x, w = _images()
    with pytest.raises((ValueError, TypeError), match=msg):
        hu_project(x, w, C3P2, 0.1, **kw)


def test_wright_omega_arguments_and_extremes() -> None:
    from sinkhorn_attacks.projections.sinkhorn import wright_omega

    with pytest.raises(TypeError, match="wright_omega: y must be a real tensor"):
        wright_omega([0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="complex64"):
        wright_omega(torch.zeros(2, dtype=torch.complex64))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="wright_omega: iterations must be an integer >= 0"):
            wright_omega(torch.zeros(2), iterations=bad)
    # the iterate overflowed (NaN) above ~1e19 in float32 and ~1e150 in float64: omega = y - log y there
    for dtype, big in ((torch.float32, [1e16, 1e30, 3e38]), (torch.float64, [1e16, 1e200, 1e300])):
        y = torch.tensor(big, dtype=dtype)
        w = wright_omega(y)
        assert torch.isfinite(w).all()
        assert torch.allclose(w.double(), y.double() - torch.log(y.double()), rtol=1e-6)
    w = wright_omega(torch.tensor([math.inf, -math.inf, math.nan, 0.0], dtype=torch.float64))
    assert w[0] == math.inf and w[1] == 0 and math.isnan(w[2]) and abs(float(w[3]) - 0.5671432904097838) < 1e-15
    half = wright_omega(torch.tensor([0.0, 50.0, 1000.0], dtype=torch.float16))  # f16 iterate overflowed at w ~ 256
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


@pytest.mark.parametrize(
    "kw, err, msg",
    [
        (dict(p=1e300), ValueError, "p = 1e\\+300 makes the cost d\\*\\*p overflow"),
        (dict(p=700.0, price=1.0, kernel_size=None), None, None),  # whole image: checked at measure time
        (dict(price="2"), TypeError, "price must be a number, got '2'"),
        (dict(price=True), TypeError, "price must be a number, got True"),
        (dict(price=1e308), ValueError, "price must be at most 1e\\+100"),
        (dict(mass_floor=True), TypeError, "mass_floor must be a number"),
        (dict(mass_floor=1e-300), ValueError, "mass_floor must be at least 1e-100"),
    ],
)
def test_yardstick_refuses_extreme_parameters(kw: dict, err: type | None, msg: str | None) -> None:
    from sinkhorn_attacks.ot import Yardstick, measure

    if err is None:
        ys = Yardstick(**kw)
        x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
        with pytest.raises(ValueError, match="p = 700 makes the cost d\\*\\*p overflow"):
            measure(x, x.flip(-1), ys)
        return
    with pytest.raises(err, match=msg):
        Yardstick(**kw)


def test_local_cost_that_overflows_is_refused_not_inf() -> None:
    with pytest.raises(ValueError, match="p = 1e\\+300"):
        LocalCost(5, 1e300).offsets(5, 5)  # was OverflowError
    with pytest.raises(ValueError, match="overflow torch.float32"):
        LocalCost(5, 100.0).table(5, 5, dtype=torch.float32)  # was a table of inf
    with pytest.raises(ValueError, match="p = 1e\\+300"):
        LocalCost(5, 1e300).dense(4, 4)


def test_exact_uot_windowed_cost_never_exceeds_the_balanced_cost_at_large_tau() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    z = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    z = z * x.sum() / z.sum()  # equal masses: U_tau <= balanced cost at every tau
    balanced = float(exact_ot(x, z, C3).value) * float(x.sum())  # exact_ot is per unit mass
    values = [float(exact_uot(x, z, C3, tau)) for tau in (1e3, 1e6, 1e9, 1e12, 1e300)]
    assert all(v <= balanced * (1 + 1e-9) for v in values), (values, balanced)  # 1e9 read 6.44 vs 4.84
    assert values[-1] == pytest.approx(balanced, rel=1e-9)


@pytest.mark.parametrize("kw", [dict(tol=math.nan), dict(tol=-1.0), dict(max_iter=0), dict(max_iter=2.0)])
def test_exact_uot_refuses_bad_solver_settings(kw: dict) -> None:
    x, _ = _images()
    with pytest.raises(ValueError, match=next(iter(kw))):
        exact_uot(x, x, C3, 1.0, **kw)


def test_meters_survive_subnormal_and_tiny_masses_in_a_child_process() -> None:
    """exact_uot segfaulted the process at 1e-200 (network simplex), measure overflowed at 5e-324."""
    code = (
        "import torch\n"
        "from sinkhorn_attacks.ot import LocalCost, Yardstick, exact_uot, measure\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, z = (torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))\n"
        "c = LocalCost(3, 1.0)\n"
        "ref_u, ref_m = exact_uot(x, z, c, 1.0), measure(x, z, Yardstick(normalisation='none')).value\n"
        "for s in (1e-200, 1e-300, 2.0 ** -1060):\n"
        "    u = exact_uot(x * s, z * s, c, 1.0) / s\n"
        "    m = measure(x * s, z * s, Yardstick(normalisation='none')).value / s\n"
        "    tol = 1e-6 if s > 1e-300 else 1e-3  # subnormal masses keep only a few bits\n"
        "    assert torch.allclose(u, ref_u, rtol=tol), (s, u, ref_u)\n"
        "    assert torch.allclose(m, ref_m, rtol=tol), (s, m, ref_m)\n"
        "one = torch.zeros(1, 1, 4, 4, dtype=torch.float64)\n"
        "one[0, 0, 0, 0] = 5e-324\n"
        "assert torch.isfinite(measure(one, one.roll(1, -1)).value).all()\n"
        "assert torch.isfinite(exact_uot(one, one.roll(1, -1), c, 1.0)).all()\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr[-2000:])


# ------------------------------------------------------------- issue 24: attacks on hostile models
class _NanOnBright(nn.Module):
    """Finite logits on the clean images, NaN once a pixel saturates (a model that breaks under attack)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        bad = (x.flatten(1).amax(1) > 0.95).unsqueeze(1)
        return out + torch.where(bad, torch.full_like(out, math.nan), torch.zeros_like(out))


@pytest.mark.parametrize("preset", ["linf-pgd", "l2-pgd", "uot", "hu2020-mnist"])
def test_nan_logits_under_attack_are_neither_fooled_nor_robust(preset: str) -> None:
    from sinkhorn_attacks.attacks import from_preset

    model = _NanOnBright()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.9
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(radius=0.3, step_size=0.1 if preset == "linf-pgd" else 0.5) if preset.endswith("pgd") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # NaN gradients once an image saturates: the step is skipped there (the projections refuse NaN points)
        res = from_preset(preset, model, steps=3, yardstick=None, **kw)(x, y)
    nan = res.nonfinite
    assert nan.any()
    assert not (res.success & nan).any()  # never fooled by a NaN
    robust = res.clean_correct & ~res.success & ~nan
    assert res.robust_accuracy == pytest.approx(float(robust.float().mean()))  # nor robust
    assert res.summary()["nonfinite_logits"] == int(nan.sum())


def test_nan_logits_are_no_class() -> None:
    from sinkhorn_attacks.attacks.base import misclassified, predicted_class

    out = torch.tensor([[1.0, 2.0], [math.nan, 0.0], [math.inf, 0.0]])
    assert predicted_class(out).tolist() == [1, -1, -1]  # argmax read NaN as class 0
    assert misclassified(out, torch.tensor([0, 1, 1])).tolist() == [True, False, False]


def test_eval_rows_with_nan_logits_count_as_neither() -> None:
    from sinkhorn_attacks.eval import curves as C

    rows = [
        dict(index=0, clean_correct=True, success=False, pred_adv=1, metered_radius=math.nan, first_fooled=-1),
        dict(index=1, clean_correct=True, success=False, pred_adv=-1, metered_radius=math.nan, first_fooled=-1),
        dict(index=2, clean_correct=True, success=True, pred_adv=2, metered_radius=0.1, first_fooled=1),
    ]
    assert C.robust(rows).tolist() == [True, False, False]
    assert C.accuracy_at_radii(rows, [0.0, 1.0]) == pytest.approx([2 / 3, 1 / 3])
    assert C.accuracy_vs_iteration(rows, 1) == pytest.approx([2 / 3, 1 / 3])
    worst = C.worst_case({"a": rows, "b": rows}, ["a", "b"])
    assert [r["no_class"] for r in worst] == [False, True, False]
    assert C.robust(worst).tolist() == [True, False, False]


def test_benchmark_keeps_each_submodules_mode() -> None:
    from sinkhorn_attacks.eval.cascade import benchmark

    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(784, 10))
    model.train()
    model[1].eval()  # a mixed tree: restored exactly, not to the top module's mode
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benchmark(model, x, torch.tensor([0, 1]), attacks=["linf-pgd"], radii=[0.1])
    assert [m.training for m in model.modules()] == [True, True, False, True]


@pytest.mark.parametrize("preset", ["linf-pgd", "uot", "wu2020-fw-mnist", "wu2020-pgd-mnist"])
@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_attack_steps_must_be_a_positive_integer(preset: str, steps: float) -> None:
    from sinkhorn_attacks.attacks import from_preset

    with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {steps}"):
        from_preset(preset, nn.Identity(), steps=steps)  # 0 steps returned the clean images as "robust"
