"""Tiny ImageNet-200 (64 x 64 RGB, 200 classes) from the standard folder or from ``.npz`` files of JPEG bytes.

Folder layout (as in the Stanford zip ``tiny-imagenet-200/``): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` and ``val/val_annotations.txt``. ``.npz`` layout: ``jpeg`` (uint8, the JPEG files back
to back), ``offsets`` (int64, N + 1), ``y`` (int64) and ``wnids``.

Classes are the wnids **sorted alphabetically** in both cases (the ImageFolder convention), so labels agree
between the two sources. The test split has no public labels: ``split="test"`` means the val split.
JPEG decoding uses Pillow; only the requested ``offset``/``limit`` slice is decoded.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

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

FOLDER = "tiny-imagenet-200"
_NUM = re.compile(r"_(\d+)\.[A-Za-z]+$")


def decode_images(blobs: list[bytes], source: str) -> np.ndarray:
    """Decode encoded images (JPEG/PNG bytes) to uint8 ``(N, H, W, 3)`` RGB; all must have one size."""
    from PIL import Image

    out = []
    for k, b in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(b)) as im:
                out.append(np.asarray(im.convert("RGB")))
        except Exception as err:
            raise DatasetError(f"{source}: image {k} cannot be decoded ({type(err).__name__}: {err})") from err
    if not out:
        return np.zeros((0, 64, 64, 3), np.uint8)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise DatasetError(f"{source}: images have different sizes {sorted(shapes)}")
    return np.stack(out)


def _index(name: str) -> int:
    m = _NUM.search(name)
    return int(m.group(1)) if m else -1


def _folder(root: Path) -> Path | None:
    for f in (root / FOLDER, root):
        if (f / "wnids.txt").is_file():
            return f
    return None


def _from_folder(folder: Path, split: str, limit: int | None, offset: int) -> ImageDataset:
    wnids = sorted((folder / "wnids.txt").read_text().split())
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files, labels = [], []
        for w in wnids:
            imgs = sorted(
                (folder / "train" / w / "images").glob("*.[Jj][Pp][Ee][Gg]"), key=lambda p: (_index(p.name), p.name)
            )
            files += imgs
            labels += [index[w]] * len(imgs)
    else:
        ann = folder / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetNotFoundError(f"tiny-imagenet (val): {ann} is missing")
        rows = []
        for line_no, line in enumerate(ann.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2 or parts[1] not in index:
                raise DatasetError(f"{ann}:{line_no}: cannot parse {line!r} (unknown wnid?)")
            rows.append((_index(parts[0]), parts[0], index[parts[1]]))
        rows.sort()
        files = [folder / "val" / "images" / r[1] for r in rows]
        labels = [r[2] for r in rows]
    if not files:
        raise DatasetNotFoundError(f"tiny-imagenet ({split}): no images under {folder}")
    sl = check_slice(len(files), limit, offset)
    blobs = []
    for p in files[sl]:
        try:
            blobs.append(p.read_bytes())
        except OSError as err:
            raise DatasetNotFoundError(f"tiny-imagenet ({split}): cannot read {p}: {err}") from err
    x = decode_images(blobs, str(folder))
    y = np.asarray(labels[sl], dtype=np.int64)
    return ImageDataset(
        to_images(x, str(folder)), to_labels(y, str(folder)), wnids, "tiny-imagenet", split, str(folder)
    )


def _from_npz(path: Path, split: str, limit: int | None, offset: int) -> ImageDataset:
    d = load_npz(path, ("jpeg", "offsets", "y", "wnids"))
    o, jpeg = d["offsets"], d["jpeg"]
    n = len(d["y"])
    if o.shape != (n + 1,) or o[0] != 0 or o[-1] != jpeg.size or np.any(np.diff(o) < 0):
        raise DatasetError(f"{path}: 'offsets' does not index 'jpeg' ({o.shape}, {n} labels, {jpeg.size} bytes)")
    sl = check_slice(n, limit, offset)
    idx = range(n)[sl]
    x = decode_images([jpeg[o[k] : o[k + 1]].tobytes() for k in idx], str(path))
    classes = [str(w) for w in d["wnids"]]
    return ImageDataset(
        to_images(x, str(path)), to_labels(d["y"][sl], str(path)), classes, "tiny-imagenet", split, str(path)
    )


def load_tiny_imagenet(
    split: str = "val",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> ImageDataset:
    """Tiny ImageNet ``(N, 3, 64, 64)``; ``.classes`` holds the 200 wnids (sorted).

    Looks for ``data_dir/tiny-imagenet-200/`` (or ``data_dir`` itself holding ``wnids.txt``), then
    ``tinyimagenet_<split>.npz``; for ``train`` last ``tinyimagenet_train_100pc.npz`` (100 images per class,
    with a warning). Not downloadable here (the Stanford zip is 237 MB and unpinned).
    """
    split = {"test": "val", "valid": "val", "validation": "val"}.get(split, split)
    if split not in ("train", "val"):
        raise ValueError(f"tiny-imagenet: split must be 'train' or 'val' ('test' = 'val'), got {split!r}")
    root = resolve_data_dir(data_dir)
    folder = _folder(root)
    if folder is not None and (folder / split).is_dir():
        return _from_folder(folder, split, limit, offset)
    names = [f"tinyimagenet_{split}.npz", f"tiny-imagenet_{split}.npz"]
    if split == "train":
        names.append("tinyimagenet_train_100pc.npz")
    npz = first_existing([root / n for n in names])
    if npz is not None:
        if npz.name.endswith("_100pc.npz"):
            warnings.warn(f"{npz}: only the first 100 of the 500 training images per class", stacklevel=2)
        return _from_npz(npz, split, limit, offset)
    raise DatasetNotFoundError(
        f"tiny-imagenet ({split}) not found. Unzip tiny-imagenet-200.zip into {root} (giving {root / FOLDER}/"
        f"wnids.txt, train/, val/) or put {names[0]} into {root}."
    )
