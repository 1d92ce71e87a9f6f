"""Write the README's result blocks from the committed result files (so the README says what they say).

python scripts/readme_results.py   # rewrites the <!-- hu / board / board-cifar10 / cifar10:... --> blocks
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from sinkhorn_attacks.report.leaderboard import head_to_head, signed_points

ROOT = Path(__file__).resolve().parents[1]


def hu_block() -> str:
    rec = json.loads((ROOT / "docs/results/hu_reproduction.json").read_text())
    s = rec["summary"]
    pub = " / ".join(f"{100 * r['authors_run_same_images']:.1f}" for r in s["table"])
    ours = " / ".join(f"{100 * r['ours']:.1f}" for r in s["table"])
    p = s.get("per_example_vs_authors_run", {})
    return (
        f"{pub} % and **{ours} %** on the first {s['n_images']:,} test images "
        f"({p.get('identical', 0):,} of them with a radius identical to the authors' GPU run; "
        "[docs/results/hu_reproduction.md](docs/results/hu_reproduction.md))"
    )


def board_block(folder: str = "docs/leaderboard", radii_shown: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)) -> str:
    board = json.loads((ROOT / folder / "leaderboard.json").read_text())
    radii = [r for r in board["radii"] if r in radii_shown]
    ran = [a["label"] for a in board["attacks"] if all(a["label"] in m["attacks"] for m in board["models"])]
    missing = [a["label"] for a in board["attacks"] if a["label"] not in ran]
    partly = {a: [m["label"] for m in board["models"] if a in m["attacks"]] for a in missing}
    not_run = [f"{a} (run on {', '.join(partly[a])} only)" if partly[a] else a for a in missing]
    over = f"the {len(ran)} attacks" + (
        f" that ran on every model (of the config's {len(board['attacks'])}; not yet run: {', '.join(not_run)})"
        if missing
        else ""
    )
    lines = [
        f"Robust accuracy (%) in the worst case over {over} at yardstick radius r "
        f"({board['yardstick']['label']}), 95 % Wilson interval, and the attack that fooled most examples within r; "
        "median: the median worst-case radius of the examples classified correctly:",
        "",
        "| model | images | clean | " + " | ".join(f"r = {r:g}" for r in radii) + " | median |",
        "|---|---|---|" + "---|" * len(radii) + "---|",
    ]
    for m in board["models"]:
        rows = {row["radius"]: row for row in m["robust_accuracy"]}
        cells = []
        for r in radii:
            row = rows[r]
            lo, hi = row["ci95"]
            cells.append(
                f"{100 * row['robust_accuracy']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}] {row['strongest_attack'] or ''}"
            )
        worst = [float(v) for v in m["per_example_worst"]]
        median = statistics.median([v for v in worst if v > 0] or [math.nan])
        lines.append(
            f"| {m['label']} | {m['n']} | {100 * m['clean_accuracy']:.0f} | " + " | ".join(cells) + f" | {median:.3g} |"
        )
    uot = next(a["label"] for a in board["attacks"] if a["preset"].startswith("uot"))
    rows = head_to_head(board, uot)
    peers = list(dict.fromkeys(r["versus"] for r in rows))
    cell = {(r["model"], r["versus"]): r["mean_difference_points"] for r in rows}
    lines += [
        "",
        f"**Is the UOT attack stronger than its peers at equal radius?** Mean over the radii "
        f"{', '.join(f'{r:g}' for r in board['radii'])} of the robust accuracy the UOT attack (`{uot}`, preset "
        "`uot-search`) leaves minus the other attack's, in points (negative: UOT is stronger):",
        "",
        "| model | " + " | ".join(peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for mod in models:
        lines.append(
            f"| {mod} | " + " | ".join(signed_points(cell[(mod, p)]) if (mod, p) in cell else "-" for p in peers) + " |"
        )
    stronger = {p: [m for m in models if cell.get((m, p), 0) < 0] for p in peers}
    never = [p for p in peers if not stronger[p]]
    answer = "Answer, from this board:"
    if never:
        answer += " the UOT attack is **weaker** than " + ", ".join(f"`{p}`" for p in never) + " on every model"
        answer += " where they ran." if any((m, p) not in cell for m in models for p in never) else "."
    answer += "".join(f" Against `{p}` it is stronger on {', '.join(stronger[p])} only." for p in peers if stronger[p])
    lines += ["", answer]
    return "\n".join(lines + strongest_lines(board, radii) + cascade_lines(board, radii))


def strongest_lines(board: dict, radii: list[float]) -> list[str]:
    """Per model and radius, the single attack that leaves the lowest robust accuracy (ties: all of them)."""
    lines = [
        "",
        "**Which single attack is strongest?** Per model and radius, the attack that alone leaves the lowest robust "
        "accuracy (%):",
        "",
        "| model | " + " | ".join(f"r = {r:g}" for r in radii) + " |",
        "|---|" + "---|" * len(radii),
    ]
    wins: dict[str, int] = {}
    for m in board["models"]:
        cells = []
        for r in radii:
            acc = {a: next(row["robust_accuracy"] for row in v["robust_accuracy"] if row["radius"] == r)
                   for a, v in m["attacks"].items()}  # fmt: skip
            best = min(acc.values())
            who = [a for a, v in acc.items() if v == best]
            for a in who:
                wins[a] = wins.get(a, 0) + 1
            cells.append(f"{100 * best:.0f} {', '.join(who)}")
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    top = max(wins, key=lambda a: wins[a])
    lines += ["", f"`{top}` is (or ties for) the strongest single attack in {wins[top]} of the "
              f"{len(radii) * len(board['models'])} cells."]  # fmt: skip
    return lines


def cascade_lines(board: dict, radii: list[float]) -> list[str]:
    """The one-call cascade's attacks on the board: robust accuracy, agreement with the worst case, CPU."""
    entries = [(m, m.get("cascade")) for m in board["models"]]
    entries = [(m, c) for m, c in entries if c]
    if not entries:
        return []
    lines = [
        "",
        f"**The one-call cascade** (`sinkhorn_attacks.benchmark`, attacks {', '.join(entries[0][1]['attacks'])}): "
        "per example the minimum of its attacks' radii on this board, the share of examples where it is at most the "
        "board's worst case over every attack, robust accuracy (%) (cascade / board), and the CPU time of its "
        "attacks run on every example (the cascade runs later attacks only where a reported number can still "
        "change, so it costs at most that) as a share of the board's:",
        "",
        "| model | at or below the worst case | " + " | ".join(f"r = {r:g}" for r in radii) + " | CPU share |",
        "|---|---|" + "---|" * len(radii) + "---|",
    ]
    for m, c in entries:
        cas = {row["radius"]: row["robust_accuracy"] for row in c["robust_accuracy"]}
        brd = {row["radius"]: row["robust_accuracy"] for row in m["robust_accuracy"]}
        cells = [f"{100 * cas[r]:.0f} / {100 * brd[r]:.0f}" for r in radii]
        lines.append(
            f"| {m['label']} | {100 * c['at_or_below_worst']:.0f} % | "
            + " | ".join(cells)
            + f" | {c['cpu_s_upper_bound'] / m['cpu_s']:.2f} |"
        )
    return lines


