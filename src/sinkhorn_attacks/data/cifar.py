"""CIFAR-10 from the python pickle batches (``cifar-10-batches-py``) or ``.npz`` (``x`` uint8 NHWC, ``y``).

The batches are pickles. They are read with a restricted unpickler that only accepts the numpy classes a
CIFAR batch needs (the array reconstructor, ``ndarray`` and ``dtype``); anything else is refused. Still,
only read batches you obtained from the official archive.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np

from . import remote
from ._base import (
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    check_slice,
    first_existing,
    load_npz,
    resolve_data_dir,
    to_images,
    to_labels,
)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
BATCH_DIR = "cifar-10-batches-py"
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 renamed numpy.core
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch as ``(x uint8 (N, 3, 32, 32), y int64 (N,))``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as err:  # UnpicklingError, EOFError, OSError, ...
        raise DatasetError(f"{path}: cannot read the CIFAR batch ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{path}: missing 'data'/'labels' (keys: {sorted(batch)})")
    x = np.asarray(batch["data"])
    y = np.asarray(batch["labels"], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise DatasetError(f"{path}: expected data uint8 (N, 3072) and N labels, got {x.dtype} {x.shape}, {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def _batch_folder(root: Path) -> Path | None:
    for folder in (root / BATCH_DIR, root / "cifar10" / BATCH_DIR, root):
        if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
            return folder
    return None


def load_cifar10(
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    *,
    download: bool = True,
) -> ImageDataset:
    """CIFAR-10 ``(N, 3, 32, 32)``.

    Looks for ``data_dir/cifar-10-batches-py/`` (also ``data_dir/cifar10/...`` or ``data_dir`` itself), then
    ``cifar10_<split>.npz``; for ``train`` last ``cifar10_train_20k.npz`` (only the first 20,000 images,
    with a warning). Downloads the official archive (sha256-checked) when allowed.
    """
    if split not in _BATCHES:
        raise ValueError(f"cifar10: split must be 'train' or 'test', got {split!r}")
    root = resolve_data_dir(data_dir)
    folder = _batch_folder(root)
    if folder is not None and all((folder / b).is_file() for b in _BATCHES[split]):
        return _from_batches(folder, split, limit, offset)
    candidates = [root / f"cifar10_{split}.npz", root / "cifar10" / f"cifar10_{split}.npz"]
    if split == "train":
        candidates += [root / "cifar10_train_20k.npz"]
    npz = first_existing(candidates)
    if npz is not None:
        if npz.name == "cifar10_train_20k.npz":
            warnings.warn(f"{npz}: only the first 20,000 of the 50,000 CIFAR-10 training images", stacklevel=2)
        d = load_npz(npz, ("x", "y"))
        sl = check_slice(len(d["y"]), limit, offset)
        return ImageDataset(
            to_images(d["x"][sl], str(npz)),
            to_labels(d["y"][sl], str(npz)),
            list(CIFAR10_CLASSES),
            "cifar10",
            split,
            str(npz),
        )
    hint = (
        f"cifar10 ({split}) not found. Extract {CIFAR10_URL} so that {root / BATCH_DIR}/"
        f"{{{','.join(_BATCHES[split])}}} exist, or put cifar10_{split}.npz (keys x uint8 NHWC, y) into {root}."
    )
    if not download:
        raise DatasetNotFoundError(hint)
    archive = root / "cifar-10-python.tar.gz"
    try:
        remote.download(CIFAR10_URL, archive, CIFAR10_SHA256, progress=True)
    except remote.DownloadError as err:
        raise DatasetNotFoundError(f"{hint}\nDownload failed: {err}") from err
    _extract(archive, root)
    archive.unlink()
    return _from_batches(root / BATCH_DIR, split, limit, offset)


def _extract(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(BATCH_DIR + "/") and (m.isfile() or m.isdir())]
        tar.extractall(root, members=members, filter="data")


def _from_batches(folder: Path, split: str, limit: int | None, offset: int) -> ImageDataset:
    xs, ys = zip(*(read_cifar_batch(folder / b) for b in _BATCHES[split]))
    x, y = np.concatenate(xs), np.concatenate(ys)
    sl = check_slice(len(y), limit, offset)
    return ImageDataset(
        to_images(x[sl], str(folder)),
        to_labels(y[sl], str(folder)),
        list(CIFAR10_CLASSES),
        "cifar10",
        split,
        str(folder),
    )
