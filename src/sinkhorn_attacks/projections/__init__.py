"""Projections: bring a perturbed image ``w`` back near the clean ``x`` in a transport geometry."""

from .uot import ProjectionResult, UOTProjection, solve_z, uot_project

__all__ = ["uot_project", "UOTProjection", "ProjectionResult", "solve_z"]
