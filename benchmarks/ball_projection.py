"""Time the yardstick ball's projection on the calls a real attack makes, against a sort-based row solver.

``project_ball`` (``projections/yardstick_ball.py``) projects every source row of a plan onto a simplex at
each trial multiplier; the library does this with Michelot's active-set iteration
(``coupling.simplex_threshold``), started from each row's threshold at the previous trial. This benchmark
records every ``project_ball`` call of ``yardstick-ddn-cifar`` on the first CIFAR-10 test images of
``sinkhorn-attacks-cifar10-clean``, then replays
them twice in the same process: as shipped, and with the row solver replaced by the sort-based one of Held
et al. / Duchi et al. (2008) (sort each row, cumulative sums, the last index where the threshold condition
holds). It reports process CPU seconds of both, their ratio, the largest difference between the two
projections and the CPU time of the whole attack per image. One torch thread.

    python -m benchmarks.ball_projection [--images 10] [--steps 30] [--out docs/benchmarks/ball_projection.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path

import torch

import sinkhorn_attacks.attacks.yardstick_pgd as yardstick_pgd
import sinkhorn_attacks.projections.yardstick_ball as yardstick_ball
from sinkhorn_attacks.attacks import from_preset
from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.zoo import load_model


def sorted_threshold(
    a: torch.Tensor, s: torch.Tensor, valid: torch.Tensor | None = None, lower: torch.Tensor | None = None
) -> torch.Tensor:
    """Baseline row solver (same contract as ``simplex_threshold``; ``lower`` unused): sort, cumulative sums."""
    a = torch.where(torch.isfinite(a) if valid is None else valid & torch.isfinite(a), a, torch.full_like(a, -1e300))
    u, _ = torch.sort(a, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - s[:, None]
    k = torch.arange(1, a.shape[-1] + 1, dtype=a.dtype, device=a.device)
    rho = ((u - css / k > 0) * k).amax(-1).clamp_min(1)
    return torch.gather(css, -1, rho.long()[:, None] - 1)[:, 0] / rho


def record_calls(images: int, steps: int) -> tuple[list[tuple], float]:
    """Every ``project_ball`` call of the attack (inputs copied) and the attack's CPU seconds."""
    calls: list[tuple] = []
    shipped = yardstick_pgd.project_ball

    def recording(p, x, cost, price, budget, **kw):
        point = yardstick_ball.BallPoint(p.pi.clone(), p.destroyed.clone(), p.created.clone())
        calls.append((point, x.clone(), cost, price, torch.as_tensor(budget).clone(), kw.get("mu0")))
        return shipped(p, x, cost, price, budget, **kw)

    with contextlib.redirect_stdout(io.StringIO()):
        model = load_model("sinkhorn-attacks-cifar10-clean").eval()
    data = load_dataset("cifar10", "test", limit=images, download=False)
    x, y = torch.as_tensor(data.images), torch.as_tensor(data.labels)
    attack = from_preset("yardstick-ddn-cifar", model, steps=steps)
    start = time.process_time()
    attack(x, y)
    attack_cpu = time.process_time() - start
    yardstick_pgd.project_ball = recording
    try:
        attack(x, y)
    finally:
        yardstick_pgd.project_ball = shipped
    return calls, attack_cpu


def replay(calls: list[tuple]) -> tuple[float, list]:
    start = time.process_time()
    out = [yardstick_ball.project_ball(p, x, c, pr, b, mu0=m) for p, x, c, pr, b, m in calls]
    return time.process_time() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10, help="CIFAR-10 test images (default 10)")
    ap.add_argument("--steps", type=int, default=30, help="attack steps (default 30)")
    ap.add_argument("--out", default="runs/benchmarks/ball_projection.json", help="JSON path (a .md beside it)")
    args = ap.parse_args()
    if os.environ.get("SINKHORN_ATTACKS_SMOKE"):
        args.images, args.steps = 2, 2
    torch.set_num_threads(1)
    calls, attack_cpu = record_calls(args.images, args.steps)
    replay(calls[:2])  # warm-up
    shipped_cpu, shipped_out = replay(calls)
    threshold = yardstick_ball.simplex_threshold
    yardstick_ball.simplex_threshold = sorted_threshold
    try:
        sorted_cpu, sorted_out = replay(calls)
    finally:
        yardstick_ball.simplex_threshold = threshold
    diff = max(
        max(float((a.pi - b.pi).abs().max()), float((a.created - b.created).abs().max()))
        for (a, _), (b, _) in zip(shipped_out, sorted_out)
    )
    result = {
        "model": "sinkhorn-attacks-cifar10-clean",
        "attack": "yardstick-ddn-cifar",
        "images": args.images,
        "steps": args.steps,
        "calls": len(calls),
        "rows_per_call": int((calls[0][1] > 0).sum()),
        "cpu_s_shipped": round(shipped_cpu, 3),
        "cpu_s_sort_baseline": round(sorted_cpu, 3),
        "ratio_shipped_over_baseline": round(shipped_cpu / sorted_cpu, 3),
        "max_abs_difference": diff,
        "attack_cpu_s_per_image": round(attack_cpu / args.images, 3),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"`project_ball` on the {result['calls']} calls of `{result['attack']}` ({args.steps} steps, "
        f"{args.images} CIFAR-10 test images, `{result['model']}`; {result['rows_per_call']} source rows of 26 "
        f"entries per call), process CPU seconds, one thread, same process:\n\n"
        "| row solver | CPU s | ratio |\n|---|---|---|\n"
        f"| active set (shipped) | {result['cpu_s_shipped']} | {result['ratio_shipped_over_baseline']} |\n"
        f"| sort-based (baseline) | {result['cpu_s_sort_baseline']} | 1 |\n\n"
        f"Largest difference between the two projections: {diff:.1e}. The whole attack: "
        f"{result['attack_cpu_s_per_image']} CPU s per image. Generated by `python -m benchmarks.ball_projection`.\n"
    )
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
