"""Training configuration: plain types only, so that it round-trips through JSON and ``weights_only`` loading."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "TrainConfig",
    "ConfigMismatchError",
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augment!r}; known: {', '.join(AUGMENTATIONS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError("warmup must be in [0, 1)")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {self.amp!r}; known: {', '.join(AMP_MODES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.train_stride < 1:
            raise ValueError(f"train_stride must be >= 1, got {self.train_stride}")
        if not 0.0 <= self.clean_weight <= 1.0:
            raise ValueError("clean_weight must be in [0, 1]")
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
