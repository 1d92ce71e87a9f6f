"""The training loop: (adversarial) training, single process or data-parallel under ``torchrun``.

Data parallelism: every global batch of ``batch_size`` examples (a seeded permutation per epoch, or the
data order without shuffling) is split into ``world_size`` equal contiguous shards, one per rank; each rank
averages its loss over its shard and DistributedDataParallel averages the gradients, so the update equals
the single-process update on the whole batch (up to float summation order). The last incomplete batch is
dropped so that shards stay equal. BatchNorm statistics are per rank unless ``sync_bn`` is set.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._runfolder import RunFolder
from .._util import UserError, resolve_device
from . import folder as run_folder
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    atomic_write_bytes,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, TrainConfigError, build_model
from .data import load_train_test
from .preflight import check_model, preflight

__all__ = ["TrainResult", "TrainingDiverged", "train", "DistInfo", "setup_distributed", "HISTORY_FIELDS"]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_FIELDS = (
    "epoch",
    "lr",
    "loss",
    "train_clean_acc",
    "train_adv_acc",
    "metered_radius_mean",
    "metered_radius_median",
    "metered_n",
    "test_clean_acc",
    "test_adv_acc",
    "attack_time_s",
    "epoch_time_s",
    "epoch_cpu_time_s",
    "steps",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN / infinite; the last good checkpoint is kept."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict[str, Any]]
    model: nn.Module
    out_dir: Path
    start_epoch: int = 0
    files: dict[str, str] = field(default_factory=dict)


def _pick_device(pref: str, info: DistInfo) -> torch.device:
    dev = torch.device(resolve_device(pref))  # a device this machine lacks: one line naming --device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return dev


def setup_distributed(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    NCCL when the device is a GPU, gloo otherwise. Without those variables (or ``WORLD_SIZE=1``) this is a
    plain single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = _pick_device(device_pref, info)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            info.initialized_here = True
    return info, device


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def _make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule; ``onecycle`` is stepped after every batch, the others after every epoch."""
    if cfg.schedule == "onecycle":
        total = cfg.epochs * steps_per_epoch
        rise = max(1, round(cfg.warmup * total))

        def factor(step: int) -> float:  # 0 -> 1 linearly over `rise` steps, then 1 -> 0 linearly at `total`
            return (step + 1) / rise if step < rise else max(0.0, (total - step) / max(1, total - rise))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=10**9, gamma=1.0)  # constant


def _compute_loss(outputs: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (module-level so tests can inject a failure)."""
    return F.cross_entropy(outputs.float(), labels, label_smoothing=label_smoothing)


def augment_flip_crop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and translation by up to ``pad`` pixels (reflected border) of each image.

    ``x`` is ``(B, C, H, W)``; the randomness comes from ``generator`` (CPU), so a seeded run is reproducible.
    """
    b, c, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    x = torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _check_finite_weights(model: nn.Module, where: str) -> None:
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingDiverged(
            f"non-finite weights after {where} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): stopped "
            "without saving them; the last good checkpoint is unchanged. Lower --lr or check the data."
        )


def _make_attack(cfg: TrainConfig, model: nn.Module, overrides: dict[str, Any]) -> Any:
    if cfg.attack == "none":
        return None
    from ..attacks import from_preset

    kw = dict(overrides)
    kw.setdefault("meter_cost", None)  # metered separately on a subset (exact OT is slow)
    return from_preset(cfg.attack, model, **kw)


def _finite_stats(v: torch.Tensor) -> tuple[float | None, float | None, int]:
    v = v[torch.isfinite(v)]
    if not v.numel():
        return None, None, 0
    return float(v.mean()), float(v.median()), int(v.numel())


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, bs: int) -> float:
    correct = 0
    for i in range(0, x.shape[0], bs):
        out = model(x[i : i + bs].to(device))
        correct += int((out.argmax(1) == y[i : i + bs].to(device)).sum())
    return correct / max(1, x.shape[0])


