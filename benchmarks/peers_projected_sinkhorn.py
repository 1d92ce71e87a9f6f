"""Side by side: our Wong projection vs Wong's PyPI package ``projected-sinkhorn==0.2``.

MNIST test images (the data folder in ``SINKHORN_ATTACKS_DATA``, as everywhere else), Wong's MNIST
settings (p=2, 7x7, lam=1000, eps=0.7, 400 Sinkhorn iterations), one projection of an l_inf sign step
(``w = x + 0.1 sign(noise)``, fixed seed, standing in for the gradient sign). For each batch size: one
untimed call of each, then ``--repeats`` rounds of one whole call each (theirs, then ours) in the same
process, timed in process CPU time (independent of other load on the machine). Reports the median whole-
call times, the median and range of the per-round ratio theirs / ours, the CPU time per image and sweep of
each, the max |z_ours - z_theirs| (raw units) and the relative difference; merges the results into
docs/benchmarks/peers.json (one key per dtype and batch size) and writes a summary table (``--md``).

    .venv/bin/python benchmarks/peers_projected_sinkhorn.py [--n 20 100] [--dtype float32] [--threads 1]
        [--repeats 5] [--md docs/benchmarks/peers.md]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.ot.cost import LocalCost
from sinkhorn_attacks.projections.sinkhorn import sinkhorn_project

LAM, EPS, ITERS, KERNEL, P, STEP = 1000.0, 0.7, 400, 7, 2, 0.1


def _import_peer():
    import site

    roots = site.getsitepackages() + [site.getusersitepackages()]
    for r in roots:
        hits = glob.glob(os.path.join(r, "projected_sinkhorn"))
        if hits:
            sys.path.insert(0, hits[0])  # its `from lambertw import` needs the package folder on sys.path
            import projected_sinkhorn as ps  # type: ignore[import-not-found]

            return ps
    raise SystemExit("projected-sinkhorn==0.2 is not installed (pip install --no-deps projected-sinkhorn==0.2)")


def _cpu(fn):
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def compare(ps, n: int, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """Whole calls of theirs and ours on ``n`` images, interleaved; see the module docstring."""
    x = load_dataset("mnist", "test", limit=n).images.to(dtype)
    g = torch.Generator().manual_seed(0)
    w = x + STEP * torch.randn(x.shape, generator=g).sign().to(dtype)
    mass = x.flatten(1).sum(1).reshape(-1, 1, 1, 1)
    C = ps.wasserstein_cost(x, p=P, kernel_size=KERNEL)
    cost = LocalCost(KERNEL, float(P))
    log = io.StringIO()

    def theirs():
        with torch.no_grad(), contextlib.redirect_stdout(log):  # verbose: their loop prints its last iteration
            return ps.projected_sinkhorn(x / mass, w / mass, C, EPS, LAM, maxiters=ITERS, verbose=True) * mass

    def ours():
        return sinkhorn_project(x, w, cost, EPS, LAM, max_iter=ITERS)

    theirs(), ours()  # untimed: one-time costs of the process (allocator, library set-up) out of the rounds
    t_theirs, t_ours = [], []
    for _ in range(repeats):
        t, zt = _cpu(theirs)
        t_theirs.append(t)
        t, r = _cpu(ours)
        t_ours.append(t)
    their_iters = [int(m) for m in re.findall(r"terminate at iteration (\d+)", log.getvalue())]
    sweeps_theirs = their_iters[-1] if their_iters else None  # batch-wide: all images run this many
    ratios = [a / b for a, b in zip(t_theirs, t_ours)]
    med_theirs, med_ours = statistics.median(t_theirs), statistics.median(t_ours)
    ok = torch.isfinite(zt)
    diff = (r.z - zt).abs()
    sweeps_ours = float(r.iterations.double().sum())
    return {
        "peer": "projected-sinkhorn==0.2 (Wong et al.)",
        "n_images": n,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "settings": {
            "p": P,
            "kernel_size": KERNEL,
            "lam": LAM,
            "eps": EPS,
            "sinkhorn_iters": ITERS,
            "step": "sign 0.1",
        },
        "repeats": repeats,
        "theirs_finite": bool(ok.all()),
        "theirs_nonfinite_images": int((~ok).flatten(1).any(1).sum()),
        "max_abs_diff": float(diff[ok].max()) if ok.any() else None,
        "max_rel_diff": float((diff[ok] / zt[ok].abs().max()).max()) if ok.any() else None,
        "ours_sweeps": int(r.iterations.max()),
        "ours_sweeps_mean": sweeps_ours / n,
        "theirs_iterations": sweeps_theirs,
        "ours_transport_max": float(r.transport.max()),
        "cpu_theirs_s": med_theirs,
        "cpu_ours_s": med_ours,
        "cpu_theirs_all_s": t_theirs,
        "cpu_ours_all_s": t_ours,
        "speed_ratio_theirs_over_ours": statistics.median(ratios),
        "speed_ratio_range": [min(ratios), max(ratios)],
        "cpu_per_image_sweep_theirs_us": (1e6 * med_theirs / (n * sweeps_theirs)) if sweeps_theirs else None,
        "cpu_per_image_sweep_ours_us": 1e6 * med_ours / sweeps_ours,
        "load_avg": os.getloadavg()[0],
    }


def _markdown(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "# Wong's projection against projected-sinkhorn 0.2",
        "",
        f"{machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} thread). `benchmarks/peers_projected_sinkhorn.py`: MNIST test images, "
        "Wong's settings (7x7 window, p = 2, lam 1000, eps 0.7, at most 400 sweeps), one projection of a "
        "sign step of 0.1; process CPU time of one whole call (checks, set-up, sweeps, result), after one "
        "untimed call of each, in rounds of one call each in the same process; ratio = median over rounds "
        "(times: medians). Load: the machine's 1-minute load average after the rounds (2 cores shared with "
        "other jobs; CPU time does not count their time, but both codes slow down under load).",
        "",
        "| images | dtype | rounds | theirs (CPU s) | ours (CPU s) | theirs / ours (range) | sweeps "
        "| per image and sweep, theirs / ours (us) | max abs dz | load |",
        "|---:|---|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for r in results.values():
        per = r["cpu_per_image_sweep_theirs_us"]
        lines.append(
            f"| {r['n_images']} | {r['dtype']} | {r['repeats']} | {r['cpu_theirs_s']:.3f} | {r['cpu_ours_s']:.3f} | "
            f"**{r['speed_ratio_theirs_over_ours']:.1f}x** ({r['speed_ratio_range'][0]:.1f}-"
            f"{r['speed_ratio_range'][1]:.1f}) | {r['ours_sweeps']} | "
            f"{per:.0f} / {r['cpu_per_image_sweep_ours_us']:.0f} | {r['max_abs_diff']:.1e} | "
            f"{r.get('load_avg', float('nan')):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="docs/benchmarks/peers.json")
    ap.add_argument("--md", default=None, help="also write a summary table of every entry of --out here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ps = _import_peer()
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_start": list(os.getloadavg()),
    }
    out = Path(args.out)
    prev = json.loads(out.read_text()) if out.exists() else {}
    for n in args.n:
        res = compare(ps, n, getattr(torch, args.dtype), args.repeats)
        print(json.dumps(res, indent=2))
        prev[f"projected_sinkhorn_{args.dtype}_n{n}"] = res
    machine["load_avg_end"] = list(os.getloadavg())
    prev["machine"] = machine
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prev, indent=2) + "\n")
    if args.md:
        entries = {k: v for k, v in prev.items() if k.startswith("projected_sinkhorn_")}
        Path(args.md).write_text(_markdown(entries, machine))


if __name__ == "__main__":
    main()
