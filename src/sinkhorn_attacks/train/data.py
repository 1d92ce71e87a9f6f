"""Training data as in-memory tensors: the library's datasets, plus a seeded ``synthetic`` set for tests."""

from __future__ import annotations

import torch

__all__ = ["load_train_test", "synthetic"]


def synthetic(
    n: int, seed: int, channels: int = 1, size: int = 8, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images in [0, 1] with labels from a fixed random linear rule (learnable, no files)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g)
    w = torch.randn(classes, channels * size * size, generator=torch.Generator().manual_seed(12345))
    y = (x.flatten(1) - 0.5).matmul(w.T).argmax(1)
    return x, y


def load_train_test(
    dataset: str,
    data_dir: str | None,
    train_limit: int | None,
    train_offset: int,
    eval_limit: int,
    train_stride: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(train_x, train_y, test_x, test_y)``; the test part is ``None`` when ``eval_limit`` is 0.

    The training images are ``train[offset::stride][:limit]`` (a stride spreads a limit over a class-sorted set).

    ``dataset="synthetic"`` (or ``synthetic:C:S``, ``C`` channels of ``S x S``) needs no files.
    """
    if dataset.startswith("synthetic"):
        parts = dataset.split(":")
        ch = int(parts[1]) if len(parts) > 1 else 1
        size = int(parts[2]) if len(parts) > 2 else 8
        n = train_limit if train_limit is not None else 512
        x, y = synthetic(n * train_stride + train_offset, seed=1, channels=ch, size=size)
        x, y = x[train_offset::train_stride][:n], y[train_offset::train_stride][:n]
        tx, ty = synthetic(eval_limit, seed=2, channels=ch, size=size) if eval_limit else (None, None)
        return x, y, tx, ty
    from ..data import load_dataset

    if train_stride > 1:
        tr = load_dataset(dataset, "train", data_dir, offset=train_offset)
        train_x, train_y = tr.images[::train_stride][:train_limit], tr.labels[::train_stride][:train_limit]
    else:
        tr = load_dataset(dataset, "train", data_dir, limit=train_limit, offset=train_offset)
        train_x, train_y = tr.images, tr.labels
    tx = ty = None
    if eval_limit:
        te = load_dataset(dataset, "test", data_dir, limit=eval_limit)
        tx, ty = te.images, te.labels
    return train_x, train_y, tx, ty
