"""The strongest Wasserstein evaluation in one call: a fixed cascade of attacks in minimal-radius mode.

``benchmark(model, images, labels)`` runs the attacks of a cascade, strongest first, with fixed
hyper-parameters (the bundled leaderboard's settings for the dataset) and keeps, per example, the smallest
yardstick radius of a misclassified image any of them returned (:func:`~.leaderboard.minimal_radii`: the
returned or line-searched image, measured exactly):

    r_i = min over attacks a of  Y(x_i, z_i^a)  over the images z_i^a that fool the model,

with ``r_i = 0`` for a clean error and ``inf`` when no attack fooled the model. Robust accuracy at a radius
``rho`` is the fraction of examples with ``r_i > rho`` (Wilson 95 % interval). A later attack runs only on the
examples whose radius so far exceeds the smallest reporting radius (for the others no reported number can
change), so each attack after the first costs little where the first one already succeeded.

Before any attack the model is checked as AutoAttack does: a forward pass that changes between calls
(randomised defence), outputs that are probabilities instead of logits, and zero input gradients (masked
gradients) each raise a warning, since they make a gradient attack's numbers an upper bound that can be far
from the truth. Work is resumable: with ``out=`` every (batch, attack) unit is written atomically to
``out/benchmark_state.json`` and a restarted call with the same inputs and settings continues from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._runfolder import RunFolder, conflict_message, fingerprint
from .._util import UserError
from ..attacks.base import _intra_op_threads
from ..ot.yardstick import Yardstick
from .config import resolve_config
from .io import read_json, write_json
from .leaderboard import CASCADE_ORDER, BoardAttack, load_board_config, minimal_radii, wilson_interval

__all__ = ["BenchmarkResult", "benchmark", "cascade_attacks", "CASCADE_ORDER", "BOARD_FOR"]

#: The bundled leaderboard config whose attack settings, radii and yardstick a dataset's cascade uses.
BOARD_FOR = {"mnist": "leaderboard_mnist", "cifar10": "leaderboard_cifar10"}
STATE = "benchmark_state.json"
ADV = "benchmark_adversarial.pt"  # the image behind every radius (clean where not fooled)


def cascade_attacks(dataset: str, labels: Sequence[str] | None = None) -> tuple[list[BoardAttack], Any]:
    """The cascade of ``dataset`` (in :data:`CASCADE_ORDER`, or in the order of ``labels``): the board
    config's attacks with their settings (``yardstick-pgd`` at each reporting radius); and the board config
    (radii, yardstick, line search, batch)."""
    if dataset not in BOARD_FOR:
        raise ValueError(f"no cascade for dataset {dataset!r}; known: {', '.join(BOARD_FOR)}")
    cfg = load_board_config(resolve_config(BOARD_FOR[dataset]))
    by_label = {a.label: a for a in cfg.attacks}
    if labels is None:
        return [by_label[k] for k in CASCADE_ORDER if k in by_label], cfg
    unknown = [k for k in labels if k not in by_label]
    if unknown or not labels:
        raise ValueError(f"unknown cascade attack(s) {unknown}; known for {dataset}: {', '.join(by_label)}")
    return [by_label[k] for k in labels], cfg


@dataclass
class BenchmarkResult:
    """Per-example yardstick radii of a cascade (0 clean error, ``inf`` never fooled) and their summary."""

    per_example_radius: torch.Tensor  # float64 (B,)
    per_example_attack: list[str | None]  # the attack that found the radius (None: clean error / not fooled)
    adversarial: torch.Tensor  # the measured image behind each radius (the clean image where none fooled)
    clean_correct: torch.Tensor  # bool (B,)
    radii: tuple[float, ...]
    attacks: dict[str, dict[str, float]]  # label -> examples attacked, radii improved, CPU and wall seconds
    yardstick: Yardstick
    card: dict[str, Any] = field(default_factory=dict)  # name, architecture, training
    warnings: list[str] = field(default_factory=list)
    no_class: list[bool] = field(default_factory=list)  # the image behind the radius gave non-finite logits

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.double().mean())

    def robust_accuracy(self) -> list[dict[str, Any]]:
        """Robust accuracy at every reporting radius with its Wilson 95 % interval."""
        n, rows = len(self.per_example_radius), []
        for rho in self.radii:
            k = int((self.per_example_radius > rho).sum())
            rows.append({"radius": rho, "robust_accuracy": k / n, "ci95": list(wilson_interval(k, n))})
        return rows

    def to_json(self) -> dict[str, Any]:
        """A model entry in the leaderboard's schema (plus the cascade's card and warnings)."""
        r = self.per_example_radius
        return {
            "label": self.card.get("name"),
            "source": self.card.get("name"),
            "arch": self.card.get("architecture"),
            "training": self.card.get("training"),
            "n": len(r),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy(),
            "attacks": self.attacks,
            "attacks_complete": True,
            "cpu_s": sum(a["cpu_s"] for a in self.attacks.values()),
            "per_example_worst": r.tolist(),
            "per_example_strongest": self.per_example_attack,
            "no_class": sum(self.no_class),
            "yardstick": {**self.yardstick.to_dict(), "label": self.yardstick.label},
            "warnings": self.warnings,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` atomically (non-finite radii as the strings "inf", as on the board)."""
        write_json(path, self.to_json())


