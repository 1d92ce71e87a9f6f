"""Dataset readers without torchvision: float32 images ``(N, C, H, W)`` in [0, 1] and int64 labels.

``load_dataset(name, split, data_dir, limit, offset)`` is the uniform entry point; it returns an
:class:`ImageDataset` (``.images``, ``.labels``, ``.classes``, ``.name``, ``.split``, ``.source``), which is
also a ``torch.utils.data.Dataset``.

The data folder is ``data_dir``, else ``$SINKHORN_ATTACKS_DATA``, else ``~/.cache/sinkhorn-attacks/data``
(``$SINKHORN_ATTACKS_CACHE/data`` when that is set). MNIST, Fashion-MNIST and CIFAR-10 are downloaded from
their canonical URLs (sha256-checked, atomic rename) when missing and ``download=True``; without network the
error says which files to put where.

Names, the files looked for in the data folder (first hit wins), and splits:

* ``mnist``: IDX files (raw or ``.gz``) in ``.``, ``mnist/``, ``MNIST/raw/``; then ``mnist_<split>.npz``.
  Splits train, test.
* ``fashion-mnist``: IDX files in ``fashion-mnist/``, ``fashion_mnist/``, ``FashionMNIST/raw/``, then Debian's
  ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``); then
  ``fashion_mnist_<split>.npz``. Splits train, test.
* ``cifar10``: ``cifar-10-batches-py/``; then ``cifar10_<split>.npz``; for train last
  ``cifar10_train_20k.npz`` (a 20k subset, with a warning). Splits train, test.
* ``tiny-imagenet``: ``tiny-imagenet-200/``; then ``tinyimagenet_<split>.npz``; for train last
  ``tinyimagenet_train_100pc.npz`` (100 per class, with a warning). Splits train, val (``test`` = val).
* ``digits``: scikit-learn's bundled copy, seeded stratified 75/25 split. Splits train, test, all.
* ``folder``: ``data_dir/<split>/<class>/*`` if that exists, else ``data_dir/<class>/*``.
"""

from __future__ import annotations

import os

from ._base import (
    ENV_CACHE,
    ENV_DATA,
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    cache_root,
    resolve_data_dir,
)
from .cifar import CIFAR10_CLASSES, load_cifar10, read_cifar_batch
from .digits import load_digits
from .folder import load_image_folder
from .idx import FASHION_CLASSES, MNIST_CLASSES, load_fashion_mnist, load_mnist, read_idx
from .remote import ChecksumError, DownloadError, download, git_blob_sha1, sha256_file, verify_file
from .tinyimagenet import load_tiny_imagenet

DATASETS = ("mnist", "fashion-mnist", "cifar10", "tiny-imagenet", "digits", "folder")
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "tinyimagenet": "tiny-imagenet",
    "tiny_imagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
    "sklearn-digits": "digits",
    "image-folder": "folder",
    "imagefolder": "folder",
}


def names() -> list[str]:
    """The dataset names ``load_dataset`` accepts (aliases such as ``fmnist`` or ``cifar-10`` also work)."""
    return list(DATASETS)


def canonical_name(name: str) -> str:
    """Map an alias to its dataset name; ``ValueError`` listing the names for an unknown one."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    *,
    download: bool = True,
) -> ImageDataset:
    """Load ``split`` of dataset ``name``, rows ``offset : offset + limit``.

    Args:
        name: one of :data:`DATASETS` (or an alias).
        split: ``"train"`` or ``"test"`` (Tiny ImageNet: ``"test"`` is its val split; digits: also ``"all"``).
        data_dir: data folder; see the module docstring for the default. For ``folder`` it is the image
            folder itself and must be given (or set by the environment variable).
        limit, offset: read only that slice (only that slice of JPEGs is decoded).
        download: allow downloading MNIST / Fashion-MNIST / CIFAR-10 when missing.
    """
    key = canonical_name(name)
    if key == "mnist":
        return load_mnist(split, data_dir, limit, offset, download=download)
    if key == "fashion-mnist":
        return load_fashion_mnist(split, data_dir, limit, offset, download=download)
    if key == "cifar10":
        return load_cifar10(split, data_dir, limit, offset, download=download)
    if key == "tiny-imagenet":
        return load_tiny_imagenet(split, data_dir, limit, offset)
    if key == "digits":
        return load_digits(split, limit, offset)
    if data_dir is None and not os.environ.get(ENV_DATA):
        raise ValueError("dataset 'folder' needs data_dir= (the folder holding <class>/ sub-folders)")
    root = resolve_data_dir(data_dir)
    if (root / split).is_dir():
        root = root / split
    return load_image_folder(root, limit=limit, offset=offset, name="folder", split=split)


__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "ENV_CACHE",
    "ENV_DATA",
    "FASHION_CLASSES",
    "MNIST_CLASSES",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "DownloadError",
    "ImageDataset",
    "cache_root",
    "canonical_name",
    "download",
    "git_blob_sha1",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_tiny_imagenet",
    "names",
    "read_cifar_batch",
    "read_idx",
    "resolve_data_dir",
    "sha256_file",
    "verify_file",
]
