"""Combine the evaluation runs of the thesis's figures into docs/results/<dataset>/: results.json, the
figure and the tables (CIFAR-10: its Figures 4.6-4.10; Tiny ImageNet: 4.11-4.12).

Each model of the thesis_<dataset> config is evaluated into its own folder (so that models can run in
parallel as their training finishes):

    sinkhorn-attacks evaluate --config thesis_cifar10 --models sinkhorn-attacks-cifar10-<variant> \\
        --out runs/thesis_cifar10/<variant>

This script reads those folders (``results.json``, ``curves.json``) and ``docs/results/<dataset>/models.json``
(scripts/zoo_ship.py), and writes ``results.json`` (per model and attack: robust accuracy after every PGD
iteration, median yardstick radius of the returned images, worst case at fixed yardstick radii),
``acc_vs_iteration.png`` and the generated blocks of ``README.md`` (between the ``<!-- cards -->``,
``<!-- curves -->`` and ``<!-- claims -->`` markers and their ``<!-- end -->``).

    python scripts/thesis_results.py --dataset cifar10 [--runs runs/thesis_cifar10]
    python scripts/thesis_results.py --dataset tinyimagenet [--runs runs/thesis_tinyimagenet]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sinkhorn_attacks._util import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {  # variants, iterations shown in the table, title, what the clean accuracy was measured on
    "cifar10": (["clean", "uot", "uot-robust", "wong", "hu", "linf"], [0, 1, 2, 5, 10, 25, 50, 75], "CIFAR-10",
                "10,000 test images", "test"),
    "tinyimagenet": (["clean", "uot", "linf"], [0, 1, 2, 5, 10, 20, 30, 40], "Tiny ImageNet",
                     "10,000 validation images", "validation"),
}  # fmt: skip


def _num(v: object) -> float | None:
    return None if v in (None, "inf", "nan") else float(v)  # type: ignore[arg-type]


def collect(runs: Path, dataset: str) -> dict:
    out_dir = ROOT / "docs" / "results" / dataset
    cards = json.loads((out_dir / "models.json").read_text()) if (out_dir / "models.json").is_file() else {}
    out: dict = {"dataset": dataset, "models": {}, "attacks": None, "radii": None, "n_images": None}
    for v in DATASETS[dataset][0]:
        folder = runs / v
        if not (folder / "results.json").is_file():
            continue
        res = json.loads((folder / "results.json").read_text())
        curves = json.loads((folder / "curves.json").read_text())
        name = f"sinkhorn-attacks-{dataset}-{v}"
        out["attacks"] = out["attacks"] or [
            {"label": a["label"], "preset": a["preset"], "params": a["params"]} for a in res["config"]["attacks"]
        ]
        out["radii"] = curves["radii"]
        if out["n_images"] not in (None, res["n_examples"]):
            raise SystemExit(
                f"{folder}: {res['n_examples']} images, the models before it {out['n_images']}: evaluate every "
                "model on the same images (a larger --limit reuses finished units)"
            )
        out["n_images"] = res["n_examples"]
        per_attack = {}
        for label, s in res["summary"][name].items():
            per_attack[label] = {
                "n": s["n"],
                "clean_accuracy": s["clean_accuracy"],
                "robust_accuracy": s["robust_accuracy"],
                "median_yardstick_radius": _num(s.get("median_metered_radius")),
                "robust_vs_iteration": curves["iteration"].get(f"{name}|{label}"),
                "robust_at_yardstick_radii": curves["at_radii"].get(f"{name}|{label}"),
            }
        out["models"][v] = {"zoo_name": name, "card": cards.get(v), "attacks": per_attack}
    return out


def plot(data: dict, path: Path) -> None:
    labels = [a["label"] for a in data["attacks"]]
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 4.8), sharey=True)
    for ax, label in zip(axes, labels):
        for v, m in data["models"].items():
            a = m["attacks"].get(label)
            if not a or not a["robust_vs_iteration"]:
                continue
            r = a["median_yardstick_radius"]
            ax.plot(a["robust_vs_iteration"], label=f"{v} (yardstick {r:.3f})" if r is not None else v)
        ax.set_title(label)
        ax.set_xlabel("PGD iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=7,
            title="model (median yardstick radius)",
            title_fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=2,
            frameon=False,
        )  # below the axes, clear of the curves
    axes[0].set_ylabel("robust accuracy")
    _, _, title, _, split = DATASETS[data["dataset"]]
    fig.suptitle(f"{title}, first {data['n_images']} {split} images: robust accuracy vs PGD iteration", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cards_table(data: dict) -> str:
    radii = data["radii"]
    head = (f"| zoo name | training attack | clean acc. ({DATASETS[data['dataset']][3]}) | "
            + " | ".join(f"robust @ {r:g}" for r in radii) + " | CPU time | wall time |")  # fmt: skip
    lines = [head, "|---" * (5 + len(radii)) + "|"]
    for m in data["models"].values():
        c = m["card"] or {}
        wc = m["attacks"].get("worst-case", {}).get("robust_at_yardstick_radii") or []
        cpu = c.get("cpu_time_s")
        lines.append(
            f"| `{m['zoo_name']}` | {c.get('attack', '?')} {json.dumps(c.get('attack_overrides', {}))} | "
            f"{100 * c.get('clean_accuracy_full_test', float('nan')):.2f} % | "
            + " | ".join(f"{100 * x:.0f} %" for x in wc)
            + f" | {'-' if cpu is None else f'{cpu / 60:.0f} min'} | {c.get('wall_time_s', 0) / 60:.0f} min |"
        )
    return "\n".join(lines)


def curves_table(data: dict) -> str:
    show = DATASETS[data["dataset"]][1]
    lines = ["| model | attack | " + " | ".join(f"it {i}" for i in show) + " | median yardstick radius |",
             "|---|---|" + "---|" * (len(show) + 1)]  # fmt: skip
    for v, m in data["models"].items():
        for label, a in m["attacks"].items():
            curve = a["robust_vs_iteration"] or []
            cells = [f"{100 * curve[i]:.0f}" if i < len(curve) else "-" for i in show]
            r = a["median_yardstick_radius"]
            lines.append(f"| {v} | {label} | " + " | ".join(cells) + f" | {'-' if r is None else f'{r:.4f}'} |")
    return "\n".join(lines)


def _curve_mean(data: dict, variant: str, attack: str) -> float | None:
    """Mean robust accuracy over PGD iterations 1..T (the area under the thesis's curves, per iteration)."""
    a = data["models"].get(variant, {}).get("attacks", {}).get(attack)
    curve = (a or {}).get("robust_vs_iteration") or []
    return sum(curve[1:]) / (len(curve) - 1) if len(curve) > 1 else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def _beyond_noise(a: float, b: float, n: int) -> bool:
    """a - b beyond two standard errors of a difference of two accuracies on n images, sqrt(2 p (1 - p) / n)."""
    p = (a + b) / 2
    return a - b > 2 * (2 * p * (1 - p) / n) ** 0.5


def _verdict(ok: bool, strict: bool) -> str:
    return "yes" if ok and strict else ("not beyond noise" if ok else "no")


def tiny_claims_table(data: dict) -> str:
    """The thesis's Tiny ImageNet claims (its Figures 4.11-4.12), on the mean of the curve over iterations
    1..40, a difference counting only beyond two standard errors."""
    n = data["n_images"]
    lines = [
        f"Each claim is checked on the mean robust accuracy over PGD iterations 1-40 ({n} validation images); "
        "a difference counts beyond two standard errors.",
        "",
        "| thesis claim | measured | holds? |",
        "|---|---|---|",
    ]
    clean = data["models"].get("clean", {}).get("attacks", {}).get("uot")
    if clean and clean["robust_vs_iteration"]:
        c = clean["robust_vs_iteration"]
        lines.append(
            "| Fig. 4.11: the UOT attack drives the standard model's accuracy down as the iterations grow | "
            f"{_pct(c[0])} at iteration 0, {_pct(c[-1])} at {len(c) - 1} | {'yes' if c[-1] < 0.5 * c[0] else 'no'} |"
        )
    mine, ref = _curve_mean(data, "uot", "uot"), _curve_mean(data, "clean", "uot")
    if None not in (mine, ref):
        ok = mine > ref
        lines.append(
            "| Fig. 4.12: the UOT-trained model is more robust than the standard model under the UOT attack | "
            f"UOT-trained {_pct(mine)}, standard {_pct(ref)} | {_verdict(ok, ok and _beyond_noise(mine, ref, n))} |"
        )
    return "\n".join(lines)


def claims_table(data: dict) -> str:
    """The thesis's CIFAR-10 claims (its Figures 4.6-4.10), each checked on the mean of the curve over
    iterations 1..75; a difference counts only beyond two standard errors of a difference of two accuracies
    on the evaluated images (sqrt(2 p (1 - p) / n) with p their mean)."""
    n = data["n_images"]

    def ranking(attack: str) -> list[tuple[str, float]]:
        rows = [(v, _curve_mean(data, v, attack)) for v in data["models"]]
        return sorted(((v, r) for v, r in rows if r is not None), key=lambda t: -t[1])

    def listing(rank: list[tuple[str, float]]) -> str:
        return ", ".join(f"{v} {_pct(r)}" for v, r in rank)

    lines = [
        f"Each claim is checked on the mean robust accuracy over PGD iterations 1-75 ({n} test images); a "
        "difference counts beyond two standard errors.",
        "",
        "| thesis claim | measured (mean robust accuracy, iterations 1-75) | holds? |",
        "|---|---|---|",
    ]
    ours = {"uot", "uot-robust"}
    uot = ranking("uot")
    others = [r for v, r in uot if v not in ours]
    mine = [r for v, r in uot if v in ours]
    if others and len(mine) == 2:
        ok = min(mine) > max(others)
        lines.append(
            "| Fig. 4.9: under the UOT attack both UOT-trained models are more robust than every other model | "
            f"{listing(uot)} | {_verdict(ok, ok and _beyond_noise(min(mine), max(others), n))} |"
        )
    for attack in ("wong2019", "hu2020"):
        rank = ranking(attack)
        if len(rank) >= 3 and {"wong", "uot-robust"} <= {v for v, _ in rank}:
            top = [v for v, _ in rank]
            ok = top[:2] == ["wong", "uot-robust"]
            strict = ok and _beyond_noise(rank[0][1], rank[1][1], n) and _beyond_noise(rank[1][1], rank[2][1], n)
            lines.append(
                f"| Fig. 4.10: under the {attack} attack the Wong-trained model is the most robust and the UOT "
                f"'robust' model second | {listing(rank)} | {_verdict(ok, strict)} |"
            )
    cards = {v: (m["card"] or {}).get("clean_accuracy_full_test") for v, m in data["models"].items()}
    n_r, r_r = _curve_mean(data, "uot", "uot"), _curve_mean(data, "uot-robust", "uot")
    if None not in (n_r, r_r, cards.get("uot"), cards.get("uot-robust")):
        ok = r_r > n_r and cards["uot-robust"] < cards["uot"]
        lines.append(
            "| The 'robust' UOT model (steps 0.4) is more robust under the UOT attack than the 'normal' one (0.1), "
            f"with lower clean accuracy | robust {_pct(r_r)} vs normal {_pct(n_r)}; clean (10,000 images) "
            f"{100 * cards['uot-robust']:.1f} % vs {100 * cards['uot']:.1f} % | "
            f"{_verdict(ok, ok and _beyond_noise(r_r, n_r, n))} |"
        )
    clean = data["models"].get("clean", {}).get("attacks", {})
    curves = {a: c["robust_vs_iteration"] for a, c in clean.items() if a != "worst-case" and c["robust_vs_iteration"]}
    if curves:
        drops = ", ".join(f"{a}: {_pct(c[0])} to {_pct(c[-1])}" for a, c in curves.items())
        ok = all(c[-1] < 0.5 * c[0] for c in curves.values())
        lines.append(
            "| Figs. 4.6-4.8: each attack drives the standard model's accuracy down as the iterations grow | "
            f"{drops} (iteration 0 to 75) | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines)


def write_blocks(readme: Path, blocks: dict[str, str]) -> None:
    text = readme.read_text()
    for key, body in blocks.items():
        text, n = re.subn(rf"<!-- {key} -->.*?<!-- end -->", f"<!-- {key} -->\n{body}\n<!-- end -->", text, flags=re.S)
        if n != 1:
            raise SystemExit(f"{readme}: expected one <!-- {key} --> ... <!-- end --> block, found {n}")
    atomic_write(readme, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    ap.add_argument("--runs", help="folder of the per-model evaluation folders (default runs/thesis_<dataset>)")
    args = ap.parse_args()
    runs = Path(args.runs or f"runs/thesis_{args.dataset}")
    data = collect(runs, args.dataset)
    if not data["models"]:
        raise SystemExit(f"no finished evaluation folder under {runs}")
    out = ROOT / "docs" / "results" / args.dataset
    atomic_write(out / "results.json", json.dumps(data, indent=1) + "\n")
    plot(data, out / "acc_vs_iteration.png")
    claims = claims_table(data) if args.dataset == "cifar10" else tiny_claims_table(data)
    blocks = {"cards": cards_table(data), "curves": curves_table(data), "claims": claims}
    write_blocks(out / "README.md", blocks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