def _check_inputs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, radii: Sequence[float]) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise ValueError("images must be finite floating-point values")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"images must lie in [0, 1], got [{float(images.min()):.3g}, {float(images.max()):.3g}]")
    if labels.shape != (images.shape[0],) or labels.is_floating_point():
        raise ValueError(
            f"labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {tuple(labels.shape)}"
        )
    if not radii or any(not (math.isfinite(r) and r > 0) for r in radii) or list(radii) != sorted(set(radii)):
        raise ValueError(f"radii must be positive, finite and increasing, got {list(radii)}")


def model_warnings(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """AutoAttack's checks on a few examples: randomised forward pass, probability outputs, zero gradients.

    Raises ``ValueError`` when the clean outputs are not finite (no attack result would mean anything)."""
    found = []
    with torch.no_grad():
        a, b = model(x), model(x)
    if not torch.isfinite(a).all():
        raise ValueError(
            f"the model returns non-finite outputs on {int((~torch.isfinite(a)).any(1).sum())} clean images"
        )
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
        found.append(
            "the model's output changes between two calls on the same images (a randomised defence?): "
            "gradient attacks then give an upper bound only; evaluate with expectation over transformation"
        )
    if bool((a >= 0).all() and (a <= 1).all()) and torch.allclose(a.sum(1), torch.ones(len(a)), atol=1e-4):
        found.append(
            "the model's outputs are probabilities (rows in [0, 1] summing to 1), not logits: the "
            "cross-entropy of the attacks saturates; return the logits"
        )
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xg), y)
    (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    zero = len(x) if grad is None else int((grad.flatten(1).abs().sum(1) == 0).sum())
    if zero:
        found.append(
            f"the input gradient is exactly zero for {zero} of {len(x)} checked images (masked "
            "gradients?): gradient attacks then give an upper bound only"
        )
    return found


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.detach().cpu().contiguous().numpy().tobytes() if torch.is_tensor(p) else repr(p).encode())
    return h.hexdigest()[:16]


def _save_images(path: Path, images: torch.Tensor) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(images, tmp)
    os.replace(tmp, path)