def cifar10_block() -> str:
    """The CIFAR-10 models trained here: clean accuracy and worst-case robust accuracy on the yardstick."""
    path = ROOT / "docs/results/cifar10/results.json"
    if not path.is_file():
        return "(no CIFAR-10 evaluation committed yet)"
    data = json.loads(path.read_text())
    radii = data["radii"]
    labels = [a["label"] for a in data["attacks"]]
    lines = [
        f"Worst case over the {len(labels)} attacks ({', '.join(labels)}; each at one fixed radius, 75 steps) on "
        f"the first {data['n_images']} test images, robust accuracy (%) at yardstick radius r; clean accuracy on "
        "all 10,000 test images:",
        "",
        "| model | clean | " + " | ".join(f"r = {r:g}" for r in radii) + " |",
        "|---|---|" + "---|" * len(radii),
    ]
    for m in data["models"].values():
        wc = m["attacks"].get("worst-case", {}).get("robust_at_yardstick_radii") or []
        clean = (m["card"] or {}).get("clean_accuracy_full_test")
        lines.append(
            f"| `{m['zoo_name']}` | {'-' if clean is None else f'{100 * clean:.1f}'} | "
            + " | ".join(f"{100 * x:.0f}" for x in wc)
            + " |"
        )
    return "\n".join(lines)