def _write_history(out: Path, history: list[dict[str, Any]], plot: bool = True) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(HISTORY_FIELDS), extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    atomic_write_bytes(out / "history.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "history.json", (json.dumps(history, indent=1) + "\n").encode())
    if not plot:
        return
    try:
        plot_history(history, out / "history.png")
    except ImportError:  # pragma: no cover - matplotlib missing
        pass


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Accuracies and the metered radius of the training examples against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (
        ("train_clean_acc", "train clean"),
        ("train_adv_acc", "train adversarial"),
        ("test_clean_acc", "test clean"),
        ("test_adv_acc", "test adversarial"),
    ):
        ys = [r.get(key) for r in history]
        if any(v is not None for v in ys):
            a1.plot(ep, [math.nan if v is None else v for v in ys], marker="o", label=label)
    a1.set_xlabel("epoch")
    a1.set_ylabel("accuracy")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    ys = [r.get("metered_radius_mean") for r in history]
    a2.plot(ep, [math.nan if v is None else v for v in ys], marker="o", color="C3")
    a2.set_xlabel("epoch")
    a2.set_ylabel("yardstick radius (mean, W1-TV)")
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    a2.set_title("training examples", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


_Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    fresh: bool = False,
    data: _Data | None = None,
    stop_after_epochs: int | None = None,
    verbose: bool = True,
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns the history and the trained model.

    The output folder follows the run-folder engine (:mod:`.folder`): one lock for every command,
    ``config.json`` with the configuration's fingerprint, atomic writes.

    Args:
        resume: continue from ``<out_dir>/checkpoint.pt`` (a fresh start if there is none). Without it an
            existing checkpoint is an error, so that a finished run is never overwritten by accident.
        fresh: discard the folder's run (checkpoint, model, history) and start over, even when it holds
            another configuration; excludes ``resume``.
        data: ``(train_x, train_y, test_x, test_y)`` instead of loading ``cfg.dataset``.
        stop_after_epochs: return after this many epochs *of this call* (simulates a killed run).

    Raises:
        TrainConfigError: before any work, a value no run can use (device, architecture or its keywords, attack
            preset or overrides, a model that cannot take the data's images; see :mod:`.preflight`).
        ConfigMismatchError: the folder or its checkpoint holds a run of a different configuration.
        UserError: another run (of any command) writes to the folder, or it holds another command's run.
        TrainingDiverged: the loss became non-finite (the previous checkpoint is left as it was).
    """
    if resume and fresh:
        raise UserError("--resume continues the run in --out and --fresh discards it: give one of them")
    preflight(cfg, data)  # device, architecture, attack, one forward pass: before the folder is touched
    info, device = setup_distributed(cfg.device)
    try:
        folder = RunFolder(cfg.out_dir, run_folder.COMMAND)
        with _held_lock(folder, info, device):
            return _train(cfg, info, device, folder, resume, fresh, data, stop_after_epochs, verbose)
    finally:
        if info.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _agree(info: DistInfo, device: torch.device, err: Exception | None) -> None:
    """Raise ``err`` here, and stop every other process too, when one process failed a check (a collective:
    every process of a distributed run calls it)."""
    if info.distributed:
        ok = torch.tensor([0.0 if err else 1.0], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if err is None and float(ok) < 1:
            err = RuntimeError("the main process refused to start (see its message); stopped")
    if err is not None:
        raise err


@contextlib.contextmanager
def _held_lock(folder: RunFolder, info: DistInfo, device: torch.device) -> Iterator[None]:
    """The folder's lock, taken by the main process (the one that writes); every process stops when refused."""
    with contextlib.ExitStack() as stack:
        err: Exception | None = None
        if info.is_main:
            try:
                stack.enter_context(folder.lock())
            except UserError as e:
                err = e
        _agree(info, device, err)
        yield


def _check_folder(folder: RunFolder, cfg: TrainConfig, info: DistInfo, device: torch.device, fresh: bool) -> None:
    """The main process checks the stored configuration (and with ``fresh`` discards the folder's run)."""
    err: Exception | None = None
    if info.is_main:
        try:
            run_folder.check_record(folder, cfg, fresh)
            if fresh:
                run_folder.discard(folder)
        except (UserError, ValueError, OSError) as e:
            err = e
    _agree(info, device, err)


@dataclass
class _Epoch:
    """The running bookkeeping of one epoch (what a checkpoint inside the epoch must carry)."""

    lr: float
    # loss * n, n, clean correct, adversarial correct, adversarial n (this rank's examples)
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(5, dtype=torch.float64))
    meter_x: list[torch.Tensor] = field(default_factory=list)
    meter_a: list[torch.Tensor] = field(default_factory=list)
    attack_time: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    def partial(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "attack_time": self.attack_time,
            "time": time.perf_counter() - self.t0,
            "cpu": time.process_time() - self.cpu0,
            "meter_x": self.meter_x,
            "meter_a": self.meter_a,
        }

    @classmethod
    def resumed(cls, partial: dict[str, Any], rank: int) -> _Epoch:
        return cls(
            lr=partial["lr"],
            sums=partial["sums"][rank].clone(),
            meter_x=list(partial["meter_x"]),
            meter_a=list(partial["meter_a"]),
            attack_time=partial["attack_time"],
            t0=time.perf_counter() - partial["time"],
            cpu0=time.process_time() - partial["cpu"],
        )


def _open_checkpoint(
    cfg: TrainConfig, ck_path: Path, resume: bool, info: DistInfo, root: Path
) -> dict[str, Any] | None:
    """The checkpoint to resume (checked against ``cfg``; a larger ``epochs`` extends a run), or None."""
    if not ck_path.exists():
        if resume:
            _log(info, f"--resume: no checkpoint in {ck_path.parent}, starting a fresh run")
        return None
    if not resume:
        raise FileExistsError(
            f"{ck_path} exists: pass --resume to continue that run, --fresh to discard it, or choose another --out "
            "directory"
        )
    ck = load_checkpoint(ck_path)
    written = TrainConfig.from_json(ck["config_json"])
    run_folder.check_checkpoint_config(cfg, written, root)
    if cfg.epochs > written.epochs and cfg.schedule in ("cosine", "onecycle") and info.is_main:
        warnings.warn(
            f"extending the run from {written.epochs} to {cfg.epochs} epochs: the {cfg.schedule} schedule "
            "is laid out anew for the new length, so the rate jumps where the old run stopped",
            stacklevel=3,
        )
    if ck["epoch"] > cfg.epochs:
        raise ValueError(
            f"{ck_path}: records {ck['epoch']} finished epochs but the run has epochs={cfg.epochs}; the checkpoint "
            "is not of this run: choose another --out directory"
        )
    return ck


def _restore(
    ck: dict[str, Any], cfg: TrainConfig, raw: nn.Module, opt: Any, sched: Any, scaler: Any, info: DistInfo, src: Path
) -> tuple[list[dict[str, Any]], int, int, dict[str, Any] | None]:
    """Load a checkpoint's states; returns its history, finished epochs, steps done in the next, bookkeeping."""
    raw.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        sched.T_max = cfg.epochs  # an extended run: the cosine spans the new length
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    epoch, step, partial = int(ck["epoch"]), int(ck.get("step", 0)), ck.get("partial")
    W = info.world_size
    if step and partial is not None and len(partial["sums"]) != W:
        raise ValueError(
            f"{src} was written inside epoch {epoch + 1} by {len(partial['sums'])} process(es); resume it with "
            f"that many (now {W})"
        )
    if len(ck["rng"]) == W:
        set_rng_state(ck["rng"][info.rank])
    else:
        _log(info, f"checkpoint has RNG state for {len(ck['rng'])} processes, now {W}: reseeding")
        torch.manual_seed(cfg.seed + 7919 * (epoch + 1) + info.rank)
    _log(info, f"resumed {src} after epoch {epoch}" + (f", step {step}" if step else ""))
    return list(ck["history"]), epoch, step, partial


def _adversarial(
    attack: Any, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, st: _Epoch, main: bool, where: str, ck: Path
) -> torch.Tensor:
    """The training attack's images for one batch, with its bookkeeping; stops a run whose attack moves none."""
    t0 = time.perf_counter()
    res = attack(x, y)
    st.attack_time += time.perf_counter() - t0
    xa = res.adv.detach()
    moved = (xa != x).flatten(1).any(1)
    if bool(res.clean_correct.any()) and not bool(moved[res.clean_correct].any()):
        raise TrainingDiverged(
            f"the training attack {cfg.attack!r} returned all {int(res.clean_correct.sum())} correctly classified "
            f"images of the batch unchanged at {where}: stopped (its gradient may be zero or non-finite); the last "
            f"good checkpoint ({ck if ck.exists() else 'none written yet'}) is unchanged."
        )
    st.sums[2] += float(res.clean_correct.sum())
    st.sums[3] += float((res.clean_correct & ~res.success).sum())
    st.sums[4] += y.shape[0]
    have = sum(t.shape[0] for t in st.meter_x)
    if main and have < cfg.meter_n:
        st.meter_x.append(x[: cfg.meter_n - have].detach().cpu())
        st.meter_a.append(xa[: cfg.meter_n - have].cpu())
    return xa


def _batch_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, xa: torch.Tensor | None, cfg: TrainConfig, autocast, st: _Epoch
) -> torch.Tensor:
    """``w CE(clean) + (1 - w) CE(adversarial)`` (plain CE without an attack), in train mode."""
    model.train()
    ls = cfg.label_smoothing
    if xa is None:
        with autocast():
            outputs = model(x)
        st.sums[2] += float((outputs.detach().argmax(1) == y).sum())
        return _compute_loss(outputs, y, ls)
    if cfg.clean_weight > 0:
        with autocast():
            outputs = model(torch.cat([x, xa]))
        oc, oa = outputs[: y.shape[0]], outputs[y.shape[0] :]
        return cfg.clean_weight * _compute_loss(oc, y, ls) + (1 - cfg.clean_weight) * _compute_loss(oa, y, ls)
    with autocast():
        outputs = model(xa)
    return _compute_loss(outputs, y, ls)


def _epoch_row(
    cfg: TrainConfig,
    st: _Epoch,
    epoch: int,
    n_batches: int,
    info: DistInfo,
    device: torch.device,
    raw: nn.Module,
    test: tuple[torch.Tensor | None, torch.Tensor | None],
    eval_attack: Any,
) -> dict[str, Any]:
    """The history row of a finished epoch: training sums (over every rank), metered radii, test accuracy."""
    sums = st.sums
    if info.distributed:
        sums_d = sums.to(device)
        dist.all_reduce(sums_d)
        sums = sums_d.cpu()
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": st.lr,
        "loss": float(sums[0] / sums[1]),
        "train_clean_acc": float(sums[2] / sums[1]),
        "train_adv_acc": float(sums[3] / sums[4]) if sums[4] > 0 else None,
        "metered_radius_mean": None,
        "metered_radius_median": None,
        "metered_n": 0,
        "test_clean_acc": None,
        "test_adv_acc": None,
        "attack_time_s": st.attack_time,
        "steps": n_batches,
    }
    test_x, test_y = test
    if info.is_main:
        if st.meter_x:
            from ..ot import Yardstick, measure

            mx, ma = torch.cat(st.meter_x), torch.cat(st.meter_a)
            m = measure(mx, ma, Yardstick(cfg.meter_kernel, cfg.meter_p)).value
            row["metered_radius_mean"], row["metered_radius_median"], row["metered_n"] = _finite_stats(m)
        if test_x is not None and test_y is not None:
            raw.eval()
            row["test_clean_acc"] = _accuracy(raw, test_x, test_y, device, cfg.eval_batch_size)
            if eval_attack is not None:
                correct = 0
                for i in range(0, test_x.shape[0], cfg.eval_batch_size):
                    sl = slice(i, i + cfg.eval_batch_size)
                    r = eval_attack(test_x[sl].to(device), test_y[sl].to(device))
                    correct += int((r.clean_correct & ~r.success).sum())
                row["test_adv_acc"] = correct / test_x.shape[0]
    row["epoch_time_s"] = time.perf_counter() - st.t0
    row["epoch_cpu_time_s"] = time.process_time() - st.cpu0  # this process's CPU time (all its threads)
    return row


