"""``python -m benchmarks [--quick] [--out docs/benchmarks/cpu.json] [--only SECTION ...]``."""

from __future__ import annotations

import argparse

import torch

from .suite import run, write


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (< 3 minutes)")
    ap.add_argument("--out", default=None, help="JSON path (default docs/benchmarks/cpu[_quick].json)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="sections: bandwidth projections vs_pot attacks peers memory")  # fmt: skip
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a loaded machine OpenMP spin-waits make 2 threads ~10x slower)",
    )
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out or ("docs/benchmarks/cpu_quick.json" if args.quick else "docs/benchmarks/cpu.json")
    res = run(args.quick, args.only, on_section=lambda r: write(r, out))
    js, md = write(res, out)
    print(md.read_text())
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