CPU_ATTACKS = "yardstick-pgd,linf-pgd,l2-pgd,hu2020,wong2019,uot"
BOARDS = {  # README tag -> (folder, config, title, radii shown in the README, the command that produced it)
    "board": ("docs/leaderboard", "leaderboard_mnist", "MNIST", (0.05, 0.1, 0.2, 0.3, 0.5),
              "torchrun --nproc_per_node 2 -m sinkhorn_attacks leaderboard --config leaderboard_mnist "
              "--out docs/leaderboard"),
    "board-cifar10": ("docs/leaderboard-cifar10", "leaderboard_cifar10", "CIFAR-10",
                      (0.0005, 0.001, 0.002, 0.003, 0.005),
                      "sinkhorn-attacks leaderboard --config leaderboard_cifar10 --out docs/leaderboard-cifar10 "
                      f"--attacks {CPU_ATTACKS}"),
}  # fmt: skip


def board_readme(folder: str, config: str, title: str, run_as: str) -> str:
    """The board folder's README.md: how the committed board was produced, and its size and cost per model."""
    board = json.loads((ROOT / folder / "leaderboard.json").read_text())
    complete = all(m["attacks_complete"] for m in board["models"])
    run_as = (
        board.get("run_as")
        or f"torchrun --nproc_per_node 2 -m sinkhorn_attacks leaderboard --config {config} --out {folder}"
    )
    lines = [
        f"# The committed {title} leaderboard",
        "",
        f"Produced with the bundled config `{config}` (the file `src/sinkhorn_attacks/configs/{config}.toml` lists "
        "every model, attack, nominal radius list and override) by",
        "",
        "<!-- needs: data models -->",
        "```bash",
        run_as,
        "```",
        "",
        f"on a shared 2-core CPU, one torch thread per process, torch {board['torch_version']}, float32. The run is "
        "batch-major and resumable: the same command continues it, and `--report-only` rewrites `leaderboard.json`, "
        "`index.html` and `leaderboard.md` from the finished units. How every number is defined: "
        "[../leaderboard.md](../leaderboard.md).",
        "",
        f"Board as committed ({board['created']}); the config asks for {board['dataset']['n_requested']} images "
        "per model, a model's row covers the leading test images every attack has finished"
        + ("" if complete else "; attacks not yet run on a model are left out of its worst case (`attacks_complete`)")
        + ":",
        "",
        "| model | images | clean % | attacks | CPU s | CPU s per image (all attacks) |",
        "|---|---|---|---|---|---|",
    ]
    for m in board["models"]:
        lines.append(
            f"| {m['label']} | {m['n']} | {100 * m['clean_accuracy']:.0f} | {len(m['attacks'])} of "
            f"{len(board['attacks'])} | {m['cpu_s']:.0f} | {m['cpu_s'] / max(1, m['n']):.1f} |"
        )
    lines += ["", "Tables: `leaderboard.md`; page with plots and example grids: `index.html`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    blocks = [("hu", hu_block()), ("cifar10", cifar10_block())]
    for tag, (folder, config, title, radii, run_as) in BOARDS.items():
        if (ROOT / folder / "leaderboard.json").is_file():
            (ROOT / folder / "README.md").write_text(board_readme(folder, config, title, run_as), encoding="utf-8")
            blocks.append((tag, board_block(folder, radii)))
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    for tag, block in blocks:
        sep = "" if tag == "hu" else "\n"
        new = f"<!-- {tag}:start -->{sep}{block}{sep}<!-- {tag}:end -->"
        text, n = re.subn(rf"<!-- {tag}:start -->.*?<!-- {tag}:end -->", lambda _m, t=new: t, text, flags=re.S)
        if n != 1:
            raise SystemExit(f"README.md has {n} <!-- {tag}:start --> blocks, expected 1")
    readme.write_text(text, encoding="utf-8")
    print("README.md result blocks rewritten")


if __name__ == "__main__":
    main()