@dataclass
class _Run:
    """What the steps of one training run share: data, model, optimisation state, attacks, history."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    data: _Data
    model: nn.Module  # the module trained (DistributedDataParallel around ``raw`` when distributed)
    raw: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    n_batches: int
    attack: Any
    eval_attack: Any
    autocast: Callable[[], Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    start_step: int = 0
    partial: dict[str, Any] | None = None

    @property
    def ck_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def local_bs(self) -> int:
        return self.cfg.batch_size // self.info.world_size

    def save(self, epochs_done: int, step: int = 0, st: _Epoch | None = None) -> None:
        """The resumable checkpoint after ``epochs_done`` epochs (and ``step`` steps of the next, with ``st``)."""
        sums, partial = (None, None) if st is None else (st.sums, st.partial())
        _save_checkpoint(self.ck_path, self.cfg, self.raw, self.opt, self.sched, self.scaler, self.history,
                         self.info, epochs_done, step, sums, partial)  # fmt: skip


def _resolve_amp(cfg: TrainConfig, info: DistInfo, device: torch.device) -> str:
    """``cfg.amp``, or ``"off"`` (with a warning) when the device is not a GPU."""
    if cfg.amp != "off" and device.type != "cuda":
        if info.is_main:
            warnings.warn(f"amp={cfg.amp} needs a GPU; training in float32 on {device}", stacklevel=4)
        return "off"
    return cfg.amp


def _load_data(cfg: TrainConfig, data: _Data | None) -> _Data:
    """The training and test tensors (``data`` as given, else ``cfg.dataset``), the test part cut to
    ``eval_limit``."""
    train_x, train_y, test_x, test_y = (
        data
        if data is not None
        else load_train_test(
            cfg.dataset, cfg.data_dir, cfg.train_limit, cfg.train_offset, cfg.eval_limit, cfg.train_stride
        )
    )
    if test_x is not None and cfg.eval_limit:
        test_x, test_y = test_x[: cfg.eval_limit], test_y[: cfg.eval_limit]
    return train_x, train_y, test_x, test_y


def _build(
    cfg: TrainConfig, info: DistInfo, device: torch.device, train_x: torch.Tensor, train_y: torch.Tensor
) -> nn.Module:
    """The seeded model (with ``init_weights``) on ``device``, SyncBatchNorm when asked in a distributed run."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, train_x[:1], int(train_y.max()) + 1)
    if cfg.init_weights:
        from ..zoo import load_state_dict_any, load_weights

        load_weights(model, load_state_dict_any(cfg.init_weights), source=cfg.init_weights)
    model = model.to(device)
    if cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _count_batches(cfg: TrainConfig, n: int) -> int:
    """Steps per epoch: the full global batches of ``n`` examples, at most ``max_steps_per_epoch``."""
    n_batches = n // cfg.batch_size
    if cfg.max_steps_per_epoch is not None:
        n_batches = min(n_batches, cfg.max_steps_per_epoch)
    if n_batches < 1:
        raise TrainConfigError("batch_size", f"must be at most the {n} training examples, got {cfg.batch_size}")
    return n_batches