def _identity(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cascade: list[BoardAttack],
    cfg: Any,
    radii: tuple[float, ...],
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Everything that determines the radii (the inputs and the model by their SHA-256)."""
    return {
        "attacks": [asdict(a) for a in cascade],
        "radii": list(radii),
        "yardstick": cfg.yardstick.to_dict(),
        "line_search": cfg.line_search,
        "batch_size": batch_size,
        "seed": seed,
        "images": _digest(images),
        "labels": _digest(labels),
        "weights": _digest(*[t for _, t in sorted(model.state_dict().items())]),
    }


def _resume(
    folder: RunFolder | None, identity: dict[str, Any], images: torch.Tensor, fresh: bool
) -> tuple[dict, torch.Tensor]:
    """The state and images of a run in ``folder`` with this identity (a new one if there is none)."""
    n = images.shape[0]
    state = {"radius": [None] * n, "attack": [None] * n, "clean_correct": [None] * n, "no_class": [False] * n,
             "done": [], "attacks": {}}  # fmt: skip
    adv = images.detach().cpu().clone()
    if folder is None:
        return state, adv
    rec = folder.refuse_foreign()
    fp = fingerprint(identity)
    if rec is not None and rec["fingerprint"] != fp and not fresh:
        raise UserError(conflict_message(folder.root, "benchmark", rec["config"], identity))
    path = folder.path(STATE)
    if fresh or rec is None or rec["fingerprint"] != fp or not path.is_file():
        folder.write_record(fp, identity)
        path.unlink(missing_ok=True)
        return state, adv
    state = read_json(path)
    state["radius"] = [r if r is None else float(r) for r in state["radius"]]  # "inf" strings back to floats
    state.setdefault("no_class", [False] * n)  # states written before the no-class flag
    if state["done"]:
        adv = torch.load(folder.path(ADV), weights_only=True)
    return state, adv


def _run_unit(
    attack: BoardAttack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    state: dict[str, Any],
    adv: torch.Tensor,
    cfg: Any,
    first: bool,
) -> None:
    """Run one attack on the examples ``idx`` of the state and keep the smaller radii and their images."""
    rec = state["attacks"].setdefault(attack.label, {"attacked": 0, "improved": 0, "cpu_s": 0.0, "wall_s": 0.0})
    c0, w0 = time.process_time(), time.perf_counter()
    known = None if first else torch.tensor([state["radius"][i] for i in idx.tolist()], dtype=torch.float64)
    res = minimal_radii(attack, model, x[idx], y[idx], cfg.yardstick, cfg.line_search, known=known)
    for j, i in enumerate(idx.tolist()):
        r = res["min_radius"][j]
        if first:
            state["clean_correct"][i] = bool(res["clean_correct"][j])
        old = state["radius"][i]
        if old is None or r < old:
            state["radius"][i] = r
            state["attack"][i] = attack.label if 0 < r < math.inf else None
            state["no_class"][i] = bool(res["no_class"][j])
            rec["improved"] += int(old is not None)
            if 0 < r < math.inf:
                adv[i] = res["adv"][j].to(adv)
    rec["attacked"] += len(idx)
    rec["cpu_s"] += time.process_time() - c0
    rec["wall_s"] += time.perf_counter() - w0


def benchmark(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    dataset: str = "mnist",
    attacks: Sequence[str] | None = None,
    radii: Sequence[float] | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike[str] | None = None,
    card: dict[str, Any] | None = None,
    seed: int = 0,
    fresh: bool = False,
    threads: int | None = 1,
    progress: bool = False,
) -> BenchmarkResult:
    """Per-example minimal yardstick radii of ``model`` on ``(images, labels)`` under the dataset's cascade.

    Args:
        images, labels: ``(B, C, H, W)`` in [0, 1] and ``(B,)`` integer labels.
        dataset: whose cascade (attack settings, yardstick, default radii) to use: ``mnist`` or ``cifar10``.
        attacks: cascade labels in the order to run (default :data:`CASCADE_ORDER`).
        radii: reporting yardstick radii (per unit clean mass; default the board's).
        batch_size: images per attack call (default the board's: some attacks' results depend on the batch).
        out: folder for the resumable state (``benchmark_state.json``) and ``benchmark.json``; a folder of
            another command or configuration is refused (``fresh=True`` discards a previous benchmark there).
        card: model card fields for the JSON entry (``name``, ``architecture``, ``training``).
        seed: every (batch, attack) unit seeds torch from it, so a rerun or a resumed run gives the same radii.
        threads: torch intra-op threads during the call (``None`` keeps the caller's setting).
    """
    cascade, cfg = cascade_attacks(dataset, attacks)
    radii = tuple(float(r) for r in (radii if radii is not None else cfg.radii))
    _check_inputs(model, images, labels, radii)
    batch_size = cfg.batch if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modes = [(m, m.training) for m in model.modules()]  # each submodule's own mode, restored afterwards
    model.eval()
    try:
        with _intra_op_threads(threads):
            notes = model_warnings(model, images[:16], labels[:16])
            for msg in notes:
                warnings.warn(msg, stacklevel=2)
            devices = [images.device.index or 0] if images.is_cuda else []
            with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
                state, adv = _cascade(
                    model, images, labels, cascade, cfg, radii, batch_size, seed, out, fresh, progress
                )
    finally:
        for module, mode in modes:
            module.training = mode
    result = BenchmarkResult(
        per_example_radius=torch.tensor([math.inf if r is None else r for r in state["radius"]], dtype=torch.float64),
        per_example_attack=state["attack"],
        adversarial=adv,
        clean_correct=torch.tensor(state["clean_correct"], dtype=torch.bool),
        radii=radii,
        attacks=state["attacks"],
        yardstick=cfg.yardstick,
        card=dict(card or {}),
        warnings=notes,
        no_class=[bool(v) for v in state["no_class"]],
    )
    if out is not None:
        result.save(Path(out) / "benchmark.json")
    return result


def _cascade(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cascade: list[BoardAttack],
    cfg: Any,
    radii: tuple[float, ...],
    batch_size: int,
    seed: int,
    out: str | os.PathLike[str] | None,
    fresh: bool,
    progress: bool,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Batch-major loop: every attack of the cascade on batch 0, then batch 1, ...; state saved per unit."""
    n = images.shape[0]
    folder = RunFolder(out, "benchmark") if out is not None else None
    identity = _identity(model, images, labels, cascade, cfg, radii, batch_size, seed)
    with folder.lock() if folder is not None else contextlib.nullcontext():
        state, adv = _resume(folder, identity, images, fresh)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            for k, attack in enumerate(cascade):
                key = f"{lo}:{hi}:{attack.label}"
                if key in state["done"]:
                    continue
                rows = torch.arange(lo, hi)
                if k > 0:  # only where a reported number can still change
                    keep = [state["clean_correct"][i] and state["radius"][i] > radii[0] for i in rows.tolist()]
                    rows = rows[torch.tensor(keep, dtype=torch.bool)]
                torch.manual_seed(seed + int(_digest(attack.label, lo), 16) % 100_000)
                if rows.numel():
                    _run_unit(attack, model, images, labels, rows, state, adv, cfg, first=k == 0)
                state["done"].append(key)
                if folder is not None:
                    _save_images(folder.path(ADV), adv)  # first the images, then the state naming them
                    write_json(folder.path(STATE), state)
                if progress:
                    print(f"benchmark: images {lo}-{hi - 1}, {attack.label} done", flush=True)
    return state, adv
