"""Image folders ``root/<class>/<image>`` (png, jpg, bmp, ...), classes sorted by folder name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ._base import DatasetError, DatasetNotFoundError, ImageDataset, check_slice, to_images, to_labels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    mode: Literal["auto", "L", "RGB"] = "auto",
    limit: int | None = None,
    offset: int = 0,
    name: str = "folder",
    split: str = "test",
) -> ImageDataset:
    """Read ``root/<class>/*`` into an :class:`ImageDataset`.

    Classes are the sub-folder names, sorted; images within a class are sorted by file name. ``mode="auto"``
    gives one channel when every image is grayscale (mode ``L``, ``1`` or ``I;16``) and RGB otherwise. All images
    must have the same height and width (resize them beforehand).
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        imgs = sorted(p for p in (root / c).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        files += imgs
        labels += [i] * len(imgs)
    if not files:
        raise DatasetNotFoundError(
            f"image folder {root}: no images found in {root}/<class>/ ({', '.join(IMAGE_EXTENSIONS)})"
        )
    sl = check_slice(len(files), limit, offset)
    images = []
    for p in files[sl]:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except Exception as err:
            raise DatasetError(f"{p}: cannot decode image ({type(err).__name__}: {err})") from err
    if mode == "auto":
        mode = "L" if all(im.mode in ("L", "1", "I;16") for im in images) else "RGB"
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'auto', 'L' or 'RGB', got {mode!r}")
    arrays = [_to_uint8(im, mode) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DatasetError(f"image folder {root}: images have different sizes {sorted(sizes)}; resize them first")
    x = np.stack(arrays) if arrays else np.zeros((0, 1, 1), np.uint8)
    y = np.asarray(labels[sl], dtype=np.int64)
    return ImageDataset(to_images(x, str(root)), to_labels(y, str(root)), classes, name, split, str(root))


def _to_uint8(im, mode: str) -> np.ndarray:
    if mode == "L" and im.mode == "I;16":  # 16-bit grayscale: keep the high byte
        return (np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)
    return np.asarray(im.convert(mode), dtype=np.uint8)
