"""Training the projection heads with ``L = L_cmpm + L_cmpc`` on cached backbone features.

Because both backbones are frozen, one epoch only touches two linear layers and the CMPC classifier,
which takes seconds to minutes on a CPU. A batch is ``batch_size`` random captions of the training split
together with the feature of each caption's own image; the CMPM mask is built from the labels (so two
captions of the same image in one batch are both positives), and CMPC classifies into the training
labels (one class per training image for Flickr8k, one per person for CUHK-PEDES).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .losses import cmpm_cmpc_loss
from .model import ProjectionHeads

__all__ = ["TrainConfig", "train_heads", "embed_features"]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_heads` (defaults: the verified Flickr8k prototype)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 4e-5
    embed_dim: int = 512
    use_cmpc: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def embed_features(heads: ProjectionHeads, img_feats: Tensor, txt_feats: Tensor) -> tuple[Tensor, Tensor]:
    """Project cached features: ``(heads.image(img_feats), heads.text(txt_feats))``."""
    heads.eval()
    return heads.image(img_feats.float()), heads.text(txt_feats.float())


def _fmt_item(k: str, v: Any) -> str:
    if isinstance(v, float):
        return f"{k}={v:.4g}"
    if isinstance(v, dict):  # R@K per direction
        inner = " ".join(
            f"{d}:{'/'.join(f'{x:.1f}' for x in r.values() if isinstance(x, (int, float)))}"
            if isinstance(r, dict)
            else f"{d}={r}"
            for d, r in v.items()
        )
        return f"{k}=[{inner}]"
    return f"{k}={v}"


def train_heads(
    img_feats: Tensor,
    txt_feats: Tensor,
    caption_image: np.ndarray | Tensor,
    image_labels: np.ndarray | Tensor,
    config: TrainConfig | None = None,
    heads: ProjectionHeads | None = None,
    eval_fn: Callable[[ProjectionHeads], dict] | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[ProjectionHeads, list[dict]]:
    """Train projection heads on cached features.

    Args:
        img_feats: ``(n_images, F_img)`` features of the training images.
        txt_feats: ``(n_captions, F_txt)`` features of the training captions.
        caption_image: ``(n_captions,)`` index of each caption's image.
        image_labels: ``(n_images,)`` training labels ``0 .. C-1`` (CMPM mask and CMPC classes).
        config: :class:`TrainConfig`.
        heads: heads to continue training (default: new heads, with a CMPC classifier over ``C`` classes
            when ``config.use_cmpc``).
        eval_fn: called after every epoch with the heads (in eval mode); its dict is logged and stored.
        log: printer (``None`` for silence).
    Returns:
        ``(heads, history)``; ``history`` has one dict per epoch (losses, time, ``eval_fn`` output).
    """
    cfg = config or TrainConfig()
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.int64)
    labels = torch.as_tensor(np.asarray(image_labels), dtype=torch.int64)
    n_classes = int(labels.max()) + 1
    if heads is None:
        heads = ProjectionHeads(
            img_feats.shape[1],
            txt_feats.shape[1],
            cfg.embed_dim,
            num_classes=n_classes if cfg.use_cmpc else None,
            seed=cfg.seed,
        )
    params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    img_feats, txt_feats = img_feats.float(), txt_feats.float()
    history: list[dict] = []
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        heads.train()
        perm = torch.randperm(txt_feats.shape[0], generator=g)
        sums: dict[str, float] = {}
        n_b = 0
        for s in range(0, perm.numel(), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            if b.numel() < 2:
                continue
            ii = cap_img[b]
            x = heads.image(img_feats[ii])
            z = heads.text(txt_feats[b])
            loss, parts = cmpm_cmpc_loss(x, z, labels[ii], heads.cmpc if cfg.use_cmpc else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_b += 1
        rec: dict = {
            "epoch": epoch,
            "time_s": round(time.time() - t0, 1),
            **{k: v / max(n_b, 1) for k, v in sums.items()},
        }
        heads.eval()
        if eval_fn is not None:
            rec["eval"] = eval_fn(heads)
        history.append(rec)
        if log is not None:
            log(f"epoch {epoch}: " + ", ".join(_fmt_item(k, v) for k, v in rec.items() if k != "epoch"))
    heads.eval()
    return heads, history
