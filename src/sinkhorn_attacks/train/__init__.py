"""(Adversarial) training with resumable atomic checkpoints, single process or data-parallel under torchrun.

>>> from sinkhorn_attacks.train import TrainConfig, train
>>> cfg = TrainConfig(dataset="mnist", arch="mnist_cnn", attack="uot",
...                   attack_overrides={"steps": 3}, epochs=2, out_dir="runs/uot")  # doctest: +SKIP
>>> result = train(cfg)                    # doctest: +SKIP
>>> result = train(cfg, resume=True)       # continue a killed run  # doctest: +SKIP

See docs/training.md for the command line and the multi-node launch.
"""

from .checkpoint import atomic_torch_save, atomic_write_bytes, load_checkpoint
from .config import ConfigMismatchError, TrainConfig, TrainConfigError
from .data import load_train_test, synthetic
from .loop import DistInfo, TrainingDiverged, TrainResult, plot_history, setup_distributed, train

__all__ = [
    "ConfigMismatchError",
    "DistInfo",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingDiverged",
    "atomic_torch_save",
    "atomic_write_bytes",
    "load_checkpoint",
    "load_train_test",
    "plot_history",
    "setup_distributed",
    "synthetic",
    "train",
]
