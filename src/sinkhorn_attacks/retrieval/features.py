"""Cached backbone features: the frozen towers are run once per (backbone, data, image size).

Text features of every caption and image features of every gallery image are stored as ``.npy`` files
under a cache folder (``$SINKHORN_ATTACKS_CACHE/retrieval`` or ``~/.cache/sinkhorn_attacks/retrieval``),
keyed by a hash of the backbone name, the image size and the exact list of captions / image names, and
written atomically (temporary file + ``os.replace``) so an interrupted run never leaves a corrupt cache.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .._util import atomic_write
from ..data.captions import RetrievalData
from .encoders import ImageBackbone, TextBackbone

__all__ = ["default_cache_dir", "cache_key", "data_identity", "image_features", "text_features", "atomic_save_npy"]


def default_cache_dir() -> Path:
    """``$SINKHORN_ATTACKS_CACHE/retrieval`` if set, else ``~/.cache/sinkhorn_attacks/retrieval``."""
    base = os.environ.get("SINKHORN_ATTACKS_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "sinkhorn_attacks"
    return root / "retrieval"


def cache_key(*parts: object) -> str:
    """A short stable hash of ``parts`` (strings, numbers or sequences of strings)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (list, tuple)):
            for q in p:
                h.update(str(q).encode("utf-8"))
                h.update(b"\x1f")
        else:
            h.update(str(p).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:20]


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically (:func:`sinkhorn_attacks._util.atomic_write`)."""
    atomic_write(path, lambda fh: np.save(fh, array))


def _cached(path: Path | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    if path is not None and path.is_file():
        return np.load(path)
    arr = compute()
    if path is not None:
        atomic_save_npy(path, arr)
    return arr


def text_features(
    backbone: TextBackbone, captions: Sequence[str], cache_dir: Path | None | bool = None, batch_size: int = 256
) -> torch.Tensor:
    """``(N, F)`` float32 features of ``captions``; cached unless ``cache_dir is False``."""
    path = None
    if cache_dir is not False:
        d = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        path = d / f"text_{backbone.name}_{cache_key(backbone.name, list(captions))}.npy"
    return torch.from_numpy(_cached(path, lambda: backbone.encode(list(captions), batch_size).numpy()))


@torch.no_grad()
def image_features(
    backbone: ImageBackbone,
    data: RetrievalData,
    size: int | None = None,
    cache_dir: Path | None | bool = None,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """``(n_images, F)`` float32 features of the gallery images of ``data`` at ``size`` px; cached.

    Partial progress is not kept; the whole array is written once at the end.
    """
    path = None
    if cache_dir is not False:
        d = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        path = d / f"image_{backbone.name}_{size}_{cache_key(backbone.name, size, data.image_names)}.npy"

    def compute() -> np.ndarray:
        backbone.eval()
        out = []
        t0 = time.time()
        for s in range(0, data.n_images, batch_size):
            x = data.load_images(range(s, min(s + batch_size, data.n_images)), size=size)
            out.append(backbone(x).float())
            if log is not None and (s // batch_size) % 10 == 0:
                log(f"image features {s + x.shape[0]}/{data.n_images} ({time.time() - t0:.0f}s)")
        return torch.cat(out).numpy() if out else np.zeros((0, backbone.feature_dim), np.float32)

    return torch.from_numpy(_cached(path, compute))


def data_identity(ds: RetrievalData) -> str:
    """A hash of the split's image ids, captions and caption owners (the data a run folder was made with)."""
    return cache_key(ds.name, list(ds.image_names), list(ds.captions), ds.caption_image.tolist())
