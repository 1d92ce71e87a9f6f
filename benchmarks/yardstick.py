"""Time the yardstick ``sinkhorn_attacks.ot.measure`` on MNIST-, CIFAR- and 64x64x3-sized batches.

Inputs: test images from ``$SINKHORN_ATTACKS_DATA`` (MNIST 28x28, CIFAR-10 32x32x3, CIFAR-10 resized to
64x64x3) with two perturbations: an l_inf sign step (0.1 on MNIST, 2/255 on CIFAR, clamped to [0, 1]: the
typical attack output, with mass created on the background) and a local smear ``0.9 x + 0.1 roll(x, 1)``
(mass-preserving up to the border). Reports process CPU milliseconds per image (one thread, after one
warm-up call that pays the imports), the median value and the widest certified bracket
``(raw - raw_lower) / raw``. Not part of the tests.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.yardstick --images 16 4 2 [--out docs/benchmarks/yardstick.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sinkhorn_attacks.ot import Yardstick, measure


def load(kind: str, n: int) -> torch.Tensor:
    """``n`` test images ``(n, C, H, W)`` in [0, 1], float64."""
    root = Path(os.environ.get("SINKHORN_ATTACKS_DATA", "/work/shared/data"))
    if kind == "mnist":
        d = np.load(root / "mnist_test.npz", allow_pickle=False)
        return torch.tensor(d["x"][:n], dtype=torch.float64).div(255).unsqueeze(1)
    d = np.load(root / "cifar10_test.npz", allow_pickle=False)
    x = torch.tensor(d["x"][:n], dtype=torch.float64).div(255).permute(0, 3, 1, 2).contiguous()
    if kind == "cifar64":
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def perturb(x: torch.Tensor, how: str, step: float) -> torch.Tensor:
    if how == "linf":
        g = torch.Generator().manual_seed(0)
        return (x + step * torch.randn(x.shape, generator=g, dtype=x.dtype).sign()).clamp(0, 1)
    return 0.9 * x + 0.1 * torch.roll(x, 1, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs=3, default=[16, 4, 2], help="MNIST, CIFAR, 64x64x3 counts")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ys = Yardstick()
    rows = []
    for (kind, step), n in zip([("mnist", 0.1), ("cifar", 2 / 255), ("cifar64", 2 / 255)], args.images):
        x = load(kind, n)
        for how in ("linf", "smear"):
            z = perturb(x, how, step)
            measure(x[:1], z[:1], ys)  # warm-up: imports
            t = time.process_time()
            m = measure(x, z, ys)
            ms = 1e3 * (time.process_time() - t) / n
            row = {
                "images": kind,
                "shape": list(x.shape[1:]),
                "perturbation": how,
                "n": n,
                "ms_per_image": round(ms, 2),
                "median_value": float(m.value.median()),
                "max_bracket": float(((m.raw - m.raw_lower) / m.raw).max()),
                "yardstick": ys.to_dict(),
            }
            rows.append(row)
            print(f"{kind:8s} {str(tuple(x.shape[1:])):12s} {how:6s} n={n:3d}  {ms:9.1f} ms/image  "
                  f"median {row['median_value']:.4f}  bracket {row['max_bracket']:.1e}", flush=True)  # fmt: skip
    print(f"units: {ys.label}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
