"""Reading checkpoints in the layouts the published Wasserstein-attack repositories use.

Always ``torch.load(path, map_location="cpu", weights_only=True)``: no arbitrary code runs, and the
CUDA-saved files load on CPU-only machines. Four layouts are recognised:

* a plain ``state_dict`` (Wong's ``mnist_robust.pth``);
* ``{"state_dict": [sd]}`` (a one-element list, Wong's convex-adversarial format) or ``{"state_dict": sd}``;
* ``{"net": sd}`` with ``module.`` prefixes from ``nn.DataParallel`` (kuangliu/pytorch-cifar format);
* ``{"model_state_dict": sd}`` (Wu's adversarially trained models).
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("state_dict", "net", "model_state_dict", "model")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(f"{path}: is a git-lfs pointer, not the checkpoint; fetch the real file (git lfs pull)")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise ValueError(f"{path}: is an HTML page, not a checkpoint (a GitHub 'blob' URL instead of 'raw'?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as err:
        size = path.stat().st_size
        raise ValueError(
            f"{path}: not a readable torch checkpoint ({size} bytes; {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). The file may be truncated or corrupt: delete it and "
            "download it again."
        ) from err


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_module(sd: Mapping[str, torch.Tensor]) -> StateDict:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def load_state_dict_any(path_or_obj: str | os.PathLike[str] | Mapping[str, Any]) -> StateDict:
    """The ``state_dict`` inside a checkpoint file (or an already loaded object), whatever its layout.

    ``module.`` prefixes (``nn.DataParallel``) are removed. Raises ``ValueError`` naming the file for an
    unreadable file or an unrecognised layout, ``FileNotFoundError`` for a missing file.
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        source = str(path_or_obj)
        obj = _read(Path(path_or_obj))
    else:
        source = "<object>"
        obj = path_or_obj
    if _is_state_dict(obj):
        return _strip_module(obj)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key not in obj:
                continue
            inner = obj[key]
            if isinstance(inner, (list, tuple)):
                if len(inner) != 1:
                    raise ValueError(
                        f"{source}: '{key}' holds {len(inner)} state_dicts (a cascade of models?); expected exactly one"
                    )
                inner = inner[0]
            if _is_state_dict(inner):
                return _strip_module(inner)
            raise ValueError(f"{source}: '{key}' is a {type(inner).__name__}, not a state_dict of tensors")
        raise ValueError(
            f"{source}: unrecognised checkpoint layout; top-level keys {sorted(map(str, obj))[:12]}, expected a "
            f"state_dict or one of {list(_WRAPPER_KEYS)}"
        )
    raise ValueError(f"{source}: unrecognised checkpoint layout (a {type(obj).__name__}, expected a dict)")


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> nn.Module:
    """``model.load_state_dict(state_dict)`` with a readable error listing missing, unexpected and misshaped keys.

    BatchNorm ``num_batches_tracked`` counters missing from old checkpoints are tolerated (they do not affect
    evaluation). Returns ``model``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        arch = type(model).__name__
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_short(shapes)}")
        raise ValueError(f"{source}: does not fit the architecture ({arch}): " + "; ".join(parts))
    check_finite_weights(state_dict, source)
    model.load_state_dict(state_dict, strict=False)
    return model


def check_finite_weights(state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> None:
    """Raise ``ValueError`` naming ``source`` and the first tensors holding NaN or inf (a corrupt or
    diverged checkpoint would otherwise load and predict one class, or NaN, for every input)."""
    bad = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})"
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"{source}: the checkpoint holds non-finite weights (NaN or inf) in {_short(bad)}; it is corrupt or "
            "comes from a diverged training run: download or train it again"
        )


def _short(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, int]] | None:
    """Guess ``(architecture, kwargs)`` of a ``state_dict`` from its keys and shapes (``None`` if unknown)."""
    w0 = state_dict.get("0.weight")
    if w0 is not None and tuple(w0.shape) == (16, 1, 4, 4) and "7.weight" in state_dict:
        return "mnist_cnn", {}
    c1, lin = state_dict.get("conv1.weight"), state_dict.get("linear.weight")
    if c1 is not None and lin is not None and c1.ndim == 4 and tuple(c1.shape[2:]) == (3, 3) and lin.ndim == 2:
        width, classes = int(c1.shape[0]), int(lin.shape[0])
        if width == 64:
            return "resnet18_cifar", {"num_classes": classes}
        return "resnet18_tiny", {"num_classes": classes, "width": width}
    stem, head = state_dict.get("net.stem.0.weight"), state_dict.get("net.linear.weight")
    if stem is not None and head is not None and stem.ndim == 4 and head.ndim == 2:  # resnet9_cifar
        return "resnet9_cifar", {"num_classes": int(head.shape[0]), "width": int(stem.shape[0])}
    w2, w5, w7 = (state_dict.get(f"{i}.weight") for i in (2, 5, 7))
    if (
        w0 is not None
        and w0.ndim == 4
        and w0.shape[0] == 16
        and tuple(w0.shape[2:]) == (3, 3)
        and w2 is not None
        and w5 is not None
        and w7 is not None
    ):
        half = round(math.sqrt(w5.shape[1] / 32))
        return "small_cnn", {"in_ch": int(w0.shape[1]), "n_classes": int(w7.shape[0]), "size": 2 * half}
    return None
