"""Attacks: projected-gradient loops over the projections, with metered results."""

from .base import Attack, AttackResult, cross_entropy, misclassified
from .pgd import PGDAttack, RadiusSchedule
from .presets import describe_preset, from_preset, preset_names, register_preset
from .steps import STEP_RULES, get_step
from .uot import UOTAttack

__all__ = [
    "Attack",
    "AttackResult",
    "PGDAttack",
    "RadiusSchedule",
    "UOTAttack",
    "from_preset",
    "preset_names",
    "describe_preset",
    "register_preset",
    "cross_entropy",
    "misclassified",
    "STEP_RULES",
    "get_step",
]
