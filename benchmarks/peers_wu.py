"""Per-example cross-check of our Wu et al. (2020) attacks against the authors' own attack loops.

The authors' ``FrankWolfe.perturb`` and ``ProjectedGradient.perturb`` (watml/fast-wasserstein-adversarial,
unmodified, imported from a checkout outside the project through :mod:`benchmarks.wu_peer_shims`; their
C++ extension is replaced by the test double :mod:`benchmarks.wu_sparse_tensor_double`) run on CPU next to
``sinkhorn_attacks.attacks.frank_wolfe.wu_frank_wolfe`` / ``wu_pgd`` on the same batch of MNIST test images
with the settings of their MNIST scripts (eps 0.5, 5x5 W1, 300 iterations; FW gamma 1e-3, 50 dual
halvings, tol 1e-4, no post-processing; PGD lr 0.1, 25 halvings, tol 1e-4, capacity post-processing with
5000 iterations). Compared per example: success (on the unclipped image as the authors evaluate, and on the
image clipped to [0, 1] as the library returns it), final image (max abs diff), coupling cost / ||x||_1,
clipped mass; for ours also the certified radius and the exact meter on the returned image.

    PYTHONPATH=. .venv/bin/python -m benchmarks.peers_wu --attack fw --n 20
    PYTHONPATH=. .venv/bin/python -m benchmarks.peers_wu --attack pgd --n 20

``--model wu2020-mnist-adv-fw`` (alias ``wu2020-mnist-fw-0.3``) loads the authors' Frank-Wolfe adversarially
trained checkpoint (eps 0.3) from the checkout; other names go through ``sinkhorn_attacks.zoo.load``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from sinkhorn_attacks import zoo
from sinkhorn_attacks.attacks.frank_wolfe import coupling_radii, wu_frank_wolfe, wu_pgd
from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.ot.cost import LocalCost
from sinkhorn_attacks.ot.meter import exact_ot
from sinkhorn_attacks.projections.coupling import capacity_projection, column_marginal, repair_capacity

from .wu_peer_shims import cuda_timer_shim, import_wu

COST = LocalCost(5, 1.0)
SETTINGS = {
    "fw": dict(eps=0.5, steps=300, gamma=1e-3, dual_max_iter=50, tol=1e-4, postprocess=False),
    "pgd": dict(eps=0.5, steps=300, lr=0.1, dual_max_iter=25, tol=1e-4, postprocess=True, post_iterations=5000),
}
SETTINGS["pgd-loop"] = {**SETTINGS["pgd"], "postprocess": False}  # the PGD loop alone, to locate differences


def load_model(name: str, peer_dir: str, models_dir: str) -> nn.Module:
    if name in ("wu2020-mnist-adv-fw", "wu2020-mnist-fw-0.3"):
        net = zoo.models.mnist_cnn()
        sd = torch.load(Path(peer_dir) / "checkpoints/mnist_adv_training_attack-frank_eps-0.3.pth", map_location="cpu")
        net.load_state_dict(sd["model_state_dict"])
    else:
        net = zoo.load(name, models_dir=models_dir, download=False)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def to_ours(pi_theirs: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Their (B, C, HW, k*k) coupling (window row-major) -> ours (B, C, K, H, W) (offsets of ``COST``)."""
    r = COST.kernel_size // 2
    perm = [(di + r) * COST.kernel_size + (dj + r) for di, dj, _ in COST.offsets(h, w)]
    b, c = pi_theirs.shape[:2]
    return pi_theirs.reshape(b, c, h, w, -1)[..., perm].permute(0, 1, 4, 2, 3).contiguous()


