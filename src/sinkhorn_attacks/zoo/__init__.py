"""Model zoo: architectures, the published Wasserstein-robustness checkpoints, and a checked loader.

>>> from sinkhorn_attacks import zoo
>>> zoo.names()                                   # doctest: +SKIP
['wong2019-mnist-vanilla', 'wong2019-mnist-adv', ...]
>>> model = zoo.load("wong2019-mnist-adv")        # doctest: +SKIP  (eval mode, takes [0, 1] images)
>>> model = zoo.load("my.pth", arch="mnist_cnn")  # doctest: +SKIP

Every model returned by :func:`load` takes images in [0, 1]: input transforms (binarization, mean/std
normalisation) are part of the returned module. The binarized model's threshold passes gradients straight
through (identity), so gradient attacks on it are BPDA attacks, as in the published evaluations.
See :mod:`sinkhorn_attacks.zoo.registry` for where checkpoints are looked for and how they are verified.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .loading import infer_arch, load_state_dict_any, load_weights
from .models import (
    ARCHITECTURES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD,
    BasicBlock,
    Binarize,
    Normalize,
    Preprocessed,
    ResNet,
    build,
    mnist_cnn,
    resnet9_cifar,
    resnet18_cifar,
    resnet18_tiny,
    small_cnn,
)
from .registry import ENV_MODELS, REGISTRY, ZooEntry, default_cache_dir, info, locate, names

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".t7", ".ckpt", ".bin")


def _wrap(net: nn.Module, binarize: bool, mean, std) -> nn.Module:
    transforms: list[nn.Module] = []
    if binarize:
        transforms.append(Binarize())
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("give both mean and std (or neither)")
        transforms.append(Normalize(mean, std))
    if not transforms:
        return net
    return Preprocessed(transforms[0] if len(transforms) == 1 else nn.Sequential(*transforms), net)


def load(
    name_or_path: str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    verify: bool = True,
    device: str | torch.device = "cpu",
    binarize: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Build a model and load its weights; returned in eval mode on ``device``, taking [0, 1] input.

    Args:
        name_or_path: a registry name (see :func:`names`) or the path of a checkpoint file.
        path: for a registry name, load this local file instead of searching (it is still verified).
        arch: for a plain path, the architecture (:data:`ARCHITECTURES`); inferred from the keys if omitted.
        models_dir: folder searched before the cache (default ``$SINKHORN_ATTACKS_MODELS``).
        cache_dir: download cache (default ``~/.cache/sinkhorn-attacks/models``).
        download: allow downloading a registry checkpoint that is not found locally.
        verify: check a registry checkpoint's checksum (a mismatch raises); ``False`` skips the check.
        binarize, mean, std: for a plain path, the input transforms to put in front of the network.
        progress: show a download progress bar.

    Raises:
        ValueError: unknown name (the message lists the known ones), unreadable file or wrong layout.
        FileNotFoundError: the checkpoint is missing and cannot be downloaded (says where to put it).
    """
    key = os.fspath(name_or_path)
    if key in REGISTRY:
        entry = REGISTRY[key]
        file = locate(
            key,
            path=path,
            models_dir=models_dir,
            cache_dir=cache_dir,
            download=download,
            verify=verify,
            progress=progress,
        )
        net = build(entry.arch, **entry.arch_kwargs)
        load_weights(net, load_state_dict_any(file), source=str(file))
        model = _wrap(net, entry.binarize, entry.mean, entry.std)
    elif Path(key).expanduser().is_file() or key.endswith(_CHECKPOINT_SUFFIXES) or os.sep in key:
        file = Path(key).expanduser()
        if path is not None:
            raise ValueError("path= is only for registry names; pass the checkpoint path as the first argument")
        sd = load_state_dict_any(file)
        kwargs: dict = {}
        if arch is None:
            guess = infer_arch(sd)
            if guess is None:
                raise ValueError(
                    f"{file}: cannot infer the architecture; pass arch= (one of {', '.join(ARCHITECTURES)})"
                )
            arch, kwargs = guess
        net = build(arch, **kwargs)
        load_weights(net, sd, source=str(file))
        model = _wrap(net, binarize, mean, std)
    else:
        raise ValueError(
            f"unknown model {key!r} (not a registry name nor an existing file); known: {', '.join(REGISTRY)}"
        )
    return model.to(device).eval()


def load_model(name: str, **kwargs) -> nn.Module:
    """RobustBench-style spelling of :func:`load` for a registry name: prints the model's card (what it is,
    its measured clean accuracy, whether and where it is available offline) once to stderr, then loads it."""
    import sys

    print(info(name).describe(), file=sys.stderr)
    return load(name, **kwargs)


__all__ = [
    "ARCHITECTURES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ENV_MODELS",
    "REGISTRY",
    "TINY_IMAGENET_MEAN",
    "TINY_IMAGENET_STD",
    "BasicBlock",
    "Binarize",
    "Normalize",
    "Preprocessed",
    "ResNet",
    "ZooEntry",
    "build",
    "default_cache_dir",
    "infer_arch",
    "info",
    "load",
    "load_model",
    "load_state_dict_any",
    "load_weights",
    "locate",
    "mnist_cnn",
    "names",
    "resnet9_cifar",
    "resnet18_cifar",
    "resnet18_tiny",
    "small_cnn",
]
