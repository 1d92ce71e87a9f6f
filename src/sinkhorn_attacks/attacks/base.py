"""Attack protocol and result type shared by every attack of the library.

Call convention (torchattacks-style): ``atk = SomeAttack(model, ...)``; ``res = atk(images, labels)``.
Images are ``(B, C, H, W)`` in [0, 1]. The model is evaluated only on the images returned in
``res.adv``: success is recomputed on them at the end, and every returned image is measured with the
library's one yardstick (:func:`sinkhorn_attacks.ot.measure`, units in ``res.yardstick``) beside the
attack's own nominal radius (units in ``res.units``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ot.checks import check_images
from ..ot.cost import LocalCost
from ..ot.yardstick import Yardstick, measure

DEFAULT_YARDSTICK = Yardstick()  # W1-TV, 5x5 window, price 2 sqrt 2, per unit clean mass

__all__ = [
    "Attack",
    "AttackResult",
    "LossFn",
    "SuccessFn",
    "OutputFn",
    "cross_entropy",
    "misclassified",
    "predicted_class",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SuccessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OutputFn = Callable[[Any], torch.Tensor]


def default_output(out: Any) -> torch.Tensor:
    """Logits from a model's output: the tensor itself, the first element of a tuple/list, or ``out["logits"]``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    raise TypeError(
        f"the model returned {type(out).__name__}; pass output_fn=... mapping its output to (B, classes) logits"
    )


def _as_yardstick(meter: Yardstick | LocalCost | None) -> Yardstick | None:
    if meter is None or isinstance(meter, Yardstick):
        return meter
    if isinstance(meter, LocalCost):
        return Yardstick(meter.kernel_size, meter.p)
    raise TypeError(f"yardstick must be a Yardstick (or None to switch measuring off), got {type(meter).__name__}")


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (``None``: leave the setting alone), restored afterwards.

    Attacks default to one thread, like the command line: on a shared two-core machine the UOT projection ran
    about 10x slower with two threads than with one (docs/training.md)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (the loss maximised by default)."""
    return F.cross_entropy(outputs, labels, reduction="none")


def predicted_class(outputs: torch.Tensor) -> torch.Tensor:
    """The argmax class of each row of logits, ``-1`` where a logit is NaN or inf (no class)."""
    finite = torch.isfinite(outputs.flatten(1)).all(1)
    return torch.where(finite, outputs.argmax(1), torch.full_like(finite, -1, dtype=torch.long))


def misclassified(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Default untargeted success: the predicted class differs from the label (non-finite logits are no
    class, so never a success)."""
    pred = predicted_class(outputs)
    return (pred != labels) & (pred >= 0)


