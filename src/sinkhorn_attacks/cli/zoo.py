"""``sinkhorn-attacks zoo list | info NAME | verify [NAME ...] | download NAME ...``."""

from __future__ import annotations

import argparse
import os
import sys

from ._common import UserError, add_threads, check_count_flag


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    """Register the ``zoo`` command and its actions."""
    parser = subparsers.add_parser(
        "zoo",
        help=help_text,
        description="The published Wasserstein-robustness checkpoints: list them, show one, check local copies "
        "(checksum and clean accuracy), download them. Files are looked for in --models-dir / "
        "$SINKHORN_ATTACKS_MODELS, then in the cache (~/.cache/sinkhorn-attacks/models or "
        "$SINKHORN_ATTACKS_CACHE/models).",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION")

    p = actions.add_parser("list", help="list the registered checkpoints")
    p.add_argument("--dataset", help="only this dataset (mnist, cifar10)")
    add_threads(p)
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("info", help="show one checkpoint: origin, checksums, accuracy, input transform")
    p.add_argument("name")
    add_threads(p)
    p.set_defaults(func=cmd_info)

    p = actions.add_parser(
        "verify",
        help="check local files: checksum, and clean accuracy on the first N test images when data is available",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="entries to check (default: all)")
    p.add_argument("--models-dir", help="folder holding the checkpoints (default $SINKHORN_ATTACKS_MODELS)")
    p.add_argument("--cache-dir", help="download cache to look in")
    p.add_argument("--data-dir", help="data folder for the accuracy check (default $SINKHORN_ATTACKS_DATA)")
    p.add_argument("-n", "--num", type=int, default=500, help="test images for the accuracy check (default 500)")
    p.add_argument("--tolerance", type=float, default=2.0, help="allowed accuracy gap in points (default 2)")
    add_threads(p)
    p.set_defaults(func=cmd_verify)

    p = actions.add_parser("download", help="download checkpoints into the cache (checksum-checked)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every registered checkpoint")
    p.add_argument("--cache-dir", help="target folder (default ~/.cache/sinkhorn-attacks/models)")
    add_threads(p)
    p.set_defaults(func=cmd_download)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_list(args: argparse.Namespace) -> int:
    from ..zoo import REGISTRY

    rows = [e for e in REGISTRY.values() if args.dataset is None or e.dataset == args.dataset]
    if not rows:
        known = ", ".join(sorted({e.dataset for e in REGISTRY.values()}))
        raise UserError(f"--dataset {args.dataset!r}: no checkpoints for it; datasets: {known}")
    width = max(len(e.name) for e in rows)
    print(f"{'name':<{width}}  {'dataset':<8} {'arch':<15} {'acc (pub/meas)':<15} description")
    for e in rows:
        acc = f"{_pct(e.accuracy_published)}/{_pct(e.accuracy_measured)}"
        print(f"{e.name:<{width}}  {e.dataset:<8} {e.arch:<15} {acc:<15} {e.description}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..zoo import info

    try:
        print(info(args.name).describe())
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _accuracy(model, name: str, data_dir: str, num: int) -> float:
    import torch

    from ..data import load_dataset

    ds = load_dataset(name, "test", data_dir=data_dir, limit=num, download=False)
    correct = 0
    with torch.no_grad():
        for x, y in ds.batches(250):
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(ds)


def cmd_verify(args: argparse.Namespace) -> int:
    import math

    from ..data import ChecksumError, DatasetNotFoundError
    from ..zoo import REGISTRY, info, load, locate

    check_count_flag(args.num, "-n/--num")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    if args.models_dir and not os.path.isdir(args.models_dir):
        raise UserError(f"--models-dir {args.models_dir}: not a folder")
    try:
        entries = [info(n) for n in args.names] if args.names else list(REGISTRY.values())
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    data_dir = args.data_dir or os.environ.get("SINKHORN_ATTACKS_DATA")
    failed = False
    for e in entries:
        try:
            path = locate(e.name, models_dir=args.models_dir, cache_dir=args.cache_dir, download=False)
        except FileNotFoundError:
            print(f"{e.name:<26} missing")
            failed |= bool(args.names)
            continue
        except (ChecksumError, ValueError) as err:
            print(f"{e.name:<26} FAILED  {err}")
            failed = True
            continue
        what = "sha256" if e.sha256 else "git blob id"
        line = f"{e.name:<26} ok      {what} matches  {path}"
        if data_dir:
            try:
                model = load(e.name, path=path, verify=False)
                acc = _accuracy(model, e.dataset, data_dir, args.num)
            except DatasetNotFoundError:
                line += f"  (no {e.dataset} test data in {data_dir})"
            except (ValueError, RuntimeError) as err:
                line = f"{e.name:<26} FAILED  {err}"
                failed = True
            else:
                ref = e.accuracy_measured if e.accuracy_measured is not None else e.accuracy_published
                line += f"  clean acc {acc:.2f} % on the first {args.num}"
                if ref is not None:
                    ok = abs(acc - ref) <= args.tolerance
                    line += f" (reference {ref:.2f} %{'' if ok else ', OFF BY MORE THAN ' + str(args.tolerance)})"
                    failed |= not ok
        print(line)
    return 1 if failed else 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..zoo import REGISTRY, info, locate

    names = list(REGISTRY) if args.all else args.names
    if not names:
        print("name a checkpoint (see `sinkhorn-attacks zoo list`) or pass --all", file=sys.stderr)
        return 2
    try:
        for n in names:
            info(n)  # every name checked before any download
    except ValueError as err:
        raise UserError(str(err)) from None
    status = 0
    for n in names:
        try:
            path = locate(n, cache_dir=args.cache_dir, download=True, progress=True)
        except (ValueError, FileNotFoundError) as err:
            print(f"{n}: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{n}: {path}")
    return status
