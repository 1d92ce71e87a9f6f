"""``python -m benchmarks [--quick] [--out FILE.json] [--only SECTION ...]``.

Writes FILE.json and FILE.md (rewritten after every section). Default output: ``runs/benchmarks/cpu_quick.json``
for ``--quick`` and ``runs/benchmarks/cpu.json`` otherwise, so the committed ``docs/benchmarks/*`` are only
replaced on purpose (``--out docs/benchmarks/cpu.json``). Data and checkpoints come from
``$SINKHORN_ATTACKS_DATA`` / ``$SINKHORN_ATTACKS_MODELS``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .suite import run, write

SECTIONS = ("bandwidth", "projections", "vs_pot", "attacks", "peers", "memory")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument(
        "--out", default=None, help="JSON path (default runs/benchmarks/cpu_quick.json or runs/benchmarks/cpu.json)"
    )
    ap.add_argument("--only", nargs="*", default=None, choices=SECTIONS, metavar="SECTION",
                    help="sections: " + " ".join(SECTIONS))  # fmt: skip
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a loaded machine OpenMP spin-waits make 2 threads ~10x slower)",
    )
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out or os.path.join("runs", "benchmarks", "cpu_quick.json" if args.quick else "cpu.json")
    if os.environ.get("SINKHORN_ATTACKS_SMOKE"):  # smoke run (tests of the documented commands): cheapest section
        args.quick, args.only = True, ["bandwidth"]
    try:
        res = run(args.quick, args.only, on_section=lambda r: write(r, out))
        js, md = write(res, out)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the sections finished so far are in {out}", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"python -m benchmarks: error: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
