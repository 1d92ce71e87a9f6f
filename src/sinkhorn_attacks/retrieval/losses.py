r"""Cross-modal projection losses of Zhang & Lu (ECCV 2018): CMPM and CMPC.

Notation: a batch of image embeddings ``x_i`` (``i = 1..n``) and text embeddings ``z_j`` (``j = 1..m``) in
``R^d`` (the projected, **un-normalised** 512-d vectors), with integer labels; ``y_ij = 1`` when image ``i``
and text ``j`` carry the same label (same image for Flickr/COCO, same person for CUHK-PEDES), else 0.
``\bar v = v / ||v||``.

**CMPM** (cross-modal projection matching). The image-to-text matching distribution is the softmax of the
*scalar projections* of ``x_i`` on the normalised texts; the target is the label mask normalised to sum 1
(L1, so several positives share the mass evenly)::

    p_ij = exp(x_i . zbar_j) / sum_k exp(x_i . zbar_k)
    q_ij = y_ij / sum_k y_ik
    L_i2t = (1/n) sum_i sum_j p_ij * log(p_ij / (q_ij + eps))          # KL(p_i || q_i)
    L_t2i = the same with the roles swapped: softmax_k of z_j . xbar_k, target y_kj / sum_l y_lj
    L_cmpm = L_i2t + L_t2i

There is no temperature: ``||x_i||`` (resp. ``||z_j||``) acts as the inverse temperature. ``eps = 1e-8``
keeps ``log q`` finite for negatives (a negative with mass ``p`` costs about ``p * 18.4`` nats).

**CMPC** (cross-modal projection classification). Each embedding is replaced by its *vector projection*
onto the normalised partner of its own pair and classified by a norm-softmax layer (columns of
``W in R^{d x C}`` normalised to 1, no bias; the features are not normalised)::

    xhat_i = (x_i . zbar_i) zbar_i          zhat_i = (z_i . xbar_i) xbar_i
    Wbar_c = W_c / ||W_c||
    L_ipt = -(1/n) sum_i log softmax_c(Wbar^T xhat_i)[y_i]
    L_tpi = -(1/n) sum_i log softmax_c(Wbar^T zhat_i)[y_i]
    L_cmpc = L_ipt + L_tpi

CMPC needs paired rows (``x_i`` and ``z_i`` describe the same pair) and ``C`` training classes (person ids,
or one class per training image for Flickr). The training objective of the paper and the thesis is
``L = L_cmpm + L_cmpc``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "match_mask",
    "cmpm_terms",
    "cmpm_loss",
    "cmpc_terms",
    "cmpc_loss",
    "CMPCClassifier",
    "cmpm_cmpc_loss",
    "CMPM_EPS",
]

CMPM_EPS = 1e-8


def match_mask(row_labels: Tensor, col_labels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``y[i, j] = 1`` if ``row_labels[i] == col_labels[j]`` else 0, shape ``(n, m)``."""
    return (row_labels.reshape(-1, 1) == col_labels.reshape(1, -1)).to(dtype)


def _kl_rows(logits: Tensor, mask: Tensor, eps: float) -> Tensor:
    """Row-wise ``KL(softmax(logits) || mask / rowsum(mask))`` with ``eps`` inside the target's log."""
    log_p = F.log_softmax(logits, dim=1)
    q = mask / mask.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (log_p.exp() * (log_p - torch.log(q + eps))).sum(dim=1)


