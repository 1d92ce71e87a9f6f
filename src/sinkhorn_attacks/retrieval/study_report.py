"""``results.json``, ``results.md`` and the two figures of a retrieval experiment, all from the results dict.

:func:`write_report` writes the JSON and then renders the markdown tables (:func:`render_markdown`) and the
figures (:func:`plot_iterations`, :func:`plot_radius`) from the JSON alone, so ``report_from_json`` redraws
them from a copied ``results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._util import atomic_write

__all__ = ["write_report", "report_from_json", "render_markdown", "plot_iterations", "plot_radius"]

_KS = ("R@1", "R@5", "R@10")
_DIRS = (("t2i", "text -> image"), ("i2t", "image -> text"))
_MODES = ("best", "last")


def _r(m: dict | None, d: str) -> str:
    if not m:
        return "–"
    return "/".join(f"{m[d][k]:.1f}" for k in _KS)


def _num(v: Any, spec: str = ".4g") -> str:
    return "–" if v is None else format(v, spec)


def _cells_table(res: dict) -> list[str]:
    lines = [
        "| attack | radius (own units) | yardstick best: mean / median | yardstick last: mean / median "
        "| t2i best | t2i last | i2t best | i2t last | CPU s / image-iteration |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cells"]:
        ys, fin = c.get("yardstick", {}), c.get("final", {})
        y = {m: f"{_num(ys.get(m, {}).get('mean'))} / {_num(ys.get(m, {}).get('median'))}" for m in _MODES}
        lines.append(
            f"| {c['attack']} | {c['radius']:g} | {y['best']} | {y['last']} | {_r(fin.get('best'), 't2i')} "
            f"| {_r(fin.get('last'), 't2i')} | {_r(fin.get('best'), 'i2t')} | {_r(fin.get('last'), 'i2t')} "
            f"| {_num(c['timing']['cpu_s_per_image_iteration'], '.3g')} |"
        )
    return lines


def _matched_table(mr: dict) -> list[str]:
    names = list(mr["attacks"])
    if not names:
        return ["(no measured cell)"]
    lines = ["| yardstick radius | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for j, g in enumerate(mr["radius"]):
        row = []
        for name in names:
            t = mr["attacks"][name]
            if t["t2i R@1"][j] is None:
                row.append("")
            else:
                row.append(" · ".join("/".join(f"{t[f'{d} {k}'][j]:.1f}" for k in _KS) for d, _ in _DIRS))
        lines.append(f"| {g:.4g} | " + " | ".join(row) + " |")
    ranges = ", ".join(f"{n} {lo:.4g}–{hi:.4g}" for n, (lo, hi) in mr["range"].items())
    return [*lines, "", f"Each attack's own range: {ranges}."]


def render_markdown(res: dict) -> str:
    """The experiment's tables as markdown (setup, final R@K per cell, matched-radius tables)."""
    clean, full = res["clean"]["attacked_queries"], res["clean"]["full_split"]
    state = "" if res["complete"] else f" (of {res['n_images_planned']} planned; the run is not finished)"
    out = [
        f"# Retrieval under image attacks: {res['dataset']}",
        "",
        f"{res['n_images']} attacked images{state} of {res['n_gallery_images']} in the gallery "
        f"({res['n_caption_queries']} caption queries), {res['iterations']} iterations, objective "
        f"`{res['objective']['kind']}`. Galleries are the whole split with the attacked images replaced. "
        f"Radii: yardstick {res['yardstick']['label']}. Generated from `results.json`.",
        "",
        f"Clean R@1/5/10 on the whole split: t2i {_r(full, 't2i')}, i2t {_r(full, 'i2t')}; on the attacked "
        f"images' queries: t2i {_r(clean, 't2i')}, i2t {_r(clean, 'i2t')}.",
        "",
        "## Final R@1/5/10 per attack and radius",
        "",
        "*best*: per image the iterate whose own pairs are retrieved worst; *last*: the image the attack returned.",
        "",
        *_cells_table(res),
    ]
    for m in _MODES:
        out += [
            "",
            f"## At matched yardstick radius ({m} images)",
            "",
            "t2i R@1/5/10 · i2t R@1/5/10, interpolated between each attack's own radii; empty outside them.",
            "",
            *_matched_table(res["matched_radius"][m]),
        ]
    return "\n".join(out) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styles(res: dict) -> dict[str, tuple[str, str]]:
    """(colour by attack, line style by radius rank within the attack) per cell key."""
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:gray"]
    out, count = {}, {}
    for c in res["cells"]:
        i = res["attacks"].index(c["attack"]) if c["attack"] in res["attacks"] else 0
        j = count.get(c["attack"], 0)
        count[c["attack"]] = j + 1
        out[c["key"]] = (colours[i % len(colours)], ["-", "--", ":", "-."][j % 4])
    return out


