"""``sinkhorn-attacks evaluate``: models x attacks x a dataset slice, resumable, then the HTML report."""

from __future__ import annotations

import argparse
import sys

UNITS_HELP = (
    "Units: the metered radius is the exact W1 distance between the clean and the adversarial image, both "
    "normalised to total mass 1, with a 5x5 local window and ground cost in pixel units (|di|+|dj| steps "
    "of one pixel); 'inf' means the plan would have to move mass outside the window. The nominal radius "
    "is in each preset's own units (e.g. linf-pgd: l_inf norm of the pixel perturbation; uot: normalised "
    "UOT cost F/||x||_1; wong2019-*: Wasserstein radius of that paper's projection). Iteration 0 of the "
    "accuracy-vs-iteration curve is the clean accuracy."
)


def add_parser(subparsers, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help=help_text,
        description="Evaluate models x attacks on a dataset slice. Writes per-example results (examples.csv), "
        "the worst case over attacks (worst_case.csv), curves (curves.json: accuracy vs PGD iteration, vs "
        "metered radius, at fixed radii), a summary (results.json), a log and a state file; a killed run "
        "restarted with the same config and output folder resumes where it stopped and gives identical "
        "results. Then draws the report (PNG plots, example grids, self-contained report.html). " + UNITS_HELP,
        epilog="Config (TOML) sections: [run] out, seed, batch_size, device, grid_examples; [data] dataset, "
        "split, limit, offset, data_dir; [models] names, models_dir; [[attacks]] preset, label, params; "
        "[curves] radii, radius_points; [worst_case] attacks. Flags override the config. Example: "
        "sinkhorn-attacks evaluate --config src/sinkhorn_attacks/configs/thesis_mnist.toml --limit 50",
    )
    p.add_argument("--config", help="TOML config file (see sinkhorn_attacks.eval.config)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="zoo names or checkpoint paths")
    p.add_argument("--attacks", nargs="+", metavar="PRESET", help="attack presets (sinkhorn-attacks attack --list)")
    p.add_argument("--dataset", help="dataset name (default mnist)")
    p.add_argument("--split", help="split (default test)")
    p.add_argument("--limit", type=int, help="number of examples (default 100)")
    p.add_argument("--offset", type=int, help="first example (default 0)")
    p.add_argument("--data-dir", help="data folder (default $SINKHORN_ATTACKS_DATA)")
    p.add_argument("--models-dir", help="checkpoint folder (default $SINKHORN_ATTACKS_MODELS)")
    p.add_argument("--out", help="output folder (default runs/evaluate)")
    p.add_argument("--seed", type=int, help="base seed (each work unit derives its own)")
    p.add_argument("--batch-size", type=int, help="examples per work unit (default 50)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--radii", type=float, nargs="+", help="fixed metered radii for 'accuracy at radius'")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state file and start over")
    p.add_argument("--no-report", action="store_true", help="do not draw the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace):
    from ..eval.config import AttackSpec, EvalConfig, config_from_dict, load_config

    if args.config:
        cfg = load_config(args.config)
    else:
        if not args.models or not args.attacks:
            raise SystemExit("evaluate: give --config, or both --models and --attacks")
        cfg = config_from_dict({"models": list(args.models), "attacks": list(args.attacks)})
    d = cfg.to_dict()
    d["attacks"] = [AttackSpec(**a) for a in d["attacks"]]
    d["cascade_attacks"] = [AttackSpec(**a) for a in d["cascade_attacks"]]
    if args.models:
        d["models"] = list(args.models)
    if args.attacks:
        d["attacks"] = [AttackSpec(a) for a in args.attacks]
        d["worst_case"], d["cascade_attacks"] = None, []
    for k in ("dataset", "split", "limit", "offset", "data_dir", "models_dir", "out", "seed", "batch_size", "device"):
        v = getattr(args, k)
        if v is not None:
            d[k] = v
    if args.radii:
        d["radii"] = list(args.radii)
    return EvalConfig(**d)


def run(args: argparse.Namespace) -> int:
    from ..eval import run_evaluation

    cfg = build_config(args)
    res = run_evaluation(cfg, progress=not args.quiet, fresh=args.fresh)
    for m, cells in res["summary"].items():
        for lab, s in cells.items():
            print(
                f"{m:28s} {lab:16s} clean {s.get('clean_accuracy', float('nan')):.3f}  "
                f"robust {s.get('robust_accuracy', float('nan')):.3f}  "
                f"median metered radius {s.get('median_metered_radius')}",
                file=sys.stdout,
            )
    if not args.no_report:
        from ..report import write_report

        path = write_report(cfg.out)
        print(f"report: {path}")
    return 0
