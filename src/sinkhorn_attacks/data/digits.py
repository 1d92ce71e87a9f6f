"""scikit-learn's bundled 8 x 8 digits (1,797 images, 10 classes), no download needed."""

from __future__ import annotations

import numpy as np
import torch

from ._base import ImageDataset, check_slice, to_labels

#: Fraction of each class that goes to the test split, and the seed of the split.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SEED = 0


def digits_split_indices(labels: np.ndarray, test_fraction: float = DIGITS_TEST_FRACTION, seed: int = DIGITS_SEED):
    """Stratified, seeded split: ``round(test_fraction * n_c)`` of each class ``c`` go to test.

    Returns ``(train_idx, test_idx)``, each sorted (so the original order is kept within a split).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def load_digits(
    split: str = "test",
    limit: int | None = None,
    offset: int = 0,
    *,
    test_fraction: float = DIGITS_TEST_FRACTION,
    seed: int = DIGITS_SEED,
) -> ImageDataset:
    """The digits as ``(N, 1, 8, 8)`` float32 in [0, 1] (pixel counts 0..16 divided by 16).

    ``split`` is ``"train"`` (1,347 images with the defaults), ``"test"`` (450) or ``"all"`` (1,797).
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    x = np.asarray(d.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    y = np.asarray(d.target, dtype=np.int64)
    if split == "all":
        idx = np.arange(len(y))
    elif split in ("train", "test"):
        train_idx, test_idx = digits_split_indices(y, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
    else:
        raise ValueError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
    idx = idx[check_slice(len(idx), limit, offset)]
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(x[idx])),
        to_labels(y[idx], "sklearn digits"),
        [str(i) for i in range(10)],
        "digits",
        split,
        "sklearn.datasets.load_digits",
    )
