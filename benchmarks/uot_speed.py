"""UOT attack speed: A/B against a reference commit, and UOT step cost against ``fair-wong``.

One script, one child process per (implementation, attack) run so that two versions of the package can be
imported side by side: the reference commit is checked out into a ``git worktree`` and its ``src`` is put
first on the child's ``PYTHONPATH``. Every child uses one thread and reports its CPU time
(``time.process_time``), so results do not depend on other load on the machine.

    python -m benchmarks.uot_speed --ref 86a3e63 --n-ab 100 --ab-repeats 3 --n-step 32 --step-steps 10 \\
        --out docs/benchmarks/uot_speed

Measured (all on MNIST test images, Wong et al.'s adversarially trained model, meter off):
* ``step``: CPU seconds per attack step (10 steps, no early stop) of ``uot`` and ``fair-wong`` on ``--n-step``
  images, with the current code; the ratio uot / fair-wong.
* ``ab``: the ``uot`` preset (default steps, early stop) on ``--n-ab`` images, current vs reference:
  CPU seconds, robust accuracy, inner sweeps per projection.
* ``large``: CPU seconds per 128x128x3 image-step of the ``uot`` preset (``--n-large`` Flickr8k test images,
  ``--large-steps`` steps, a seeded stand-in CNN), current vs reference.
* ``pixels``: CPU seconds of one cold-start budgeted projection per pixel-channel at 28x28, 64x64x3,
  128x128x3 and 224x224x3 (about 150k pixel-channels per batch), relative to 28x28 (``_per_pixel``).
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


def _large_child(args: argparse.Namespace) -> None:
    """``uot`` preset steps on 128x128x3 Flickr8k images (saved by the parent) through a seeded stand-in CNN."""
    import torch

    torch.set_num_threads(1)
    import sinkhorn_attacks
    from sinkhorn_attacks.attacks import from_preset

    x = torch.load(args.images, weights_only=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4, padding=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    ).eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own labels: every image starts correctly classified
    atk = from_preset("uot", model, meter_cost=None, steps=args.steps, early_stop=False)
    t0 = time.process_time()
    res = atk(x, y)
    cpu = time.process_time() - t0
    out = {
        "package": str(Path(sinkhorn_attacks.__file__).parent),
        "images": int(x.shape[0]),
        "size": "x".join(str(d) for d in x.shape[1:]),
        "steps": args.steps,
        "cpu_s": cpu,
        "cpu_s_per_image_step": cpu / (x.shape[0] * args.steps),
        "robust_accuracy": float(res.robust_accuracy),
    }
    print("RESULT " + json.dumps(out))


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


PIXEL_SIZES = ((28, 1, 192), (64, 3, 12), (128, 3, 3), (224, 3, 1))  # (side, channels, batch): ~150k values


def _per_pixel(repeats: int = 1) -> dict:
    """CPU seconds of one cold-start budgeted UOT projection per pixel-channel, at the ``uot`` preset's settings.

    The input is one sign step ``w = x + 0.1 sign(noise)`` from the clean image, projected onto the ball of
    radius ``0.3 ||x||_1`` (eta 0.05, tau 10, gamma 1, 5x5 window, p 1, 300 sweeps cap); the batch is chosen
    so every size holds about 150k pixel-channels. Images: MNIST test (28x28), Tiny ImageNet val (64x64x3),
    the same images upsampled bilinearly to 128x128x3 and 224x224x3. One thread; the best of ``repeats``.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    from sinkhorn_attacks.attacks import from_preset
    from sinkhorn_attacks.data import load_dataset

    rows = []
    for side, ch, batch in PIXEL_SIZES:
        if ch == 1:
            x = load_dataset("mnist", "test", limit=batch).images
        else:
            x = load_dataset("tiny-imagenet", "val", limit=batch).images
            if side != x.shape[-1]:
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
        proj = from_preset("uot", torch.nn.Identity(), meter_cost=None).projection
        g = torch.Generator().manual_seed(0)
        w = x + 0.1 * torch.sign(torch.randn(x.shape, generator=g))
        radius = torch.full((x.shape[0],), 0.3)
        best, info = None, None
        for _ in range(max(1, repeats)):
            t0 = time.process_time()
            _, _, info = proj(x, w, radius, None)
            cpu = time.process_time() - t0
            best = cpu if best is None else min(best, cpu)
        values = x.numel()
        sweeps = float(info["inner_iterations"].mean())
        rows.append(
            {
                "size": f"{side}x{side}x{ch}",
                "batch": int(x.shape[0]),
                "values": int(values),
                "cpu_s": best,
                "sweeps": sweeps,
                "ns_per_value": 1e9 * best / values,
                "ns_per_value_sweep": 1e9 * best / values / max(sweeps, 1.0),
                "converged": float(info["inner_converged"].mean()) if "inner_converged" in info else None,
                "max_cert_over_eps": float((info["certified_radius"] / radius).max()),
            }
        )
        print(json.dumps(rows[-1]))
    base = rows[0]
    for r in rows:
        r["ratio"] = r["ns_per_value"] / base["ns_per_value"]
        r["ratio_per_sweep"] = r["ns_per_value_sweep"] / base["ns_per_value_sweep"]
    return {"rows": rows, "repeats": repeats}


