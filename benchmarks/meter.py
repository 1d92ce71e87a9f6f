"""The exact meter at larger images: grid min-cost flow (current) vs the bipartite transport LP (previous).

Both solve the same windowed transport LP exactly; the baseline is the formulation the meter used before
(one variable per in-window pixel pair, HiGHS's default method, marginals left at ~1/n) and a
variant with the marginals scaled to mean 1. Inputs: CIFAR-10 test images resized to S x S (one channel),
perturbed by an l_inf sign step of 2/255 and clamped, the typical attack output. Times are process CPU
seconds on one thread, medians over the images; agreement is against the scaled bipartite LP.

    .venv/bin/python benchmarks/meter.py --sizes 32 64 128 --images 3 --out docs/benchmarks/meter.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sinkhorn_attacks.ot import LocalCost
from sinkhorn_attacks.ot.meter import _grid_flow, _window_arcs

from .suite import images


def bipartite_lp(p: np.ndarray, q: np.ndarray, cost: LocalCost, scaled: bool) -> float:
    """The previous formulation: ``min <P, C>`` over in-window pairs with both marginals as equalities."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, vstack

    h, w = p.shape
    n = h * w
    scale = n / p.sum() if scaled else 1.0
    src, dst, c, _ = _window_arcs(h, w, cost.offsets(h, w))
    cols = np.arange(src.size)
    rows = csr_matrix((np.ones(src.size), (src, cols)), shape=(n, src.size))
    colsum = csr_matrix((np.ones(src.size), (dst, cols)), shape=(n, src.size))
    res = linprog(c, A_eq=vstack([rows, colsum]), b_eq=np.concatenate([p.ravel(), q.ravel()]) * scale,
                  bounds=(0, None), method="highs")  # fmt: skip
    return math.inf if res.status == 2 else float(res.fun / scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--skip-baseline-above", type=int, default=128, help="no unscaled baseline above this size")
    ap.add_argument("--out", default="docs/benchmarks/meter.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cost = LocalCost(5, 1.0)
    rows = []
    for size in args.sizes:
        x = images((size, size, 3), args.images)[:, :1].double()
        g = torch.Generator().manual_seed(0)
        z = (x + (2 / 255) * torch.randn(x.shape, generator=g, dtype=x.dtype).sign()).clamp(0, 1)
        rec: dict[str, list[float]] = {k: [] for k in ("flow_s", "bip_scaled_s", "bip_s", "flow", "bip_scaled", "bip")}
        for xi, zi in zip(x[:, 0].numpy(), z[:, 0].numpy()):
            p, q = xi / xi.sum(), zi / zi.sum()
            for key, fn, extra in (
                ("flow", _grid_flow, ()),
                ("bip_scaled", bipartite_lp, (True,)),
                ("bip", bipartite_lp, (False,)),
            ):
                if key == "bip" and size > args.skip_baseline_above:
                    continue
                t = time.process_time()
                rec[key].append(fn(p, q, cost, *extra))
                rec[key + "_s"].append(time.process_time() - t)
        row = {"size": size, "pixels": size * size, "images": args.images}
        for key in ("flow", "bip_scaled", "bip"):
            if rec[key]:
                row[key + "_s"] = float(np.median(rec[key + "_s"]))
                row[key + "_rel_err"] = float(max(abs(a - b) / b for a, b in zip(rec[key], rec["bip_scaled"])))
        row["speedup_vs_bip_scaled"] = row["bip_scaled_s"] / row["flow_s"]
        if "bip_s" in row:
            row["speedup_vs_bip"] = row["bip_s"] / row["flow_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cost": cost.describe(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
