"""Model definitions of the zoo. Every model built by :func:`sinkhorn_attacks.zoo.load` takes images in [0, 1].

* :func:`mnist_cnn`: the small CNN of Wong & Kolter's convex-adversarial work, shared by the Wong 2019,
  Hu 2020 and Wu 2020 MNIST checkpoints (``state_dict`` keys ``0.*, 2.*, 5.*, 7.*``; raw pixels, no
  normalisation).
* :func:`resnet18_cifar`: ResNet-18 in the layout of kuangliu/pytorch-cifar (``conv1``, ``bn1``,
  ``layer1..4`` of :class:`BasicBlock` with a ``shortcut`` Sequential, ``linear``), the layout of the
  CIFAR-10 checkpoints of the same three papers. They expect normalised input: wrap with :class:`Normalize`.
* :func:`resnet18_tiny`: the same design for 64 x 64 Tiny ImageNet (200 classes), narrower by default.
* :func:`resnet9_cifar`: a narrow ResNet-9 (Page 2018, the DAWNBench CIFAR-10 network) with the CIFAR-10
  normalisation inside, so that it takes [0, 1] images; the architecture of this library's CIFAR-10 models.
* ``lite0_tinyimagenet``: EfficientNet-Lite0 (ImageNet-1k weights from an optional package) as a 200-way
  Tiny ImageNet classifier on 64 x 64 images (:mod:`sinkhorn_attacks.zoo.efficientnet`).
* :func:`small_cnn`: a tiny CNN for the 8 x 8 scikit-learn digits (the offline demo).
* :class:`Binarize` and :class:`Normalize`: input transforms; :class:`Preprocessed` chains one in front of a
  network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._util import Registry

#: CIFAR-10 normalisation used by the Wong / Hu / Wu training scripts (the std is the widely copied
#: (0.2023, 0.1994, 0.2010), not the true per-channel std).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
#: Tiny ImageNet training-set mean / std.
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)


def mnist_cnn() -> nn.Sequential:
    """The MNIST CNN of the published checkpoints: two stride-2 4x4 convolutions, then 1568 -> 100 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


class _StraightThroughThreshold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: float) -> torch.Tensor:
        return (x >= threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class Binarize(nn.Module):
    """``(x >= threshold).float()`` in the forward pass, the identity in the backward pass.

    Thresholding has zero gradient almost everywhere, which would make every gradient attack on the
    binarized model fail trivially (gradient masking). Like the published evaluations we use the
    straight-through estimator: the gradient with respect to ``x`` is taken as if the layer were the
    identity (BPDA, Athalye et al. 2018). Set ``straight_through=False`` for the true (zero) gradient.
    """

    def __init__(self, threshold: float = 0.5, straight_through: bool = True) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.straight_through = straight_through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            return _StraightThroughThreshold.apply(x, self.threshold)
        return (x >= self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, straight_through={self.straight_through}"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, so that a network trained on normalised input takes [0, 1] images.

    The constants are non-persistent buffers: they follow ``.to(device)`` but are not in the ``state_dict``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have equal length and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"


class Preprocessed(nn.Module):
    """``net(preprocess(x))``: an input transform (``Binarize``, ``Normalize``, ...) in front of a network.

    The network's parameters live under ``net.`` so that ``model.net.load_state_dict(checkpoint)`` takes a
    checkpoint of the bare network.
    """

    def __init__(self, preprocess: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN ``shortcut`` when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem (no max-pool), four stages of :class:`BasicBlock`, global average pool.

    With ``width=64`` and ``blocks=(2, 2, 2, 2)`` this is ResNet-18 with the parameter names of
    kuangliu/pytorch-cifar. Global average pooling makes it work for any input size; for 32 x 32 input it
    equals that code's ``avg_pool2d(out, 4)``.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, blocks[0], 1)
        self.layer2 = self._make_layer(2 * width, blocks[1], 2)
        self.layer3 = self._make_layer(4 * width, blocks[2], 2)
        self.layer4 = self._make_layer(8 * width, blocks[3], 2)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18_cifar(num_classes: int = 10) -> ResNet:
    """ResNet-18 for 32 x 32 CIFAR images (11.2 M parameters), kuangliu/pytorch-cifar parameter names.

    Takes *normalised* input; use ``Preprocessed(Normalize(CIFAR10_MEAN, CIFAR10_STD), net)`` for [0, 1].
    """
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=64)


def resnet18_tiny(num_classes: int = 200, width: int = 32) -> ResNet:
    """A small ResNet-18 for 64 x 64 Tiny ImageNet (``width=32``: 2.8 M parameters; stages at 64, 32, 16, 8 px)."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BN-ReLU layers of the same width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(width, width), _conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 of Page (2018): a conv stem, three stages ``conv-BN-ReLU -> max-pool 2`` (widths ``2w, 4w, 8w``)
    with a residual block after the first and the last, global max-pool, and a linear layer scaled by 1/8.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        w = (width, 2 * width, 4 * width, 8 * width)
        self.stem = _conv_bn(in_channels, w[0])
        self.stage1 = nn.Sequential(_conv_bn(w[0], w[1]), nn.MaxPool2d(2), _Residual(w[1]))
        self.stage2 = nn.Sequential(_conv_bn(w[1], w[2]), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(_conv_bn(w[2], w[3]), nn.MaxPool2d(2), _Residual(w[3]))
        self.linear = nn.Linear(w[3], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.linear(F.adaptive_max_pool2d(out, 1).flatten(1)) * 0.125


def resnet9_cifar(num_classes: int = 10, width: int = 24) -> Preprocessed:
    """ResNet-9 with the CIFAR-10 normalisation in front: takes [0, 1] images (``width=24``: 0.93 M parameters,
    about 115 CPU s per epoch of 20,000 images on one thread)."""
    return Preprocessed(Normalize(CIFAR10_MEAN, CIFAR10_STD), ResNet9(num_classes, width))


def small_cnn(in_ch: int = 1, n_classes: int = 10, size: int = 8) -> nn.Sequential:
    """A tiny CNN for small images (the 8 x 8 digits): conv 3x3 (16) -> conv 3x3 stride 2 (32) -> 64 -> classes."""
    half = math.ceil(size / 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * half * half, 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def _lite0_tinyimagenet(input_size: int = 160, trainable: str = "top") -> nn.Module:
    from .efficientnet import lite0_tinyimagenet  # needs the optional EfficientNet packages

    return lite0_tinyimagenet(input_size, trainable)


#: Architecture names accepted by ``zoo.load(path, arch=...)`` and :func:`build`.
ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry(
    "architecture",
    [("mnist_cnn", mnist_cnn), ("resnet18_cifar", resnet18_cifar), ("resnet18_tiny", resnet18_tiny),
     ("resnet9_cifar", resnet9_cifar), ("small_cnn", small_cnn), ("lite0_tinyimagenet", _lite0_tinyimagenet)],
)  # fmt: skip


def build(arch: str, **kwargs) -> nn.Module:
    """Instantiate architecture ``arch`` (a key of :data:`ARCHITECTURES`)."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None
    return factory(**kwargs)
