"""``sinkhorn-attacks leaderboard``: every attack on every model, one yardstick, per-example minimal radii."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import UserError, add_device, add_threads, check_output, resolve_device, smoke_limit, user_errors


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    from ..ot import Yardstick

    p = subparsers.add_parser(
        "leaderboard",
        help=help_text,
        description="Run every attack of the config on every model in minimal-radius mode and rank the models by "
        "robust accuracy at yardstick radii. Per example and attack the minimal radius is the yardstick value of "
        "the first fooling image (search presets) or of the fooling image at the smallest nominal radius of the "
        "attack's list, optionally shortened by bisection towards the clean image; the worst case is the minimum "
        f"over attacks. Default yardstick: {Yardstick().describe()}. Writes DIR/leaderboard.json (schema in "
        "docs/leaderboard.md), DIR/index.html (sortable table, robust accuracy vs radius, example grids) and "
        "DIR/leaderboard.md. Resumable (finished units are kept; a larger n reuses them) and shardable with "
        "torchrun. Checks models and data before any work.",
        epilog="Config sections: [board] dataset, split, n, first, batch, radii, line_search, seed, grid_examples; "
        "[yardstick] kernel_size, p, price, normalisation, mass_floor; [[models]] label, name | path, arch; "
        "[[attacks]] label, preset, overrides, radii. Bundled: leaderboard_mnist, leaderboard_cifar10 "
        "(--config leaderboard_mnist).",
    )
    p.add_argument(
        "--config", required=True, help="TOML config: a path or a bundled name (leaderboard_mnist, leaderboard_cifar10)"
    )
    p.add_argument("--out", required=True, help="output folder (units, leaderboard.json, index.html)")
    p.add_argument(
        "--num-images",
        "--n",
        dest="n",
        type=int,
        help="number of test images (overrides [board] n); --num-images is the spelling torchrun passes through",
    )
    p.add_argument("--data-dir", help="data folder (default $SINKHORN_ATTACKS_DATA)")
    p.add_argument("--models-dir", help="checkpoint folder (default $SINKHORN_ATTACKS_MODELS)")
    p.add_argument("--fresh", action="store_true", help="delete finished units and start over")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write leaderboard.json / index.html / leaderboard.md from the finished units (e.g. while "
        "another process is still running)",
    )
    p.add_argument(
        "--attacks",
        metavar="LABELS",
        help="comma-separated attack labels of the config to run now (default: all); the report still covers every "
        "finished unit of every attack, so a board can grow attack by attack (e.g. the cheap attacks on a CPU, "
        "the Frank-Wolfe ones later on a GPU)",
    )
    p.add_argument(
        "--models", metavar="LABELS", help="comma-separated model labels of the config to run now (default: all)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=run)
    return p


def _preflight(cfg, models_dir: str | None, data_dir: str | None) -> None:
    """Before any work: the data slice exists, and every model loads and takes one of its images."""
    from .. import zoo
    from ..data import load_dataset
    from ..eval.config import check_model_on

    problems, sample = [], None
    try:
        sample = load_dataset(cfg.dataset, cfg.split, data_dir, limit=1, offset=cfg.first + cfg.n - 1, download=False)
    except Exception as err:  # noqa: BLE001 - every failure is reported, then we refuse to start
        problems.append(f"data {cfg.dataset}/{cfg.split} (images {cfg.first}..{cfg.first + cfg.n - 1}): "
                        f"{str(err).splitlines()[0]}")  # fmt: skip
    for m in cfg.models:
        try:
            if m.source in zoo.REGISTRY:
                model = zoo.load(m.source, models_dir=models_dir, download=False)
            elif not Path(m.source).expanduser().is_file():
                problems.append(f"model {m.label}: {m.source!r} is neither a zoo name nor a checkpoint file")
                continue
            else:
                model = zoo.load(m.source, arch=m.arch)
            if sample is not None:
                check_model_on(model, sample.images, sample.labels, f"{cfg.dataset}/{cfg.split}")
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"model {m.label}: {str(err).splitlines()[0]}")
    if problems:
        raise UserError("nothing was run; fix first:\n" + "\n".join(f"  - {x}" for x in problems))


def _check_attacks(cfg) -> None:
    """Before any work: every attack's overrides, and the attack built at each of its nominal radii."""
    import math

    from torch import nn

    from ..eval.config import AttackSpec, validate_attack

    for a in cfg.attacks:
        where = f"[[attacks]] {a.label!r}"
        if a.radii is not None and (not a.radii or any(not (math.isfinite(r) and r >= 0) for r in a.radii)):
            raise UserError(f"{where}: radii must be a non-empty list of finite numbers >= 0, got {list(a.radii)}")
        validate_attack(AttackSpec(a.preset, a.label, dict(a.overrides)), where=f"{where} overrides")
        for r in a.radii or ():
            try:
                a.build(nn.Identity(), cfg.yardstick, r)
            except (TypeError, ValueError) as err:
                raise UserError(f"{where}: radius {r!r}: {err}") from None


