"""Training configuration: plain types only, so that it round-trips through JSON and ``weights_only`` loading."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "TrainConfig",
    "ConfigMismatchError",
    "TrainConfigError",
    "RUNTIME_FIELDS",
    "OPTIMIZERS",
    "SCHEDULES",
    "AMP_MODES",
    "AUGMENTATIONS",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "multistep", "onecycle")
AUGMENTATIONS = ("none", "flip-crop")
AMP_MODES = ("off", "bf16", "fp16")

#: Fields that describe *where / how* a run executes, not *what* it computes: they may differ on resume.
RUNTIME_FIELDS = frozenset(
    {"out_dir", "data_dir", "device", "amp", "eval_batch_size", "log_every", "plot", "checkpoint_every"}
)


class ConfigMismatchError(ValueError):
    """``--resume`` found a checkpoint written by a different configuration."""


class TrainConfigError(ValueError):
    """A field of :class:`TrainConfig` (``field``) has a value no run can use; ``rule`` says what it must be.
    ``str(err)`` is ``"<field> <rule>"``; the command line names the field's flag instead."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field, self.rule = field, rule


#: integer fields and their least value (``_OPTIONAL`` ones may also be None)
_COUNTS = {"epochs": 1, "batch_size": 1, "train_limit": 1, "train_offset": 0, "train_stride": 1, "eval_limit": 0,
           "max_steps_per_epoch": 1, "step_size": 1, "meter_n": 0, "meter_kernel": 1, "eval_batch_size": 1,
           "log_every": 0, "checkpoint_every": 0, "seed": None}  # fmt: skip
_OPTIONAL = frozenset({"train_limit", "max_steps_per_epoch"})
#: number fields: (low, high, low excluded, high excluded); None: unbounded on that side
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "lr": (0.0, None, True, False), "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, None, False, False),
    "gamma": (0.0, None, True, False), "warmup": (0.0, 1.0, False, True), "label_smoothing": (0.0, 1.0, False, True),
    "clean_weight": (0.0, 1.0, False, False), "meter_p": (0.0, None, True, False),
}  # fmt: skip


def _check_int(name: str, value: Any, lower: int | None, what: str = "an integer") -> None:
    """``value`` is an integer (not a bool or a float) ``>= lower`` (any integer when ``lower`` is None)."""
    if isinstance(value, bool) or not isinstance(value, int) or (lower is not None and value < lower):
        bound = "" if lower is None else f" >= {lower}"
        raise TrainConfigError(name, f"must be {what}{bound}, got {value!r}")


def _check_number(name: str, value: Any, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> None:
    """``value`` is a finite real number in the interval given (``lo_open``: ``lo`` itself excluded)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or value > lo or (value == lo and not lo_open))
    ok = ok and (hi is None or value < hi or (value == hi and not hi_open))
    if not ok:
        if hi is None:
            rule = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            rule = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise TrainConfigError(name, f"must be {rule}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything that defines a training run (see ``sinkhorn-attacks train --help`` for the meaning).

    ``batch_size`` is the *global* batch: with ``W`` processes each takes a contiguous ``batch_size / W``
    slice of every global batch, so 1 and W processes see the same examples in the same steps.
    ``attack`` is a preset name of :mod:`sinkhorn_attacks.attacks` or ``"none"`` (clean training);
    ``attack_overrides`` are keyword overrides for the preset (plain JSON values).
    The training loss is ``clean_weight * CE(clean) + (1 - clean_weight) * CE(adversarial)``.
    """

    dataset: str = "mnist"
    arch: str = "mnist_cnn"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None  # start from these weights (a state dict file, e.g. another run's model.pt)
    train_limit: int | None = None
    train_offset: int = 0
    train_stride: int = 1  # every k-th training image from train_offset (a class-sorted set spread evenly)
    eval_limit: int = 0  # test images evaluated (clean + attacked) after every epoch; 0 = skip
    attack: str = "none"
    attack_overrides: dict[str, Any] = field(default_factory=dict)
    eval_attack_overrides: dict[str, Any] = field(default_factory=dict)
    clean_weight: float = 0.0
    epochs: int = 1
    batch_size: int = 64
    max_steps_per_epoch: int | None = None
    shuffle: bool = True
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: float = 0.25  # onecycle: fraction of the steps over which the rate rises linearly from 0 to lr
    step_size: int = 1
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    augment: str = "none"  # flip-crop: random horizontal flip and translation by up to 4 px (reflected border)
    label_smoothing: float = 0.0
    seed: int = 0
    meter_n: int = 16  # training examples metered exactly (first ones of each epoch) for the log
    meter_kernel: int = 5
    meter_p: float = 1.0
    sync_bn: bool = False
    # runtime (may change between a run and its resumption)
    out_dir: str = "runs/train"
    data_dir: str | None = None
    device: str = "auto"
    amp: str = "off"
    eval_batch_size: int = 256
    log_every: int = 0
    checkpoint_every: int = 0  # also checkpoint after every this many steps inside an epoch (0: per epoch only)
    plot: bool = True  # write history.png every epoch (matplotlib)

    def __post_init__(self) -> None:
        for name, known in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("augment", AUGMENTATIONS),
                            ("amp", AMP_MODES)):  # fmt: skip
            if getattr(self, name) not in known:
                raise TrainConfigError(name, f"{getattr(self, name)!r} is unknown; known: {', '.join(known)}")
        for name, lower in _COUNTS.items():
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL:
                _check_int(name, value, lower)
        if not isinstance(self.milestones, list):
            raise TrainConfigError("milestones", f"must be a list of integers >= 1, got {self.milestones!r}")
        for m in self.milestones:
            _check_int("milestones", m, 1, what="integers")
        for name, (lo, hi, lo_open, hi_open) in _RANGES.items():
            _check_number(name, getattr(self, name), lo, hi, lo_open, hi_open)
        if self.attack in ("", "None", None):
            self.attack = "none"

    # -- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> TrainConfig:
        return cls.from_dict(json.loads(s))

    def identity(self) -> dict[str, Any]:
        """The fields that determine the result (everything except :data:`RUNTIME_FIELDS`)."""
        return {k: v for k, v in json.loads(self.to_json()).items() if k not in RUNTIME_FIELDS}

    def check_same_run(self, other: TrainConfig, source: str = "checkpoint") -> None:
        """Raise :class:`ConfigMismatchError` naming every field in which ``other`` differs."""
        a, b = self.identity(), other.identity()
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            lines = ", ".join(f"{k}: {source} has {b.get(k)!r}, this run {a.get(k)!r}" for k in diff)
            raise ConfigMismatchError(
                f"cannot resume: the {source} was written by another configuration ({lines}). "
                "Use the original options, or a new --out directory to start a fresh run."
            )


def build_model(cfg: TrainConfig, sample: torch.Tensor, n_classes: int) -> nn.Module:
    """The network ``cfg.arch`` names, sized for ``sample`` (a batch of images) and ``n_classes`` classes."""
    from ..zoo import build

    kwargs = dict(cfg.arch_kwargs)
    if cfg.arch == "small_cnn":
        kwargs.setdefault("in_ch", int(sample.shape[1]))
        kwargs.setdefault("size", int(sample.shape[-1]))
        kwargs.setdefault("n_classes", max(10, n_classes))
    return build(cfg.arch, **kwargs)
