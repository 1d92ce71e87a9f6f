"""Time Wu et al.'s coupling projections on the calls a real attack makes, against the layout they replaced.

``dual_projection`` (each step of ``wu2020-pgd``) and ``capacity_projection`` (the post-processing of both Wu
attacks, 5,000 dual-ascent iterations) project the rows of a local coupling onto simplices at many trial
multipliers. The library keeps the rows laid out one source pixel per row for the whole solve, starts each
row's threshold iteration from the previous call's threshold less a bound on how far the row fell, gathers the
column multiplier's windows once per bisection, and between re-bisections projects again only the rows that a
change of the column multiplier reaches (``coupling._RowForm``). The baseline, swapped in the same process,
keeps the coupling's own layout (B, C, K, H, W), moves the rows last and back at every trial multiplier, starts
every threshold cold and projects every row at every iteration, as the library did before (both let an
example whose capacity no longer binds leave the batch). This benchmark records the inputs of both
projections on the first CIFAR-10 test images of ``sinkhorn-attacks-cifar10-clean`` (``wu2020-pgd``'s first
steps; the coupling that ``wu2020-fw-cifar`` hands to its post-processing), replays them with both (in turn,
twice; each figure is the smaller of its two runs), and reports process CPU seconds, their ratio and the
largest difference between the two results. One torch thread.

    python -m benchmarks.wu_projection [--images 12] [--steps 10] [--iterations 1000] [--out ...json]
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

import sinkhorn_attacks.attacks.frank_wolfe as frank_wolfe
import sinkhorn_attacks.projections.coupling as coupling
from sinkhorn_attacks.attacks import from_preset
from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.ot.kernel import gather_window, offset_costs
from sinkhorn_attacks.zoo import load_model


class ChannelFirstForm:
    """Baseline with ``coupling._RowForm``'s interface: the coupling's own layout, cold thresholds."""

    def __init__(self, g: torch.Tensor, x: torch.Tensor, cost) -> None:
        self.g, self.x, self.cost = g, x, cost
        self.mask = coupling.window_mask(x, cost)
        self.c = offset_costs(cost, x.shape[-2], x.shape[-1], dtype=x.dtype, device=x.device)

    def project(self, mu: torch.Tensor, nu: torch.Tensor | None = None) -> torch.Tensor:
        a = self.g - mu.reshape(-1, 1, 1, 1, 1) * self.c
        if nu is not None:
            a = a - gather_window(nu, self.cost, fill=0.0)
        return coupling.simplex_project_rows(a, self.x, self.mask)

    def cost_of(self, p: torch.Tensor) -> torch.Tensor:
        return coupling.coupling_cost(p, self.cost)

    def column(self, p: torch.Tensor) -> torch.Tensor:
        return coupling.column_marginal(p, self.cost)

    def coupling(self, p: torch.Tensor) -> torch.Tensor:
        return p

    def select(self, keep: torch.Tensor) -> ChannelFirstForm:
        return ChannelFirstForm(self.g[keep], self.x[keep], self.cost)

    def refresh(self, p, col, nu, limit):
        return None  # no local update: the whole projection at every iteration


class _Stop(Exception):
    pass


def record(images: int, steps: int, fw_steps: int = 300) -> tuple[list[tuple], tuple]:
    """The inputs of ``wu2020-pgd``'s first ``steps`` dual projections (at the board's CIFAR-10 budget, eps
    0.005) and of ``wu2020-fw-cifar``'s capacity post-processing after ``fw_steps`` Frank-Wolfe steps, on the
    first ``images`` test images (each attack stopped once they are recorded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        model = load_model("sinkhorn-attacks-cifar10-clean").eval()
    data = load_dataset("cifar10", "test", limit=images, download=False)
    x, y = torch.as_tensor(data.images), torch.as_tensor(data.labels)
    duals: list[tuple] = []
    capacity: list[tuple] = []
    shipped_dual, shipped_capacity = frank_wolfe.dual_projection, frank_wolfe.capacity_projection

    def dual(g, x_, cost, budget, **kw):
        duals.append((g.clone(), x_.clone(), cost, budget.clone(), kw))
        if len(duals) >= steps:
            raise _Stop
        return shipped_dual(g, x_, cost, budget, **kw)

    def cap(g, x_, cost, budget, **kw):
        capacity.append((g.clone(), x_.clone(), cost, budget.clone(), kw))
        raise _Stop

    frank_wolfe.dual_projection, frank_wolfe.capacity_projection = dual, cap
    try:
        for name, kw in (("wu2020-pgd-mnist", {"eps": 0.005}), ("wu2020-fw-cifar", {"steps": fw_steps})):
            with contextlib.suppress(_Stop):
                from_preset(name, model, **kw)(x, y)
    finally:
        frank_wolfe.dual_projection, frank_wolfe.capacity_projection = shipped_dual, shipped_capacity
    return duals, capacity[0]


def replay(duals: list[tuple], capacity: tuple, iterations: int) -> tuple[float, float, list, torch.Tensor]:
    start = time.process_time()
    d_out = [coupling.dual_projection(g, x, c, b, **kw) for g, x, c, b, kw in duals]
    d_cpu = time.process_time() - start
    g, x, c, b, kw = capacity
    start = time.process_time()
    c_out = coupling.capacity_projection(g, x, c, b, **dict(kw, iterations=iterations))
    return d_cpu, time.process_time() - start, d_out, c_out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="CIFAR-10 test images (default 12)")
    ap.add_argument("--steps", type=int, default=10, help="recorded wu2020-pgd projections (default 10)")
    ap.add_argument("--iterations", type=int, default=1000, help="capacity dual-ascent iterations (default 1000)")
    ap.add_argument("--out", default="runs/benchmarks/wu_projection.json", help="JSON path (a .md beside it)")
    args = ap.parse_args()
    fw_steps = 300
    if os.environ.get("SINKHORN_ATTACKS_SMOKE"):
        args.images, args.steps, args.iterations, fw_steps = 2, 2, 3, 2
    torch.set_num_threads(1)
    duals, capacity = record(args.images, args.steps, fw_steps)
    form = coupling._RowForm
    runs: dict[str, list] = {"shipped": [], "baseline": []}
    for _ in range(2):  # in turn, twice: the machine's load drifts; each figure is the smaller of two
        for name, kind in (("shipped", form), ("baseline", ChannelFirstForm)):
            coupling._RowForm = kind
            try:
                runs[name].append(replay(duals, capacity, args.iterations))
            finally:
                coupling._RowForm = form
    shipped, baseline = (
        (min(r[0] for r in rs), min(r[1] for r in rs), rs[0][2], rs[0][3]) for rs in (runs["shipped"], runs["baseline"])
    )
    diff_dual = max(float((a - b).abs().max()) for a, b in zip(shipped[2], baseline[2]))
    diff_capacity = float((shipped[3] - baseline[3]).abs().max())
    result = {
        "model": "sinkhorn-attacks-cifar10-clean",
        "images": args.images,
        "rows_per_call": int(capacity[1].numel()),
        "dual_projection": {
            "attack": "wu2020-pgd-mnist",
            "calls": len(duals),
            "cpu_s_shipped": round(shipped[0], 3),
            "cpu_s_baseline": round(baseline[0], 3),
            "ratio": round(shipped[0] / baseline[0], 3),
            "max_abs_difference": diff_dual,
        },
        "capacity_projection": {
            "attack": "wu2020-fw-cifar",
            "iterations": args.iterations,
            "cpu_s_shipped": round(shipped[1], 3),
            "cpu_s_baseline": round(baseline[1], 3),
            "ratio": round(shipped[1] / baseline[1], 3),
            "max_abs_difference": diff_capacity,
        },
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    dp, cp = result["dual_projection"], result["capacity_projection"]
    md = (
        f"Wu et al.'s coupling projections on CIFAR-10 ({args.images} test images, `{result['model']}`, "
        f"{result['rows_per_call']} source rows of 25 entries per call), process CPU seconds, one thread, both "
        "layouts in the same process:\n\n"
        "| projection | calls | rows last, warm thresholds, local updates (shipped) | coupling layout, cold, "
        "every row at every iteration (baseline) | ratio "
        "| largest difference |\n|---|---|---|---|---|---|\n"
        f"| `dual_projection` (`{dp['attack']}` steps) | {dp['calls']} | {dp['cpu_s_shipped']} | "
        f"{dp['cpu_s_baseline']} | {dp['ratio']} | {diff_dual:.1e} |\n"
        f"| `capacity_projection` (`{cp['attack']}` post-processing, {cp['iterations']} iterations) | 1 | "
        f"{cp['cpu_s_shipped']} | {cp['cpu_s_baseline']} | {cp['ratio']} | {diff_capacity:.1e} |\n\n"
        "CPU s are the smaller of two runs in turn. Generated by `python -m benchmarks.wu_projection`.\n"
    )
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