def run_theirs(mods, kind: str, net, x, y):
    """Their attack on the batch; returns (unclipped adv, final coupling in our layout, seconds)."""
    s = SETTINGS[kind]
    common = dict(predict=net, loss_fn=nn.CrossEntropyLoss(reduction="sum"), eps=s["eps"], kernel_size=5,
                  nb_iter=s["steps"], dual_max_iter=s["dual_max_iter"], grad_tol=s["tol"], int_tol=s["tol"],
                  device="cpu", postprocess=s["postprocess"], verbose=False)  # fmt: skip
    if kind == "fw":
        att = mods["frank_wolfe"].FrankWolfe(entrp_gamma=s["gamma"], **common)
    else:
        att = mods["projected_gradient"].ProjectedGradient(lr=s["lr"], **common)
    last = {}
    orig = att.coupling2adversarial

    def record(pi, X):  # the final call of perturb() is on the final coupling
        last["pi"] = pi.detach().clone()
        return orig(pi, X)

    att.coupling2adversarial = record
    t0 = time.perf_counter()
    with cuda_timer_shim():
        adv = att.perturb(x, y)
    dt = time.perf_counter() - t0
    return adv.detach(), to_ours(last["pi"], x.shape[-2], x.shape[-1]), dt


def run_ours(kind: str, net, x, y, check_zero: bool = False):
    """Ours; returns (unclipped adv before post-processing, coupling, post-processed (adv, pi) or None, s)."""
    s = SETTINGS[kind]
    t0 = time.perf_counter()
    if kind == "fw":
        adv, pi = wu_frank_wolfe(net, x, y, COST, s["eps"], s["steps"], gamma=s["gamma"],
                                 dual_max_iter=s["dual_max_iter"], tol=s["tol"], postprocess=False,
                                 check_zero=check_zero)  # fmt: skip
    else:
        adv, pi = wu_pgd(net, x, y, COST, s["eps"], s["steps"], lr=s["lr"], dual_max_iter=s["dual_max_iter"],
                         tol=s["tol"], postprocess=False, check_zero=check_zero)  # fmt: skip
    post = None
    if s["postprocess"]:  # the same two calls as wu_pgd(postprocess=True), kept apart to compare the stages
        budget = s["eps"] * x.flatten(1).sum(1)
        cap = capacity_projection(pi, x, COST, budget, iterations=s["post_iterations"], check_zero=check_zero)
        rep, moved = repair_capacity(cap, COST)
        post = dict(cap_adv=column_marginal(cap, COST), cap_pi=cap, adv=column_marginal(rep, COST).to(x.dtype),
                    pi=rep, moved=moved / x.flatten(1).sum(1).double())  # fmt: skip
    return adv.detach(), pi, post, time.perf_counter() - t0


def post_only(mods, net, x, y) -> dict:
    """Both capacity post-processings on the same coupling (ours after the PGD loop), their layout converted."""
    s = SETTINGS["pgd"]
    _, pi, _, _ = run_ours("pgd-loop", net, x, y)
    att = mods["projected_gradient"].ProjectedGradient(predict=net, loss_fn=None, eps=s["eps"], kernel_size=5,
                                                       lr=s["lr"], nb_iter=0, dual_max_iter=25, grad_tol=1e-4,
                                                       int_tol=1e-4, device="cpu", verbose=False)  # fmt: skip
    att.initialize_cost(x, inf=att.inf)
    h, w = x.shape[-2:]
    r = COST.kernel_size // 2
    perm = [(di + r) * COST.kernel_size + (dj + r) for di, dj, _ in COST.offsets(h, w)]
    theirs_in = torch.zeros(x.shape[0], x.shape[1], h * w, COST.kernel_size**2)
    theirs_in[..., perm] = pi.permute(0, 1, 3, 4, 2).reshape(x.shape[0], x.shape[1], h * w, -1)
    budget = s["eps"] * x.flatten(1).sum(1)
    t0 = time.perf_counter()
    out_t = mods["projection"].dual_capacity_constrained_projection(
        theirs_in, x, att.cost, eps=budget, transpose_idx=att.forward_idx, detranspose_idx=att.backward_idx,
        coupling2adversarial=att.coupling2adversarial)  # fmt: skip
    t_t = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_o = capacity_projection(pi, x, COST, budget, iterations=s["post_iterations"], check_zero=False)
    t_o = time.perf_counter() - t0
    a_t, a_o = att.coupling2adversarial(out_t, x), column_marginal(out_o, COST)
    d = (a_t - a_o).flatten(1).abs().amax(1)
    return {"max_abs_diff_image": _fl(d), "max_abs_diff_coupling": float((to_ours(out_t, h, w) - out_o).abs().max()),
            "above_one_mass_theirs": _fl((a_t - 1).clamp_min(0).flatten(1).sum(1) / x.flatten(1).sum(1)),
            "above_one_mass_ours": _fl((a_o - 1).clamp_min(0).flatten(1).sum(1) / x.flatten(1).sum(1)),
            "time_theirs_s": t_t, "time_ours_s": t_o, "n": len(y)}  # fmt: skip


