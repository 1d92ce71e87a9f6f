"""``sinkhorn-attacks retrieval train | evaluate | attack | experiment | report``: image-text retrieval under
image attacks.

Examples::

    sinkhorn-attacks retrieval train --data flickr8k-npz:shared/data/flickr8k_128.npz --out runs/f8k --epochs 3
    sinkhorn-attacks retrieval evaluate --heads runs/f8k/heads.pt --split test
    sinkhorn-attacks retrieval attack --heads runs/f8k/heads.pt --n-images 50 --steps 20 \\
        --attack 'linf-pgd:eps=1/255|2/255|4/255' --attack 'uot:radius=0.001|0.003|0.01' --out runs/f8k/attack
    sinkhorn-attacks retrieval experiment --config retrieval_flickr8k --out runs/retrieval/flickr8k
    sinkhorn-attacks retrieval report runs/retrieval/flickr8k/results.json --out docs/results/retrieval/flickr8k
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import (
    UserError,
    add_device,
    add_threads,
    check_count_flag,
    check_real_flag,
    resolve_device,
    smoke_limit,
    user_errors,
)

__all__ = ["add_parser"]


def _known(flag: str, name: str, known: Any) -> None:
    """``name`` (given by ``flag``) is one of ``known``."""
    from .._util import suggest

    if name not in known:
        raise UserError(f"{flag} {name!r}: unknown{suggest(name, known)}; known: {', '.join(sorted(known))}")


def _check_split(spec: str, split: str, given: bool, split_flag: str | None = "--split") -> None:
    """The data ``spec`` (from ``--data`` when ``given``, else the heads') has a non-empty ``split`` (named by
    ``split_flag``; None: a split the command always reads)."""
    from sinkhorn_attacks.retrieval.experiment import load_dataset

    where = f"--data {spec}" + (f" {split_flag} {split}" if split_flag else "")
    if not given:
        where = f"{split_flag} {split} (data {spec} of the heads)"
    with user_errors(where):
        load_dataset(spec, split)


def _heads_checked(path: str) -> tuple[Any, dict]:
    """``(heads, meta)`` of ``--heads``: a missing or unreadable file in one line."""
    from sinkhorn_attacks.retrieval.model import load_heads

    with user_errors(f"--heads {path}"):
        return load_heads(path)


def _check_train_args(args: argparse.Namespace) -> None:
    """Sizes, rates and backbone names of ``retrieval train``, then both splits of ``--data``, before any work."""
    from sinkhorn_attacks.retrieval.encoders import IMAGE_BACKBONES, TEXT_BACKBONES

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--embed-dim", args.embed_dim)):
        check_count_flag(value, flag)
    check_count_flag(args.image_size, "--image-size", 0)
    check_count_flag(args.model_input_size, "--model-input-size", 0)
    check_real_flag(args.lr, "--lr", positive=True)
    check_real_flag(args.weight_decay, "--weight-decay")
    _known("--image-backbone", args.image_backbone, IMAGE_BACKBONES)
    _known("--text-backbone", args.text_backbone, TEXT_BACKBONES)
    _check_split(args.data, "train", True, None)
    _check_split(args.data, args.eval_split, True, "--eval-split")


def _train(args: argparse.Namespace) -> int:
    from sinkhorn_attacks.retrieval.experiment import TrainRun, run_train

    _check_train_args(args)
    from sinkhorn_attacks.retrieval.train import TrainConfig

    smoke = smoke_limit()
    if smoke:  # smoke run (tests of the documented commands): a few images per split, one epoch
        args.epochs, args.batch_size = 1, min(args.batch_size, 8 * smoke)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        embed_dim=args.embed_dim,
        use_cmpc=not args.no_cmpc,
        seed=args.seed,
    )
    run = TrainRun(
        data=args.data,
        out=args.out,
        image_backbone=args.image_backbone,
        text_backbone=args.text_backbone,
        image_size=args.image_size or None,
        eval_split=args.eval_split,
        train=cfg,
        cache_dir=args.cache_dir,
        backbone_kwargs={"image": {"input_size": args.model_input_size}} if args.model_input_size else {},
        limit=8 * smoke if smoke else None,
    )
    s = run_train(run)
    from sinkhorn_attacks.retrieval.experiment import format_metrics

    print(f"saved {os.path.join(args.out, 'heads.pt')}; eval ({args.eval_split}) {format_metrics(s['final_eval'])}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sinkhorn_attacks.retrieval.experiment import run_evaluate

    _, meta = _heads_checked(args.heads)
    _check_split(args.data or meta["data"], args.split, args.data is not None)
    smoke = smoke_limit()  # smoke run (tests of the documented commands): a few images and their captions
    run_evaluate(args.heads, args.data, args.split, args.out, args.cache_dir, limit=8 * smoke if smoke else None)
    return 0


def _check_specs(specs) -> None:
    """Preset names and override keys / types of every attack spec, before any work."""
    from ..eval.config import AttackSpec, validate_attack

    for sp in specs:
        for v in sp.sweep or [None]:
            params = {k: v for k, v in sp.overrides.items() if not (isinstance(v, str) and v.startswith("x"))}
            if sp.sweep_key and not (isinstance(v, str) and v.startswith("x")):
                params[sp.sweep_key] = v
            validate_attack(AttackSpec(sp.preset, params=params), where=f"--attack {sp.preset}")


def _record(args: argparse.Namespace) -> list[int] | None:
    """``--record``: a comma list of iterations in ``[0, --steps]``, or None."""
    if not args.record:
        return None
    try:
        record = [int(v) for v in args.record.split(",")]
    except ValueError:
        record = None
    if record is None or not all(0 <= t <= args.steps for t in record):
        raise UserError(
            f"--record must be a comma list of iterations in [0, --steps {args.steps}], got {args.record!r}"
        )
    return record


def _check_attack_args(args: argparse.Namespace) -> list[int] | None:
    """Sizes, meter, time budget, objective and directions of ``retrieval attack``, then the heads (the batch
    must not exceed their embedding size) and the data split, before any work; returns ``--record``."""
    from sinkhorn_attacks.retrieval.attack import OBJECTIVES

    for flag, value in (("--steps", args.steps), ("--n-images", args.n_images), ("--batch-size", args.batch_size)):
        check_count_flag(value, flag)
    check_count_flag(args.meter_images, "--meter-images", 0)
    if args.meter_kernel < 0 or (args.meter_kernel and args.meter_kernel % 2 == 0):
        raise UserError(f"--meter-kernel must be a positive odd integer (0: the yardstick's), got {args.meter_kernel}")
    check_real_flag(args.meter_p, "--meter-p", positive=True)
    check_real_flag(args.time_budget, "--time-budget")
    _known("--objective", args.objective, OBJECTIVES)
    directions = args.directions.split(",")
    if not set(directions) <= {"i2t", "t2i"} or len(set(directions)) != len(directions):
        raise UserError(f"--directions {args.directions!r}: write i2t, t2i or i2t,t2i")
    record = _record(args)
    heads, meta = _heads_checked(args.heads)
    if args.batch_size > heads.embed_dim:
        raise UserError(f"--batch-size must be at most the embedding size {heads.embed_dim} of the heads, got "
                        f"{args.batch_size}")  # fmt: skip
    _check_split(args.data or meta["data"], args.split, args.data is not None)
    return record


def _attack(args: argparse.Namespace) -> int:
    from sinkhorn_attacks.retrieval.experiment import parse_attack_spec, run_attack

    with user_errors("--attack"):
        specs = [parse_attack_spec(s) for s in (args.attack or ["linf-pgd:eps=2/255"])]
    _check_specs(specs)
    record = _check_attack_args(args)
    smoke = smoke_limit()
    if smoke:  # smoke run (tests of the documented commands)
        args.n_images, args.steps, args.meter_images = min(args.n_images, smoke), min(args.steps, smoke), 0
        args.batch_size = min(args.batch_size, smoke)
    args.resume_hint = f"rerun the same command to resume; finished cells are kept in {args.out}/parts"
    res = run_attack(
        args.heads,
        specs,
        args.out,
        data=args.data,
        split=args.split,
        steps=args.steps,
        record_steps=record,
        n_images=args.n_images,
        batch_size=args.batch_size,
        objective=args.objective,
        directions=tuple(args.directions.split(",")),
        cache_dir=args.cache_dir,
        time_budget_s=args.time_budget * 60 if args.time_budget else None,
        plots=not args.no_plots,
        meter_images=args.meter_images,
        meter_kernel=args.meter_kernel or None,
        meter_p=args.meter_p,
        library_meter=not args.no_library_meter,
        fresh=args.fresh,
        limit=8 * smoke if smoke else None,
    )
    print(
        f"wrote {os.path.join(args.out, 'attack.json')} ({len(res['cells'])} cells, "
        f"{len(res['skipped_cells'])} skipped)"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction, help_text: str) -> argparse.ArgumentParser:
    """Register ``retrieval`` with the actions ``train``, ``evaluate`` and ``attack``."""
    p = subparsers.add_parser(
        "retrieval", help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    acts = p.add_subparsers(dest="action", metavar="ACTION")

    _train_parser(acts)
    _evaluate_parser(acts)
    _attack_parser(acts)
    _experiment_parser(acts)
    _report_parser(acts)

    def _help(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)
    return p


def _common(q: argparse.ArgumentParser) -> None:
    """Options every action takes."""
    q.add_argument(
        "--cache-dir",
        default=None,
        help="feature cache folder (default $SINKHORN_ATTACKS_CACHE/retrieval or ~/.cache/...)",
    )
    add_threads(q)


def _train_parser(acts: Any) -> None:
    """The ``train`` action."""
    t = acts.add_parser("train", help="train 512-d projection heads with CMPM+CMPC on frozen backbones")
    t.add_argument(
        "--data",
        required=True,
        help="flickr8k-npz:PATH | flickr8k:ROOT | cuhk-pedes:ROOT | "
        "captions:FILE[@IMAGE_ROOT] | coco-mini-npz:PATH | synthetic[:N]",
    )
    t.add_argument("--out", required=True, help="output folder (heads.pt, train.json)")
    t.add_argument("--image-backbone", default="efficientnet-lite0", help="efficientnet-lite0 | small-cnn")
    t.add_argument("--text-backbone", default="minilm", help="minilm | hashing")
    t.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="images are resized to this square size before the model (0: keep); attacks act on it",
    )
    t.add_argument(
        "--model-input-size",
        type=int,
        default=None,
        help="efficientnet-lite0 only: bilinear resize inside the model to this size (e.g. attack "
        "64 px images that the network sees at 128 px)",
    )
    t.add_argument("--eval-split", default="val")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--weight-decay", type=float, default=4e-5)
    t.add_argument("--embed-dim", type=int, default=512)
    t.add_argument("--no-cmpc", action="store_true", help="train with CMPM only")
    t.add_argument("--seed", type=int, default=0)
    _common(t)
    t.set_defaults(func=_train)


def _evaluate_parser(acts: Any) -> None:
    """The ``evaluate`` action."""
    e = acts.add_parser("evaluate", help="clean R@1/5/10 both ways")
    e.add_argument("--heads", required=True, help="heads.pt from `retrieval train`")
    e.add_argument("--data", default=None, help="dataset spec (default: the one the heads were trained on)")
    e.add_argument("--split", default="test")
    e.add_argument("--out", default=None, help="folder for evaluate.json")
    _common(e)
    e.set_defaults(func=_evaluate)


def _attack_parser(acts: Any) -> None:
    """The ``attack`` action."""
    a = acts.add_parser("attack", help="R@K vs attack iterations and vs metered radius")
    a.add_argument("--heads", required=True)
    a.add_argument("--data", default=None)
    a.add_argument("--split", default="test")
    a.add_argument("--out", required=True, help="output folder (attack.json, parts/, plots)")
    a.add_argument(
        "--attack",
        action="append",
        help="PRESET[:key=value,...][#LABEL]; one value may sweep with '|', e.g. 'linf-pgd:eps=2/255|4/255' "
        "(repeatable; presets of sinkhorn_attacks.attacks: uot, wong, linf-pgd, l2-pgd, ...)",
    )
    a.add_argument("--steps", type=int, default=20, help="attack iterations N (no early stop)")
    a.add_argument("--record", default=None, help="comma list of iterations to evaluate (default 0..N)")
    a.add_argument("--n-images", type=int, default=100, help="attack the first n gallery images")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--objective", default="cmpm", help="cmpm | nll | cosine | margin | cmpc")
    a.add_argument("--directions", default="i2t,t2i")
    a.add_argument("--time-budget", type=float, default=None, help="minutes; no new cell starts after it")
    a.add_argument("--no-plots", action="store_true")
    a.add_argument(
        "--fresh",
        action="store_true",
        help="discard the cells in --out (of another configuration too) and start over; a rerun without it resumes",
    )
    a.add_argument(
        "--meter-images",
        type=int,
        default=0,
        help="meter the first n images of every cell with the exact OT meter (one ruler for all attacks)",
    )
    a.add_argument("--meter-kernel", type=int, default=5, help="window of the common yardstick (odd, default 5)")
    a.add_argument("--meter-p", type=float, default=1.0, help="exponent p of the common meter's cost d^p")
    a.add_argument(
        "--no-library-meter",
        action="store_true",
        help="pass meter_cost=None: the attacks do not meter every image (slow at 128 px)",
    )
    _common(a)
    a.set_defaults(func=_attack)


def _experiment(args: argparse.Namespace) -> int:
    from sinkhorn_attacks.retrieval.study import load_study, run_study

    check_count_flag(args.n_images, "--n-images")
    check_real_flag(args.time_budget, "--time-budget")
    cfg = load_study(args.config)
    device = resolve_device(args.device)
    if args.n_images is not None:
        cfg.n_images = args.n_images
    smoke = smoke_limit()
    if smoke:  # smoke run (tests of the documented commands): a few images and iterations, one radius each
        cfg.n_images, cfg.iterations = min(cfg.n_images, smoke), min(cfg.iterations, smoke)
        cfg.batch_size = min(cfg.batch_size, smoke)
        for a in cfg.attacks:
            a.radii = a.radii[:1]
    res = run_study(
        cfg,
        args.out,
        heads=args.heads,
        device=device,
        time_budget_s=None if args.time_budget is None else args.time_budget * 60,
        cache_dir=args.cache_dir,
        smoke=smoke,
        log=None if args.quiet else print,
    )
    left = "" if res["complete"] else f"; {res['n_images_planned']} planned: rerun the same command to continue"
    print(f"wrote {os.path.join(args.out, 'results.json')} and results.md ({res['n_images']} images{left})")
    return 0


def _experiment_parser(acts: Any) -> None:
    """The ``experiment`` action."""
    x = acts.add_parser(
        "experiment",
        help="several attacks at two radii each: best- and last-iterate R@K curves, yardstick radii, "
        "matched-radius tables (resumable)",
    )
    x.add_argument(
        "--config", required=True, help="a TOML file or a bundled experiment: retrieval_flickr8k, retrieval_coco_mini"
    )
    x.add_argument("--out", required=True, help="run folder (units/, results.json, results.md, plots); rerun to resume")
    x.add_argument(
        "--heads", default=None, help="heads.pt to attack (default: OUT/heads.pt, trained from [heads] if missing)"
    )
    x.add_argument("--n-images", type=int, default=None, help="attack the first n images (default: the config's)")
    x.add_argument("--time-budget", type=float, default=None, help="minutes; no new unit starts after it")
    x.add_argument("--quiet", action="store_true", help="no progress lines")
    add_device(x)
    _common(x)
    x.set_defaults(func=_experiment)


def _report(args: argparse.Namespace) -> int:
    from sinkhorn_attacks.retrieval.study_report import report_from_json

    with user_errors(args.results):
        res = report_from_json(args.results, args.out)
    print(f"wrote results.md and the figures of {res['dataset']} to {args.out or os.path.dirname(args.results)}")
    return 0


def _report_parser(acts: Any) -> None:
    """The ``report`` action."""
    r = acts.add_parser("report", help="results.md and the figures of an experiment's results.json")
    r.add_argument("results", help="results.json of `retrieval experiment`")
    r.add_argument("--out", default=None, help="folder for results.md and the figures (default: the JSON's)")
    r.set_defaults(func=_report)
