"""The dual encoder: frozen backbones + trainable linear projection heads to a shared space.

``encode_image(x) = W_img . f_img(x) + b_img`` and ``encode_text(t) = W_txt . f_txt(t) + b_txt`` (both
``embed_dim``-d, 512 by default, **not** normalised: CMPM uses their norms). The optional CMPC classifier
(``W in R^{d x C}``) is part of the heads so that checkpoints carry it (CMPC as an attack loss needs it).

This mirrors the thesis (BERT / ResNet-152 + Linear->512, trained with CMPM + CMPC) with MiniLM-L6 and
EfficientNet-Lite0 as the frozen backbones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .._util import atomic_write
from .encoders import ImageBackbone, TextBackbone
from .losses import CMPCClassifier

__all__ = ["DualEncoderProtocol", "ProjectionHeads", "DualEncoder", "ImageTower", "save_heads", "load_heads"]


@runtime_checkable
class DualEncoderProtocol(Protocol):
    """What the retrieval code needs from a model (any ``nn.Module`` with these members works)."""

    embed_dim: int

    def encode_image(self, x: Tensor) -> Tensor:
        """``x`` in ``[0, 1]``, ``(B, C, H, W)`` -> ``(B, embed_dim)``; differentiable in ``x``."""
        ...

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``N`` strings -> ``(N, embed_dim)``."""
        ...


class ProjectionHeads(nn.Module):
    """``Linear(image_dim -> embed_dim)``, ``Linear(text_dim -> embed_dim)`` and an optional CMPC classifier."""

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int = 512, num_classes: int | None = None, seed: int | None = 0
    ) -> None:
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.image = nn.Linear(image_dim, embed_dim)
        self.text = nn.Linear(text_dim, embed_dim)
        self.cmpc = CMPCClassifier(embed_dim, num_classes, seed=seed) if num_classes else None
        self.image_dim, self.text_dim, self.embed_dim = int(image_dim), int(text_dim), int(embed_dim)

    def config(self) -> dict[str, Any]:
        return {
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "embed_dim": self.embed_dim,
            "num_classes": self.cmpc.num_classes if self.cmpc is not None else None,
        }


class DualEncoder(nn.Module):
    """Frozen image/text backbones + :class:`ProjectionHeads`; ``forward(x) = encode_image(x)``."""

    def __init__(self, image_backbone: ImageBackbone, text_backbone: TextBackbone, heads: ProjectionHeads) -> None:
        super().__init__()
        if image_backbone.feature_dim != heads.image_dim or text_backbone.feature_dim != heads.text_dim:
            raise ValueError(
                f"backbone dims ({image_backbone.feature_dim}, {text_backbone.feature_dim}) do not "
                f"match the heads ({heads.image_dim}, {heads.text_dim})"
            )
        self.image_backbone = image_backbone
        self.text_backbone = text_backbone
        self.heads = heads

    @property
    def embed_dim(self) -> int:
        return self.heads.embed_dim

    @property
    def cmpc_weight(self) -> Tensor | None:
        return None if self.heads.cmpc is None else self.heads.cmpc.weight

    def encode_image_features(self, feats: Tensor) -> Tensor:
        return self.heads.image(feats)

    def encode_text_features(self, feats: Tensor) -> Tensor:
        return self.heads.text(feats)

    def encode_image(self, x: Tensor) -> Tensor:
        return self.heads.image(self.image_backbone(x))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.heads.text(self.text_backbone.encode(list(texts)))

    def forward(self, x: Tensor) -> Tensor:
        return self.encode_image(x)

    def image_tower(self) -> ImageTower:
        """A frozen, eval-mode module ``x -> encode_image(x)`` to hand to an attack."""
        return ImageTower(self)


class ImageTower(nn.Module):
    """``x -> model.encode_image(x)`` with every parameter frozen and eval mode forced (the attack's model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ImageTower:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode_image(x)


def save_heads(path: str | Path, heads: ProjectionHeads, meta: dict[str, Any] | None = None) -> Path:
    """Save the heads (with the CMPC ``W``) and metadata atomically (:func:`sinkhorn_attacks._util.atomic_write`)."""
    path = Path(path)
    blob = {
        "format": "sinkhorn_attacks.retrieval.heads/1",
        "config": heads.config(),
        "state_dict": heads.state_dict(),
        "meta": dict(meta or {}),
    }
    atomic_write(path, lambda f: torch.save(blob, f))
    return path


def load_heads(path: str | Path) -> tuple[ProjectionHeads, dict[str, Any]]:
    """Load :func:`save_heads` output: ``(heads, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"retrieval heads checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(blob, dict) or blob.get("format") != "sinkhorn_attacks.retrieval.heads/1":
        raise ValueError(f"{path} is not a retrieval heads checkpoint")
    heads = ProjectionHeads(**blob["config"], seed=None)
    heads.load_state_dict(blob["state_dict"])
    return heads.eval(), blob["meta"]