def plot_iterations(res: dict, path: str | Path) -> Path:
    """4 x 3 grid: (t2i best, t2i last, i2t best, i2t last) x (R@1, R@5, R@10) against the iteration."""
    plt = _plt()
    fig, axes = plt.subplots(4, 3, figsize=(13, 13), sharex=True)
    styles = _styles(res)
    rows = [(d, m, title) for d, title in _DIRS for m in _MODES]
    for c in res["cells"]:
        if not c.get("curves"):
            continue
        colour, ls = styles[c["key"]]
        for r, (d, m, _) in enumerate(rows):
            curve = c["curves"][m]
            ts = sorted(int(t) for t in curve)
            for k, kk in enumerate(_KS):
                axes[r, k].plot(
                    ts, [curve[str(t)][d][kk] for t in ts], ls, color=colour, lw=1.3,
                    label=f"{c['attack']} {c['radius']:g}" if (r, k) == (0, 0) else None,
                )  # fmt: skip
    for r, (_, m, title) in enumerate(rows):
        for k, kk in enumerate(_KS):
            ax = axes[r, k]
            ax.set_title(f"{title}, {m} iterate: {kk}", fontsize=9)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if r == len(rows) - 1:
                ax.set_xlabel("attack iterations")
            if k == 0:
                ax.set_ylabel("recall (%)")
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{res['dataset']}: {res['n_images']} attacked images, {res['iterations']} iterations", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_radius(res: dict, path: str | Path) -> Path:
    """2 x 3 grid: final R@K against the mean yardstick radius; best images solid, last images dashed."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    styles = _styles(res)
    clean = res["clean"]["attacked_queries"]
    for name in res["attacks"]:
        cells = [c for c in res["cells"] if c["attack"] == name and c.get("final")]
        if not cells:
            continue
        colour = styles[cells[0]["key"]][0]
        for m, ls, marker in (("best", "-", "o"), ("last", "--", "x")):
            pts = sorted(
                (c["yardstick"][m]["mean"], c["final"][m]) for c in cells if c["yardstick"][m]["mean"] is not None
            )
            for r, (d, _) in enumerate(_DIRS):
                for k, kk in enumerate(_KS):
                    axes[r, k].plot(
                        [p[0] for p in pts], [p[1][d][kk] for p in pts], ls, marker=marker, color=colour,
                        label=f"{name} ({m})" if (r, k) == (0, 0) else None,
                    )  # fmt: skip
    for r, (d, title) in enumerate(_DIRS):
        for k, kk in enumerate(_KS):
            ax = axes[r, k]
            if clean:
                ax.axhline(clean[d][kk], color="k", ls=":", lw=0.8, label="clean" if (r, k) == (0, 0) else None)
            ax.set_title(f"{title}: {kk}", fontsize=9)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            if r == 1:
                ax.set_xlabel(f"radius (yardstick {res['yardstick']['label']}, mean)", fontsize=8)
            if k == 0:
                ax.set_ylabel("recall (%)")
    fig.legend(loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(f"{res['dataset']}: recall after {res['iterations']} iterations against the radius", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


#: the keys of an experiment's results.json that the report reads
_RESULT_KEYS = ("dataset", "n_images", "complete", "clean", "cells")


def report_from_json(path: str | Path, out: str | Path | None = None) -> dict:
    """Render ``results.md`` and the figures of a ``results.json`` into ``out`` (default: its folder)."""
    res = json.loads(Path(path).read_text())
    missing = [k for k in _RESULT_KEYS if k not in res] if isinstance(res, dict) else list(_RESULT_KEYS)
    if missing:
        raise ValueError(f"not the results.json of `retrieval experiment` (no {', '.join(missing)})")
    out = Path(out) if out is not None else Path(path).parent
    atomic_write(out / "results.md", render_markdown(res))
    if res["n_images"]:
        plot_iterations(res, out / "recall_vs_iterations.png")
        plot_radius(res, out / "recall_vs_radius.png")
    return res


def write_report(result: dict, out: str | Path) -> dict:
    """Write ``results.json`` and render the markdown and figures from it."""
    path = Path(out) / "results.json"
    atomic_write(path, json.dumps(result, indent=1, default=float) + "\n")
    return report_from_json(path)
