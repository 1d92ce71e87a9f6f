"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values: ``format``, ``config_json`` (the
:class:`~sinkhorn_attacks.train.config.TrainConfig` as a JSON string), ``epoch`` (epochs completed),
``model`` / ``optimizer`` / ``scheduler`` / ``scaler`` state dicts, ``rng`` (one entry per rank) and
``history`` (the per-epoch log rows). Files are written to a temporary name in the same folder, flushed to
disk and renamed over the target, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write_bytes",
    "atomic_torch_save",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    atomic_write(path, data)
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    path = Path(path)
    atomic_write(path, lambda fh: torch.save(obj, fh))
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` and check its format."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable training checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "config_json" not in ck:
        raise ValueError(f"{path}: not a sinkhorn-attacks training checkpoint (format {CHECKPOINT_FORMAT})")
    epoch, history = ck.get("epoch"), ck.get("history")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{path}: damaged checkpoint: 'epoch' must be an integer >= 0, got {epoch!r}")
    if not isinstance(history, list) or len(history) != epoch:
        n = len(history) if isinstance(history, list) else type(history).__name__
        raise ValueError(
            f"{path}: damaged checkpoint: {epoch} finished epochs but a history of {n} rows; delete it to start over"
        )
    for key in ("model", "optimizer", "scheduler", "rng"):
        if key not in ck:
            raise ValueError(f"{path}: damaged checkpoint: no {key!r} entry; delete it to start over")
    return ck


# -- RNG state as plain types -----------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU/CUDA, NumPy, Python) as tensors and plain values."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what users seed
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(
            [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]
        ),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