@dataclass
class AttackResult:
    """What every attack returns. Per-example fields have shape ``(B,)``."""

    adv: torch.Tensor  # adversarial images in [0, 1], (B, C, H, W)
    success: torch.Tensor  # bool: the model is fooled on adv (targeted: predicts the target)
    clean_correct: torch.Tensor  # bool: the model was right on the clean image
    radius: torch.Tensor  # nominal radius used for the returned image, attack's units (0 for clean errors)
    metered_radius: torch.Tensor  # yardstick value between clean and adv (``yardstick``); nan if not measured
    certified_radius: torch.Tensor  # bound in the attack's units that holds for ``adv`` (nan if none)
    mass_change: torch.Tensor  # ||adv||_1 / ||x||_1 - 1
    linf: torch.Tensor
    l2: torch.Tensor
    iterations: torch.Tensor  # attack steps spent on this example
    grad_evals: int
    time_s: float  # everything, measuring included
    name: str = ""
    units: str = ""  # the attack's own (nominal) radius units
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    yardstick: Yardstick | None = None  # units of ``metered_radius``
    meter_time_s: float = 0.0  # part of ``time_s`` spent measuring

    def __len__(self) -> int:
        return int(self.success.numel())

    @property
    def nonfinite(self) -> torch.Tensor:
        """Examples whose returned image gave NaN / inf logits: neither fooled nor robust."""
        nf = self.extras.get("nonfinite_logits")
        return torch.zeros_like(self.success) if nf is None else nf.nan_to_num(0.0).bool()

    @property
    def robust_accuracy(self) -> float:
        return float((self.clean_correct & ~self.success & ~self.nonfinite).float().mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    def robust_accuracy_at(self, radius: float) -> float:
        """Fraction of examples classified correctly on the clean image and not fooled by an image within
        ``radius`` on the yardstick (an example fooled farther away counts as robust at ``radius``)."""
        fooled_within = self.success & (self.metered_radius <= radius)
        return float((self.clean_correct & ~fooled_within & ~self.nonfinite).float().mean())

    def summary(self) -> dict[str, Any]:
        """Aggregate numbers (JSON-friendly; floats rounded to 4 significant digits)."""
        ok = self.clean_correct & self.success
        mr = self.metered_radius[ok]
        mr = mr[~torch.isnan(mr)]
        out = {
            "attack": self.name,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate_on_correct": float(ok.sum()) / max(1, int(self.clean_correct.sum())),
            "nonfinite_logits": int(self.nonfinite.sum()),
            "median_metered_radius": float(mr.median()) if mr.numel() else None,
            "max_metered_radius": float(mr.max()) if mr.numel() else None,
            "yardstick": self.yardstick.label if self.yardstick is not None else None,
            "median_nominal_radius": float(self.radius[ok].median()) if ok.any() else None,
            "units": self.units,
            "mean_mass_change": float(self.mass_change.mean()),
            "grad_evals": self.grad_evals,
            "time_s": self.time_s,
            "meter_time_s": self.meter_time_s,
            **{
                f"mean_{k}": float(v[torch.isfinite(v)].mean())
                for k, v in self.extras.items()
                if v.numel() and v.is_floating_point() and bool(torch.isfinite(v).any())
            },
        }
        return {k: (float(f"{v:.4g}") if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}

    def __str__(self) -> str:
        s = self.summary()

        def fmt(v: Any) -> str:
            return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

        keys = ["attack", "n", "clean_accuracy", "robust_accuracy", "median_metered_radius", "median_nominal_radius",
                "mean_mass_change", "time_s", "meter_time_s"]  # fmt: skip
        width = max(len(k) for k in keys)
        lines = [f"{k:<{width}}  {fmt(s[k])}" for k in keys]
        lines.append(f"{'yardstick':<{width}}  {fmt(s['yardstick'])}")
        lines.append(f"{'nominal units':<{width}}  {fmt(s['units'] or None)}")
        return "\n".join(lines)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``adversarial.npz`` (the returned images and every per-example field, extras included) and
        ``summary.json`` (:meth:`summary`, the configuration and the yardstick) into ``directory``, each
        atomically. Returns the directory. ``sinkhorn_attacks.report.plot_grid`` draws the npz as image grids
        once the clean images are added (the ``attack --save-adv`` command does both)."""
        import json

        import numpy as np

        from .._util import atomic_write

        out = Path(directory)
        arrays = {k: v.detach().cpu().numpy() for k, v in self._per_example().items()}
        arrays["adv"] = self.adv.detach().cpu().numpy()
        for k, v in self.extras.items():
            if v.dim() == 1 and v.numel() == len(self):
                arrays[f"extra_{k}"] = v.detach().cpu().numpy()
        atomic_write(out / "adversarial.npz", lambda f: np.savez_compressed(f, **arrays))
        meta = {"summary": self.summary(), "config": self.config, "units": self.units}
        atomic_write(out / "summary.json", json.dumps(meta, indent=1, default=str) + "\n")
        return out

    def _per_example(self) -> dict[str, torch.Tensor]:
        return {
            "clean_correct": self.clean_correct,
            "success": self.success,
            "radius": self.radius,
            "metered_radius": self.metered_radius,
            "certified_radius": self.certified_radius,
            "mass_change": self.mass_change,
            "linf": self.linf,
            "l2": self.l2,
            "iterations": self.iterations,
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
    """Base class: validation, clean predictions, final re-evaluation, measuring, timing.

    Subclasses implement :meth:`_attack`, returning ``(adv, radius, iterations, certified, extras,
    grad_evals)`` for the examples they are given (all of them; the base class handles clean errors and,
    when ``needs_mass``, all-black clean images, which it leaves unattacked with ``extras["skipped_empty"]``).

    Args:
        model: classifier taking [0, 1] images (normalisation inside the model, e.g. ``zoo.Normalize``).
        loss_fn: per-example loss to maximise (default cross-entropy).
        success_fn: per-example success test (default: misclassified; targeted: predicts the target).
        targeted: minimise the loss towards ``target`` instead.
        yardstick: units of ``metered_radius`` (default :class:`~sinkhorn_attacks.ot.Yardstick` ``()``);
            ``None`` skips measuring (as in training). A ``LocalCost`` is read as ``Yardstick(k, p)``.
        meter_cost: former name of ``yardstick``.
        output_fn: maps the model's output to ``(B, classes)`` logits (default: the tensor, the first
            element of a tuple, or ``out["logits"]``).
        callback: ``callback(step, images, done)`` after every attack step (progress bars).
        batch_size: attack in chunks of this many examples.
        meter_sample: measure only the first this many examples of each call (the others read NaN); the
            yardstick's definition is unchanged, only fewer images are measured.
        threads: torch intra-op threads while the attack runs on CPU (default 1, like the command line;
            ``None`` leaves the process's setting alone).
        progress: show a progress bar of the attack steps on stderr (with the images fooled so far).
    """

    name = "attack"
    units = ""
    needs_mass = False  # the threat model transports clean mass: black clean images cannot be attacked

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: LossFn | None = None,
        success_fn: SuccessFn | None = misclassified,
        targeted: bool = False,
        yardstick: Yardstick | LocalCost | None = DEFAULT_YARDSTICK,
        meter_cost: Yardstick | LocalCost | None | str = "unset",
        output_fn: OutputFn | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        batch_size: int | None = None,
        meter_sample: int | None = None,
        threads: int | None = 1,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError("model must be an nn.Module or a callable mapping images to outputs")
        for nm, v in (("batch_size", batch_size), ("meter_sample", meter_sample), ("threads", threads)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{nm} must be a positive integer or None, got {v!r}")
        self.meter_sample = meter_sample
        self.model = model
        self.loss_fn = loss_fn or cross_entropy
        self.success_fn = success_fn
        self.targeted = targeted
        self.yardstick = _as_yardstick(yardstick if isinstance(meter_cost, str) else meter_cost)
        self.output_fn = output_fn or default_output
        self.callback = callback
        self.batch_size = batch_size
        self.threads = threads
        self.progress = progress

    @property
    def meter_cost(self) -> Yardstick | None:
        """Former name of :attr:`yardstick`."""
        return self.yardstick

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
            return predicted_class(outputs) == labels
        return self.success_fn(outputs, labels).bool()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_fn(self.model(x))

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        cfg = {k: v for k, v in self.config().items() if k != "name"}
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        ys = self.yardstick.label if self.yardstick is not None else None
        return f"{type(self).__name__}(name={self.name!r}, {args}{', ' if args else ''}yardstick={ys!r})"

    def _attack(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor], int]:
        raise NotImplementedError

    def sweep(
        self, images: torch.Tensor, labels: torch.Tensor, radii: Sequence[float], target: torch.Tensor | None = None
    ) -> list[AttackResult]:
        """One result per nominal radius (Foolbox's list of epsilons): the attack run with each budget held fixed.

        ``radii`` are in the attack's own units (``self.units``); each result also reports the yardstick
        radius of its returned images (``metered_radius``), the one unit every result shares. A minimal-radius
        search (a growing radius schedule) is run at each radius with its schedule fixed, so that no returned
        image exceeds the radius it was asked for."""
        key = "radius" if hasattr(self, "radius") else "eps"
        if not hasattr(self, key):
            raise TypeError(f"{type(self).__name__} has no radius to sweep")
        out = []
        for r in radii:
            atk = copy.copy(self)
            setattr(atk, key, float(r))
            schedule = getattr(atk, "schedule", None)
            if schedule is not None and getattr(schedule, "kind", "fixed") != "fixed":
                atk.schedule = type(schedule)("fixed")
            out.append(atk(images, labels, target))
        return out

    # -- validation ----------------------------------------------------------------------------------
    def _check_inputs(self, images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> None:
        if isinstance(images, torch.Tensor) and images.device.type == "meta":
            raise ValueError("images are on the meta device (no data); materialise them first")
        check_images(images, "images")
        B = images.shape[0]
        for nm, t in (("labels", labels), ("target", target)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{nm} must be a torch.Tensor of class indices, got {type(t).__name__}")
            if t.dim() != 1 or t.shape[0] != B:
                raise ValueError(f"{nm} must have shape ({B},) (one class index per image), got {tuple(t.shape)}")
            if t.dtype != torch.long:
                raise TypeError(f"{nm} must be int64 (torch.long) class indices, got {t.dtype}; use {nm}.long()")
            if t.device != images.device:
                raise ValueError(f"images are on {images.device} but {nm} on {t.device}; move both to one device")
        params = list(self.model.parameters()) if isinstance(self.model, nn.Module) else []
        if params:
            if params[0].device != images.device:
                raise ValueError(f"model is on {params[0].device} but images on {images.device}; move one of them")
            if params[0].is_floating_point() and params[0].dtype != images.dtype:
                raise TypeError(
                    f"images are {images.dtype} but the model's weights are {params[0].dtype}; "
                    f"pass images.to({params[0].dtype}) or convert the model"
                )
        if self.targeted and target is None:
            raise ValueError("targeted attack: pass target=<class indices>")
        if target is not None and not self.targeted:
            raise ValueError(
                "target= was given to an untargeted attack (it would be ignored): build the attack with "
                "targeted=True, e.g. from_preset(name, model, targeted=True), or drop target="
            )
        if target is not None and bool((target == labels).any()):
            i = int((target == labels).nonzero()[0])
            raise ValueError(f"target equals the label for image {i} (class {int(labels[i])}): nothing to attack")

    def _check_outputs(self, out: torch.Tensor, B: int, labels: torch.Tensor, target: torch.Tensor | None) -> None:
        name = type(self.model).__name__
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != B:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model {name} must return (B, classes) logits for B = {B} images, got {shape}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"model {name} returned NaN or inf logits on the clean images (check its weights)")
        k = out.shape[1]
        for nm, t in (("labels", labels), ("target", target)):
            if t is not None and bool(((t < 0) | (t >= k)).any()):
                bad = t[(t < 0) | (t >= k)][0].item()
                raise ValueError(f"{nm} must lie in [0, {k - 1}] (the model has {k} outputs), got {bad}")

    # -- public call ---------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> AttackResult:
        """Attack a batch. ``target`` (targeted mode) replaces the labels as the class to reach."""
        self._check_inputs(images, labels, target)
        with _intra_op_threads(self.threads if images.device.type == "cpu" else None), self._progress_bar(images):
            return self._call(images, labels, target)

    @contextlib.contextmanager
    def _progress_bar(self, images: torch.Tensor) -> Iterator[None]:
        """With ``progress``: a bar over the attack's steps, fed through ``callback`` (chained, not replaced)."""
        if not self.progress:
            yield
            return
        from tqdm.auto import tqdm

        user = self.callback
        bar = tqdm(total=getattr(self, "steps", None), desc=f"{self.name} on {images.shape[0]} images", unit="step")

        def tick(step: int, cur: torch.Tensor, done: torch.Tensor) -> None:
            bar.n = step  # steps count from 1
            bar.set_postfix(fooled=int(done.sum()), refresh=False)
            bar.refresh()
            if user is not None:
                user(step, cur, done)

        self.callback = tick
        try:
            yield
        finally:
            self.callback = user
            bar.close()

    @torch.no_grad()
    def _success_on(self, adv: torch.Tensor, goal: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """Success evaluated on exactly the returned images; NaN / inf logits are no class, so such an image
        is neither fooled nor robust (``extras["nonfinite_logits"]`` marks it, with a warning)."""
        out_adv = self._forward(adv)
        success = self.is_success(out_adv, goal)
        nonfinite = ~torch.isfinite(out_adv.flatten(1)).all(1)
        if bool(nonfinite.any()):
            extras["nonfinite_logits"] = nonfinite.double()
            warnings.warn(
                f"{self.name}: the model returned non-finite logits on {int(nonfinite.sum())} returned image(s); "
                "they count as neither fooled nor robust (extras['nonfinite_logits'] marks them)",
                RuntimeWarning,
                stacklevel=4,
            )
        return success & ~nonfinite

    def _call(self, images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> AttackResult:
        goal = target if self.targeted else labels
        t0 = time.perf_counter()
        x = images.detach()
        # every submodule's own mode is restored afterwards (a model may keep some parts in train mode)
        modes = [(m, m.training) for m in self.model.modules()] if isinstance(self.model, nn.Module) else []
        if isinstance(self.model, nn.Module):
            self.model.eval()
        try:
            with torch.no_grad():
                out0 = self._forward(x)
            self._check_outputs(out0, x.shape[0], labels, target)
            with torch.no_grad():
                already = self.is_success(out0, goal)
            clean_correct = ~already if not self.targeted else (out0.argmax(1) == labels)
            B = x.shape[0]
            adv = x.clone()
            radius = torch.zeros(B, dtype=torch.float64, device=x.device)
            iters = torch.zeros(B, dtype=torch.long, device=x.device)
            cert = torch.full((B,), math.nan, dtype=torch.float64, device=x.device)
            extras: dict[str, torch.Tensor] = {}
            grad_evals = 0
            todo_mask = ~already
            if self.needs_mass:
                empty = x.flatten(1).sum(1) <= 0
                if bool(empty.any()):
                    extras["skipped_empty"] = empty.double()
                    todo_mask = todo_mask & ~empty
            todo = todo_mask.nonzero().squeeze(1)
            if todo.numel():
                parts = [todo] if not self.batch_size else list(todo.split(self.batch_size))
                for idx in parts:
                    a, r, it, c, ex, ge = self._attack(x[idx], goal[idx])
                    adv[idx] = a.detach().to(x.dtype).clamp(0, 1)
                    radius[idx] = r.double()
                    iters[idx] = it.long()
                    cert[idx] = c.double()
                    grad_evals += ge
                    for k, v in ex.items():
                        if k not in extras:
                            extras[k] = torch.full((B,), math.nan, dtype=torch.float64, device=x.device)
                        extras[k][idx] = v.double()
            bad = ~torch.isfinite(adv.flatten(1)).all(1)
            if bool(bad.any()):  # never return a non-finite image: fall back to the clean one, and say so
                adv[bad] = x[bad]
                cert[bad] = math.nan
                extras["nonfinite_returned_clean"] = bad.double()
            success = self._success_on(adv, goal, extras)
        finally:
            for module, mode in modes:
                module.training = mode
        delta = (adv - x).flatten(1).double()
        t1 = time.perf_counter()
        metered = torch.full((B,), math.nan, dtype=torch.float64, device=x.device)
        if self.yardstick is not None:
            k = B if self.meter_sample is None else min(B, self.meter_sample)
            metered[:k] = measure(x[:k], adv[:k], self.yardstick).value.to(x.device)
        mx = x.flatten(1).double().sum(1)
        mass = torch.where(mx > 0, adv.flatten(1).double().sum(1) / mx.clamp_min(1e-300) - 1, torch.zeros_like(mx))
        t2 = time.perf_counter()
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
            time_s=t2 - t0,
            name=self.name,
            units=self.units,
            extras=extras,
            config=self.config(),
            yardstick=self.yardstick,
            meter_time_s=t2 - t1,
        )
