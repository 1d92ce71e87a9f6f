"""Shared pieces of the dataset readers: the dataset container, folder resolution and errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENV_DATA = "SINKHORN_ATTACKS_DATA"
ENV_CACHE = "SINKHORN_ATTACKS_CACHE"


class DatasetError(ValueError):
    """A dataset file exists but cannot be read (corrupt, truncated, wrong format)."""


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not in any of the places searched (and could not be downloaded)."""


def cache_root() -> Path:
    """Root of the package's cache: ``$SINKHORN_ATTACKS_CACHE``, else ``~/.cache/sinkhorn-attacks``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sinkhorn-attacks"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$SINKHORN_ATTACKS_DATA``, else ``<cache_root()>/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    return cache_root() / "data"


@dataclass(eq=False, repr=False)
class ImageDataset(torch.utils.data.Dataset):
    """Images and labels held in memory.

    Attributes:
        images: float32 tensor ``(N, C, H, W)`` with values in [0, 1].
        labels: int64 tensor ``(N,)``.
        classes: class names; ``labels`` index into it.
        name: dataset name (``"mnist"``, ``"cifar10"``, ...).
        split: ``"train"``, ``"test"`` or ``"val"``.
        source: the file or folder the data was read from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str = "test"
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape)
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, images={shape}, "
            f"classes={len(self.classes)}, source={self.source!r})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batches(self, batch_size: int):
        """Yield ``(images, labels)`` batches in order (no shuffling)."""
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]


def check_slice(n: int, limit: int | None, offset: int) -> slice:
    """The rows ``offset : offset + limit`` of ``n``; raises ``ValueError`` for a bad range."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    if n > 0 and offset >= n:
        raise ValueError(f"offset {offset} is past the end of the split ({n} examples)")
    stop = n if limit is None else min(n, offset + limit)
    return slice(offset, stop)


def to_images(x: np.ndarray, source: str) -> torch.Tensor:
    """uint8 or float pixels as float32 ``(N, C, H, W)`` in [0, 1].

    Accepts ``(N, H, W)``, ``(N, H, W, C)`` (channels last, C in 1..4) and ``(N, C, H, W)``.
    uint8 is divided by 255; float input must already lie in [0, 1].
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DatasetError(f"{source}: images must have 3 or 4 dimensions, got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32, order="C")).div_(255.0)  # a writable, contiguous copy
    if np.issubdtype(x.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise DatasetError(f"{source}: float images must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]")
        return t
    raise DatasetError(f"{source}: unsupported image dtype {x.dtype} (expected uint8 or float)")


def to_labels(y: np.ndarray, source: str) -> torch.Tensor:
    """Integer labels as an int64 tensor ``(N,)``."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{source}: labels must be a 1-d integer array, got {y.dtype} {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read ``keys`` from an ``.npz`` (``allow_pickle=False``); clear errors for corrupt files."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {missing}; the file has {sorted(data.files)}")
            return {k: data[k] for k in keys}
    except DatasetError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, ValueError, OSError ...
        raise DatasetError(
            f"{path}: cannot read the .npz file ({type(err).__name__}: {err}); is it truncated?"
        ) from err


def first_existing(paths: list[Path]) -> Path | None:
    for p in paths:
        if p.is_file():
            return p
    return None
