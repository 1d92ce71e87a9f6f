"""``sinkhorn-attacks demo``: offline end-to-end run on scikit-learn's bundled 8x8 digits.

Trains a small CNN (seconds), attacks the first test images with the UOT attack and with l_inf PGD, prints
a table (clean accuracy, robust accuracy, median metered radius, time), and writes ``results.json``,
an accuracy-vs-iteration plot and an image grid (input / perturbation / adversarial).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._common import StepBar, UserError, add_threads, fmt, smoke_limit


def _yardstick_text() -> str:
    from ..ot import Yardstick

    return Yardstick().describe() + "."


def add_parser(sub: Any, help_text: str) -> None:
    p = sub.add_parser(
        "demo",
        help=help_text,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Radii: the UOT attack's nominal radius bounds F = <P,C> + tau KL(P1|x) + tau KL(P^T1|z) per unit of "
        "clean mass; the metered radius is the library's yardstick between the clean and the adversarial image: "
        + _yardstick_text(),
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("-n", "--n-images", type=int, default=100, help="test images to attack (default 100)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps of each attack (default 20)")
    p.add_argument("--radius", type=float, default=0.3, help="UOT radius, normalised units (default 0.3)")
    p.add_argument("--linf", type=float, default=0.3, help="l_inf radius of the PGD reference (default 0.3)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs of the small CNN (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads(p)
    p.set_defaults(func=run)


def _train(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> torch.nn.Module:
    from ..zoo.models import small_cnn

    torch.manual_seed(seed)
    model = small_cnn(1, 10, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..eval.io import write_json
    from ..report.plots import plot_accuracy_vs_iteration

    if args.n_images < 1 or args.steps < 1:
        raise UserError("--n-images and --steps must be >= 1")
    smoke = smoke_limit()
    if smoke:  # smoke run (tests of the documented commands)
        args.n_images, args.steps, args.epochs = min(args.n_images, smoke), min(args.steps, smoke), 1
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test", limit=args.n_images)
    t0 = time.perf_counter()
    model = _train(train.images, train.labels, args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    x, y = test.images, test.labels
    print(f"trained small CNN on {len(train.labels)} digits (8x8) in {train_s:.1f}s; attacking {len(y)} test images")
    attacks = {
        "uot": dict(radius=args.radius, steps=args.steps),
        "linf-pgd": dict(radius=args.linf, steps=args.steps, step_size=max(args.linf / 8, 0.01)),
    }
    results: dict[str, Any] = {"dataset": "sklearn digits 8x8", "n_images": len(y), "train_seconds": train_s}
    curves: dict[str, list[float]] = {}
    rows = []
    for i, (name, kw) in enumerate(attacks.items()):
        res, curves[f"digits-cnn|{name}"] = _attack(name, kw, model, x, y, args)
        s = res.summary()
        results[name] = {"summary": s, "config": res.config}
        rows.append((name, s))
        if i == 0 or name == "uot":
            _save_grid(out, name, model, x, y, res)
    plot_accuracy_vs_iteration({"iteration": curves}, out / "accuracy_vs_iteration.png")
    results["accuracy_vs_iteration"] = curves
    write_json(out / "results.json", results)
    _print_table(rows, out)
    return 0


def _attack(
    name: str, kw: dict[str, Any], model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> tuple[Any, list[float]]:
    """Run one attack with a progress bar; returns its result and accuracy per iteration (clean first)."""
    from ..attacks import from_preset

    acc_t: list[float] = []
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    y_sub = y[correct]  # the loop attacks only the clean-correct images; clean errors stay errors
    bar = StepBar(args.steps, f"{name:<8}", disable=args.quiet)

    def cb(step: int, cur: torch.Tensor, done: torch.Tensor) -> None:
        with torch.no_grad():
            acc_t.append(float((model(cur).argmax(1) == y_sub).sum()) / len(y))
        bar(step, cur, done)

    atk = from_preset(name, model, callback=cb, early_stop=False, **kw)
    try:
        res = atk(x, y)
    finally:
        bar.close()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    return res, [clean] + acc_t


def _save_grid(out: Path, name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, res: Any) -> None:
    """The first 8 images: clean, perturbation and adversarial, as ``grid_<attack>.npz`` and ``.png``."""
    from ..eval.io import save_npz
    from ..report.plots import plot_grid

    with torch.no_grad():
        pa = model(res.adv).argmax(1)
        pc = model(x).argmax(1)
    k = min(8, len(y))
    save_npz(
        out / f"grid_{name}.npz",
        x=x[:k].numpy(),
        adv=res.adv[:k].numpy(),
        label=y[:k].numpy(),
        pred_clean=pc[:k].numpy(),
        pred_adv=pa[:k].numpy(),
        metered_radius=res.metered_radius[:k].numpy(),
        success=res.success[:k].numpy(),
        model=np.array("digits-cnn"),
        attack=np.array(name),
    )
    plot_grid(out / f"grid_{name}.npz", out / f"grid_{name}.png")


def _print_table(rows: list[tuple[str, dict[str, Any]]], out: Path) -> None:
    """Clean / robust accuracy, median metered radius, transported fraction and time per attack."""
    from ..ot import Yardstick

    header = (
        f"{'attack':<10} {'clean acc':>9} {'robust acc':>10} {'median radius':>18} {'transported':>11} {'time s':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, s in rows:
        med_s = fmt(s["median_metered_radius"], 4)
        print(
            f"{name:<10} {fmt(s['clean_accuracy']):>9} {fmt(s['robust_accuracy']):>10} {med_s:>18} "
            f"{fmt(s.get('mean_transported_fraction'), 2):>11} {fmt(s['time_s'], 1):>7}"
        )
    print(f"\nradius: {Yardstick().label}")
    print(f"wrote {out / 'results.json'}, {out / 'accuracy_vs_iteration.png'}, {out / 'grid_uot.png'}")
    print(json.dumps({n: round(s["robust_accuracy"], 3) for n, s in rows}))
