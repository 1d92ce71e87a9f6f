"""Curves and the worst case, computed from per-example rows (pure numpy, no attack code).

Conventions: an example counts as robust only if the model classifies it correctly clean and the attack
did not fool it; an adversarial image whose logits are NaN / inf (``pred_adv = -1``) is no class: neither
fooled nor robust. ``first_fooled`` is the PGD iteration after which the example was first fooled (0 for
clean errors, -1 if never). Metered radii are yardstick values (:func:`sinkhorn_attacks.ot.measure`; the
units travel with the results as ``yardstick``); a non-finite value never counts as "within radius r".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy_vs_iteration",
    "accuracy_vs_radius",
    "accuracy_at_radii",
    "radius_grid",
    "worst_case",
    "summarize",
    "robust",
]


def _arr(rows: Sequence[dict[str, Any]], key: str, dtype: Any = float) -> np.ndarray:
    return np.asarray([r[key] for r in rows], dtype=dtype)


def _no_class_row(r: dict[str, Any]) -> bool:
    """The adversarial image gave non-finite logits: ``pred_adv = -1`` (worst-case rows: ``no_class``)."""
    return bool(r.get("no_class", False)) or int(r.get("pred_adv", 0)) < 0


def _no_class(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.asarray([_no_class_row(r) for r in rows], dtype=bool)


def robust(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Per example: correct clean, not fooled, and a class on the adversarial image."""
    return _arr(rows, "clean_correct", bool) & ~_arr(rows, "success", bool) & ~_no_class(rows)


def accuracy_vs_iteration(rows: Sequence[dict[str, Any]], steps: int) -> list[float]:
    """Robust accuracy after t = 0..steps iterations (t = 0: clean accuracy)."""
    if not rows:
        return [math.nan] * (steps + 1)
    cc = _arr(rows, "clean_correct", bool) & ~_no_class(rows)
    ff = _arr(rows, "first_fooled", int)
    return [float(np.mean(cc & ((ff < 0) | (ff > t)))) for t in range(steps + 1)]


def _fooled_within(rows: Sequence[dict[str, Any]], r: float) -> np.ndarray:
    s = _arr(rows, "success", bool)
    m = _arr(rows, "metered_radius")
    with np.errstate(invalid="ignore"):
        return s & np.isfinite(m) & (m <= r)


def accuracy_at_radii(rows: Sequence[dict[str, Any]], radii: Sequence[float]) -> list[float]:
    """Accuracy against the attack's successes whose metered radius is <= r, for each r."""
    if not rows:
        return [math.nan] * len(radii)
    cc = _arr(rows, "clean_correct", bool) & ~_no_class(rows)
    return [float(np.mean(cc & ~_fooled_within(rows, float(r)))) for r in radii]


def radius_grid(all_rows: Sequence[dict[str, Any]], points: int = 50) -> list[float]:
    """Common radius axis 0..max finite successful metered radius (at least 1e-3)."""
    m = np.asarray([r["metered_radius"] for r in all_rows if r["success"] and r["clean_correct"]], dtype=float)
    m = m[np.isfinite(m)]
    top = float(m.max()) if m.size else 1.0
    return [float(v) for v in np.linspace(0.0, max(top, 1e-3) * 1.02, max(2, points))]


def accuracy_vs_radius(rows: Sequence[dict[str, Any]], grid: Sequence[float]) -> list[float]:
    return accuracy_at_radii(rows, grid)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate numbers of one (model, attack) cell."""
    n = len(rows)
    if n == 0:
        return {"n": 0}
    cc = _arr(rows, "clean_correct", bool)
    s = _arr(rows, "success", bool)
    m = _arr(rows, "metered_radius")
    ok = cc & s
    fin = ok & np.isfinite(m)
    return {
        "n": n,
        "clean_accuracy": float(cc.mean()),
        "robust_accuracy": float(robust(rows).mean()),
        "success_rate_on_correct": float(ok.sum() / max(1, cc.sum())),
        "median_metered_radius": float(np.median(m[fin])) if fin.any() else (math.inf if ok.any() else None),
        "mean_metered_radius": float(np.mean(m[fin])) if fin.any() else None,
        "mean_iterations": float(_arr(rows, "iterations")[cc].mean()) if cc.any() else 0.0,
        "mean_linf": float(_arr(rows, "linf")[ok].mean()) if ok.any() else None,
        "mean_l2": float(_arr(rows, "l2")[ok].mean()) if ok.any() else None,
        "time_s": float(sum(r.get("unit_time_s", 0.0) for r in rows if r.get("unit_first", False))),
    }


def worst_case(per_attack: dict[str, Sequence[dict[str, Any]]], order: Sequence[str]) -> list[dict[str, Any]]:
    """Per-example worst case over attacks (AutoAttack style), cascading in ``order``.

    ``per_attack[label]`` holds rows keyed by ``index``; a cascade attack may only have rows for the
    examples still robust when it ran. An example is fooled if any attack fooled it; ``worst_attack`` is the
    first in ``order`` that did, and ``metered_radius`` the smallest metered radius among the attacks that
    fooled it (``first_fooled``: smallest iteration count).
    """
    by_attack = {lab: {r["index"]: r for r in per_attack.get(lab, [])} for lab in order}
    indices = sorted(set().union(*[set(d) for d in by_attack.values()])) if by_attack else []
    out = []
    for i in indices:
        rs = [(lab, by_attack[lab][i]) for lab in order if i in by_attack[lab]]
        cc = all(r["clean_correct"] for _, r in rs)
        fooled = [(lab, r) for lab, r in rs if r["success"] and r["clean_correct"]]
        row: dict[str, Any] = {
            "index": i,
            "label": rs[0][1].get("label"),
            "no_class": not fooled and any(_no_class_row(r) for _, r in rs),  # NaN logits: not robust
            "clean_correct": cc,
            "success": bool(fooled) or not cc,
            "worst_attack": fooled[0][0] if fooled else "",
            "attacks_run": len(rs),
        }
        if fooled:
            row["metered_radius"] = min(float(r["metered_radius"]) for _, r in fooled)
            row["first_fooled"] = min(int(r["first_fooled"]) for _, r in fooled)
        else:
            row["metered_radius"] = math.inf if not cc else math.nan
            row["first_fooled"] = 0 if not cc else -1
        if not cc:
            row["success"] = False  # clean errors: not counted as successes (the curves use clean_correct)
        out.append(row)
    return out
