"""Reproduce the MNIST "Adv Acc (eps=1.0)" column of Wong et al.'s README with ``from_preset('wong2019-mnist')``.

Wong's README (github.com/locuslab/projected_sinkhorn): standard 4%, l_inf-robust 48%, adversarially trained
86%, binarize 14%. Accuracy at eps=1.0 = fraction of images whose minimal found radius exceeds 1.0
(``res.radius`` for fooled images, ``inf`` if never fooled, ``0`` for clean errors).

The full protocol (200 attack iterations x 400 Sinkhorn sweeps) is slow on a CPU, so the script runs the
first test images in batches, round-robin over the four models, until a wall-clock budget is spent, and
rewrites ``docs/results/wong_reproduction.json`` (atomically) and ``.md`` after every batch.

    nohup .venv/bin/python benchmarks/reproduce_wong.py --budget-min 25 --batch 10 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from sinkhorn_attacks import zoo
from sinkhorn_attacks._util import atomic_write
from sinkhorn_attacks.attacks.presets import from_preset

BINARIZE_WONG = "wong2019-mnist-binarize@wong-protocol"  # attack_mnist.py --binarize: x = (x >= 0.5), plain net
MODELS = {
    "wong2019-mnist-vanilla": ("standard", 0.04),
    "wong2019-mnist-robust": ("l_inf robust", 0.48),
    "wong2019-mnist-adv": ("adversarially trained", 0.86),
    "wong2019-mnist-binarize": ("binarize (threshold inside the model, straight-through gradient)", 0.14),
    BINARIZE_WONG: ("binarize, Wong's protocol (clean input binarized once, plain network attacked)", 0.14),
}
EPS = 1.0


def _radii(res) -> torch.Tensor:
    r = torch.where(res.success, res.radius.double(), torch.full_like(res.radius.double(), math.inf))
    return torch.where(res.clean_correct, r, torch.zeros_like(r))


def _summary(rec: dict) -> dict:
    r = np.asarray(rec["radii"], dtype=float)
    m = np.asarray(rec["metered"], dtype=float)
    fooled = np.isfinite(r) & (r > 0)
    n = len(r)
    return {
        "n_images": n,
        "clean_accuracy": float(np.mean(np.asarray(rec["clean_correct"]))) if n else None,
        "adv_acc_eps1": float(np.mean(r > EPS)) if n else None,
        "wong_readme": rec["wong_readme"],
        "median_radius_fooled": float(np.median(r[fooled])) if fooled.any() else None,
        "median_metered_radius_fooled": float(np.nanmedian(m[fooled])) if fooled.any() else None,
        "time_s": rec["time_s"],
        "s_per_image": rec["time_s"] / n if n else None,
        "grad_evals": rec["grad_evals"],
    }


def _markdown(out: dict) -> str:
    lines = [
        "# Wong et al. MNIST reproduction (Adv Acc at eps = 1.0)",
        "",
        f"Preset `wong2019-mnist` (p=2, 7x7, lam=1000, 400 Sinkhorn its, 200 steps, eps0=0.7 x1.1 every 10), "
        f"test images from index {out.get('first_image', 0)} of `mnist_test.npz`, batch {out['batch']}, "
        f"{out['threads']} torch thread(s), "
        f"wall-clock budget {out['budget_min']} min on a shared 2-core CPU (load avg at start "
        f"{out['load_start']}). Status: **{out['status']}**, elapsed {out['elapsed_s']:.0f} s.",
        "",
        "| model | Wong README | ours | #images | ours, first n_common | clean acc | median radius (fooled) "
        "| median metered | s/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    n_common = min(len(rec["radii"]) for rec in out["models"].values())

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    for name, rec in out["models"].items():
        s = rec["summary"]
        lines.append(
            f"| {name} | {rec['wong_readme']:.0%} | {f(s['adv_acc_eps1'], '{:.0%}')} | {s['n_images']} | "
            f"{f(float(np.mean(np.asarray(rec['radii'][:n_common]) > EPS)) if n_common else None, '{:.0%}')} | "
            f"{f(s['clean_accuracy'], '{:.0%}')} | {f(s['median_radius_fooled'])} | "
            f"{f(s['median_metered_radius_fooled'])} | {f(s['s_per_image'], '{:.1f}')} |"
        )
    lines += [
        "",
        f"n_common = {n_common}: the first images that every model was attacked on. A batch is started only "
        "while the budget lasts, so the last one can overrun it.",
        "",
        "Radius = the nominal (normalised) Wasserstein radius at which the attack first fooled the model; "
        "`inf` if never fooled within 200 steps (max radius 0.7 x 1.1^19 = 4.3), 0 for clean errors. "
        "Metered radius = the exact OT cost (library meter) between clean and adversarial image. "
        "With a few dozen images per model the binomial standard error is about "
        "sqrt(p(1-p)/n) (e.g. +-9 points at p = 0.5, n = 30), so only large deviations are meaningful.",
        "",
    ]
    return "\n".join(lines)


def _merge(runs: list[dict], out_json: Path) -> None:
    """Combine runs over disjoint model subsets: each model's record comes from the run with most images."""
    out = dict(runs[0])
    out["models"] = {}
    for name in MODELS:
        recs = [r["models"][name] for r in runs if name in r["models"]]
        if recs:
            out["models"][name] = max(recs, key=lambda rec: len(rec["radii"]))
    out["elapsed_s"] = max(r["elapsed_s"] for r in runs)  # the runs went in parallel
    out["budget_min"] = max(r["budget_min"] for r in runs)
    out["status"] = " / ".join(sorted({r["status"] for r in runs})) + f" ({len(runs)} processes in parallel)"
    atomic_write(out_json, json.dumps(out, indent=1) + "\n")
    atomic_write(out_json.with_suffix(".md"), _markdown(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-min", type=float, default=25.0)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--max-images", type=int, default=10000)
    ap.add_argument("--first", type=int, default=0, help="index of the first test image attacked")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models-dir", default="/work/shared/models")
    ap.add_argument("--out", default="docs/results/wong_reproduction.json")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from an existing JSON")
    ap.add_argument("--resume", action="store_true", help="continue the run recorded in --out (same batch size)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="attack only these models (default: all)")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge runs of disjoint --models into --out (per model, the record with most images)",
    )
    args = ap.parse_args()
    if args.merge:
        _merge([json.loads(Path(f).read_text()) for f in args.merge], Path(args.out))
        return
    if args.render:
        out = json.loads(Path(args.out).read_text())
        atomic_write(Path(args.out).with_suffix(".md"), _markdown(out))
        return
    torch.set_num_threads(args.threads)
    path = os.environ.get("SINKHORN_ATTACKS_DATA", "/work/shared/data/mnist_test.npz")
    d = np.load(path, allow_pickle=False)
    sl = slice(args.first, args.first + args.max_images)
    xs = torch.tensor(d["x"][sl], dtype=torch.float32).div_(255).unsqueeze(1)
    ys = torch.tensor(d["y"][sl], dtype=torch.long)
    attacks = {}
    for name in args.models or MODELS:
        if name == BINARIZE_WONG:  # Wong's attack_mnist.py --binarize: the network without its threshold
            base = name.split("@")[0]
            model = zoo.load(zoo.locate(base, models_dir=args.models_dir, download=False))
        else:
            model = zoo.load(name, models_dir=args.models_dir, download=False)
        attacks[name] = from_preset("wong2019-mnist", model)
    out_json = Path(args.out)
    out = {
        "preset": "wong2019-mnist",
        "eps": EPS,
        "data": path,
        "first_image": args.first,
        "batch": args.batch,
        "threads": args.threads,
        "budget_min": args.budget_min,
        "load_start": round(os.getloadavg()[0], 2),
        "status": "running",
        "elapsed_s": 0.0,
        "models": {
            n: {
                "label": lab,
                "wong_readme": acc,
                "radii": [],
                "metered": [],
                "clean_correct": [],
                "time_s": 0.0,
                "grad_evals": 0,
                "batch_times_s": [],
            }
            for n, (lab, acc) in MODELS.items()
        },  # fmt: skip
    }
    out_prev = json.loads(out_json.read_text()) if args.resume and out_json.exists() else None
    if out_prev is not None:
        for n, rec in out["models"].items():  # models added since the recorded run start from image 0
            out_prev["models"].setdefault(n, rec)
        if out_prev["batch"] != args.batch:
            raise SystemExit(f"--resume needs --batch {out_prev['batch']} (the recorded run's)")
        out = out_prev
        out["status"] = "running"
        out["budget_min"] = out.get("budget_min", 0.0) + args.budget_min
    for rec in out["models"].values():
        rec["summary"] = _summary(rec)
    elapsed_before = float(out.get("elapsed_s", 0.0)) if out_prev is not None else 0.0
    t_start = time.perf_counter()
    budget = args.budget_min * 60
    start = min(len(out["models"][n]["radii"]) for n in attacks)
    done = False
    while not done and start < len(xs):
        for name, atk in attacks.items():
            rec = out["models"][name]
            if len(rec["radii"]) > start:
                continue  # resumed: this model already has this batch
            if time.perf_counter() - t_start > budget:
                done = True
                break
            x, y = xs[start : start + args.batch], ys[start : start + args.batch]
            if name == BINARIZE_WONG:
                x = (x >= 0.5).to(x.dtype)
            t0 = time.perf_counter()
            res = atk(x, y)
            dt = time.perf_counter() - t0
            rec["radii"] += [float(v) for v in _radii(res)]
            rec["metered"] += [float(v) for v in res.metered_radius]
            rec["clean_correct"] += [bool(v) for v in res.clean_correct]
            rec["time_s"] += dt
            rec["grad_evals"] += int(res.grad_evals)
            rec["batch_times_s"].append(dt)
            rec["summary"] = _summary(rec)
            out["elapsed_s"] = elapsed_before + time.perf_counter() - t_start
            atomic_write(out_json, json.dumps(out, indent=1) + "\n")
            atomic_write(out_json.with_suffix(".md"), _markdown(out))
            print(f"{name}: +{len(x)} images in {dt:.1f}s -> {rec['summary']}", flush=True)
        start += args.batch
    out["status"] = "finished (budget spent)" if done else "finished (all images)"
    out["elapsed_s"] = elapsed_before + time.perf_counter() - t_start
    atomic_write(out_json, json.dumps(out, indent=1) + "\n")
    atomic_write(out_json.with_suffix(".md"), _markdown(out))


if __name__ == "__main__":
    main()
