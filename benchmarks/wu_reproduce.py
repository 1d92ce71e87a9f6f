"""Wu et al. (2020) MNIST protocol on their released checkpoints: accuracy under attack at eps = 0.5.

Settings of the authors' ``bash/test_frank_wolfe.sh`` / ``bash/test_projected_gradient.sh`` MNIST blocks
(W1 5x5, eps 0.5, 300 iterations, batches of 100 test images in order; FW: gamma 1e-3, 50 dual halvings,
tol 1e-4, no post-processing; PGD: lr 0.1, 25 halvings, capacity post-processing). Accuracy is reported
both as the authors compute it (``utils.test``: the model on the *unclipped* image ``pi^T 1``) and on the
image clipped to [0, 1] (what the library's attack classes return and evaluate). ``--theirs N`` also runs
the authors' own loop (``benchmarks.peers_wu``) on the first N images of each model.

    PYTHONPATH=. .venv/bin/python -m benchmarks.wu_reproduce --attack fw --n 500 --theirs 100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sinkhorn_attacks.attacks.frank_wolfe import coupling_radii
from sinkhorn_attacks.data import load_dataset

from .peers_wu import COST, load_model, run_ours, run_theirs
from .wu_peer_shims import import_wu

MODELS = {  # name -> file in the authors' checkpoints/ (same bytes; sha256 prefix)
    "wong2019-mnist-vanilla": "mnist_vanilla.pth (f95e9ca5)",
    "wong2019-mnist-adv": "mnist_adv_training.pth (cb1b02fe)",
    "wu2020-mnist-fw-0.3": "mnist_adv_training_attack-frank_eps-0.3.pth (2142952b)",  # zoo: wu2020-mnist-adv-fw
}


def _acc(net, img, y) -> int:
    with torch.no_grad():
        return int((net(img).argmax(1) == y).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attack", default="fw", choices=["fw", "pgd"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--theirs", type=int, default=0, help="also run the authors' loop on the first N images")
    ap.add_argument("--models", nargs="*", default=list(MODELS)[::-1])
    ap.add_argument("--budget-min", type=float, default=60.0, help="stop starting batches after this many minutes")
    ap.add_argument("--peer-dir", default="/tmp/fast-wasserstein-adversarial")
    ap.add_argument("--models-dir", default=os.environ.get("SINKHORN_ATTACKS_MODELS", "/work/shared/models"))
    ap.add_argument("--out", default="docs/results/wu_reproduction.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mods = import_wu(args.peer_dir)
    out = Path(args.out)
    t_start = time.perf_counter()
    for name in args.models:
        net = load_model(name, args.peer_dir, args.models_dir)
        rec = dict(model=name, checkpoint=MODELS.get(name, name), attack=args.attack, n=0, clean=0,
                   ours_unclipped=0, ours_clipped=0, theirs_n=0, theirs_unclipped=0, theirs_clipped=0,
                   ours_s=0.0, theirs_s=0.0, clipped_mass_sum=0.0, nominal_sum=0.0, certified=0,
                   torch=torch.__version__)  # fmt: skip
        key = f"{args.attack}:{name}"
        for off in range(0, args.n, args.batch):
            if (time.perf_counter() - t_start) / 60 > args.budget_min:
                rec["stopped"] = f"wall-clock budget of {args.budget_min} min reached"
                break
            ds = load_dataset("mnist", "test", limit=min(args.batch, args.n - off), offset=off, download=False)
            x, y = ds.images.float(), ds.labels.long()
            adv, pi, post, dt = run_ours(args.attack, net, x, y)
            if post:
                adv, pi = post["adv"], post["pi"]
            r = coupling_radii(adv, pi, x, COST)
            rec["n"] += len(y)
            rec["clean"] += _acc(net, x, y)
            rec["ours_unclipped"] += _acc(net, adv, y)
            rec["ours_clipped"] += _acc(net, adv.clamp(0, 1), y)
            rec["ours_s"] += dt
            rec["clipped_mass_sum"] += float(r["clipped_mass"].sum())
            rec["nominal_sum"] += float(r["nominal_radius"].sum())
            rec["certified"] += int(torch.isfinite(r["certified_radius"]).sum())
            if off < args.theirs:
                adv_t, _, dt_t = run_theirs(mods, args.attack, net, x, y)
                rec["theirs_n"] += len(y)
                rec["theirs_unclipped"] += _acc(net, adv_t, y)
                rec["theirs_clipped"] += _acc(net, adv_t.clamp(0, 1), y)
                rec["theirs_s"] += dt_t
            runs = json.loads(out.read_text()) if out.exists() else {}  # other runs may have written meanwhile
            runs[key] = rec
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(runs, indent=1) + "\n")
            os.replace(tmp, out)
            print(f"{key} n={rec['n']} acc unclipped {rec['ours_unclipped']}/{rec['n']} clipped "
                  f"{rec['ours_clipped']} theirs {rec['theirs_unclipped']}/{rec['theirs_n']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