def _setup(
    cfg: TrainConfig, info: DistInfo, device: torch.device, ck: dict[str, Any] | None, data: _Data | None
) -> _Run:
    """Data, model, optimiser, schedule and attacks of the run, restored from ``ck`` when resuming."""
    out = Path(cfg.out_dir)
    amp = _resolve_amp(cfg, info, device)
    data = _load_data(cfg, data)
    raw = _build(cfg, info, device, data[0], data[1])
    check_model(raw, data[0][:2].to(device), data[1], cfg.arch, f"{cfg.dataset}/train")  # every label
    n_batches = _count_batches(cfg, data[0].shape[0])
    opt = _make_optimizer(cfg, raw.parameters())
    sched = _make_scheduler(cfg, opt, n_batches)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    history: list[dict[str, Any]] = []
    start_epoch, start_step, partial = 0, 0, None
    if ck is not None:
        history, start_epoch, start_step, partial = _restore(
            ck, cfg, raw, opt, sched, scaler, info, out / CHECKPOINT_NAME
        )
    else:
        torch.manual_seed(cfg.seed + 1 + info.rank)
    model = raw
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    attack = _make_attack(cfg, raw, cfg.attack_overrides)
    eval_attack = (
        _make_attack(cfg, raw, {**cfg.attack_overrides, **cfg.eval_attack_overrides})
        if cfg.eval_limit and cfg.attack != "none"
        else None
    )
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16))
        if amp != "off"
        else contextlib.nullcontext
    )
    return _Run(cfg, info, device, out, data, model, raw, opt, sched, scaler, n_batches, attack, eval_attack,
                autocast, history, start_epoch, start_step, partial)  # fmt: skip


