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

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .._util import Registry
from ..projections.lp import L2Projection, LinfProjection
from .base import Attack
from .pgd import PGDAttack, RadiusSchedule
from .uot import UOTAttack

__all__ = ["from_preset", "register_preset", "preset_names", "describe_preset"]

_PRESETS: Registry[tuple[Callable[..., Attack], str]] = Registry("attack preset")


def register_preset(name: str, factory: Callable[..., Attack], description: str = "") -> None:
    """Add a named attack; a name that is already registered raises ``ValueError``."""
    _PRESETS.register(name, (factory, description))


def preset_names(pattern: str | None = None) -> list[str]:
    """Preset names, optionally those matching a shell wildcard (``"wong2019-*"``)."""
    return sorted(_PRESETS.names(pattern))


def describe_preset(name: str) -> str:
    return _get(name)[1]


def _get(name: str) -> tuple[Callable[..., Attack], str]:
    if name not in _PRESETS:
        raise ValueError(_PRESETS.unknown(name))
    return _PRESETS[name]


def from_preset(name: str, model: nn.Module, **overrides: Any) -> Attack:
    """Build the named attack for ``model``; keyword overrides replace the preset's values.

    The budget may be given as ``radius`` or, as torchattacks users type it, ``eps`` (Wu et al.'s presets
    call it ``eps`` natively); both at once is an error."""
    factory = _get(name)[0]
    key = getattr(factory, "radius_keyword", "radius")
    alias = "eps" if key == "radius" else "radius"
    if alias in overrides:
        if key in overrides:
            raise ValueError(f"preset {name!r}: give the budget as {key!r} or {alias!r}, not both")
        overrides[key] = overrides.pop(alias)
    try:
        return factory(model, **overrides)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        accepted = ", ".join(sorted(_accepted_keywords(factory(model)) | {alias}))
        raise TypeError(f"preset {name!r}: {err}; accepted keywords: {accepted}") from None


def _accepted_keywords(attack: Attack) -> set[str]:
    """The keyword arguments of the attack's constructors (subclasses pass the rest on to their bases)."""
    names: set[str] = set()
    for cls in type(attack).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "model")):
                names.add(p.name)
    return names


def _with(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out.update(overrides)
    return out


_UOT_BALL = dict(eta=0.05, tau=10.0, gamma=1.0, steps=40, step="sign", step_size=0.1, kernel_size=5, p=1.0)
_UOT_PRESETS: dict[str, dict[str, Any]] = {
    "thesis": dict(_UOT_BALL, penalised=True, eta=1e-3, tau=1e-2, gamma=0.5, steps=75, radius=0.0),
    "uot": dict(_UOT_BALL, radius=0.3),
    "uot-search": dict(_UOT_BALL, radius=0.05, steps=60, schedule=RadiusSchedule("multiply", factor=1.15, every=3)),
}


def _uot_preset(name: str) -> Callable[..., Attack]:
    def factory(model: nn.Module, **kw: Any) -> Attack:
        return UOTAttack(model, **_with(dict(_UOT_PRESETS[name], name=name), kw))

    return factory


_LP_PRESETS: dict[str, tuple[type, str, dict[str, Any], str]] = {
    "linf-pgd": (LinfProjection, "sign", dict(radius=0.3, steps=40, step_size=0.01), "l_inf"),
    "l2-pgd": (L2Projection, "l2", dict(radius=2.0, steps=40, step_size=0.2), "l_2"),
    "fgsm": (LinfProjection, "sign", dict(radius=0.3, steps=1), "l_inf"),
}


def _lp_preset(name: str) -> Callable[..., Attack]:
    projection, step, defaults, norm = _LP_PRESETS[name]

    def factory(model: nn.Module, **kw: Any) -> Attack:
        d = _with(defaults, kw)
        d.setdefault("step_size", d["radius"])  # FGSM: one step of the full radius
        return PGDAttack(
            model,
            projection=projection(),
            step=step,
            name=d.pop("name", name),
            units=f"{norm} norm of the pixel perturbation",
            **d,
        )

    return factory


register_preset(
    "thesis", _uot_preset("thesis"), "thesis hyper-parameters, corrected equations (penalised; no mass moves)"
)
register_preset("uot", _uot_preset("uot"), "recommended budgeted UOT ball (tau=10, eta=0.05, p=1, 5x5, radius 0.3)")
register_preset("uot-search", _uot_preset("uot-search"), "UOT ball, minimal-radius search (x1.15 every 3 steps)")
register_preset("linf-pgd", _lp_preset("linf-pgd"), "l_inf PGD, eps 0.3, 40 steps of 0.01")
register_preset("l2-pgd", _lp_preset("l2-pgd"), "l_2 PGD, eps 2.0, 40 steps of 0.2")
register_preset("fgsm", _lp_preset("fgsm"), "FGSM, eps 0.3")

try:  # baseline presets live beside their implementations
    from . import presets_baselines as _pb
except ImportError as _err:  # pragma: no cover - only while the module is absent
    if "presets_baselines" not in str(_err):
        raise
else:
    _pb.register(register_preset)
