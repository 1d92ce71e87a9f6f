"""CPU cost of one CIFAR-10 training step per architecture, as a ratio to ResNet-18 (the published models').

    python -m benchmarks.cifar10_archs [--batch 128] [--repeats 3] [--out docs/benchmarks/cifar10_archs.json]

One torch thread; each architecture runs ``repeats`` SGD steps (forward, backward, update) on a random batch
of 32 x 32 RGB images after one warm-up step, timed in process CPU seconds; the estimate per epoch is for
the 20,000 training images of the data folder. All architectures run in the same process, so the ratios
compare like with like on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from sinkhorn_attacks._util import atomic_write
from sinkhorn_attacks.zoo import build

ARCHS = {
    "resnet18_cifar": {},
    "resnet9_cifar width 32": {"width": 32},
    "resnet9_cifar width 24": {"width": 24},
    "resnet9_cifar width 16": {"width": 16},
}


def step_seconds(name: str, kwargs: dict, batch: int, repeats: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build(name.split()[0], **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for i in range(repeats + 1):
        t0 = time.process_time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.process_time() - t0)
    return min(times), sum(p.numel() for p in model.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/benchmarks/cifar10_archs.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for name, kw in ARCHS.items():
        s, params = step_seconds(name, kw, args.batch, args.repeats)
        rows[name] = {"parameters": params, "cpu_s_per_step": s, "cpu_s_per_epoch_20k": s / args.batch * 20_000}
    base = rows["resnet18_cifar"]["cpu_s_per_step"]
    for name, r in rows.items():
        r["ratio_to_resnet18"] = r["cpu_s_per_step"] / base
        print(f"{name:24s} {r['parameters']:>10,d} params  {r['cpu_s_per_epoch_20k']:7.0f} CPU s / epoch  "
              f"{r['ratio_to_resnet18']:.3f} x ResNet-18")  # fmt: skip
    atomic_write(args.out, json.dumps({"batch": args.batch, "threads": 1, "archs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