def _selected(value: str | None, known: list[str], flag: str) -> frozenset[str] | None:
    """The labels named by ``--attacks`` / ``--models`` (None: all), each checked against the config."""
    if value is None:
        return None
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if not chosen or unknown:
        raise UserError(f"{flag}: unknown label(s) {unknown or [value]}; the config has {', '.join(known)}")
    return frozenset(chosen)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from .. import zoo
    from ..data import load_dataset
    from ..eval.config import resolve_config
    from ..eval.io import write_json
    from ..eval.leaderboard import aggregate_board, load_board_config, run_leaderboard
    from ..report.leaderboard import board_markdown, write_board_html

    with user_errors("--config"):
        cfg = load_board_config(resolve_config(args.config))
    _check_attacks(cfg)
    only_attacks = _selected(args.attacks, [a.label for a in cfg.attacks], "--attacks")
    only_models = _selected(args.models, [m.label for m in cfg.models], "--models")
    if args.n is not None:
        if args.n < 1:
            raise UserError(f"--n must be >= 1, got {args.n}")
        cfg = dataclasses.replace(cfg, n=args.n)
    smoke = smoke_limit()
    if smoke:  # a smoke run: few images, few attack steps, first two models
        attacks = tuple(dataclasses.replace(a, overrides={**a.overrides, "steps": smoke}) for a in cfg.attacks)
        cfg = dataclasses.replace(
            cfg, n=min(cfg.n, smoke), batch=min(cfg.batch, smoke), models=cfg.models[:2], attacks=attacks
        )
    if args.report_only:
        board = aggregate_board(cfg, args.out)
        if not board["models"]:
            raise UserError(f"{args.out} holds no finished unit of this configuration")
        write_json(Path(args.out) / "leaderboard.json", board)
        html = write_board_html(board, args.out)
        print(board_markdown(board))
        print(f"wrote {Path(args.out) / 'leaderboard.json'} and {html} (from finished units only)")
        return 0
    device = resolve_device(args.device)
    check_output(args.out, "--out")
    _preflight(cfg, args.models_dir, args.data_dir)
    data = load_dataset(cfg.dataset, cfg.split, args.data_dir, limit=cfg.n, offset=cfg.first, download=False)
    images, labels = data.images.to(device), data.labels.to(device)

    def load_model(m):
        with user_errors(f"model {m.label}"):
            if m.source in zoo.REGISTRY:
                return zoo.load(m.source, models_dir=args.models_dir, download=False, device=device)
            return zoo.load(m.source, arch=m.arch, device=device)

    state = {"tag": None}

    def progress(tag: str, step: int, total: int) -> None:
        if args.quiet:
            return
        if total > 0:
            print(f"\r{tag}: done{' ' * 20}", file=sys.stderr, flush=True)
            state["tag"] = None
        elif sys.stderr.isatty():  # live step counter on a terminal only (a log file gets one line per unit)
            print(f"\r{tag}: step {step}", end="", file=sys.stderr, flush=True)

    args.resume_hint = f"rerun the same command to resume (finished units in {args.out}/units are kept)"
    board = run_leaderboard(cfg, args.out, load_model=load_model, images=images, labels=labels, fresh=args.fresh,
                            progress=progress, attacks=only_attacks, models=only_models)  # fmt: skip
    if not board:  # a non-zero rank of a torchrun launch
        return 0
    html = write_board_html(board, args.out)
    print(board_markdown(board))
    print(f"wrote {Path(args.out) / 'leaderboard.json'} and {html}")
    return 0
