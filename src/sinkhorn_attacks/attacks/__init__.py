"""Attacks: projected-gradient loops over the projections, with metered results."""

from . import presets_yardstick as _presets_yardstick  # noqa: F401  (registers yardstick-pgd, yardstick-ddn, uot-tv)
from .base import Attack, AttackResult, cross_entropy, misclassified
from .pgd import PGDAttack, RadiusSchedule
from .presets import describe_preset, from_preset, preset_names, register_preset
from .steps import STEP_RULES, get_step
from .uot import UOTAttack
from .uot_tv import UOTTVAttack
from .yardstick_ddn import YardstickDDN
from .yardstick_pgd import YardstickPGD

__all__ = [
    "Attack",
    "AttackResult",
    "PGDAttack",
    "RadiusSchedule",
    "UOTAttack",
    "UOTTVAttack",
    "YardstickPGD",
    "YardstickDDN",
    "from_preset",
    "preset_names",
    "describe_preset",
    "register_preset",
    "cross_entropy",
    "misclassified",
    "STEP_RULES",
    "get_step",
]
