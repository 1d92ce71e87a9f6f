"""Presets of the attacks in the yardstick's geometry (registered when :mod:`sinkhorn_attacks.attacks` is imported).

* ``yardstick-pgd``: :class:`~.yardstick_pgd.YardstickPGD` with MNIST defaults (radius 0.1, 100 steps, first
  step twice the mass the budget can create, cosine decay, cross-entropy); ``yardstick-pgd-cifar``: the same
  at CIFAR-10's scale (radius 0.02).
* ``yardstick-ddn``: :class:`~.yardstick_ddn.YardstickDDN`, the minimal-radius attack in the same ball (MNIST:
  first radius 0.5, 100 steps, radius x(1 -/+ 0.05) per step); ``yardstick-ddn-cifar``: first radius 0.005.
* ``uot-tv``: :class:`~.uot_tv.UOTTVAttack`, the thesis's UOT attack with TV marginals at the yardstick's
  price (eta 0.01, l_2-normalised steps of 1.0, 40 steps, radius 0.1); ``uot-tv-search``: the same attack with
  the ``uot-search`` schedule (radius 0.05, x1.15 every 3 steps, 60 steps). The thesis's sign steps of 0.1 and
  the ``uot`` preset's eta 0.05 are much weaker in this ball (docs/results/yardstick_attack.md).

Every fixed-budget preset takes the budget as ``radius`` (or ``eps``), a yardstick value; the ``yardstick-ddn``
presets search for each example's radius and take only a first one (``init_radius``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .base import Attack
from .pgd import RadiusSchedule
from .presets import register_preset
from .uot_tv import UOTTVAttack
from .yardstick_ddn import YardstickDDN
from .yardstick_pgd import YardstickPGD

__all__: list[str] = []

_YPGD = dict(steps=100, step_size=2.0, loss="ce", schedule="cosine")
_PRESETS: dict[str, tuple[type, dict[str, Any], str]] = {
    "yardstick-pgd": (
        YardstickPGD,
        dict(_YPGD, radius=0.1),
        "PGD over a plan with created/destroyed mass in the yardstick's own ball (exact budget projection), "
        "MNIST: radius 0.1, 100 steps",
    ),
    "yardstick-pgd-cifar": (
        YardstickPGD,
        dict(_YPGD, radius=0.02),
        "PGD in the yardstick's own ball, CIFAR-10 scale: radius 0.02, 100 steps",
    ),
    "yardstick-ddn": (
        YardstickDDN,
        dict(init_radius=0.5, steps=100, gamma=0.05, step_size=1.0),
        "per-example minimal yardstick radius: steps in the yardstick's ball with a radius that shrinks while the "
        "image fools the model (x0.95) and grows while not (x1.05), MNIST: from 0.5, 100 steps",
    ),
    "yardstick-ddn-cifar": (
        YardstickDDN,
        dict(init_radius=0.005, steps=100, gamma=0.05, step_size=1.0),
        "the minimal-radius attack in the yardstick's ball at CIFAR-10's scale: from radius 0.005, 100 steps",
    ),
    "uot-tv": (
        UOTTVAttack,
        dict(radius=0.1, steps=40, eta=0.01, step="l2", step_size=1.0),
        "UOT ball with TV marginals at the yardstick's price (certified on the yardstick): eta 0.01, "
        "l_2 steps of 1.0, 40 steps, radius 0.1",
    ),
    "uot-tv-search": (
        UOTTVAttack,
        dict(
            radius=0.05,
            steps=60,
            eta=0.05,
            step="sign",
            step_size=0.1,
            schedule=RadiusSchedule("multiply", factor=1.15, every=3),
        ),  # fmt: skip
        "the thesis's search (radius 0.05 x1.15 every 3 steps, sign steps of 0.1, eta 0.05) in the TV-marginal "
        "UOT ball at the yardstick's price",
    ),
}


def _factory(name: str) -> Callable[..., Attack]:
    cls, defaults, _ = _PRESETS[name]

    def factory(model: nn.Module, **overrides: Any) -> Attack:
        return cls(model, **{**defaults, "name": name, **overrides})

    return factory


for _name, (_cls, _defaults, _description) in _PRESETS.items():
    register_preset(_name, _factory(_name), _description)