def cmpm_terms(
    img: Tensor, txt: Tensor, img_labels: Tensor, txt_labels: Tensor | None = None, eps: float = CMPM_EPS
) -> tuple[Tensor, Tensor]:
    """Per-row CMPM terms: ``(KL_i for each image (n,), KL_j for each text (m,))``.

    Args:
        img: ``(n, d)`` image embeddings (not normalised).
        txt: ``(m, d)`` text embeddings (not normalised).
        img_labels: ``(n,)`` labels.
        txt_labels: ``(m,)`` labels; default ``img_labels`` (a paired batch, ``m == n``).
        eps: the constant inside ``log(q + eps)``.
    """
    if txt_labels is None:
        if txt.shape[0] != img.shape[0]:
            raise ValueError("txt_labels is required when the numbers of images and texts differ")
        txt_labels = img_labels
    y = match_mask(img_labels, txt_labels, img.dtype)
    i2t = _kl_rows(img @ F.normalize(txt, dim=1).T, y, eps)
    t2i = _kl_rows(txt @ F.normalize(img, dim=1).T, y.T, eps)
    return i2t, t2i


def cmpm_loss(
    img: Tensor, txt: Tensor, img_labels: Tensor, txt_labels: Tensor | None = None, eps: float = CMPM_EPS
) -> Tensor:
    """``L_cmpm = mean_i KL(p_i || q_i) + mean_j KL(p'_j || q'_j)`` (see the module docstring)."""
    i2t, t2i = cmpm_terms(img, txt, img_labels, txt_labels, eps)
    return i2t.mean() + t2i.mean()


class CMPCClassifier(nn.Module):
    """Norm-softmax classifier for CMPC: ``logits = f @ (W / ||W||_col)``, ``W`` is ``(d, C)``, no bias."""

    def __init__(self, dim: int, num_classes: int, seed: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.weight = nn.Parameter(torch.randn(dim, num_classes, generator=g) * 0.02)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[1])

    def normalized_weight(self) -> Tensor:
        """``Wbar`` with unit-norm columns."""
        return F.normalize(self.weight, dim=0)

    def forward(self, features: Tensor) -> Tensor:
        return features @ self.normalized_weight()


def cmpc_terms(img: Tensor, txt: Tensor, labels: Tensor, weight: Tensor | CMPCClassifier) -> tuple[Tensor, Tensor]:
    """Per-pair CMPC cross-entropies ``(ipt (n,), tpi (n,))`` for paired rows ``img[i] <-> txt[i]``.

    ``weight`` is the raw ``(d, C)`` matrix (its columns are normalised here) or a :class:`CMPCClassifier`.
    """
    if img.shape != txt.shape:
        raise ValueError(f"CMPC needs paired rows: img {tuple(img.shape)} vs txt {tuple(txt.shape)}")
    w = weight.normalized_weight() if isinstance(weight, CMPCClassifier) else F.normalize(weight, dim=0)
    zbar = F.normalize(txt, dim=1)
    xbar = F.normalize(img, dim=1)
    x_hat = (img * zbar).sum(1, keepdim=True) * zbar
    z_hat = (txt * xbar).sum(1, keepdim=True) * xbar
    ipt = F.cross_entropy(x_hat @ w, labels, reduction="none")
    tpi = F.cross_entropy(z_hat @ w, labels, reduction="none")
    return ipt, tpi


def cmpc_loss(img: Tensor, txt: Tensor, labels: Tensor, weight: Tensor | CMPCClassifier) -> Tensor:
    """``L_cmpc = mean_i CE(Wbar^T xhat_i, y_i) + mean_i CE(Wbar^T zhat_i, y_i)``."""
    ipt, tpi = cmpc_terms(img, txt, labels, weight)
    return ipt.mean() + tpi.mean()


def cmpm_cmpc_loss(
    img: Tensor, txt: Tensor, labels: Tensor, classifier: CMPCClassifier | None = None, eps: float = CMPM_EPS
) -> tuple[Tensor, dict[str, float]]:
    """The training loss ``L_cmpm + L_cmpc`` on a paired batch (CMPC skipped if ``classifier is None``).

    Returns the scalar loss and a dict of its parts (floats, for logging).
    """
    cm = cmpm_loss(img, txt, labels, None, eps)
    parts = {"cmpm": float(cm.detach())}
    total = cm
    if classifier is not None:
        cc = cmpc_loss(img, txt, labels, classifier)
        parts["cmpc"] = float(cc.detach())
        total = total + cc
    return total, parts
