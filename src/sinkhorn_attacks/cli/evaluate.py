"""``sinkhorn-attacks evaluate``: models x attacks x a dataset slice, resumable, then the HTML report."""

from __future__ import annotations

import argparse

from ._common import UserError, add_threads, check_output, fmt, smoke_limit, user_errors


def units_help() -> str:
    """The units paragraph of ``attack`` / ``evaluate --help``, written from the meter's cost object."""
    from ..ot import Yardstick

    return (
        f"Units: the metered radius is the yardstick {Yardstick().describe()} (d = Euclidean distance between "
        "pixel centres), between the clean and the adversarial image as returned. The nominal radius is in each "
        "preset's own units (e.g. linf-pgd: l_inf norm of the pixel perturbation; uot: normalised UOT cost "
        "F/||x||_1; wong2019-*: Wasserstein radius of that paper's projection). Iteration 0 of the "
        "accuracy-vs-iteration curve is the clean accuracy."
    )


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    from ..eval.config import bundled_configs

    p = subparsers.add_parser(
        "evaluate",
        help=help_text,
        description="Evaluate models x attacks on a dataset slice. Writes per-example results (examples.csv), "
        "the worst case over attacks (worst_case.csv), curves (curves.json: accuracy vs PGD iteration, vs "
        "metered radius, at fixed radii), a summary (results.json), a log and a state file; a killed run "
        "restarted with the same config and output folder resumes where it stopped and gives identical "
        "results; a larger --limit on a finished folder reuses its finished units. Before any work it checks that "
        "the models, the data and the device are available and lists what is missing. Then draws the report "
        "(PNG plots, example grids, self-contained report.html). " + units_help(),
        epilog="Config (TOML) sections: [run] out, seed, batch_size, device, grid_examples; [data] dataset, "
        "split, limit, offset, data_dir; [models] names, models_dir; [[attacks]] preset, label, params; "
        "[curves] radii, radius_points; [worst_case] attacks. Flags override the config. Bundled configs "
        "(--config NAME): " + ", ".join(bundled_configs()) + ". Example: "
        "sinkhorn-attacks evaluate --config thesis_mnist_small --limit 50",
    )
    p.add_argument("--config", help="TOML config: a file path or a bundled config name (e.g. thesis_mnist)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="zoo names or checkpoint paths")
    p.add_argument("--attacks", nargs="+", metavar="PRESET", help="attack presets (sinkhorn-attacks attack --list)")
    p.add_argument("--dataset", help="dataset name (default mnist)")
    p.add_argument("--split", help="split (default test)")
    p.add_argument("--limit", type=int, help="number of examples (default 100)")
    p.add_argument("--offset", type=int, help="first example (default 0)")
    p.add_argument("--data-dir", help="data folder (default $SINKHORN_ATTACKS_DATA)")
    p.add_argument("--models-dir", help="checkpoint folder (default $SINKHORN_ATTACKS_MODELS)")
    p.add_argument(
        "--arch",
        help="architecture of a bare checkpoint file (mnist_cnn, resnet9_cifar, resnet18_cifar, resnet18_tiny, "
        "small_cnn); default: inferred from its keys, checked before any work",
    )
    p.add_argument("--out", help="output folder (default runs/evaluate)")
    p.add_argument("--seed", type=int, help="base seed (each work unit derives its own)")
    p.add_argument("--batch-size", type=int, help="examples per work unit (default 50)")
    p.add_argument("--device", help="auto (default: cuda when available, else cpu), cpu, cuda")
    p.add_argument("--radii", type=float, nargs="+", help="fixed metered radii for 'accuracy at radius'")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state file and start over")
    p.add_argument("--no-report", action="store_true", help="do not draw the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace):
    from ..eval.config import AttackSpec, EvalConfig, config_from_dict, load_config

    if args.config:
        cfg = load_config(args.config)
    else:
        if not args.models or not args.attacks:
            raise UserError("give --config NAME_OR_FILE, or both --models and --attacks")
        cfg = config_from_dict({"models": list(args.models), "attacks": list(args.attacks)})
    d = cfg.to_dict()
    d["attacks"] = [AttackSpec(**a) for a in d["attacks"]]
    d["cascade_attacks"] = [AttackSpec(**a) for a in d["cascade_attacks"]]
    if args.models:
        d["models"] = list(args.models)
    if args.attacks:
        d["attacks"] = [AttackSpec(a) for a in args.attacks]
        d["worst_case"], d["cascade_attacks"] = None, []
    keys = (
        "dataset",
        "split",
        "limit",
        "offset",
        "data_dir",
        "models_dir",
        "out",
        "seed",
        "batch_size",
        "device",
        "arch",
    )
    for k in keys:
        v = getattr(args, k)
        if v is not None:
            d[k] = v
    if args.radii:
        d["radii"] = list(args.radii)
    smoke = smoke_limit()
    if smoke:  # smoke run (tests of the documented commands): tiny slice, few steps
        d["limit"], d["batch_size"] = min(d["limit"], smoke), min(d["batch_size"], smoke)
        for a in d["attacks"] + d["cascade_attacks"]:
            a.params = {**a.params, "steps": min(int(a.params.get("steps", smoke)), smoke)}
    return EvalConfig(**d)


def print_summary(summary: dict) -> None:
    """One row per model x attack: clean / robust accuracy and the median metered radius (``-``: none)."""
    rows = [(m, lab, s) for m, cells in summary.items() for lab, s in cells.items()]
    wm = max([5] + [len(m) for m, _, _ in rows])
    wa = max([6] + [len(lab) for _, lab, _ in rows])
    print(f"{'model':<{wm}}  {'attack':<{wa}}  {'clean':>6}  {'robust':>6}  {'median metered radius':>21}")
    for m, lab, s in rows:
        print(
            f"{m:<{wm}}  {lab:<{wa}}  {fmt(s.get('clean_accuracy')):>6}  {fmt(s.get('robust_accuracy')):>6}  "
            f"{fmt(s.get('median_metered_radius'), 4):>21}"
        )


def run(args: argparse.Namespace) -> int:
    from ..eval import run_evaluation

    with user_errors("config" if args.config else ""):
        cfg = build_config(args)
    check_output(cfg.out, "--out" if args.out else "[run] out")
    args.resume_hint = f"rerun the same command to resume; finished units are kept in {cfg.out}"
    res = run_evaluation(cfg, progress=not args.quiet, fresh=args.fresh)
    print_summary(res["summary"])
    if not args.no_report:
        from ..report import write_report

        path = write_report(cfg.out)
        print(f"report: {path}")
    return 0
