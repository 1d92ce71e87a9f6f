"""Matplotlib figures from ``curves.json`` / ``results.json`` / ``grids/*.npz`` (Agg backend, PNG files)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_accuracy_vs_iteration", "plot_accuracy_vs_radius", "plot_accuracy_at_radii", "plot_grid"]


def _radius_label(curves: dict[str, Any]) -> tuple[str, str]:
    """Axis label and footnote from the yardstick the curves carry (never a hard-coded unit)."""
    ys = curves.get("yardstick") or {}
    label = ys.get("label", "yardstick")
    return f"radius ({label})", f"radius: yardstick value between clean and adversarial image ({label})"


def _split(curves: dict[str, list[float]]) -> tuple[list[str], list[str]]:
    models, attacks = [], []
    for key in curves:
        m, _, a = key.partition("|")
        if m not in models:
            models.append(m)
        if a not in attacks:
            attacks.append(a)
    return models, attacks


def _panels(n: int, title: str) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, flat[:n]


def _finish(fig: Any, path: str | os.PathLike[str], tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def _lines(
    curves: dict[str, list[float]], xs_of, title: str, xlabel: str, path, marker: str = "", note: str = ""
) -> Path:
    models, attacks = _split(curves)
    fig, axes = _panels(len(attacks), title)
    for ax, a in zip(axes, attacks):
        for m in models:
            ys = curves.get(f"{m}|{a}")
            if ys is None:
                continue
            ax.plot(xs_of(ys), ys, marker=marker, label=m)
        ax.set_title(a)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    if note:
        import textwrap

        wrapped = textwrap.fill(note, width=int(fig.get_figwidth() * 14))
        fig.text(0.5, 0.0, wrapped, ha="center", va="bottom", fontsize=7, color="#444")
        fig.tight_layout(rect=(0, 0.03 * (1 + wrapped.count("\n")) + 0.02, 1, 1))
    return _finish(fig, path, tight=not note)


def plot_accuracy_vs_iteration(curves: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Accuracy after t = 0..N PGD iterations (t = 0: clean accuracy)."""
    return _lines(curves["iteration"], lambda ys: np.arange(len(ys)), "accuracy vs PGD iteration", "iteration", path)


def plot_accuracy_vs_radius(curves: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    grid = curves["radius_grid"]
    label, note = _radius_label(curves)
    return _lines(curves["radius"], lambda ys: grid, "accuracy vs radius", label, path, note=note)


def plot_accuracy_at_radii(curves: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    radii = curves["radii"]
    label, note = _radius_label(curves)
    return _lines(curves["at_radii"], lambda ys: radii, "accuracy at fixed radii", label, path, "o", note)


def plot_grid(npz_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Rows: input / perturbation (adv - input, symmetric colour scale) / adversarial, one column per example."""
    d = np.load(npz_path)
    x, adv = d["x"], d["adv"]
    k = x.shape[0]
    fig, axes = plt.subplots(3, max(k, 1), figsize=(1.5 * max(k, 1), 5.0), squeeze=False)
    for j in range(k):
        img = x[j].transpose(1, 2, 0)
        a = adv[j].transpose(1, 2, 0)
        diff = (a - img).mean(axis=2)
        lim = max(float(np.abs(diff).max()), 1e-6)
        cmap = "gray" if img.shape[2] == 1 else None
        axes[0, j].imshow(img.squeeze(2) if img.shape[2] == 1 else img, cmap=cmap, vmin=0, vmax=1)
        axes[0, j].set_title(f"y={int(d['label'][j])} p={int(d['pred_clean'][j])}", fontsize=7)
        axes[1, j].imshow(diff, cmap="seismic", vmin=-lim, vmax=lim)
        axes[1, j].set_title(f"max|d|={lim:.2f}", fontsize=7)
        axes[2, j].imshow(a.squeeze(2) if a.shape[2] == 1 else a, cmap=cmap, vmin=0, vmax=1)
        r = float(d["metered_radius"][j])
        if int(d["pred_clean"][j]) != int(d["label"][j]):
            mark = "clean error"
        else:
            mark = "fooled" if bool(d["success"][j]) else "robust"
        axes[2, j].set_xlabel(f"p={int(d['pred_adv'][j])} {mark}\nW1-TV={r:.3g}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for i, name in enumerate(("input", "perturbation", "adversarial")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{d['model']} / {d['attack']}", fontsize=9)
    return _finish(fig, path)
