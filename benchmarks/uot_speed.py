"""UOT attack speed: A/B against a reference commit, and UOT step cost against ``fair-wong``.

One script, one child process per (implementation, attack) run so that two versions of the package can be
imported side by side: the reference commit is checked out into a ``git worktree`` and its ``src`` is put
first on the child's ``PYTHONPATH``. Every child uses one thread and reports its CPU time
(``time.process_time``), so results do not depend on other load on the machine.

    python -m benchmarks.uot_speed --ref 86a3e63 --n-ab 100 --n-step 32 --steps 10 \\
        --out docs/benchmarks/uot_speed

Measured (all on MNIST test images, Wong et al.'s adversarially trained model, meter off):
* ``step``: CPU seconds per attack step (10 steps, no early stop) of ``uot`` and ``fair-wong`` on ``--n-step``
  images, with the current code; the ratio uot / fair-wong.
* ``ab``: the ``uot`` preset (default steps, early stop) on ``--n-ab`` images, current vs reference:
  CPU seconds, robust accuracy, inner sweeps per projection.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    import sinkhorn_attacks
    from sinkhorn_attacks import zoo
    from sinkhorn_attacks.attacks import from_preset
    from sinkhorn_attacks.data import load_dataset

    ds = load_dataset("mnist", "test", limit=args.n)
    x, y = ds.images, ds.labels
    model = zoo.load("wong2019-mnist-adv", models_dir=os.environ.get("SINKHORN_ATTACKS_MODELS"))
    model.eval()
    kw: dict = {"meter_cost": None}
    if args.steps:
        kw["steps"] = args.steps
    if args.no_early_stop:
        kw["early_stop"] = False
    atk = from_preset(args.preset, model, **kw)
    sweeps = []
    proj = getattr(atk, "projection", None)
    if proj is not None and args.preset.startswith("uot"):  # count inner sweeps per projection call
        inner = proj.__call__

        def counted(x_, w_, r_, s_):
            z, st, info = inner(x_, w_, r_, s_)
            sweeps.extend(info["inner_iterations"].tolist())
            return z, st, info

        proj.__call__ = counted
        atk.projection = counted
    t0 = time.process_time()
    res = atk(x, y)
    cpu = time.process_time() - t0
    out = {
        "package": str(Path(sinkhorn_attacks.__file__).parent),
        "preset": args.preset,
        "n": int(x.shape[0]),
        "cpu_s": cpu,
        "robust_accuracy": float(res.robust_accuracy),
        "clean_accuracy": float(res.clean_accuracy),
        "steps": args.steps,
        "early_stop": not args.no_early_stop,
        "sweeps_per_projection": (sum(sweeps) / len(sweeps)) if sweeps else None,
        "projections": len(sweeps),
    }
    if hasattr(res, "iterations"):
        out["attack_steps_total"] = int(torch.as_tensor(res.iterations).sum())
    print("RESULT " + json.dumps(out))


def _certificate(n: int) -> dict:
    """Certified radius vs the exact unregularised U_tau on ``uot`` outputs (current code)."""
    import torch

    torch.set_num_threads(1)
    from sinkhorn_attacks import zoo
    from sinkhorn_attacks.attacks import from_preset
    from sinkhorn_attacks.data import load_dataset
    from sinkhorn_attacks.ot import LocalCost, exact_uot

    ds = load_dataset("mnist", "test", limit=n)
    model = zoo.load("wong2019-mnist-adv", models_dir=os.environ.get("SINKHORN_ATTACKS_MODELS")).eval()
    loose = from_preset("uot", model, meter_cost=None, tight_certificate=False)(ds.images, ds.labels)
    tight = from_preset("uot", model, meter_cost=None)(ds.images, ds.labels)
    assert torch.equal(loose.adv, tight.adv)
    x, adv = ds.images.double(), tight.adv.double()
    mass = x.flatten(1).sum(1)
    moved = (adv - x).flatten(1).abs().amax(1) > 0
    ex = exact_uot(x[moved], adv[moved], LocalCost(5, 1.0), 10.0)
    r_tight = (tight.certified_radius.double()[moved] * mass[moved] / ex).tolist()
    r_loose = (loose.certified_radius.double()[moved] * mass[moved] / ex).tolist()

    def stats(v: list[float]) -> dict:
        t = torch.tensor(v)
        return {"median": float(t.median()), "max": float(t.max()), "min": float(t.min())}

    return {"images": int(moved.sum()), "tight": stats(r_tight), "projection": stats(r_loose), "ratios": r_tight}


def _run(src: Path, preset: str, n: int, steps: int | None, no_early_stop: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.uot_speed", "--child", "--preset", preset, "--n", str(n)]
    if steps:
        cmd += ["--steps", str(steps)]
    if no_early_stop:
        cmd += ["--no-early-stop"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed ({preset}, {src}):\n{p.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="uot")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--no-early-stop", action="store_true")
    ap.add_argument("--ref", default="86a3e63", help="reference commit for the A/B")
    ap.add_argument("--n-ab", type=int, default=100)
    ap.add_argument("--n-step", type=int, default=32)
    ap.add_argument("--step-steps", type=int, default=10)
    ap.add_argument("--n-cert", type=int, default=24)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: step,ab,cert")
    ap.add_argument("--out", default="docs/benchmarks/uot_speed")
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return
    skip = set(filter(None, args.skip.split(",")))
    cur = REPO / "src"
    wt = Path(tempfile.gettempdir()) / f"sinkhorn_attacks_ref_{args.ref}"
    if "ab" not in skip and not wt.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), args.ref], cwd=REPO, check=True)
    out = REPO / args.out
    report: dict = {}
    if out.with_suffix(".json").exists():  # parts skipped now keep their earlier results
        report = json.loads(out.with_suffix(".json").read_text())
    report.update({"ref": args.ref, "threads": 1, "model": "wong2019-mnist-adv", "meter": None})
    if "step" not in skip:
        n, k = args.n_step, args.step_steps
        uot = _run(cur, "uot", n, k, True)
        wong = _run(cur, "fair-wong", n, k, True)
        ref_uot = _run(wt / "src", "uot", n, k, True) if "ab" not in skip else None
        report["step"] = {
            "images": n,
            "steps": k,
            "uot": uot,
            "fair_wong": wong,
            "uot_ref": ref_uot,
            "uot_over_fair_wong": uot["cpu_s"] / wong["cpu_s"],
            "ref_uot_over_fair_wong": (ref_uot["cpu_s"] / wong["cpu_s"]) if ref_uot else None,
        }
        print(json.dumps(report["step"], indent=1))
    if "ab" not in skip:
        new = _run(cur, "uot", args.n_ab, None, False)
        old = _run(wt / "src", "uot", args.n_ab, None, False)
        report["ab"] = {"images": args.n_ab, "new": new, "ref": old, "speedup": old["cpu_s"] / new["cpu_s"]}
        print(json.dumps(report["ab"], indent=1))
    if "cert" not in skip:
        report["certificate"] = _certificate(args.n_cert)
        print(json.dumps({k: v for k, v in report["certificate"].items() if k != "ratios"}, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(report))


def _markdown(r: dict) -> str:
    lines = [
        "# UOT attack speed (MNIST, wong2019-mnist-adv, one thread, CPU seconds, meter off)",
        "",
        f"Produced by `python -m benchmarks.uot_speed`; reference commit `{r['ref']}` (a git worktree).",
        "",
    ]
    s = r.get("step")
    if s:
        lines += [
            f"## Cost of a step ({s['images']} images, {s['steps']} steps, no early stop)",
            "",
            "| attack | CPU s | CPU s / step | sweeps / projection |",
            "|---|---|---|---|",
        ]
        for name, v in (("uot", s["uot"]), ("fair-wong", s["fair_wong"]), ("uot (reference)", s["uot_ref"])):
            if v:
                sw = v["sweeps_per_projection"]
                sws = f"{sw:.0f}" if sw is not None else "-"
                lines.append(f"| {name} | {v['cpu_s']:.1f} | {v['cpu_s'] / s['steps']:.2f} | {sws} |")
        lines += ["", f"uot / fair-wong: **{s['uot_over_fair_wong']:.2f}x**"]
        if s.get("ref_uot_over_fair_wong"):
            lines[-1] += f" (reference: {s['ref_uot_over_fair_wong']:.2f}x)"
        lines.append("")
    a = r.get("ab")
    if a:
        lines += [
            f"## `uot` preset on {a['images']} images (default steps, early stop)",
            "",
            "| code | CPU s | robust accuracy | sweeps / projection | projections |",
            "|---|---|---|---|---|",
        ]
        for name, v in (("current", a["new"]), (f"reference {r['ref']}", a["ref"])):
            sw = v["sweeps_per_projection"]
            sws = f"{sw:.0f}" if sw is not None else "-"
            lines.append(f"| {name} | {v['cpu_s']:.1f} | {v['robust_accuracy']:.3f} | {sws} | {v['projections']} |")
        lines += ["", f"speed-up: **{a['speedup']:.2f}x**", ""]
    c = r.get("certificate")
    if c:
        lines += [
            f"## Certified radius / exact U_tau ({c['images']} `uot` outputs, exact: `ot.exact_uot`)",
            "",
            "| certificate | median | max | min |",
            "|---|---|---|---|",
            "| F of the projection's plan | {median:.3f} | {max:.3f} | {min:.3f} |".format(**c["projection"]),
            "| tight (`uot_upper_bound`) | {median:.3f} | {max:.3f} | {min:.3f} |".format(**c["tight"]),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
