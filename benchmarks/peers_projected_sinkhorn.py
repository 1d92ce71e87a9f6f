"""Side by side: our Wong projection vs Wong's PyPI package ``projected-sinkhorn==0.2``.

MNIST test images (the data folder in ``SINKHORN_ATTACKS_DATA``, as everywhere else), Wong's MNIST
settings (p=2, 7x7, lam=1000, eps=0.7, 400 Sinkhorn iterations), one projection of an l_inf sign step
(``w = x + 0.1 sign(noise)``, fixed seed, standing in for the gradient sign). Reports the max |z_ours -
z_theirs| (raw units), the relative tolerance and the speed ratio; writes docs/benchmarks/peers.json.

    .venv/bin/python benchmarks/peers_projected_sinkhorn.py [--n 100] [--dtype float32] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.ot.cost import LocalCost
from sinkhorn_attacks.projections.sinkhorn import sinkhorn_project


def _import_peer():
    import site

    roots = site.getsitepackages() + [site.getusersitepackages()]
    for r in roots:
        hits = glob.glob(os.path.join(r, "projected_sinkhorn"))
        if hits:
            sys.path.insert(0, hits[0])  # its `from lambertw import` needs the package folder on sys.path
            import projected_sinkhorn as ps  # type: ignore[import-not-found]

            return ps
    raise SystemExit("projected-sinkhorn==0.2 is not installed (pip install projected-sinkhorn==0.2)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/benchmarks/peers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dt = getattr(torch, args.dtype)
    ps = _import_peer()
    x = load_dataset("mnist", "test", limit=args.n).images.to(dt)
    g = torch.Generator().manual_seed(0)
    w = x + 0.1 * torch.randn(x.shape, generator=g).sign().to(dt)
    lam, eps, iters = 1000.0, 0.7, 400
    N = x.flatten(1).sum(1).reshape(-1, 1, 1, 1)
    C = ps.wasserstein_cost(x, p=2, kernel_size=7)
    t0 = time.process_time()  # CPU time of this process: independent of other load on the machine
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log):  # verbose: their loop prints its last iteration
        zt = ps.projected_sinkhorn(x / N, w / N, C, eps, lam, maxiters=iters, verbose=True) * N
    t_theirs = time.process_time() - t0
    their_iters = [int(m) for m in re.findall(r"terminate at iteration (\d+)", log.getvalue())]
    t0 = time.process_time()
    r = sinkhorn_project(x, w, LocalCost(7, 2.0), eps, lam, max_iter=iters)
    t_ours = time.process_time() - t0
    finite_theirs = bool(torch.isfinite(zt).all())
    diff = (r.z - zt).abs()
    ok = torch.isfinite(zt)
    res = {
        "peer": "projected-sinkhorn==0.2 (Wong et al.)",
        "n_images": args.n,
        "dtype": args.dtype,
        "threads": args.threads,
        "settings": {"p": 2, "kernel_size": 7, "lam": lam, "eps": eps, "sinkhorn_iters": iters, "step": "sign 0.1"},
        "theirs_finite": finite_theirs,
        "theirs_nonfinite_images": int((~ok).flatten(1).any(1).sum()),
        "max_abs_diff": float(diff[ok].max()) if ok.any() else None,
        "max_rel_diff": float((diff[ok] / zt[ok].abs().max()).max()) if ok.any() else None,
        "ours_sweeps": int(r.iterations.max()),
        "ours_sweeps_mean": float(r.iterations.double().mean()),
        "theirs_iterations": their_iters[-1] if their_iters else None,  # batch-wide: all images run this many
        "cpu_per_image_sweep_theirs_us": (1e6 * t_theirs / (args.n * their_iters[-1])) if their_iters else None,
        "cpu_per_image_sweep_ours_us": 1e6 * t_ours / float(r.iterations.double().sum()),
        "ours_transport_max": float(r.transport.max()),
        "cpu_theirs_s": t_theirs,
        "cpu_ours_s": t_ours,
        "speed_ratio_theirs_over_ours": t_theirs / t_ours,
    }
    print(json.dumps(res, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev[f"projected_sinkhorn_{args.dtype}_n{args.n}"] = res
    out.write_text(json.dumps(prev, indent=2) + "\n")


if __name__ == "__main__":
    main()
