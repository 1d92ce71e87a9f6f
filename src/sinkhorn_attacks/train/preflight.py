"""Checks of a training run before any work (before its folder is locked or its data loaded in full).

A value no run can use fails here with :class:`~.config.TrainConfigError` naming the field, instead of a
traceback seconds or minutes into the run: a device this machine lacks, an unknown architecture or keyword of
it, an unknown attack preset or override, a dataset that cannot be read (or a ``train_offset`` past its end),
an ``init_weights`` file that does not load into the architecture, and a model that cannot take the dataset's
images (an MNIST CNN on the 8 x 8 digits) or has fewer outputs than its labels need.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .._util import resolve_device, suggest
from .config import TrainConfig, TrainConfigError, build_model

__all__ = ["check_arch", "check_attacks", "check_model", "preflight"]


def check_arch(arch: str, kwargs: dict[str, Any]) -> None:
    """``arch`` is a zoo architecture and every key of ``kwargs`` one of its parameters."""
    from ..zoo import ARCHITECTURES

    if arch not in ARCHITECTURES:
        known = list(ARCHITECTURES)
        raise TrainConfigError("arch", f"{arch!r} is unknown{suggest(arch, known)}; known: {', '.join(known)}")
    params = inspect.signature(ARCHITECTURES[arch]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            raise TrainConfigError(
                "arch_kwargs",
                f"{key}: architecture {arch} has no parameter {key!r}{suggest(key, params)}; its parameters: "
                f"{', '.join(params) or 'none'}",
            )


def check_attacks(cfg: TrainConfig) -> None:
    """The attack preset and its overrides (training, and per-epoch evaluation), tried on a stand-in model."""
    if cfg.attack == "none":
        return
    from ..attacks import from_preset

    for field, overrides in (
        ("attack_overrides", cfg.attack_overrides),
        ("eval_attack_overrides", {**cfg.attack_overrides, **cfg.eval_attack_overrides}),
    ):
        try:
            from_preset(cfg.attack, nn.Identity(), **{"meter_cost": None, **overrides})
        except KeyError as err:
            raise TrainConfigError("attack", str(err.args[0] if err.args else err)) from None
        except (TypeError, ValueError) as err:
            raise TrainConfigError(field, str(err)) from None


def check_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, arch: str, data: str) -> None:
    """One forward pass (evaluation mode, no gradient) on ``images`` of ``data``: the model takes them and has
    an output for every label up to ``labels.max()``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images)
    except (RuntimeError, TypeError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainConfigError(
            "arch", f"{arch} cannot take {data} images of shape {tuple(images.shape[1:])} ({msg})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TrainConfigError("arch", f"{arch} returns {shape} on {data} images, expected (batch, classes) logits")
    top = int(labels.max()) if labels.numel() else 0
    if out.shape[1] <= top:
        raise TrainConfigError("arch", f"{arch} has {out.shape[1]} outputs but the {data} labels go up to {top}")


def _sample(cfg: TrainConfig, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two training images and labels of the run (of ``data`` when given); a dataset that cannot be
    read, or a ``train_offset`` past its end, is named."""
    if data is not None:
        return data[0][:2], data[1][:2]
    if cfg.dataset.startswith("synthetic"):
        from .data import load_train_test

        try:
            x, y, _, _ = load_train_test(cfg.dataset, None, 2, 0, 0)
        except ValueError:
            raise TrainConfigError("dataset", f"{cfg.dataset!r}: write synthetic or synthetic:C:S (integers)") from None
        return x, y
    from ..data import load_dataset

    try:
        tr = load_dataset(cfg.dataset, "train", cfg.data_dir, limit=2)
    except (ValueError, OSError) as err:
        raise TrainConfigError("dataset", f"{cfg.dataset}: {str(err).splitlines()[0]}") from None
    if cfg.train_offset:
        try:
            load_dataset(cfg.dataset, "train", cfg.data_dir, limit=1, offset=cfg.train_offset)
        except ValueError as err:
            raise TrainConfigError("train_offset", f"{cfg.train_offset}: {err}") from None
    return tr.images, tr.labels


def _init_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` (``--init``) into ``model``: a missing or unreadable file, or one of another architecture,
    is named."""
    from ..zoo import load_state_dict_any, load_weights

    try:
        load_weights(model, load_state_dict_any(path), source=path)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        msg = str(err.args[0] if isinstance(err, KeyError) and err.args else err).splitlines()[0]
        raise TrainConfigError("init_weights", msg if path in msg else f"{path}: {msg}") from None


def preflight(cfg: TrainConfig, data: Any = None) -> None:
    """Every check of this module, in the order a user fixes them: device, architecture, attack, data, model.
    Leaves the global random state as it was."""
    resolve_device(cfg.device)
    check_arch(cfg.arch, cfg.arch_kwargs)
    check_attacks(cfg)
    x, y = _sample(cfg, data)
    if not len(x):
        raise TrainConfigError("dataset", f"{cfg.dataset}: no training images")
    with torch.random.fork_rng(devices=[]):
        try:
            model = build_model(cfg, x[:1], int(y.max()) + 1)
        except (TypeError, ValueError) as err:
            raise TrainConfigError("arch_kwargs", f"{cfg.arch_kwargs}: {err}") from None
    if cfg.init_weights:
        _init_weights(model, cfg.init_weights)
    check_model(model, x, y, cfg.arch, f"{cfg.dataset}/train")
