"""TEST DOUBLE -- a pure-torch CPU stand-in for the C++ extension ``sparse_tensor_cpp`` of Wu et al.'s code.

Used only by ``benchmarks/peers_wu.py`` to run the authors' attack loops (watml/fast-wasserstein-adversarial)
on a machine without their compiled extension. It is written from the extension's documented behaviour, not
copied: the three functions build index/value arrays of a k x k local cost and of the identity coupling.

Layout (per source pixel ``i = h1 * W + w1`` and window position ``(k1, k2)`` in row-major order, target
``(h1 + k1 - r, w1 + k2 - r)`` with ``r = k // 2``):

* cost value: Euclidean distance of the two pixels if the target is inside the image, else ``inf``;
* target index: wrapped modulo ``H``/``W`` (the ``inf`` cost blocks that transport);
* coupling value: ``X[b, c, i]`` on the zero offset, 0 elsewhere.

Not part of the library; never import it from ``sinkhorn_attacks``.
"""

from __future__ import annotations

import torch

__all__ = ["initialize_dense_cost_cpp", "initialize_sparse_cost_cpp", "initialize_sparse_coupling_cpp"]


def _window(height: int, width: int, kernel_size: int):
    if kernel_size % 2 != 1:
        raise ValueError("kernel_size must be odd")
    r = kernel_size // 2
    h1, w1 = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    k1, k2 = torch.meshgrid(torch.arange(kernel_size), torch.arange(kernel_size), indexing="ij")
    h2 = h1.reshape(-1, 1) + k1.reshape(1, -1) - r  # (HW, k*k)
    w2 = w1.reshape(-1, 1) + k2.reshape(1, -1) - r
    src = (h1 * width + w1).reshape(-1, 1).expand_as(h2)
    dst = (h2 % height) * width + (w2 % width)
    inside = (h2 >= 0) & (h2 < height) & (w2 >= 0) & (w2 < width)
    dist = torch.sqrt(((h2 - h1.reshape(-1, 1)) ** 2 + (w2 - w1.reshape(-1, 1)) ** 2).float())
    return src, dst, inside, dist


def initialize_sparse_cost_cpp(height: int, width: int, kernel_size: int, inf: float):
    """``(indices (2, HW k^2) int64, values (HW k^2,) float32)`` of the local Euclidean cost."""
    src, dst, inside, dist = _window(height, width, kernel_size)
    values = torch.where(inside, dist, torch.full_like(dist, float(inf)))
    return torch.stack([src.reshape(-1), dst.reshape(-1)]).long(), values.reshape(-1).float()


def initialize_sparse_coupling_cpp(X: torch.Tensor, kernel_size: int):
    """``(indices (4, B C HW k^2), values)`` of the identity coupling ``pi_ii = x_i``."""
    b, c, h, w = X.shape
    src, dst, _, _ = _window(h, w, kernel_size)
    kk = kernel_size * kernel_size
    zero = (kernel_size // 2) * kernel_size + kernel_size // 2  # window position of the zero offset
    values = torch.zeros(b, c, h * w, kk, dtype=torch.float32)
    values[..., zero] = X.detach().to("cpu", torch.float32).reshape(b, c, h * w)
    bi = torch.arange(b).reshape(b, 1, 1, 1).expand(b, c, h * w, kk)
    ci = torch.arange(c).reshape(1, c, 1, 1).expand(b, c, h * w, kk)
    si = src.reshape(1, 1, h * w, kk).expand(b, c, h * w, kk)
    di = dst.reshape(1, 1, h * w, kk).expand(b, c, h * w, kk)
    indices = torch.stack([bi.reshape(-1), ci.reshape(-1), si.reshape(-1), di.reshape(-1)]).long()
    return indices, values.reshape(-1)


def initialize_dense_cost_cpp(height: int, width: int) -> torch.Tensor:
    """Dense ``(HW, HW)`` Euclidean pixel-distance matrix."""
    ii, jj = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    p = torch.stack([ii.reshape(-1), jj.reshape(-1)], 1).float()
    return torch.cdist(p, p)
