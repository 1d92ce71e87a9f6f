"""``sinkhorn-attacks train``: (adversarial) training, single process or under torchrun (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import UserError, add_device, add_threads, smoke_limit


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    """Register the ``train`` command."""
    p = subparsers.add_parser(
        "train",
        help=help_text,
        description="Train a zoo architecture, optionally on adversarial examples of any attack preset. "
        "Writes <out>/checkpoint.pt atomically after every epoch (model, optimizer, scheduler, RNG state; "
        "loads with torch.load(weights_only=True)), history.csv/json/png, config.json (the configuration and its "
        "fingerprint: --resume with another configuration is refused) and, at the end, the weights-only model.pt. "
        "One run per --out at a time, whatever the command. Launch with torchrun for data parallelism (NCCL on "
        "GPUs, gloo on CPU): `torchrun --nproc_per_node N -m sinkhorn_attacks train ...`; --batch-size is the "
        "global batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="RECIPE",
        help="a bundled training recipe by name (" + ", ".join(_recipes()) + ") or a TOML file with a [train] "
        "table of TrainConfig fields, or a run's config.json; options given on the command line override it",
    )
    _data_arguments(p)
    _attack_arguments(p)
    _optimisation_arguments(p)
    _run_arguments(p)
    p.set_defaults(func=cmd_train, parser=p, help_if_bare=True)
    return p


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the group "data and model"."""
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion-mnist, cifar10, tiny-imagenet, digits, "
        "folder, or synthetic[:C:S] (random images, no files)",
    )
    g.add_argument("--data-dir", help="data folder (default $SINKHORN_ATTACKS_DATA)")
    g.add_argument("--train-limit", type=int, help="use only this many training examples")
    g.add_argument("--train-offset", type=int, default=0)
    g.add_argument(
        "--train-stride", type=int, default=1, help="use every k-th training image from the offset (default 1)"
    )
    g.add_argument("--eval-limit", type=int, default=0, help="test images evaluated after every epoch (0: none)")
    g.add_argument(
        "--arch",
        default="mnist_cnn",
        help="zoo architecture (mnist_cnn, resnet9_cifar, resnet18_cifar, resnet18_tiny, lite0_tinyimagenet, "
        "small_cnn)",
    )
    g.add_argument("--init", help="start from these weights (state dict file, e.g. another run's model.pt)")
    g.add_argument("--arch-arg", action="append", type=_kv, default=[], metavar="KEY=VALUE")


def _attack_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the group "adversarial examples"."""
    g = p.add_argument_group("adversarial examples")
    g.add_argument("--attack", default="none", help="attack preset making the training examples, or none")
    g.add_argument(
        "--attack-arg",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="preset override (JSON value), e.g. steps=3; repeatable",
    )
    g.add_argument(
        "--eval-attack-arg",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="extra override for the per-epoch test evaluation attack",
    )
    g.add_argument("--clean-weight", type=float, default=0.0, help="loss = w * CE(clean) + (1 - w) * CE(adversarial)")
    g.add_argument(
        "--meter-n", type=int, default=16, help="training examples per epoch measured on the yardstick (W1-TV, 5x5)"
    )


def _optimisation_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the group "optimisation"."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--batch-size", type=int, default=64, help="global batch (split equally across processes)")
    g.add_argument("--max-steps-per-epoch", type=int)
    g.add_argument("--no-shuffle", action="store_true", help="keep the data order (default: seeded shuffle)")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"))
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument(
        "--schedule",
        default="constant",
        choices=("constant", "cosine", "step", "multistep", "onecycle"),
        help="learning-rate schedule, stepped once per epoch (onecycle: after every batch, a linear rise from 0 to "
        "--lr over the --warmup fraction of all steps, then a linear decay to 0)",
    )
    g.add_argument("--warmup", type=float, default=0.25, help="onecycle: fraction of the steps spent rising")
    g.add_argument("--step-size", type=int, default=1, help="epochs between decays (schedule step)")
    g.add_argument("--milestones", type=int, nargs="*", default=[], help="epochs of decay (schedule multistep)")
    g.add_argument("--gamma", type=float, default=0.1, help="decay factor")
    g.add_argument(
        "--augment",
        default="none",
        choices=("none", "flip-crop"),
        help="flip-crop: random horizontal flip and shift by up to 4 pixels (reflected border), before the attack",
    )
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing in [0, 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across processes")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the group "run"."""
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/train", help="output folder")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument(
        "--fresh",
        action="store_true",
        help="discard the run in --out (checkpoint, model.pt, history), even of another configuration, and start over",
    )
    add_device(g)
    g.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="mixed precision (GPU only)")
    g.add_argument("--eval-batch-size", type=int, default=256)
    g.add_argument(
        "--log-every", type=int, default=0, help="print the loss and the time left every N steps (0: per epoch only)"
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="also write the resumable checkpoint every N steps inside an epoch (0: after each epoch only)",
    )
    g.add_argument("--no-plot", action="store_true", help="do not draw history.png")
    g.add_argument("--stop-after-epochs", type=int, help=argparse.SUPPRESS)  # testing: emulate a killed run
    add_threads(g)


def _recipes() -> list[str]:
    from ..train.recipes import bundled_recipes

    return bundled_recipes()


