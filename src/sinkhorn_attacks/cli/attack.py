"""``sinkhorn-attacks attack``: one model, one preset, a dataset slice -> per-example CSV, summary, grid."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from ._common import UserError, add_device, add_threads, check_output, fmt, smoke_limit, user_errors
from .evaluate import units_help


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "attack",
        help=help_text,
        description="Attack one model (zoo name or checkpoint path) with one preset on a dataset slice. Writes "
        "examples.csv (per example: success, nominal and metered radius, iterations, l_inf / l_2 norms), "
        "results.json, curves.json and the report (example grid: input / perturbation / adversarial with "
        "predicted labels and metered radius); --save-adv DIR also writes every adversarial image. "
        "A killed run restarted with the same options resumes. " + units_help(),
    )
    p.add_argument("model", nargs="?", help="zoo name (sinkhorn-attacks zoo list) or checkpoint path")
    p.add_argument("--preset", default="uot", help="attack preset (default uot); --list shows them")
    p.add_argument("--list", action="store_true", help="list the attack presets and exit")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override (Python literal), e.g. --set steps=20 --set radius=0.1; repeatable. "
        "--set meter_sample=N measures only the first N examples of each batch on the yardstick (faster; the "
        "others read nan)",
    )
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--data-dir", help="data folder (default $SINKHORN_ATTACKS_DATA)")
    p.add_argument("--models-dir", help="checkpoint folder (default $SINKHORN_ATTACKS_MODELS)")
    p.add_argument(
        "--arch",
        help="architecture of a bare checkpoint file (mnist_cnn, resnet9_cifar, resnet18_cifar, resnet18_tiny, "
        "small_cnn); default: inferred from its keys, checked before any work",
    )
    p.add_argument("--out", default="runs/attack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    add_device(p)
    p.add_argument("--grid", type=int, default=8, help="examples in the grid (default 8)")
    p.add_argument(
        "--save-adv",
        metavar="DIR",
        help="write DIR/adversarial.npz (adv, x, label, pred_clean, pred_adv, success, radius, metered_radius, "
        "certified_radius, index) and DIR/adversarial.png (input / perturbation / adversarial grid)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing state file")
    p.add_argument("--quiet", action="store_true")
    add_threads(p)
    p.set_defaults(func=run)
    return p


def _value(s: str):
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


def parse_overrides(items: list[str]) -> dict:
    params = {}
    for kv in items:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--set expects KEY=VALUE, got {kv!r}")
        params[k.strip().replace("-", "_")] = _value(v.strip())
    return params


def save_adversarial(out_dir: str | Path, eval_out: str | Path, n: int) -> Path:
    """Collect the adversarial images of a finished ``attack`` run into ``out_dir``."""
    import numpy as np

    from ..eval.io import read_csv, save_npz
    from ..report.plots import plot_grid

    out_dir = Path(out_dir)
    parts = sorted((Path(eval_out) / "adversarial").glob("grid__*.npz"))
    if not parts:
        raise UserError(f"no adversarial images in {eval_out}/adversarial")
    loaded = [np.load(f) for f in parts]
    keys = [k for k in loaded[0].files if k not in ("model", "attack")]
    adv = {k: np.concatenate([d[k] for d in loaded]) for k in keys}
    rows = {int(r["index"]): r for r in read_csv(Path(eval_out) / "examples.csv")}
    keep = np.flatnonzero(np.isin(adv["index"], list(rows)))
    order = keep[np.argsort(adv["index"][keep], kind="stable")]
    adv = {k: v[order] for k, v in adv.items()}
    adv["model"], adv["attack"] = loaded[0]["model"], loaded[0]["attack"]
    idx = adv["index"]
    col = {k: np.array([rows[int(i)][k] for i in idx]) for k in ("radius", "metered_radius", "certified_radius")}
    save_npz(out_dir / "adversarial.npz", **{k: v for k, v in adv.items() if k != "metered_radius"}, **col)
    k = min(n, len(idx))
    save_npz(
        out_dir / "grid.npz",
        x=adv["x"][:k],
        adv=adv["adv"][:k],
        label=adv["label"][:k],
        pred_clean=adv["pred_clean"][:k],
        pred_adv=adv["pred_adv"][:k],
        metered_radius=col["metered_radius"][:k],
        success=adv["success"][:k],
        model=np.array(str(adv["model"])),
        attack=np.array(str(adv["attack"])),
    )
    png = plot_grid(out_dir / "grid.npz", out_dir / "adversarial.png")
    (out_dir / "grid.npz").unlink()
    return Path(png)


def run(args: argparse.Namespace) -> int:
    from ..attacks import describe_preset, preset_names

    if args.list:
        for n in preset_names():
            print(f"{n:18s} {describe_preset(n)}")
        return 0
    if not args.model:
        raise UserError("give a model: a zoo name (sinkhorn-attacks zoo list) or a checkpoint path")
    from ..eval import AttackSpec, EvalConfig, run_evaluation
    from ..eval.config import validate_attack
    from ..report import write_report

    params = parse_overrides(args.set)
    limit, batch = args.limit, args.batch_size
    smoke = smoke_limit()
    if smoke:
        limit, batch = min(limit, smoke), min(batch, smoke)
        params["steps"] = min(int(params.get("steps", smoke)), smoke)
    spec = AttackSpec(args.preset, params=params)
    validate_attack(spec, where=f"--preset {args.preset}" + (f" --set {' --set '.join(args.set)}" if args.set else ""))
    with user_errors():
        cfg = EvalConfig(
            models=[args.model],
            attacks=[spec],
            dataset=args.dataset,
            split=args.split,
            limit=limit,
            offset=args.offset,
            data_dir=args.data_dir,
            models_dir=args.models_dir,
            arch=args.arch,
            out=args.out,
            seed=args.seed,
            batch_size=batch,
            device=args.device,
            grid_examples=args.grid,
        )
    check_output(cfg.out, "--out")
    check_output(args.save_adv, "--save-adv")
    args.resume_hint = f"rerun the same command to resume; finished batches are kept in {cfg.out}"
    res = run_evaluation(cfg, progress=not args.quiet, fresh=args.fresh, keep_adversarial=bool(args.save_adv))
    s = res["summary"][args.model][args.preset]
    print(
        f"{args.model} / {args.preset}: n={s['n']} clean {fmt(s['clean_accuracy'])} robust "
        f"{fmt(s['robust_accuracy'])} success on correct {fmt(s['success_rate_on_correct'])} median radius "
        f"{fmt(s['median_metered_radius'], 4)} ({res['yardstick']['label']})"
    )
    if args.save_adv:
        png = save_adversarial(args.save_adv, cfg.out, args.grid)
        print(f"adversarial images: {Path(args.save_adv) / 'adversarial.npz'}, {png}", file=sys.stdout)
    print(f"report: {write_report(cfg.out)}")
    return 0
