"""Per-example cross-check of ``from_preset('hu2020-mnist')`` against Hu et al.'s own attack code.

Hu, Swaminathan, Salman, Yang (2020), https://github.com/edwardjhu/improved_wasserstein: their ``pgd.attack``
(l_inf-normalised gradient step scaled by the clean mass, the ``60/(H W C)`` cap, the box-constrained
projected Sinkhorn with warm-started duals, radius +0.01 every step from 0.01, 200 steps) is imported from a
checkout of that repository and run next to our preset on the same MNIST test images; the per-example radius
at which each image is first fooled is compared (``inf`` = never fooled; clean errors get Hu's initial radius
0.01 on both sides). Their repository also ships the radii of its own run on the whole test set for
``mnist_adv_training_wong.pth`` (``epsilons/*.txt``); ``--published`` compares ours with those too.

    git -C <mirror> archive HEAD pgd.py projected_sinkhorn | tar -x -C /tmp/hu_repo
    .venv/bin/python -m benchmarks.peers_hu_loop --peer-dir /tmp/hu_repo --model wong2019-mnist-vanilla \
        --indices 0-19
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sinkhorn_attacks import zoo
from sinkhorn_attacks._util import atomic_write
from sinkhorn_attacks.attacks.presets import from_preset
from sinkhorn_attacks.data import load_dataset

from .peers_wong_loop import _indices

HU_MNIST = dict(  # attack_mnist_baseline.py defaults (preset new_clamping, --norm grad)
    regularization=1000.0, p=1, alpha=0.06, norm="grad", ball="wasserstein", epsilon_iters=1,
    epsilon_factor=0.01, epsilon=0.01, maxiters=200, kernel_size=5, clamping=True, constrained_sinkhorn=True,
)  # fmt: skip


def their_radii(
    peer_dir: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int | None = None
) -> torch.Tensor:
    """Run Hu's ``pgd.attack`` on CPU (in ``x``'s dtype) in batches of ``batch`` images (default: all at once)
    and return its per-example radius (``inf`` = not fooled). Their loop couples the examples of a batch (the
    Newton backtracking stops on the batch's smallest step, the projection's extra sweeps run for the whole
    batch), so the radius of an image depends on its batch; ``batch=1`` removes that coupling."""
    sys.path.insert(0, peer_dir)
    import pgd  # type: ignore[import-not-found]

    step = batch or x.shape[0]
    parts = [pgd.attack(x[i : i + step].clone(), y[i : i + step], net, **HU_MNIST)[2] for i in range(0, len(x), step)]
    return torch.cat(parts).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="wong2019-mnist-vanilla")
    ap.add_argument("--indices", default="0-19", help="MNIST test indices, e.g. 0-19 or 23,25,28")
    ap.add_argument("--peer-dir", default=None, help="checkout of edwardjhu/improved_wasserstein (pgd.py)")
    ap.add_argument("--published", default=None, help="Hu's epsilons/*.txt to compare with (adv model)")
    ap.add_argument("--self-check", action="store_true", help="also run the authors' code in float64")
    ap.add_argument("--one-by-one", action="store_true", help="also run the authors' code one image at a time")
    ap.add_argument("--models-dir", default=os.environ.get("SINKHORN_ATTACKS_MODELS"))
    ap.add_argument("--out", default="docs/results/hu_crosscheck.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    idx = _indices(args.indices)
    d = load_dataset("mnist", "test")
    x, y = d.images[idx], d.labels[idx]
    net = zoo.load(args.model, models_dir=args.models_dir, download=False)
    rec: dict = {"model": args.model, "indices": idx, "n": len(idx), "settings": HU_MNIST}
    t0 = time.process_time()
    res = from_preset("hu2020-mnist", net, meter_cost=None)(x, y)
    rec["time_ours_cpu_s"] = time.process_time() - t0
    ours = torch.where(res.success, res.radius.float(), torch.full_like(res.radius.float(), math.inf))
    ours = torch.where(res.clean_correct, ours, torch.full_like(ours, 0.01))  # Hu: clean errors get eps0
    rec["ours"] = [float(v) for v in ours]

    def compare(theirs: torch.Tensor, mine: torch.Tensor = ours) -> dict:
        both_inf = torch.isinf(theirs) & torch.isinf(mine)
        diff = torch.where(both_inf, torch.zeros_like(mine), (mine - theirs).abs())
        finite = torch.isfinite(mine - theirs)
        return {
            "theirs": [float(v) for v in theirs],
            "identical": int((diff <= 1e-4).sum()),
            "within_one_step": int((diff <= 0.01 + 1e-4).sum()),
            "mean_difference": float((mine - theirs)[finite].mean()) if finite.any() else 0.0,
        }

    if args.peer_dir:
        t0 = time.process_time()
        theirs = their_radii(args.peer_dir, net, x, y)
        rec["time_theirs_cpu_s"] = time.process_time() - t0
        rec["authors_code"] = compare(theirs)
        if args.self_check:  # the reference against itself: float64 instead of float32, same images
            t0 = time.process_time()
            theirs64 = their_radii(args.peer_dir, copy.deepcopy(net).double(), x.double(), y)
            rec["time_theirs64_cpu_s"] = time.process_time() - t0
            rec["authors_code_float64_vs_float32"] = compare(theirs64, theirs)
        if args.one_by_one:  # without their batch coupling
            t0 = time.process_time()
            single = their_radii(args.peer_dir, net, x, y, batch=1)
            rec["time_theirs_single_cpu_s"] = time.process_time() - t0
            rec["authors_code_one_image_at_a_time"] = compare(single)
            rec["authors_code_batch_vs_one_at_a_time"] = compare(theirs, single)
    if args.published:
        pub = np.loadtxt(args.published, skiprows=1)
        rec["published"] = compare(torch.tensor(pub[idx, 1], dtype=torch.float32))
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[f"{args.model}:{args.indices}"] = rec
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(runs, indent=1) + "\n")
    keys = ("authors_code", "authors_code_float64_vs_float32", "authors_code_one_image_at_a_time",
            "authors_code_batch_vs_one_at_a_time", "published")  # fmt: skip
    for key in keys:
        if key in rec:
            r = rec[key]
            print(f"{args.model} [{args.indices}] vs {key}: {r['identical']}/{len(idx)} identical, "
                  f"{r['within_one_step']}/{len(idx)} within one step (0.01)")  # fmt: skip


if __name__ == "__main__":
    main()
