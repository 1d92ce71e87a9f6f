"""``report.html``: summary tables plus every PNG embedded as base64 (opens offline, one file)."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._util import fmt
from .plots import plot_accuracy_at_radii, plot_accuracy_vs_iteration, plot_accuracy_vs_radius, plot_grid

__all__ = ["write_report"]


def _load(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fmt(v: Any) -> str:
    """A table cell, as the command line prints it: ``-`` for missing / nan, ``inf``, rounded numbers."""
    if isinstance(v, str) and v not in ("inf", "-inf", "nan"):
        return html.escape(v)
    return html.escape(fmt(v))


def _img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(alt)
    return f'<figure><img alt="{cap}" src="data:image/png;base64,{b64}"/><figcaption>{cap}</figcaption></figure>'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _example_grids(out: Path, rep: Path) -> list[tuple[Path, str]]:
    """One figure per ``grids/*.npz`` of the run, titled with the exact model and attack names it holds."""
    grids = []
    for npz in sorted((out / "grids").glob("*.npz")):
        with np.load(npz) as d:
            title = f"{d['model']} / {d['attack']}" if "model" in d and "attack" in d else npz.stem.replace("__", " / ")
        grids.append((plot_grid(npz, rep / f"grid_{npz.stem}.png"), f"examples: {title}"))
    return grids


def _summary_table(results: dict[str, Any]) -> str:
    """The summary table: one row per model x attack (and the worst case)."""
    rows = []
    for m, cells in results["summary"].items():
        for a, s in cells.items():
            rows.append(
                [
                    m,
                    a,
                    s.get("n"),
                    s.get("clean_accuracy"),
                    s.get("robust_accuracy"),
                    s.get("success_rate_on_correct"),
                    s.get("median_metered_radius"),
                    s.get("outside_window_fraction"),
                    s.get("mean_iterations"),
                    s.get("mean_linf"),
                    s.get("time_s"),
                ]
            )
    return _table(
        [
            "model",
            "attack",
            "n",
            "clean acc",
            "robust acc",
            "success on correct",
            "median metered r",
            "outside window",
            "mean its",
            "mean l_inf",
            "time s",
        ],
        rows,
    )


def write_report(out_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None) -> Path:
    """Draw the figures of an evaluation folder and write ``report.html``; returns its path."""
    out = Path(out_dir)
    rep = Path(report_dir) if report_dir else out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    results = _load(out / "results.json")
    curves = _load(out / "curves.json")
    figs = [
        (plot_accuracy_vs_iteration(curves, rep / "acc_vs_iteration.png"), "accuracy vs PGD iteration"),
        (plot_accuracy_vs_radius(curves, rep / "acc_vs_radius.png"), "accuracy vs metered radius"),
        (plot_accuracy_at_radii(curves, rep / "acc_at_radii.png"), "accuracy at fixed metered radii"),
    ]
    grids = _example_grids(out, rep)
    cfg = results["config"]
    table = _summary_table(results)
    radii = results["at_radii"]["radii"]
    at_rows = [[k.replace("|", " / ")] + list(v) for k, v in results["at_radii"].items() if k != "radii"]
    at_table = _table(["model / attack"] + [f"r={r:g}" for r in radii], at_rows)
    units = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in results["units_meaning"].items())
    attacks = "".join(
        f"<li>{html.escape(a['label'])}: preset <code>{html.escape(a['preset'])}</code> "
        f"{html.escape(json.dumps(a['params']))}</li>"
        for a in cfg["attacks"] + cfg.get("cascade_attacks", [])
    )
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>sinkhorn-attacks evaluation</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:2px 6px;font-size:13px;text-align:right}}img{{max-width:100%}}
figure{{margin:1em 0}}figcaption{{font-size:12px;color:#555}}</style></head><body>
<h1>Evaluation report</h1>
<p>Dataset {html.escape(str(cfg["dataset"]))} ({html.escape(str(cfg["split"]))}), {results["n_examples"]} examples
from offset {cfg["offset"]}; seed {cfg["seed"]}; config fingerprint <code>{results["fingerprint"]}</code>.</p>
<ul>{units}</ul>
<h2>Attacks</h2><ul>{attacks}</ul>
<p>Worst case: cascade over {html.escape(", ".join(next(iter(results["summary"].values()))["worst-case"]["order"]))}
(an example counts as fooled if any attack fooled it).</p>
<h2>Summary</h2>{table}
<h2>Accuracy at fixed metered radii</h2>{at_table}
<h2>Curves</h2>{"".join(_img(p, t) for p, t in figs)}
<h2>Examples</h2>{"".join(_img(p, t) for p, t in grids)}
</body></html>
"""
    from ..eval.io import atomic_write_text

    path = rep / "report.html"
    atomic_write_text(path, doc)
    return path
