"""Render a leaderboard document (:func:`sinkhorn_attacks.eval.leaderboard.aggregate_board`) as a
self-contained HTML page (sortable table, robust accuracy vs radius, example grids) and a markdown table.

Every radius label is generated from the board's yardstick; nothing here names a unit on its own.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["board_markdown", "write_board_html", "board_plot_png", "head_to_head"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}"


def head_to_head(board: dict[str, Any], attack: str) -> list[dict[str, Any]]:
    """``attack`` against every other attack, per model, at equal yardstick radius: the mean over the board's
    radii of the robust-accuracy difference (percentage points; negative = ``attack`` is stronger), and at how
    many radii it leaves fewer / more examples robust."""
    rows = []
    for m in board["models"]:
        if attack not in m["attacks"]:
            continue
        mine = [r["robust_accuracy"] for r in m["attacks"][attack]["robust_accuracy"]]
        for lab, a in m["attacks"].items():
            if lab == attack:
                continue
            other = [r["robust_accuracy"] for r in a["robust_accuracy"]]
            diff = [100 * (u - v) for u, v in zip(mine, other)]
            rows.append({
                "model": m["label"], "n": m["n"], "versus": lab, "mean_difference_points": sum(diff) / len(diff),
                "radii_stronger": sum(d < 0 for d in diff), "radii_weaker": sum(d > 0 for d in diff),
            })  # fmt: skip
    return rows


def _head_to_head_markdown(board: dict[str, Any], attack: str) -> list[str]:
    rows = head_to_head(board, attack)
    if not rows:
        return []
    peers = list(dict.fromkeys(r["versus"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["versus"]): r for r in rows}
    lines = [
        "",
        f"Head to head: `{attack}` against each attack at equal radius (mean over the radii of its robust accuracy "
        f"minus the other's, in points; negative = `{attack}` is stronger):",
        "",
        "| model | " + " | ".join(peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    for mod in models:
        lines.append(
            f"| {mod} | "
            + " | ".join(
                signed_points(cell[(mod, p)]["mean_difference_points"]) if (mod, p) in cell else "-" for p in peers
            )
            + " |"
        )
    return lines


def board_markdown(board: dict[str, Any]) -> str:
    """Worst-case robust accuracy (%) per model at each radius, with the 95 % interval and the attack that
    fooled most examples there; then per-attack robust accuracy."""
    ys = board["yardstick"]["label"]
    radii = board["radii"]
    head = "| model | n | clean | " + " | ".join(f"r = {r:g}" for r in radii) + " |"
    sep = "|---|---|---|" + "---|" * len(radii)
    lines = [f"Robust accuracy (%) at yardstick radius r ({ys}); worst case over every attack, 95 % Wilson "
             "interval, and the attack that fooled the most examples within r.", "", head, sep]  # fmt: skip
    for m in board["models"]:
        cells = []
        for row in m["robust_accuracy"]:
            lo, hi = row["ci95"]
            cells.append(f"**{_pct(row['robust_accuracy'])}** [{_pct(lo)}, {_pct(hi)}] {row['strongest_attack'] or ''}")
        lines.append(f"| {m['label']} | {m['n']} | {_pct(m['clean_accuracy'])} | " + " | ".join(cells) + " |")
    lines += ["", "Per attack (robust accuracy %, same radii; median minimal radius of the fooled examples; CPU "
              "seconds per image):", ""]  # fmt: skip
    lines.append("| model | attack | " + " | ".join(f"r = {r:g}" for r in radii) + " | median radius | s / image |")
    lines.append("|---|---|" + "---|" * (len(radii) + 2))
    for m in board["models"]:
        for lab, a in m["attacks"].items():
            accs = " | ".join(_pct(row["robust_accuracy"]) for row in a["robust_accuracy"])
            lines.append(
                f"| {m['label']} | {lab} | {accs} | {_num(a['median_min_radius'])} | {_num(a['s_per_image'])} |"
            )
    uot = [a["label"] for a in board["attacks"] if a["preset"].startswith("uot")]
    if uot:
        lines += _head_to_head_markdown(board, uot[0])
    return "\n".join(lines) + "\n"


def board_plot_png(board: dict[str, Any], model: dict[str, Any]) -> bytes:
    """Robust accuracy vs yardstick radius for one model: every attack, and the worst case (bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii = board["radii"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    for lab, a in model["attacks"].items():
        ax.plot(radii, [row["robust_accuracy"] for row in a["robust_accuracy"]], marker="o", ms=3, lw=1, label=lab)
    worst = [row["robust_accuracy"] for row in model["robust_accuracy"]]
    lo = [row["ci95"][0] for row in model["robust_accuracy"]]
    hi = [row["ci95"][1] for row in model["robust_accuracy"]]
    ax.plot(radii, worst, color="black", lw=2.2, label="worst case")
    ax.fill_between(radii, lo, hi, color="black", alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"radius ({board['yardstick']['label']})", fontsize=7)
    ax.set_ylabel("robust accuracy")
    ax.set_title(f"{model['label']} (n = {model['n']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def _pixels_png(img: np.ndarray) -> bytes:
    """One ``(C, H, W)`` image in [0, 1] as an 8-bit PNG at its own resolution (the page scales it up)."""
    from PIL import Image

    a = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _grid_table(clean: np.ndarray, rows: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """Example grid as a table of exact-pixel images: the clean row, then one row per attack, radius below."""

    def cell(img: np.ndarray, caption: str, alt: str) -> str:
        return f"<td>{_b64(_pixels_png(img), alt, cls='px')}<br><small>{html.escape(caption)}</small></td>"

    k = clean.shape[0]
    body = ["<tr><th class='l'>clean</th>" + "".join(cell(clean[j], "", "clean") for j in range(k)) + "</tr>"]
    for lab, adv, rad in rows:
        cells = "".join(cell(adv[j], f"r={_num(float(rad[j]), 2)}", lab) for j in range(k))
        body.append(f"<tr><th class='l'>{html.escape(lab)}</th>{cells}</tr>")
    return "<table class='grid'>" + "".join(body) + "</table>"


def _png(fig: Any) -> bytes:
    """The figure as an optimised PNG (the board page embeds them), closed afterwards."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"optimize": True})
    plt.close(fig)
    return buf.getvalue()


def _b64(png: bytes, alt: str, cls: str | None = None) -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.asc !== 'true';
    rows.sort(function (a, b) {
      var x = parseFloat(a.cells[col].dataset.v), y = parseFloat(b.cells[col].dataset.v);
      if (isNaN(x) || isNaN(y)) { x = a.cells[col].textContent; y = b.cells[col].textContent; }
      return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.asc; });
    th.dataset.asc = asc;
  });
});
"""


def signed_points(v: float) -> str:
    """``+1.5`` / ``-0.3``; a value that rounds to zero reads ``0.0`` (never ``-0.0``)."""
    r = round(v, 1)
    return "0.0" if r == 0 else f"{r:+.1f}"


def write_board_html(board: dict[str, Any], out_dir: str | os.PathLike[str], grids_from: str | None = None) -> Path:
    """Write ``out_dir/index.html`` (self-contained: images inlined) and ``out_dir/leaderboard.md``.

    ``grids_from``: the run folder whose ``units/<model>/<attack>/*.grid.json`` hold example images (default
    ``out_dir``)."""
    from .._util import atomic_write

    out = Path(out_dir)
    parts = _html_header(board) + _html_per_attack(board) + _html_head_to_head(board)
    parts.append("<h2>Robust accuracy vs radius</h2>")
    for m in board["models"]:
        parts.append(_b64(board_plot_png(board, m), f"robust accuracy vs radius, {m['label']}"))
    parts += _html_examples(board, Path(grids_from) if grids_from else out)
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    atomic_write(out / "index.html", "\n".join(parts))
    atomic_write(out / "leaderboard.md", board_markdown(board))
    return out / "index.html"


def _html_header(board: dict[str, Any]) -> list[str]:
    """Title, units, yardstick, protocol and the ranking table (worst case per model, Wilson intervals)."""
    ys = board["yardstick"]
    radii = board["radii"]
    steps = board["line_search"]
    shortened = f", shortened by {steps} bisection steps towards the clean image" if steps else ""
    dataset = f"{board['dataset']['name'].upper() if len(board['dataset']['name']) <= 5 else board['dataset']['name']}"
    mid = radii[len(radii) // 2]  # rows ranked by worst-case robust accuracy at the middle radius
    ranked = sorted(
        board["models"],
        key=lambda m: -next((row["robust_accuracy"] for row in m["robust_accuracy"] if row["radius"] == mid), 0.0),
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Wasserstein robustness leaderboard: "
        f"{html.escape(dataset)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{cursor:pointer;"
        "background:#f3f3f3}td.l,th.l{text-align:left}small{color:#555}img{max-width:100%}"
        "img.px{width:64px;image-rendering:pixelated}table.grid td{text-align:center;padding:2px}</style></head><body>",
        f"<h1>Wasserstein robustness leaderboard: {html.escape(dataset)} ({html.escape(board['dataset']['split'])} "
        f"images)</h1>",
        f"<p><b>Unit in one line:</b> r is the cost of turning the clean image into the attacked one, per unit of "
        f"clean mass: r = 0.1 is moving 10 % of the image's mass by one pixel, or creating "
        f"{100 * 0.1 / float(ys.get('price') or 2 * 2**0.5):.1f} % new mass.</p>",
        f"<p><b>Yardstick:</b> {html.escape(ys['describe'])}.</p>",
        f"<p>Dataset {html.escape(board['dataset']['name'])} / {html.escape(board['dataset']['split'])}, images from "
        f"{board['dataset']['first']}. Robust accuracy at radius r: the fraction of examples whose smallest fooling "
        f"radius over every attack exceeds r (95 % Wilson interval). Per example and attack the minimal radius is "
        f"the yardstick value of the first fooling image the attack returned"
        f"{shortened}"
        f". Library {html.escape(str(board['library_version']))}, torch {html.escape(board['torch_version'])}, "
        f"{html.escape(board['created'])}. Rows are ranked by robust accuracy at r = {mid:g}; click a column to "
        "sort.</p>",
        "<table class='sortable'><thead><tr><th>rank</th><th class='l'>model</th><th>n</th><th>clean %</th>"
        + "".join(f"<th>r = {r:g}</th>" for r in radii)
        + "<th>CPU s</th></tr></thead><tbody>",
    ]
    for rank, m in enumerate(ranked, 1):
        cells = [
            f"<td data-v='{rank}'>{rank}</td>",
            f"<td class='l'>{html.escape(m['label'])}</td>",
            f"<td data-v='{m['n']}'>{m['n']}</td>",
            f"<td data-v='{m['clean_accuracy']}'>{_pct(m['clean_accuracy'])}</td>",
        ]
        for row in m["robust_accuracy"]:
            lo, hi = row["ci95"]
            who = html.escape(row["strongest_attack"] or "")
            cells.append(
                f"<td data-v='{row['robust_accuracy']}'><b>{_pct(row['robust_accuracy'])}</b> "
                f"<small>[{_pct(lo)}, {_pct(hi)}] {who}</small></td>"
            )
        cells.append(f"<td data-v='{m['cpu_s']}'>{m['cpu_s']:.0f}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _html_per_attack(board: dict[str, Any]) -> list[str]:
    """Robust accuracy of each attack alone, its median minimal radius and its time per image."""
    radii = board["radii"]
    parts: list[str] = []
    parts.append(
        "<h2>Per attack</h2><table class='sortable'><thead><tr><th class='l'>model</th><th class='l'>attack</th>"
    )
    parts.append(
        "".join(f"<th>r = {r:g}</th>" for r in radii) + "<th>median radius</th><th>s / image</th></tr></thead><tbody>"
    )
    for m in board["models"]:
        for lab, a in m["attacks"].items():
            cells = [f"<td class='l'>{html.escape(m['label'])}</td>", f"<td class='l'>{html.escape(lab)}</td>"]
            cells += [
                f"<td data-v='{row['robust_accuracy']}'>{_pct(row['robust_accuracy'])}</td>"
                for row in a["robust_accuracy"]
            ]
            med = a["median_min_radius"]
            cells.append(f"<td data-v='{med if med is not None else 'NaN'}'>{_num(med)}</td>")
            cells.append(f"<td data-v='{a['s_per_image']}'>{_num(a['s_per_image'])}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _html_head_to_head(board: dict[str, Any]) -> list[str]:
    """The UOT attack against every other attack: mean robust-accuracy difference over the radii, in points."""
    parts: list[str] = []
    uot = [a["label"] for a in board["attacks"] if a["preset"].startswith("uot")]
    h2h = head_to_head(board, uot[0]) if uot else []
    if h2h:
        peers = list(dict.fromkeys(r["versus"] for r in h2h))
        cell = {(r["model"], r["versus"]): r["mean_difference_points"] for r in h2h}
        parts.append(
            f"<h2>Head to head: {html.escape(uot[0])}</h2><p>Mean over the radii of its robust accuracy minus each "
            "other attack's, in points (negative: it is the stronger attack at equal yardstick radius).</p>"
            "<table class='sortable'><thead><tr><th class='l'>model</th>"
            + "".join(f"<th>{html.escape(p)}</th>" for p in peers)
            + "</tr></thead><tbody>"
        )
        for mod in dict.fromkeys(r["model"] for r in h2h):
            cells = "".join(
                f"<td data-v='{cell[(mod, p)]}'>{signed_points(cell[(mod, p)])}</td>"
                if (mod, p) in cell
                else "<td>-</td>"
                for p in peers
            )
            parts.append(f"<tr><td class='l'>{html.escape(mod)}</td>{cells}</tr>")
        parts.append("</tbody></table>")
    return parts


def _html_examples(board: dict[str, Any], src: Path) -> list[str]:
    """Example grids: per model, the clean images and the image each attack returned, with its radius."""
    from ..eval.leaderboard import find_unit_file, read_grid

    parts: list[str] = []
    parts.append("<h2>Examples</h2><p>First images of the board; each row is the image an attack returned "
                 "(after the line search), r its yardstick radius (inf: not fooled, shown clean).</p>")  # fmt: skip
    first = board["dataset"]["first"]
    models, attacks = [m["label"] for m in board["models"]], [a["label"] for a in board["attacks"]]
    for m in board["models"]:
        clean, rows = None, []
        for lab in m["attacks"]:
            f = find_unit_file(src, m["label"], lab, first, models, attacks, suffix=".grid.json")
            if f.exists():
                c, a, r = read_grid(f)
                clean = c if clean is None else clean
                rows.append((lab, a, r))
        if clean is not None and rows:
            parts.append(f"<h3>{html.escape(m['label'])}</h3>" + _grid_table(clean, rows))
    return parts
