"""Attack protocol and result type shared by every attack of the library.

Call convention (torchattacks-style): ``atk = SomeAttack(model, ...)``; ``res = atk(images, labels)``.
Images are ``(B, C, H, W)`` in [0, 1]. The model is evaluated only on the images returned in
``res.adv``: success is recomputed on them at the end, and every returned image is metered with the exact
OT meter (:func:`sinkhorn_attacks.ot.exact_ot`) beside its nominal radius.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ot.checks import check_images
from ..ot.cost import LocalCost
from ..ot.meter import exact_ot

DEFAULT_METER_COST = LocalCost(5, 1.0)  # exact W1, 5x5 window, pixel units

__all__ = ["Attack", "AttackResult", "LossFn", "SuccessFn", "cross_entropy", "misclassified"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SuccessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (the loss maximised by default)."""
    return F.cross_entropy(outputs, labels, reduction="none")


def misclassified(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Default untargeted success: the predicted class differs from the label."""
    return outputs.argmax(1) != labels


@dataclass
class AttackResult:
    """What every attack returns. Per-example fields have shape ``(B,)``."""

    adv: torch.Tensor  # adversarial images in [0, 1], (B, C, H, W)
    success: torch.Tensor  # bool: the model is fooled on adv (targeted: predicts the target)
    clean_correct: torch.Tensor  # bool: the model was right on the clean image
    radius: torch.Tensor  # nominal radius used for the returned image (0 for clean errors)
    metered_radius: torch.Tensor  # exact OT cost (meter) between clean and adv; nan if metering is off
    certified_radius: torch.Tensor  # radius certified by the projection (nan if none)
    mass_change: torch.Tensor  # ||adv||_1 / ||x||_1 - 1
    linf: torch.Tensor
    l2: torch.Tensor
    iterations: torch.Tensor  # attack steps spent on this example
    grad_evals: int
    time_s: float
    name: str = ""
    units: str = ""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.success.numel())

    @property
    def robust_accuracy(self) -> float:
        return float((self.clean_correct & ~self.success).float().mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    def summary(self) -> dict[str, Any]:
        """Aggregate numbers (JSON-friendly)."""
        ok = self.clean_correct & self.success
        mr = self.metered_radius[ok]
        finite = mr[torch.isfinite(mr)]
        return {
            "attack": self.name,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate_on_correct": float(ok.sum()) / max(1, int(self.clean_correct.sum())),
            "median_metered_radius": float(finite.median()) if finite.numel() else (math.inf if mr.numel() else None),
            "outside_window_fraction": float((~torch.isfinite(mr)).float().mean()) if mr.numel() else 0.0,
            "median_nominal_radius": float(self.radius[ok].median()) if ok.any() else None,
            "mean_mass_change": float(self.mass_change.mean()),
            "grad_evals": self.grad_evals,
            "time_s": self.time_s,
            "units": self.units,
            **{
                f"mean_{k}": float(v[torch.isfinite(v)].mean())
                for k, v in self.extras.items()
                if v.numel() and v.is_floating_point() and bool(torch.isfinite(v).any())
            },
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """Per-example rows (for CSV)."""
        rows = []
        for i in range(len(self)):
            row = {
                "index": i,
                "clean_correct": bool(self.clean_correct[i]),
                "success": bool(self.success[i]),
                "radius": float(self.radius[i]),
                "metered_radius": float(self.metered_radius[i]),
                "certified_radius": float(self.certified_radius[i]),
                "mass_change": float(self.mass_change[i]),
                "linf": float(self.linf[i]),
                "l2": float(self.l2[i]),
                "iterations": int(self.iterations[i]),
            }
            for k, v in self.extras.items():
                if v.dim() == 1 and v.numel() == len(self):
                    row[k] = float(v[i])
            rows.append(row)
        return rows


class Attack:
    """Base class: validation, clean predictions, final re-evaluation, metering, timing.

    Subclasses implement :meth:`_attack`, returning ``(adv, radius, iterations, certified, extras,
    grad_evals)`` for the examples they are given (all of them; the base class handles clean errors).
    """

    name = "attack"
    units = ""

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: LossFn | None = None,
        success_fn: SuccessFn | None = misclassified,
        targeted: bool = False,
        meter_cost: LocalCost | None = DEFAULT_METER_COST,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError("model must be an nn.Module or a callable mapping images to outputs")
        self.model = model
        self.loss_fn = loss_fn or cross_entropy
        self.success_fn = success_fn
        self.targeted = targeted
        self.meter_cost = meter_cost
        self.callback = callback
        self.batch_size = batch_size

    # -- helpers for subclasses ----------------------------------------------------------------------
    def objective(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example quantity the attack *maximises* (minus the target loss when targeted)."""
        loss = self.loss_fn(outputs, labels)
        if loss.dim() != 1:
            raise ValueError(f"loss_fn must return one value per example, got shape {tuple(loss.shape)}")
        return -loss if self.targeted else loss

    def is_success(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.success_fn is None:
            return torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)
        if self.targeted and self.success_fn is misclassified:
            return outputs.argmax(1) == labels
        return self.success_fn(outputs, labels).bool()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def config(self) -> dict[str, Any]:
        return {}

    def _attack(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor], int]:
        raise NotImplementedError

    # -- public call ---------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> AttackResult:
        """Attack a batch. ``target`` (targeted mode) replaces the labels as the class to reach."""
        check_images(images, "images")
        if not isinstance(labels, torch.Tensor) or labels.dim() < 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be a tensor with one entry per image ({images.shape[0]}), got "
                f"{getattr(labels, 'shape', type(labels))}"
            )
        if labels.device != images.device:
            raise ValueError(f"images are on {images.device} but labels on {labels.device}")
        params = list(self.model.parameters()) if isinstance(self.model, nn.Module) else []
        if params and params[0].device != images.device:
            raise ValueError(f"model is on {params[0].device} but images on {images.device}; move one of them")
        if self.targeted and target is None:
            raise ValueError("targeted attack: pass target=<class indices>")
        goal = target if self.targeted else labels
        t0 = time.perf_counter()
        x = images.detach()
        if isinstance(self.model, nn.Module):
            self.model.eval()
        with torch.no_grad():
            out0 = self._forward(x)
            already = self.is_success(out0, goal)
        clean_correct = ~already if not self.targeted else (out0.argmax(1) == labels)
        B = x.shape[0]
        adv = x.clone()
        radius = torch.zeros(B, dtype=torch.float64, device=x.device)
        iters = torch.zeros(B, dtype=torch.long, device=x.device)
        cert = torch.full((B,), math.nan, dtype=torch.float64, device=x.device)
        extras: dict[str, torch.Tensor] = {}
        grad_evals = 0
        todo = (~already).nonzero().squeeze(1)
        if todo.numel():
            parts = [todo] if not self.batch_size else list(todo.split(self.batch_size))
            for idx in parts:
                a, r, it, c, ex, ge = self._attack(x[idx], goal[idx])
                adv[idx] = a.detach().clamp(0, 1)
                radius[idx] = r.double()
                iters[idx] = it.long()
                cert[idx] = c.double()
                grad_evals += ge
                for k, v in ex.items():
                    if k not in extras:
                        extras[k] = torch.full((B,), math.nan, dtype=torch.float64, device=x.device)
                    extras[k][idx] = v.double()
        with torch.no_grad():
            success = self.is_success(self._forward(adv), goal)  # evaluated on exactly the returned images
        elapsed = time.perf_counter() - t0
        delta = (adv - x).flatten(1).double()
        if self.meter_cost is not None:
            meter = exact_ot(x, adv, self.meter_cost)
            metered, mass = meter.value.to(x.device), meter.mass_change.to(x.device)
        else:
            metered = torch.full((B,), math.nan, dtype=torch.float64, device=x.device)
            mx = x.flatten(1).double().sum(1)
            mass = adv.flatten(1).double().sum(1) / mx.clamp_min(1e-12) - 1
        return AttackResult(
            adv=adv,
            success=success,
            clean_correct=clean_correct,
            radius=radius,
            metered_radius=metered,
            certified_radius=cert,
            mass_change=mass,
            linf=delta.abs().amax(1),
            l2=delta.norm(dim=1),
            iterations=iters,
            grad_evals=grad_evals,
            time_s=elapsed,
            name=self.name,
            units=(self.units + "; meter: " + self.meter_cost.describe()) if self.meter_cost else self.units,
            extras=extras,
            config=self.config(),
        )