def _large(ref_src: Path | None, n: int, steps: int) -> dict:
    """128x128x3 image-steps of the ``uot`` preset (the retrieval setting): current vs reference code."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sinkhorn_attacks.data.captions import load_flickr8k_npz

    data = load_flickr8k_npz(Path(os.environ["SINKHORN_ATTACKS_DATA"]) / "flickr8k_128.npz", "test")
    arr = np.stack([np.asarray(data.images[i]) for i in range(n)])  # (n, H, W, 3) uint8
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-1] != 128:
        x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False).clamp(0, 1)
    path = Path(tempfile.gettempdir()) / "uot_speed_large.pt"
    torch.save(x.contiguous(), path)
    extra = ["--large", "--images", str(path), "--steps", str(steps)]
    new = _run(REPO / "src", "uot", n, None, False, extra)
    old = _run(ref_src, "uot", n, None, False, extra) if ref_src is not None else None
    return {"new": new, "ref": old, "speedup": (old["cpu_s"] / new["cpu_s"]) if old else None}


def _run(src: Path, preset: str, n: int, steps: int | None, no_early_stop: bool, extra=()) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.uot_speed", "--child", "--preset", preset, "--n", str(n)]
    if steps:
        cmd += ["--steps", str(steps)]
    if no_early_stop:
        cmd += ["--no-early-stop"]
    cmd += list(extra)
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
    ap.add_argument("--ab-repeats", type=int, default=1, help="A/B pairs (new, reference) run in turn")
    ap.add_argument("--n-step", type=int, default=32)
    ap.add_argument("--step-steps", type=int, default=10)
    ap.add_argument("--n-cert", type=int, default=24)
    ap.add_argument("--pixel-repeats", type=int, default=1)
    ap.add_argument("--large", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--n-large", type=int, default=4, help="128x128x3 Flickr8k images for the large A/B")
    ap.add_argument("--large-steps", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: step,ab,large,cert,pixels")
    ap.add_argument("--out", default="docs/benchmarks/uot_speed")
    args = ap.parse_args(argv)
    if args.child:
        _large_child(args) if args.large else _child(args)
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
        pairs = []  # new and reference in turn, so that a drift of the machine's speed hits both alike
        for _ in range(max(1, args.ab_repeats)):
            pairs.append((_run(cur, "uot", args.n_ab, None, False), _run(wt / "src", "uot", args.n_ab, None, False)))
        ratios = sorted(o["cpu_s"] / n["cpu_s"] for n, o in pairs)
        mid = sorted(pairs, key=lambda p: p[1]["cpu_s"] / p[0]["cpu_s"])[len(pairs) // 2]
        report["ab"] = {
            "images": args.n_ab,
            "new": mid[0],
            "ref": mid[1],
            "speedup": ratios[len(ratios) // 2],  # the median pair
            "speedups": ratios,
        }
        print(json.dumps(report["ab"], indent=1))
    if "large" not in skip:
        report["large"] = _large(None if "ab" in skip else wt / "src", args.n_large, args.large_steps)
        print(json.dumps(report["large"], indent=1))
    if "cert" not in skip:
        report["certificate"] = _certificate(args.n_cert)
        print(json.dumps({k: v for k, v in report["certificate"].items() if k != "ratios"}, indent=1))
    if "pixels" not in skip:
        report["per_pixel"] = _per_pixel(args.pixel_repeats)
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
        lines += ["", f"speed-up: **{a['speedup']:.2f}x**"]
        if len(a.get("speedups", [])) > 1:
            lines[-1] += " (median of {} pairs run in turn: {})".format(
                len(a["speedups"]), ", ".join(f"{v:.2f}" for v in a["speedups"])
            )
        lines.append("")
    lg = r.get("large")
    if lg:
        v = lg["new"]
        lines += [
            f"## 128x128x3 image-steps (the retrieval setting; {v['images']} Flickr8k test images, {v['steps']} steps)",
            "",
            "The `uot` preset through a seeded stand-in CNN (the projection, not the model, sets the cost).",
            "",
            "| code | CPU s | CPU s / image-step |",
            "|---|---|---|",
        ]
        for name, v in (("current", lg["new"]), (f"reference {r['ref']}", lg.get("ref"))):
            if v:
                lines.append(f"| {name} | {v['cpu_s']:.1f} | {v['cpu_s_per_image_step']:.2f} |")
        if lg.get("speedup"):
            lines += ["", f"speed-up: **{lg['speedup']:.2f}x**"]
        lines.append("")
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
    px = r.get("per_pixel")
    if px:
        lines += [
            "## Per-pixel scaling (one cold-start budgeted projection at the `uot` preset's settings)",
            "",
            "A sign step `w = x + 0.1 sign(noise)` projected onto the radius-0.3 ball; batches of about 150k",
            "pixel-channels; MNIST test at 28x28, Tiny ImageNet val at 64x64x3, upsampled (bilinear) to 128 and 224.",
            "`ratio` is the CPU time per pixel-channel relative to 28x28; `per sweep` divides by the mean",
            "number of Sinkhorn sweeps (the cost of the window operator itself).",
            "",
            "| size | batch | CPU s | sweeps | ns / value | ratio | ns / value / sweep | ratio per sweep | converged |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in px["rows"]:
            cv = "-" if v.get("converged") is None else f"{v['converged']:.2f}"
            lines.append(
                f"| {v['size']} | {v['batch']} | {v['cpu_s']:.2f} | {v['sweeps']:.0f} | {v['ns_per_value']:.0f} | "
                f"{v['ratio']:.2f} | {v['ns_per_value_sweep']:.2f} | {v['ratio_per_sweep']:.2f} | {cv} |"
            )
        worst = max(v["ratio"] for v in px["rows"][1:] or px["rows"])
        lines += [
            "",
            f"Largest cost per pixel-channel of a larger size relative to 28x28: **{worst:.2f}x** (target: <= 1.5x).",
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
