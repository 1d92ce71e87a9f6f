"""Figures of a retrieval attack run (reads the ``attack.json`` dict and ``parts/*.examples.pt``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._runfolder import key_part
from .._util import atomic_write

__all__ = ["plot_recall_vs_iterations", "plot_recall_vs_radius", "plot_examples"]

_KS = ("R@1", "R@5", "R@10")
_DIRS = (("t2i", "text -> image"), ("i2t", "image -> text"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int) -> None:
    """Write the figure atomically (a reader never sees a half-written image)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi))


def _short(spec: str) -> str:
    kind, _, arg = spec.partition(":")
    return f"{kind}:{Path(arg).name}" if arg else spec


def _colours(names: list[str]) -> dict[str, str]:
    base = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:gray"]
    return {n: base[i % len(base)] for i, n in enumerate(names)}


def _attacks(result: dict) -> list[str]:
    seen: list[str] = []
    for c in result["cells"].values():
        if c["attack"] not in seen:
            seen.append(c["attack"])
    return seen


def plot_recall_vs_iterations(result: dict, path: str | Path) -> Path:
    """2 x 3 grid (t2i/i2t x R@1/5/10): R@K after t iterations, one line per (attack, radius) cell."""
    plt = _plt()
    cols = _colours(_attacks(result))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    count: dict[str, int] = {}
    for key, c in result["cells"].items():
        i = count.get(c["attack"], 0)
        count[c["attack"]] = i + 1
        ts = sorted(int(t) for t in c["curve"])
        style = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))][i % 5]
        for r, (d, _) in enumerate(_DIRS):
            for k, kk in enumerate(_KS):
                axes[r, k].plot(
                    ts,
                    [c["curve"][str(t)][d][kk] for t in ts],
                    linestyle=style,
                    color=cols[c["attack"]],
                    marker="o",
                    ms=3,
                    label=key if (r, k) == (0, 0) else None,
                )
    for r, (_, title) in enumerate(_DIRS):
        for k, kk in enumerate(_KS):
            ax = axes[r, k]
            ax.set_title(f"{title}: {kk}")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            if r == 1:
                ax.set_xlabel("attack iterations")
            if k == 0:
                ax.set_ylabel("recall (%)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"{_short(result['data'])} ({result['split']}): {result['n_images']} attacked images, "
        f"objective {result['objective']['kind']}",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)
    return Path(path)


def plot_recall_vs_radius(result: dict, path: str | Path) -> Path:
    """2 x 3 grid: final R@K against the mean metered (exact OT) radius, one line per attack sweep."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    names = _attacks(result)
    cols = _colours(names)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    clean = None
    field = (result.get("matched_radius") or {}).get("radius_field", "metered_radius_mean")
    for name in names:
        pts = sorted(
            ((c[field], c) for c in result["cells"].values() if c["attack"] == name and c.get(field) is not None),
            key=lambda t: t[0],
        )
        if not pts:
            continue
        clean = pts[0][1]["curve"]["0"]
        for r, (d, _) in enumerate(_DIRS):
            for k, kk in enumerate(_KS):
                axes[r, k].plot(
                    [p[0] for p in pts],
                    [p[1]["final"][d][kk] for p in pts],
                    "-o",
                    color=cols[name],
                    label=name if (r, k) == (0, 0) else None,
                )
    for r, (d, title) in enumerate(_DIRS):
        for k, kk in enumerate(_KS):
            ax = axes[r, k]
            if clean is not None:
                ax.axhline(clean[d][kk], color="k", ls="--", lw=0.8, label="clean" if (r, k) == (0, 0) else None)
            ax.set_title(f"{title}: {kk}")
            ax.set_ylim(-2, 102)
            xs = [c.get(field) for c in result["cells"].values() if c.get(field) is not None]
            ax.set_xscale("log" if xs and min(xs) > 0 else "symlog")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within one decade
            ax.grid(alpha=0.3)
            if r == 1:
                ax.set_xlabel("radius (yardstick, mean over images)")
            if k == 0:
                ax.set_ylabel("recall (%)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"{_short(result['data'])} ({result['split']}): recall after {result['steps']} iterations vs metered radius",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)
    return Path(path)


def plot_examples(out: str | Path, result: dict, path: str | Path, n: int = 3) -> Path | None:
    """Clean / perturbation (rescaled) / adversarial images of the largest-radius cell of each attack."""
    plt = _plt()
    out = Path(out)
    chosen: dict[str, str] = {}
    for key, c in result["cells"].items():
        r = c.get("metered_radius_mean") or 0.0
        best = chosen.get(c["attack"])
        if best is None or r >= (result["cells"][best].get("metered_radius_mean") or 0.0):
            chosen[c["attack"]] = key
    rows = []
    for key in chosen.values():
        f = out / "parts" / (key_part(key) + ".examples.pt")  # as experiment.part_stem names it
        if f.is_file():
            ex = torch.load(f, weights_only=True)
            rows.append((key, ex["clean"].float() / 255, ex["adv"].float() / 255))
    if not rows:
        return None
    m = min(n, min(r[1].shape[0] for r in rows))
    fig, axes = plt.subplots(len(rows), 3 * m, figsize=(2.0 * 3 * m, 2.2 * len(rows)), squeeze=False)
    for i, (key, clean, adv) in enumerate(rows):
        for j in range(m):
            d = adv[j] - clean[j]
            s = d.abs().max().clamp_min(1e-8)
            for k, (img, t) in enumerate(
                ((clean[j], "clean"), (0.5 + 0.5 * d / s, f"noise x{0.5 / s:.0f}"), (adv[j], "adversarial"))
            ):
                ax = axes[i, 3 * j + k]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(t if i == 0 or k != 0 else "", fontsize=7)
                if j == 0 and k == 0:
                    ax.set_ylabel(key, fontsize=6)
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)
    return Path(path)
