"""Evaluate the short UOT-adversarially trained MNIST model beside the published Wong et al. checkpoints.

Usage (from the repository root; data in $SINKHORN_ATTACKS_DATA, checkpoints in $SINKHORN_ATTACKS_MODELS)::

    python docs/results/defence/evaluate_defence.py \
        --model src/sinkhorn_attacks/zoo/weights/sinkhorn_attacks_mnist_uot.pt \
        --models-dir $SINKHORN_ATTACKS_MODELS --n 200 --out docs/results/defence

Cells (model x attack) are written to ``defence.json`` as they finish, so a time-budgeted run keeps what it
did; ``--budget-s`` skips the remaining cells once it is spent. CPU attack budgets are reduced versions of the
presets (see ``ATTACKS``); the overrides are recorded in the JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from sinkhorn_attacks import attacks, zoo
from sinkhorn_attacks.data import load_dataset

#: (preset, overrides, images) in priority order. The UOT attack uses cheaper inner solves than the preset.
ATTACKS: list[tuple[str, dict[str, Any], int | None]] = [
    ("linf-pgd", {}, None),
    ("uot", {"steps": 10, "inner_max_iter": 20, "max_search": 5, "radius_rtol": 0.1, "inner_tol": 1e-3}, None),
    ("wong2019-mnist", {"steps": 20, "sinkhorn_iters": 50}, 50),
    ("hu2020-mnist", {"steps": 20, "sinkhorn_iters": 50}, 50),
]


OURS = "uot-trained (this run)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="our trained weights (model.pt)")
    ap.add_argument("--models-dir", default="/work/shared/models")
    ap.add_argument("--data-dir", default=os.environ.get("SINKHORN_ATTACKS_DATA"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="docs/results/defence")
    ap.add_argument("--budget-s", type=float, default=900.0)
    ap.add_argument("--train-info", help="JSON with the training run's facts (command, wall time)")
    ap.add_argument(
        "--reuse",
        help="defence.json of an earlier run: its cells of the published models are reused when their "
        "attack settings and n match (they do not depend on our model)",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    t_start = time.perf_counter()
    data = load_dataset("mnist", "test", args.data_dir, limit=args.n)
    models = {
        OURS: zoo.load(args.model, arch="mnist_cnn"),
        "wong2019-mnist-vanilla": zoo.load("wong2019-mnist-vanilla", models_dir=args.models_dir, download=False),
        "wong2019-mnist-adv": zoo.load("wong2019-mnist-adv", models_dir=args.models_dir, download=False),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "n_test": args.n,
        "data": "mnist test, first images",
        "attacks": {name: {"overrides": ov, "n": n or args.n} for name, ov, n in ATTACKS},
        "cells": [],
        "skipped": [],
    }
    reuse: dict[tuple[str, str], dict[str, Any]] = {}
    if args.reuse and Path(args.reuse).is_file():
        old = json.loads(Path(args.reuse).read_text())
        for c in old["cells"]:
            same = old["attacks"].get(c["attack"]) == results["attacks"].get(c["attack"])
            if same and c["model"] != OURS and old.get("n_test") == args.n:
                reuse[(c["model"], c["attack"])] = {**c, "reused_from": args.reuse}
    if args.train_info:
        results["training"] = json.loads(Path(args.train_info).read_text())
    for name, overrides, n in ATTACKS:
        for label, model in models.items():
            if time.perf_counter() - t_start > args.budget_s and (label, name) not in reuse:
                results["skipped"].append({"model": label, "attack": name, "why": "time budget"})
                continue
            k = n or args.n
            if (label, name) in reuse:
                results["cells"].append(reuse[(label, name)])
                continue
            atk = attacks.from_preset(name, model, meter_cost=None, **overrides)
            res = atk(data.images[:k], data.labels[:k])
            s = res.summary()
            cell = {
                "model": label,
                "attack": name,
                "n": k,
                "clean_accuracy": s["clean_accuracy"],
                "robust_accuracy": s["robust_accuracy"],
                "median_nominal_radius_of_successes": s["median_nominal_radius"],
                "time_s": round(res.time_s, 1),
            }
            results["cells"].append(cell)
            print(json.dumps(cell), flush=True)
            (out / "defence.json").write_text(json.dumps(results, indent=1) + "\n")
    results["eval_wall_s"] = round(time.perf_counter() - t_start, 1)
    (out / "defence.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "defence.md").write_text(table(results))
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    labels = list(dict.fromkeys(c["model"] for c in results["cells"]))
    names = list(dict.fromkeys(c["attack"] for c in results["cells"]))
    get = {(c["model"], c["attack"]): c for c in results["cells"]}
    lines = ["# MNIST defence: short UOT-adversarial training on CPU", ""]
    tr = results.get("training")
    if tr:
        lines += [
            f"Training: `{tr['command']}`",
            "",
            f"Training wall time: {tr['wall_s']:.0f} s ({tr['machine']}).",
            "",
        ]
    lines += [
        f"Robust accuracy (clean accuracy in the first column) on the first {results['n_test']} MNIST test images "
        "(fewer where the attack row says so); attack seconds in brackets.",
        "",
        "| model | clean | " + " | ".join(f"{a} (n={results['attacks'][a]['n']})" for a in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for m in labels:
        first = next(c for c in results["cells"] if c["model"] == m)
        cells = []
        for a in names:
            c = get.get((m, a))
            cells.append("-" if c is None else f"{c['robust_accuracy']:.3f} ({c['time_s']:.0f}s)")
        lines.append(f"| {m} | {first['clean_accuracy']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Attack settings (preset + overrides; CPU budgets, weaker than the full presets):", ""]
    for a in names:
        lines.append(f"* `{a}`: {json.dumps(results['attacks'][a]['overrides'])}")
    if results.get("skipped"):
        lines += [
            "",
            "Skipped for the time budget: " + ", ".join(f"{s['model']} x {s['attack']}" for s in results["skipped"]),
        ]
    lines += ["", f"Evaluation wall time: {results.get('eval_wall_s', float('nan'))} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