def _train(
    cfg: TrainConfig,
    info: DistInfo,
    device: torch.device,
    folder: RunFolder,
    resume: bool,
    fresh: bool,
    data: _Data | None,
    stop_after_epochs: int | None,
    verbose: bool,
) -> TrainResult:
    """Check the folder, set the run up (or restore it), train the remaining epochs, write ``model.pt``."""
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {info.world_size}")
    _check_folder(folder, cfg, info, device, fresh)
    ck = _open_checkpoint(cfg, Path(cfg.out_dir) / CHECKPOINT_NAME, resume, info, folder.root)
    run = _setup(cfg, info, device, ck, data)
    if info.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        run_folder.write_record(folder, cfg)
        if verbose:
            _log(
                info,
                f"train {cfg.arch} on {cfg.dataset} ({run.data[0].shape[0]} examples, {run.n_batches} steps of "
                f"{cfg.batch_size} per epoch, {info.world_size} process(es), device {device}, attack {cfg.attack}) "
                f"epochs {run.start_epoch + 1}..{cfg.epochs}",
            )
    epochs_run = 0
    for epoch in range(run.start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        _run_epoch(run, epoch, verbose)
        epochs_run += 1
    return _finish(run)


def _finish(run: _Run) -> TrainResult:
    """``model.pt`` (weights only, written after the final checkpoint and history it belongs to) once every
    epoch is done; the result."""
    files: dict[str, str] = {}
    out = run.out
    if run.info.is_main and len(run.history) == run.cfg.epochs:
        _check_finite_weights(run.raw, "the last epoch")
        atomic_torch_save({k: v.detach().cpu() for k, v in run.raw.state_dict().items()}, out / "model.pt")
        files = {k: str(out / k) for k in ("checkpoint.pt", "model.pt", "history.csv", "history.json", "history.png")}
    return TrainResult(run.cfg, run.history, run.raw, out, run.start_epoch, files)


def _run_epoch(run: _Run, epoch: int, verbose: bool) -> None:
    """One epoch (or its rest, when resuming inside it), then its history row and checkpoint."""
    cfg, N = run.cfg, run.data[0].shape[0]
    if cfg.shuffle:
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    else:
        perm = torch.arange(N)
    first_step = 0
    if epoch == run.start_epoch and run.start_step and run.partial is not None:  # resume inside this epoch
        st, first_step = _Epoch.resumed(run.partial, run.info.rank), run.start_step
    else:
        st = _Epoch(lr=float(run.opt.param_groups[0]["lr"]))
    for b in range(first_step, run.n_batches):
        _step(run, st, epoch, b, perm)
    _end_epoch(run, st, epoch, verbose)


def _step(run: _Run, st: _Epoch, epoch: int, b: int, perm: torch.Tensor) -> None:
    """One optimisation step on batch ``b`` of ``epoch``; a non-finite loss stops the run before the update."""
    cfg, info, device, rank, bs = run.cfg, run.info, run.device, run.info.rank, run.local_bs
    train_x, train_y = run.data[0], run.data[1]
    where = f"epoch {epoch + 1}, step {b + 1}"
    idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size][rank * bs : (rank + 1) * bs]
    x, y = train_x[idx].to(device), train_y[idx].to(device)
    if cfg.augment == "flip-crop":
        x = augment_flip_crop(x, torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch) * 100_003 + b))
    xa = None if run.attack is None else _adversarial(run.attack, x, y, cfg, st, info.is_main, where, run.ck_path)
    loss = _batch_loss(run.model, x, y, xa, cfg, run.autocast, st)
    _check_loss(run, loss, where)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    if cfg.schedule == "onecycle":
        run.sched.step()
    st.sums[0] += float(loss.detach()) * y.shape[0]
    st.sums[1] += y.shape[0]
    if cfg.log_every and (b + 1) % cfg.log_every == 0:
        spent = time.perf_counter() - st.t0
        left = spent / (b + 1) * (run.n_batches - b - 1)  # spent counts the steps before a resume too
        _log(info, f"  {where}/{run.n_batches} loss {float(loss.detach()):.4f} ({spent:.0f} s, about {left:.0f} s "
             "left in this epoch)")  # fmt: skip
    if cfg.checkpoint_every and (b + 1) % cfg.checkpoint_every == 0 and b + 1 < run.n_batches:
        _check_finite_weights(run.raw, where)
        run.save(epoch, b + 1, st)