def _pred(net, img):
    with torch.no_grad():
        return net(img).argmax(1)


def _fl(t) -> list[float]:
    return [float(v) if math.isfinite(float(v)) else (None if math.isnan(float(v)) else float(v)) for v in t]


def compare(kind: str, net, x, y, mods) -> dict:
    mass = x.flatten(1).sum(1).double()
    adv_t, pi_t, t_theirs = run_theirs(mods, kind, net, x, y)
    adv_o, pi_o, post, t_ours = run_ours(kind, net, x, y)
    adv_e, _, _, t_exact = run_ours(kind, net, x, y, check_zero=True) if kind == "fw" else (None, None, None, 0.0)
    if kind.startswith("pgd"):  # exact-projection variant of the PGD loop (mu = 0 tested), without post-processing
        s = SETTINGS[kind]
        t0 = time.perf_counter()
        adv_e, _ = wu_pgd(net, x, y, COST, s["eps"], s["steps"], lr=s["lr"], dual_max_iter=s["dual_max_iter"],
                          tol=s["tol"], postprocess=False, check_zero=True)  # fmt: skip
        t_exact = time.perf_counter() - t0
    rec: dict = {"settings": SETTINGS[kind], "n": len(y)}
    # the authors' final image (post-processed for PGD) vs ours at the same stage
    final_o = post["cap_adv"] if post else adv_o
    final_pi_o = post["cap_pi"] if post else pi_o
    if post:
        # the main loop of theirs is not observable separately; compare the post-processed outputs
        rec["note"] = "theirs = after their capacity post-processing; ours = after our capacity_projection"
    diff = (final_o - adv_t).flatten(1).abs().amax(1)
    succ_t_unclipped = _pred(net, adv_t) != y
    succ_t_clipped = _pred(net, adv_t.clamp(0, 1)) != y
    succ_o_unclipped = _pred(net, final_o) != y
    ret_o = post["adv"] if post else adv_o  # what the attack class returns (before the base class's clip)
    r_o = coupling_radii(ret_o, post["pi"] if post else pi_o, x, COST)
    r_t = coupling_radii(adv_t, pi_t, x, COST)
    succ_o_returned = _pred(net, ret_o.clamp(0, 1)) != y
    t0 = time.perf_counter()
    meter = exact_ot(x, ret_o.clamp(0, 1), COST).value
    t_meter = time.perf_counter() - t0
    cert = r_o["certified_radius"]
    ok_cert = torch.isnan(cert) | (meter <= cert * (1 + 1e-5) + 1e-7)
    rec.update(
        clean_correct=_fl((_pred(net, x) == y).float()),
        success_theirs_unclipped=_fl(succ_t_unclipped.float()),
        success_theirs_clipped=_fl(succ_t_clipped.float()),
        success_ours_unclipped=_fl(succ_o_unclipped.float()),
        success_ours_returned=_fl(succ_o_returned.float()),
        max_abs_diff_image=_fl(diff),
        cost_theirs=_fl(r_t["nominal_radius"]),
        cost_ours=_fl((pi_cost := coupling_radii(final_o, final_pi_o, x, COST))["nominal_radius"]),
        clipped_mass_theirs=_fl(r_t["clipped_mass"]),
        clipped_mass_ours=_fl(pi_cost["clipped_mass"]),
        nominal_radius_ours_returned=_fl(r_o["nominal_radius"]),
        certified_radius_ours_returned=_fl(cert),
        metered_ours_returned=_fl(meter),
        certified_holds=int(ok_cert.sum()),
        max_abs_diff_exact_variant=_fl((adv_e - (adv_o if not post else adv_o)).flatten(1).abs().amax(1)),
        success_exact_variant_unclipped=_fl((_pred(net, adv_e) != y).float()),
        time_theirs_s=t_theirs,
        time_ours_s=t_ours,
        time_ours_exact_variant_s=t_exact,
        time_meter_s=t_meter,
    )
    if kind in ("fw", "pgd-loop"):  # rounding sensitivity of their own code: the same attack one image at a time
        one = torch.cat([run_theirs(mods, kind, net, x[i : i + 1], y[i : i + 1])[0] for i in range(len(y))])
        d1 = (one - adv_t).flatten(1).abs().amax(1)
        rec["max_abs_diff_theirs_batch1_vs_batch"] = _fl(d1)
        rec["max_abs_diff_ours_vs_theirs_batch1"] = _fl((adv_o - one).flatten(1).abs().amax(1))
        rec["success_theirs_batch1_unclipped"] = _fl((_pred(net, one) != y).float())
    if post:
        rec["repaired_mass_ours"] = _fl(post["moved"])
        rec["max_abs_diff_repair"] = _fl((post["adv"] - post["cap_adv"]).flatten(1).abs().amax(1))
    n = len(y)
    rec["agree"] = {
        "success_unclipped": int((succ_t_unclipped == succ_o_unclipped).sum()),
        "success_clipped": int((succ_t_clipped == (_pred(net, final_o.clamp(0, 1)) != y)).sum()),
        "image_max_abs_diff_le_1e-4": int((diff <= 1e-4).sum()),
        "image_max_abs_diff_le_1e-2": int((diff <= 1e-2).sum()),
        "cost_rel_diff_le_1e-4": int(
            ((r_t["nominal_radius"] - pi_cost["nominal_radius"]).abs() <= 1e-4 * SETTINGS[kind]["eps"]).sum()
        ),
        "n": n,
    }
    rec["max"] = {
        "image_abs_diff": float(diff.max()),
        "cost_abs_diff": float((r_t["nominal_radius"] - pi_cost["nominal_radius"]).abs().max()),
        "clipped_mass_abs_diff": float((r_t["clipped_mass"] - pi_cost["clipped_mass"]).abs().max()),
    }
    del mass
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="wong2019-mnist-vanilla")
    ap.add_argument("--attack", default="fw", choices=["fw", "pgd", "pgd-loop", "post-only"])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--peer-dir", default="/tmp/fast-wasserstein-adversarial")
    ap.add_argument("--models-dir", default=os.environ.get("SINKHORN_ATTACKS_MODELS", "/work/shared/models"))
    ap.add_argument("--out", default="docs/results/wu_crosscheck.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mods = import_wu(args.peer_dir)
    ds = load_dataset("mnist", "test", limit=args.n, offset=args.offset, download=False)
    x, y = ds.images.float(), ds.labels.long()
    net = load_model(args.model, args.peer_dir, args.models_dir)
    rec = post_only(mods, net, x, y) if args.attack == "post-only" else compare(args.attack, net, x, y, mods)
    rec.update(model=args.model, indices=[args.offset, args.offset + args.n - 1], torch=torch.__version__)
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[f"{args.attack}:{args.model}:{args.offset}-{args.offset + args.n - 1}"] = rec
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=1) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: rec[k] for k in ("agree", "max", "certified_holds", "max_abs_diff_image") if k in rec}))


if __name__ == "__main__":
    main()
