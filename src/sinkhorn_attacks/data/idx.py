"""MNIST and Fashion-MNIST from IDX files (raw or ``.gz``) or ``.npz`` (keys ``x`` uint8 ``(N, 28, 28)``, ``y``).

IDX format: a big-endian header -- two zero bytes, a type code, the number of dimensions ``d`` -- then ``d``
big-endian uint32 sizes, then the data.
"""

from __future__ import annotations

import gzip
import os
import zlib
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

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the four ``.gz`` files.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_PREFIX = {"train": "train", "test": "t10k"}

MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed when the name ends in ``.gz``) into a native-endian array."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read ({type(err).__name__}: {err}); is the file truncated?") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX header says shape {tuple(dims)} ({expected} data bytes) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _idx_names(split: str, kind: str) -> list[str]:
    prefix = _PREFIX[split]
    ndim = 3 if kind == "images" else 1
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [s + ext for s in stems for ext in ("", ".gz")]


def _find_idx(folders: list[Path], split: str) -> tuple[Path, Path] | None:
    for folder in folders:
        images = first_existing([folder / n for n in _idx_names(split, "images")])
        labels = first_existing([folder / n for n in _idx_names(split, "labels")])
        if images is not None and labels is not None:
            return images, labels
    return None


def _is_fashion_folder(p: Path) -> bool:
    return "fashion" in p.name.lower()


def _mnist_folders(root: Path) -> list[Path]:
    own = [root / "mnist", root / "MNIST" / "raw", root / "MNIST"]
    return own if _is_fashion_folder(root) else [root, *own]


def _fashion_folders(root: Path) -> list[Path]:
    own = [root / "fashion-mnist", root / "fashion_mnist", root / "FashionMNIST" / "raw", root / "FashionMNIST"]
    return ([root] if _is_fashion_folder(root) else []) + own + [DEBIAN_FASHION_DIR]


def _load(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    limit: int | None,
    offset: int,
    download_missing: bool,
) -> ImageDataset:
    if split not in _PREFIX:
        raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}")
    root = resolve_data_dir(data_dir)
    fashion = name == "fashion-mnist"
    folders = _fashion_folders(root) if fashion else _mnist_folders(root)
    classes = FASHION_CLASSES if fashion else MNIST_CLASSES
    npz_names = [f"fashion_mnist_{split}.npz", f"fashion-mnist_{split}.npz"] if fashion else [f"mnist_{split}.npz"]

    found = _find_idx(folders, split)
    if found is not None:
        return _from_idx(name, split, classes, *found, limit=limit, offset=offset)
    npz = first_existing([f / n for f in (root, *folders[:2]) for n in npz_names])
    if npz is not None:
        d = load_npz(npz, ("x", "y"))
        sl = check_slice(len(d["y"]), limit, offset)
        return ImageDataset(
            to_images(d["x"][sl], str(npz)), to_labels(d["y"][sl], str(npz)), list(classes), name, split, str(npz)
        )

    target = root / ("fashion-mnist" if fashion else "mnist")
    files = [_idx_names(split, "images")[1], _idx_names(split, "labels")[1]]
    hint = (
        f"{name} ({split}) not found. Put {files[0]} and {files[1]} (raw or .gz) into {target}"
        f"{' or ' + str(DEBIAN_FASHION_DIR) + ' (apt-get install dataset-fashion-mnist)' if fashion else ''}"
        f", or {npz_names[0]} (keys x, y) into {root}. Searched: " + ", ".join(str(f) for f in folders) + "."
    )
    if not download_missing:
        raise DatasetNotFoundError(hint)
    urls, sums = (FASHION_URLS, FASHION_SHA256) if fashion else (MNIST_URLS, MNIST_SHA256)
    try:
        for f in files:
            remote.download([u + f for u in urls], target / f, sums[f])
    except remote.DownloadError as err:
        raise DatasetNotFoundError(f"{hint}\nDownload failed: {err}") from err
    return _from_idx(name, split, classes, target / files[0], target / files[1], limit=limit, offset=offset)


def _from_idx(
    name: str, split: str, classes: list[str], images: Path, labels: Path, *, limit: int | None, offset: int
) -> ImageDataset:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DatasetError(f"{images} / {labels}: expected images (N, H, W) and labels (N,), got {x.shape} / {y.shape}")
    sl = check_slice(len(y), limit, offset)
    return ImageDataset(
        to_images(x[sl], str(images)), to_labels(y[sl], str(labels)), list(classes), name, split, str(images.parent)
    )


def load_mnist(
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    *,
    download: bool = True,
) -> ImageDataset:
    """MNIST ``(N, 1, 28, 28)``. Looks for IDX files in ``data_dir``, ``data_dir/mnist``, ``data_dir/MNIST/raw``,
    then ``data_dir/mnist_<split>.npz``; downloads the IDX files (sha256-checked) into ``data_dir/mnist``."""
    return _load("mnist", split, data_dir, limit, offset, download)


def load_fashion_mnist(
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    *,
    download: bool = True,
) -> ImageDataset:
    """Fashion-MNIST ``(N, 1, 28, 28)``. Looks in ``data_dir/fashion-mnist`` (also ``fashion_mnist``,
    ``FashionMNIST/raw``; ``data_dir`` itself only if its name contains "fashion", since the IDX file names
    equal MNIST's), then Debian's ``/usr/share/datasets/fashion-mnist``, then ``fashion_mnist_<split>.npz``."""
    return _load("fashion-mnist", split, data_dir, limit, offset, download)