#: TrainConfig fields whose command-line option has another name (the rest: --field-name).
_FIELD_TO_DEST = {
    "init_weights": "init",
    "arch_kwargs": "arch_arg",
    "attack_overrides": "attack_arg",
    "eval_attack_overrides": "eval_attack_arg",
    "out_dir": "out",
}


def _apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse the command line with the recipe's values as defaults, so that typed options win."""
    from ..train.recipes import load_recipe

    defaults: dict[str, Any] = {}
    for key, value in load_recipe(args.config).items():
        if key == "shuffle":
            defaults["no_shuffle"] = not value
        elif key == "plot":
            defaults["no_plot"] = not value
        elif key in ("arch_kwargs", "attack_overrides", "eval_attack_overrides"):
            if not isinstance(value, dict):
                raise UserError(f"{args.config}: {key} must be a table of KEY = VALUE, got {value!r}")
            defaults[_FIELD_TO_DEST[key]] = list(value.items())
        else:
            defaults[_FIELD_TO_DEST.get(key, key)] = value
    parser: argparse.ArgumentParser = args.parser
    parser.set_defaults(**defaults)
    argv = list(args.argv)
    return parser.parse_args(argv[argv.index("train") + 1 :])


#: TrainConfig fields without an option: set by a recipe only (``_apply_recipe`` puts them into the namespace).
_RECIPE_ONLY = ("meter_kernel", "meter_p")


def config_from_args(args: argparse.Namespace) -> Any:
    from ..train import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        arch=args.arch,
        arch_kwargs=dict(args.arch_arg),
        init_weights=args.init,
        train_limit=args.train_limit,
        train_offset=args.train_offset,
        train_stride=args.train_stride,
        eval_limit=args.eval_limit,
        attack=args.attack,
        attack_overrides=dict(args.attack_arg),
        eval_attack_overrides=dict(args.eval_attack_arg),
        clean_weight=args.clean_weight,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_steps_per_epoch=args.max_steps_per_epoch,
        shuffle=not args.no_shuffle,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        step_size=args.step_size,
        milestones=list(args.milestones) if isinstance(args.milestones, (list, tuple)) else args.milestones,
        gamma=args.gamma,
        warmup=args.warmup,
        augment=args.augment,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        meter_n=args.meter_n,
        sync_bn=args.sync_bn,
        out_dir=args.out,
        data_dir=args.data_dir,
        device=args.device,
        amp=args.amp,
        eval_batch_size=args.eval_batch_size,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        plot=not args.no_plot,
        **{k: getattr(args, k) for k in _RECIPE_ONLY if hasattr(args, k)},
    )


def _smoke(args: argparse.Namespace) -> None:
    """``$SINKHORN_ATTACKS_SMOKE=N``: a tiny run (N examples per batch, one epoch, few attack steps)."""
    n = smoke_limit()
    if not n:
        return
    args.epochs, args.batch_size, args.max_steps_per_epoch = 1, min(args.batch_size, n), 1
    args.train_limit = min(args.train_limit or n, n)
    args.eval_limit, args.meter_n = min(args.eval_limit, n), min(args.meter_n, n)
    args.eval_batch_size = min(args.eval_batch_size, n)
    args.attack_arg = [*args.attack_arg, ("steps", min(dict(args.attack_arg).get("steps", n), n))]


def _check_attack_args(cfg: Any) -> None:
    """The attack preset and every --attack-arg / --eval-attack-arg key and value type, before any work."""
    if cfg.attack == "none":
        return
    from ..eval.config import AttackSpec, validate_attack

    validate_attack(AttackSpec(cfg.attack), where="--attack")
    validate_attack(AttackSpec(cfg.attack, params=cfg.attack_overrides), where="--attack-arg")
    both = {**cfg.attack_overrides, **cfg.eval_attack_overrides}
    validate_attack(AttackSpec(cfg.attack, params=both), where="--eval-attack-arg")


def _flag_error(err: Any, args: argparse.Namespace) -> UserError:
    """A :class:`TrainConfigError` in the words of the command line: the field's flag, else the field (a key
    only a recipe sets)."""
    dest = _FIELD_TO_DEST.get(err.field, err.field)
    if dest in vars(args) and dest not in ("config", "parser", "argv", "func", *_RECIPE_ONLY):
        return UserError(f"--{dest.replace('_', '-')} {err.rule}")
    return UserError(f"{err.field} ({args.config or 'recipe key'}) {err.rule}")


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import ConfigMismatchError, TrainConfigError, TrainingDiverged, train

    if args.config:
        args = _apply_recipe(args)
    _smoke(args)
    args.resume_hint = f"continue with the same options plus --resume (checkpoint in {args.out})"
    try:
        cfg = config_from_args(args)
        _check_attack_args(cfg)
        result = train(cfg, resume=args.resume, fresh=args.fresh, stop_after_epochs=args.stop_after_epochs)
    except TrainConfigError as err:
        raise _flag_error(err, args) from None
    except (ConfigMismatchError, FileExistsError, ValueError) as err:
        raise UserError(str(err)) from None
    except TrainingDiverged as err:
        print(f"sinkhorn-attacks train: {err}", file=sys.stderr)
        return 1
    if result.files:
        print(json.dumps({"out": str(result.out_dir), "final": result.history[-1] if result.history else None}))
    return 0
