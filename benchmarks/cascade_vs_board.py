"""The one-call cascade (``sinkhorn_attacks.benchmark``) against the committed MNIST board's worst case.

For each model of ``docs/leaderboard/leaderboard.json`` this runs the cascade on the board's first ``--n`` test
images (same yardstick, same attack settings, the board's batch size) and compares per example: the fraction of
examples whose cascade radius is at most the board's worst case over all its attacks (up to 1e-6 relative, the
float32 noise of re-running an attack on another batch), and the CPU time against the board's CPU time for
those images (the board's seconds per image of every attack, times ``--n``). One torch thread. Writes
``--out`` (JSON) and the markdown table beside it.

    python benchmarks/cascade_vs_board.py --n 50 --out docs/results/cascade_mnist.json
    python benchmarks/cascade_vs_board.py --out docs/results/cascade_mnist.json --report-only   # redraw
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sinkhorn_attacks import zoo
from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.eval.cascade import benchmark, cascade_attacks
from sinkhorn_attacks.eval.io import write_json

BOARD = Path(__file__).resolve().parents[1] / "docs" / "leaderboard" / "leaderboard.json"


def _radius(v: float | str) -> float:
    return float(v)  # "inf" strings included


def _within(mine: list[float], board_r: list[float], rel: float) -> float:
    """Share of examples whose radius is at most ``(1 + rel)`` times the board's (both ``inf`` counts)."""
    ok = [a <= b * (1 + rel) or (math.isinf(a) and math.isinf(b)) for a, b in zip(mine, board_r)]
    return sum(ok) / len(ok)


def compare(model_entry: dict, n: int, attacks: list[str] | None) -> dict:
    """Run the cascade on the board's first n images of one model and compare per example."""
    board_r = [_radius(v) for v in model_entry["per_example_worst"][:n]]
    data = load_dataset("mnist", "test", limit=n)
    model = zoo.load(model_entry["source"], download=False)
    t0 = time.process_time()
    res = benchmark(model, data.images, data.labels, dataset="mnist", attacks=attacks, threads=1)
    cpu = time.process_time() - t0
    mine = res.per_example_radius.tolist()
    above = [a > b * (1 + 1e-6) and not (math.isinf(a) and math.isinf(b)) for a, b in zip(mine, board_r)]
    at_or_below = n - sum(above)
    smallest = min(res.radii)
    settled = sum(1 for a, up in zip(mine, above) if up and a <= smallest)  # not refined: no number can change
    board_cpu = sum(a["s_per_image"] for a in model_entry["attacks"].values()) * n
    board_rows = {row["radius"]: row["robust_accuracy"] for row in model_entry["robust_accuracy"]}
    recomputed = {rho: sum(1 for b in board_r if b > rho) / n for rho in board_rows}
    return {
        "model": model_entry["label"],
        "n": n,
        "within_1pct_of_board": _within(mine, board_r, 1e-2),
        "at_or_below_board": at_or_below / n,
        "above_board_within_smallest_radius": settled,
        "per_example_radius": mine,
        "cascade_cpu_s": cpu,
        "board_cpu_s": board_cpu,
        "cpu_ratio": cpu / board_cpu,
        "robust_cascade": {row["radius"]: row["robust_accuracy"] for row in res.robust_accuracy()},
        "robust_board_same_images": recomputed,
        "per_attack": res.attacks,
        "warnings": res.warnings,
    }


def markdown(doc: dict) -> str:
    radii = doc["radii"]
    lines = [
        f"Cascade `{', '.join(doc['cascade'])}` on the first {doc['n']} MNIST test images of each board model, "
        "against the committed board's worst case over all its attacks on the same images (one thread).",
        "",
        "| model | radius <= board's worst case | within 1 % of it | above it but within the smallest radius | "
        "CPU s (cascade) | "
        "CPU s (board) | ratio | " + " | ".join(f"robust @ {r:g} (cascade / board)" for r in radii) + " |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(radii),
    ]
    for m in doc["models"]:
        cells = [f"{100 * m['robust_cascade'][r]:.0f} / {100 * m['robust_board_same_images'][r]:.0f} %" for r in radii]
        lines.append(
            f"| {m['model']} | {100 * m['at_or_below_board']:.0f} % | {100 * m['within_1pct_of_board']:.0f} % | "
            f"{m['above_board_within_smallest_radius']} | "
            f"{m['cascade_cpu_s']:.0f} | "
            f"{m['board_cpu_s']:.0f} | {m['cpu_ratio']:.2f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "The board's radius of an example is its worst case over all its attacks, each run on the board's batches;",
        "a cascade radius above it by more than 1e-6 relative counts against the cascade. Examples whose radius is",
        "already within the smallest reporting radius are not attacked further (no reported number can change);",
        "the column 'above it but within the smallest radius' counts the misses among them. The cascade runs its later",
        "attacks on fewer examples per batch than the board, and float32 reductions over a different batch change",
        "an attack's discrete decisions now and then (`hu2020` run on 25 images alone and inside a batch of 50 gave",
        "identical radii on 4 of the 25, a median relative difference of 1e-7 and at most 6 %), so a miss or two per",
        "model can be chance rather than a weaker attack.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--attacks", help="comma-separated cascade labels (default: the cascade's order)")
    ap.add_argument("--models", help="comma-separated board labels (default: all)")
    ap.add_argument("--out", default="runs/cascade_mnist.json")
    ap.add_argument("--report-only", action="store_true", help="redraw the markdown (and 1 % shares) from --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    board = json.loads(BOARD.read_text())
    if args.report_only:
        doc = json.loads(Path(args.out).read_text())
        worst = {e["label"]: [_radius(v) for v in e["per_example_worst"]] for e in board["models"]}
        for m in doc["models"]:
            m["within_1pct_of_board"] = _within(m["per_example_radius"], worst[m["model"]][: m["n"]], 1e-2)
            for key in ("robust_cascade", "robust_board_same_images"):  # JSON keys are strings
                m[key] = {float(r): v for r, v in m[key].items()}
        write_json(args.out, doc)
        Path(args.out).with_suffix(".md").write_text(markdown(doc))
        return 0
    attacks = args.attacks.split(",") if args.attacks else None
    cascade, cfg = cascade_attacks("mnist", attacks)
    wanted = set(args.models.split(",")) if args.models else None
    doc = {"n": args.n, "cascade": [a.label for a in cascade], "radii": list(cfg.radii), "models": []}
    for entry in board["models"]:
        if wanted is None or entry["label"] in wanted:
            doc["models"].append(compare(entry, args.n, attacks))
            print(
                json.dumps(
                    {k: v for k, v in doc["models"][-1].items() if k not in ("per_attack", "per_example_radius")}
                ),
                flush=True,
            )
            write_json(args.out, doc)
            Path(args.out).with_suffix(".md").write_text(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