def _check_loss(run: _Run, loss: torch.Tensor, where: str) -> None:
    """Stop every process when the loss of any is not finite (the last good checkpoint is kept)."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if run.info.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if float(ok) < 1:
        ck = run.ck_path
        raise TrainingDiverged(
            f"non-finite training loss at {where}: stopped; the last good checkpoint "
            f"({ck if ck.exists() else 'none written yet'}) is unchanged. Lower --lr or check the data."
        )


def _end_epoch(run: _Run, st: _Epoch, epoch: int, verbose: bool) -> None:
    """The epoch's schedule step, history row, checkpoint (finite weights only), then the history files."""
    cfg, info = run.cfg, run.info
    if cfg.schedule != "onecycle":
        run.sched.step()
    test = (run.data[2], run.data[3])
    row = _epoch_row(cfg, st, epoch, run.n_batches, info, run.device, run.raw, test, run.eval_attack)
    run.history.append(row)
    _check_finite_weights(run.raw, f"epoch {epoch + 1}")
    run.save(epoch + 1)
    if info.is_main:
        _write_history(run.out, run.history, cfg.plot)
        if verbose:
            _log(info, _format_row(row))
    if info.distributed:
        dist.barrier()


def _save_checkpoint(
    path: Path,
    cfg: TrainConfig,
    raw: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    history: list[dict[str, Any]],
    info: DistInfo,
    epochs_done: int,
    step: int = 0,
    sums: torch.Tensor | None = None,
    partial: dict[str, Any] | None = None,
) -> None:
    """Write the resumable state atomically (main process): after ``epochs_done`` epochs and, inside the next
    epoch, ``step`` steps with that epoch's running ``sums`` (every rank's) and ``partial`` bookkeeping."""
    per_rank: list[Any] = [None] * info.world_size
    mine = (rng_state(), None if sums is None else sums.clone())
    if info.distributed:
        dist.all_gather_object(per_rank, mine)
    else:
        per_rank = [mine]
    if not info.is_main:
        return
    ck: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "config_json": cfg.to_json(),
        "epoch": epochs_done,
        "step": step,
        "model": raw.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": [r for r, _ in per_rank],
        "history": history,
        "world_size": info.world_size,
    }
    if step:
        ck["partial"] = {**(partial or {}), "sums": [s for _, s in per_rank]}
    atomic_torch_save(ck, path)


def _format_row(row: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = ".4f") -> str:
        return "-" if v is None else format(v, fmt)

    return (
        f"epoch {row['epoch']}: loss {f(row['loss'])} lr {f(row['lr'], '.4g')} train clean {f(row['train_clean_acc'])} "
        f"adv {f(row['train_adv_acc'])} | metered radius {f(row['metered_radius_mean'])} (n={row['metered_n']}) | "
        f"test clean {f(row['test_clean_acc'])} adv {f(row['test_adv_acc'])} | {row['epoch_time_s']:.1f}s "
        f"(attack {row['attack_time_s']:.1f}s)"
    )
