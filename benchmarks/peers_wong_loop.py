"""Per-example cross-check of ``from_preset('wong2019-mnist')`` against Wong et al.'s own projection.

The attack loop of Wong's ``pgd.py`` (github.com/locuslab/projected_sinkhorn; sign step 0.1 on the
unfooled examples, projection of the whole batch with the PyPI package ``projected-sinkhorn==0.2`` on
mass-normalised images, clamp to [0, 1], batch-level bookkeeping of the best error rate, radius x1.1 every
10 iterations for the unfooled, 200 iterations) is run next to our preset on the same MNIST test images, and
the per-example radius at which each image is first fooled is compared (``inf`` = never fooled).

    .venv/bin/python benchmarks/peers_wong_loop.py --model wong2019-mnist-vanilla --indices 0-15
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sinkhorn_attacks import zoo
from sinkhorn_attacks._util import atomic_write
from sinkhorn_attacks.attacks.presets import from_preset
from sinkhorn_attacks.data import load_dataset

from .peers_projected_sinkhorn import _import_peer


def _indices(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def peer_loop(ps, net, x: torch.Tensor, y: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """Wong's minimal-radius search with the peer's projection; returns the per-example radius."""
    b = x.shape[0]
    eps = torch.full((b,), 0.7)
    cost = ps.wasserstein_cost(x, p=2, kernel_size=7)
    mass = x.flatten(1).sum(1).reshape(b, 1, 1, 1)
    adv = x.clone()
    with torch.no_grad():
        err = net(x).argmax(1) != y
    err_best, eps_best = err.clone(), eps.clone()
    for t in range(1, steps + 1):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(net(adv), y), adv)
        with torch.no_grad():
            adv = adv.detach()
            adv[~err] += 0.1 * torch.sign(grad[~err])
            proj = ps.projected_sinkhorn(x / mass, adv / mass, cost, eps, 1000.0, maxiters=400) * mass
            adv[~err] = proj[~err]
            adv = adv.clamp(0, 1)
            err = net(adv).argmax(1) != y
            if int(err.sum()) > int(err_best.sum()):
                err_best, eps_best = err.clone(), eps.clone()
            if bool(err.all()):
                break
            if t % 10 == 0:
                eps[~err] *= 1.1
    eps_best[~err] = math.inf
    return eps_best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="wong2019-mnist-vanilla")
    ap.add_argument("--indices", default="0-15", help="MNIST test indices, e.g. 0-15 or 23,25,28")
    ap.add_argument("--models-dir", default=os.environ.get("SINKHORN_ATTACKS_MODELS", "/work/shared/models"))
    ap.add_argument("--out", default="docs/results/wong_loop_crosscheck.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ps = _import_peer()
    idx = _indices(args.indices)
    data = load_dataset("mnist", "test")
    x, y = data.images[idx], data.labels[idx]
    net = zoo.load(args.model, models_dir=args.models_dir, download=False)
    t0 = time.perf_counter()
    theirs = peer_loop(ps, net, x, y)
    t_theirs = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = from_preset("wong2019-mnist", net, yardstick=None)(x, y)
    t_ours = time.perf_counter() - t0
    ours = torch.where(res.success, res.radius.float(), torch.full_like(res.radius.float(), math.inf))
    ours = torch.where(res.clean_correct, ours, torch.full_like(ours, 0.7))  # clean errors: the initial radius
    same = (ours == theirs) | ((ours - theirs).abs() <= 1e-4 * theirs.abs())
    rec = {
        "model": args.model,
        "indices": idx,
        "theirs": [float(v) for v in theirs],
        "ours": [float(v) for v in ours],
        "identical": int(same.sum()),
        "n": len(idx),
        "time_theirs_s": t_theirs,
        "time_ours_s": t_ours,
    }
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[f"{args.model}:{args.indices}"] = rec
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(runs, indent=1) + "\n")
    print(
        f"{args.model} [{args.indices}]: {rec['identical']}/{rec['n']} radii identical; "
        f"theirs {t_theirs:.0f} s, ours {t_ours:.0f} s"
    )


if __name__ == "__main__":
    main()
