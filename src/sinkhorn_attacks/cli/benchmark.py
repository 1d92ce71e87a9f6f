"""``sinkhorn-attacks benchmark``: one model, the dataset's fixed attack cascade, per-example yardstick radii."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._common import (
    UserError,
    add_device,
    add_threads,
    check_count_flag,
    check_output,
    resolve_device,
    smoke_limit,
    user_errors,
)


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    from ..eval.cascade import BOARD_FOR, CASCADE_ORDER
    from ..ot import Yardstick

    p = subparsers.add_parser(
        "benchmark",
        help=help_text,
        description="Evaluate one model with a fixed cascade of attacks (no hyper-parameters to choose: the "
        "bundled leaderboard's settings for the dataset), strongest first, each later attack only on the examples "
        "not yet fooled within the smallest reporting radius. Per example the result is the smallest yardstick "
        "radius of a fooling image any attack returned (0 clean error, inf never fooled); robust accuracy at each "
        f"radius with a Wilson 95 %% interval. Yardstick: {Yardstick().describe()} (radii per unit clean mass). "
        "Warns on a randomised forward pass, probability outputs and zero input gradients. Writes "
        "OUT/benchmark.json (a model entry in the leaderboard's schema) and resumes from OUT/benchmark_state.json.",
        epilog=f"Cascade order: {', '.join(CASCADE_ORDER)} (those the dataset's board defines). Datasets: "
        + ", ".join(f"{d} ({c})" for d, c in BOARD_FOR.items()),
    )
    p.add_argument("model", help="zoo name (sinkhorn-attacks zoo list) or checkpoint path")
    p.add_argument("--arch", help="architecture of a bare checkpoint file (default: inferred from its keys)")
    p.add_argument("--dataset", default="mnist", choices=sorted(BOARD_FOR))
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    p.add_argument("--first", type=int, default=0, help="index of the first image (default 0)")
    p.add_argument("--attacks", help=f"comma-separated cascade labels in order (default {','.join(CASCADE_ORDER)})")
    p.add_argument("--radii", help="comma-separated reporting yardstick radii (default: the board's)")
    p.add_argument("--batch-size", type=int, help="images per attack call (default: the board's batch)")
    p.add_argument("--out", required=True, help="output folder (benchmark.json, resumable state)")
    p.add_argument("--data-dir", help="data folder (default $SINKHORN_ATTACKS_DATA)")
    p.add_argument("--models-dir", help="checkpoint folder (default $SINKHORN_ATTACKS_MODELS)")
    p.add_argument("--fresh", action="store_true", help="discard a previous benchmark in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=run)
    return p


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from .. import zoo
    from ..data import load_dataset
    from ..eval.cascade import benchmark, cascade_attacks
    from ..eval.config import check_model_on

    check_count_flag(args.n, "--n")
    check_count_flag(args.first, "--first", lower=0)
    check_count_flag(args.batch_size, "--batch-size")
    radii = _floats(args.radii, "--radii")
    if radii is not None and (
        not radii or any(not (math.isfinite(r) and r > 0) for r in radii) or radii != sorted(set(radii))
    ):
        raise UserError(f"--radii must be positive, finite and increasing, got {args.radii!r}")
    labels = [a.strip() for a in args.attacks.split(",")] if args.attacks else None
    with user_errors("--attacks"):
        _, board = cascade_attacks(args.dataset, labels)
    n = min(args.n, smoke_limit() or args.n)
    device = resolve_device(args.device)
    check_output(args.out, "--out")
    with user_errors(f"model {args.model}"):
        if args.model in zoo.REGISTRY:
            model = zoo.load(args.model, models_dir=args.models_dir, download=False, device=device)
        else:
            model = zoo.load(args.model, arch=args.arch, device=device)
    entry = zoo.REGISTRY.get(args.model)
    with user_errors("--data-dir"):
        data = load_dataset(args.dataset, args.split, args.data_dir, limit=n, offset=args.first, download=False)
    if len(data) == 0:
        raise UserError(f"no images at --first {args.first} of {args.dataset} {args.split}")
    with user_errors(f"model {args.model}"):
        check_model_on(model, data.images[:1].to(device), data.labels, f"{args.dataset}/{args.split} (--dataset)")
    card = {
        "name": args.model,
        "architecture": entry.arch if entry else args.arch or type(model).__name__,
        "training": entry.description if entry else None,
    }
    with user_errors("benchmark"):
        result = benchmark(
            model,
            data.images.to(device),
            data.labels.to(device),
            dataset=args.dataset,
            attacks=labels,
            radii=radii,
            batch_size=args.batch_size,
            out=args.out,
            card=card,
            fresh=args.fresh,
            threads=None,
            progress=not args.quiet,
        )
    print(f"{args.model}: clean accuracy {result.clean_accuracy:.3f} on {len(data)} images ({board.yardstick.label})")
    print("| yardstick radius | robust accuracy | 95 % interval |\n|---:|---:|---|")
    for row in result.robust_accuracy():
        lo, hi = row["ci95"]
        print(f"| {row['radius']:g} | {row['robust_accuracy']:.3f} | [{lo:.3f}, {hi:.3f}] |")
    cpu = sum(a["cpu_s"] for a in result.attacks.values())
    never = int(sum(1 for r in result.per_example_radius.tolist() if math.isinf(r)))
    print(f"never fooled: {never}; CPU time {cpu:.1f} s; wrote {Path(args.out) / 'benchmark.json'}")
    return 0
