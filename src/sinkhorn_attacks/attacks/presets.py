"""Named, documented attack configurations: ``from_preset(name, model, **overrides)``.

UOT presets (this library):
* ``thesis``: the thesis's hyper-parameters with the corrected equations: penalised projection,
  eta=1e-3, tau=1e-2, gamma=0.5, 75 sign steps of 0.1, 5x5 window, p=1. At these scales transport costs
  >= 1 per pixel while destroying + creating costs ~2 tau = 0.02: the plan moves no mass (its
  ``transported_fraction`` is ~0) and the attack is effectively iterated FGSM with a small pull.
* ``uot``: the recommended budgeted UOT ball where mass really moves: tau=10, eta=0.05, gamma=1,
  p=1, 5x5, radius 0.3 (normalised units: F / ||x||_1), 40 sign steps of 0.1.
* ``uot-search``: minimal-radius search with the ``uot`` ball (radius 0.05 x1.15 every 3 steps, 60 steps).
Reference l_p attacks: ``linf-pgd`` (eps 0.3, 40 steps of 0.01), ``l2-pgd`` (eps 2.0), ``fgsm`` (eps 0.3).
Baseline presets (Wong, Hu, Wu, fair protocol) are registered by ``presets_baselines``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .base import Attack
from .pgd import PGDAttack, RadiusSchedule
from .uot import UOTAttack

__all__ = ["from_preset", "register_preset", "preset_names", "describe_preset"]

_PRESETS: dict[str, tuple[Callable[..., Attack], str]] = {}


def register_preset(name: str, factory: Callable[..., Attack], description: str = "") -> None:
    _PRESETS[name] = (factory, description)


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def describe_preset(name: str) -> str:
    return _get(name)[1]


def _get(name: str) -> tuple[Callable[..., Attack], str]:
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown attack preset {name!r}; known: {', '.join(preset_names())}") from None


def from_preset(name: str, model: nn.Module, **overrides: Any) -> Attack:
    """Build the named attack for ``model``; keyword overrides replace the preset's values."""
    return _get(name)[0](model, **overrides)


def _with(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out.update(overrides)
    return out


def _lp_projection(kind: str):
    def proj(x, w, radius, state):
        import torch

        d = w - x
        r = radius.reshape(-1, 1, 1, 1).to(x.dtype)
        if kind == "linf":
            d = torch.maximum(torch.minimum(d, r), -r)
        else:
            n = d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1).clamp_min(1e-12)
            d = d * torch.clamp(r / n, max=1.0)
        return (x + d).clamp(0, 1), {}, {"certified_radius": radius.double()}

    return proj


def _thesis(model, **kw):
    return UOTAttack(
        model,
        **_with(
            dict(
                penalised=True,
                eta=1e-3,
                tau=1e-2,
                gamma=0.5,
                steps=75,
                step="sign",
                step_size=0.1,
                kernel_size=5,
                p=1.0,
                radius=0.0,
                name="thesis",
            ),
            kw,
        ),
    )


def _uot(model, **kw):
    return UOTAttack(
        model,
        **_with(
            dict(
                eta=0.05,
                tau=10.0,
                gamma=1.0,
                radius=0.3,
                steps=40,
                step="sign",
                step_size=0.1,
                kernel_size=5,
                p=1.0,
                name="uot",
            ),
            kw,
        ),
    )


def _uot_search(model, **kw):
    d = dict(
        eta=0.05,
        tau=10.0,
        gamma=1.0,
        radius=0.05,
        steps=60,
        step="sign",
        step_size=0.1,
        kernel_size=5,
        p=1.0,
        schedule=RadiusSchedule("multiply", factor=1.15, every=3),
        name="uot-search",
    )
    return UOTAttack(model, **_with(d, kw))


def _linf(model, **kw):
    d = _with(dict(radius=0.3, steps=40, step_size=0.01), kw)
    return PGDAttack(
        model,
        projection=_lp_projection("linf"),
        step="sign",
        name=d.pop("name", "linf-pgd"),
        units="l_inf norm of the pixel perturbation",
        **d,
    )


def _l2(model, **kw):
    d = _with(dict(radius=2.0, steps=40, step_size=0.2), kw)
    return PGDAttack(
        model,
        projection=_lp_projection("l2"),
        step="l2",
        name=d.pop("name", "l2-pgd"),
        units="l_2 norm of the pixel perturbation",
        **d,
    )


def _fgsm(model, **kw):
    d = _with(dict(radius=0.3), kw)
    d.setdefault("step_size", d["radius"])
    return PGDAttack(
        model,
        projection=_lp_projection("linf"),
        step="sign",
        steps=1,
        name=d.pop("name", "fgsm"),
        units="l_inf norm of the pixel perturbation",
        **d,
    )


register_preset("thesis", _thesis, "thesis hyper-parameters, corrected equations (penalised; no mass moves)")
register_preset("uot", _uot, "recommended budgeted UOT ball (tau=10, eta=0.05, p=1, 5x5, radius 0.3)")
register_preset("uot-search", _uot_search, "UOT ball, minimal-radius search (x1.15 every 3 steps)")
register_preset("linf-pgd", _linf, "l_inf PGD, eps 0.3, 40 steps of 0.01")
register_preset("l2-pgd", _l2, "l_2 PGD, eps 2.0, 40 steps of 0.2")
register_preset("fgsm", _fgsm, "FGSM, eps 0.3")

try:  # baseline presets live beside their implementations
    from . import presets_baselines as _pb
except ImportError as _err:  # pragma: no cover - only while the module is absent
    if "presets_baselines" not in str(_err):
        raise
else:
    _pb.register(register_preset)
