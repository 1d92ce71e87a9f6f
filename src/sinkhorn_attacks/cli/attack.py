"""``sinkhorn-attacks attack``: one model, one preset, a dataset slice -> per-example CSV, summary, grid."""

from __future__ import annotations

import argparse
import sys

from .evaluate import UNITS_HELP


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "attack",
        help=help_text,
        description="Attack one model (zoo name or checkpoint path) with one preset on a dataset slice. Writes "
        "examples.csv (per example: success, nominal and metered radius, iterations, l_inf / l_2 norms), "
        "results.json, curves.json and the report (example grid: input / perturbation / adversarial with "
        "predicted labels and metered radius). " + UNITS_HELP,
    )
    p.add_argument("model", nargs="?", help="zoo name (sinkhorn-attacks zoo list) or checkpoint path")
    p.add_argument("--preset", default="uot", help="attack preset (default uot); --list shows them")
    p.add_argument("--list", action="store_true", help="list the attack presets and exit")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="preset override, e.g. --set steps=20"
    )
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--models-dir")
    p.add_argument("--out", default="runs/attack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid", type=int, default=8, help="examples in the grid (default 8)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def _value(s: str):
    import ast

    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


def run(args: argparse.Namespace) -> int:
    from ..attacks import describe_preset, preset_names

    if args.list:
        for n in preset_names():
            print(f"{n:18s} {describe_preset(n)}")
        return 0
    if not args.model:
        print("attack: give a model (zoo name or checkpoint path)", file=sys.stderr)
        return 2
    from ..eval import AttackSpec, EvalConfig, run_evaluation
    from ..report import write_report

    params = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        if not _:
            print(f"attack: --set expects KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        params[k.strip().replace("-", "_")] = _value(v.strip())
    cfg = EvalConfig(
        models=[args.model],
        attacks=[AttackSpec(args.preset, params=params)],
        dataset=args.dataset,
        split=args.split,
        limit=args.limit,
        offset=args.offset,
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        out=args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        grid_examples=args.grid,
    )
    res = run_evaluation(cfg, progress=not args.quiet, fresh=args.fresh)
    s = res["summary"][args.model][args.preset]
    print(
        f"{args.model} / {args.preset}: n={s['n']} clean {s['clean_accuracy']:.3f} robust {s['robust_accuracy']:.3f} "
        f"success on correct {s['success_rate_on_correct']:.3f} median metered radius {s['median_metered_radius']} "
        f"(outside window {s['outside_window_fraction']:.2f})"
    )
    print(f"report: {write_report(cfg.out)}")
    return 0
