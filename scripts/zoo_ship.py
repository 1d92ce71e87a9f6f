"""Ship the models trained by the bundled recipes: weights into the package, model cards as JSON.

For every finished run folder ``runs/<dataset>-<variant>/`` (``model.pt``, ``config.json``, ``history.json``)
this writes the weights in float16 to ``src/sinkhorn_attacks/zoo/weights/sinkhorn_attacks_<dataset>_<variant>.pt``
(CIFAR-10: 1.9 MB; Tiny ImageNet: 1.3 MB, the trained top of EfficientNet-Lite0 only; loading casts them back
to float32), measures the clean accuracy of exactly those weights on the full test split (CIFAR-10: 10,000
test images; Tiny ImageNet: the 10,000 validation images), and records the card (recipe, seed, epochs,
training images, wall and CPU time, sha256 and size of the shipped file, clean accuracy) in
``zoo/weights/<dataset>.json``, which the zoo's registry reads (the sha256 pins the file), and in
``docs/results/<dataset>/models.json``.

    python scripts/zoo_ship.py --dataset cifar10 [--runs runs] [--variants clean uot ...]
    python scripts/zoo_ship.py --dataset tinyimagenet --variants clean uot linf
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import torch

from sinkhorn_attacks._util import atomic_write
from sinkhorn_attacks.data import load_dataset
from sinkhorn_attacks.zoo import build

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "sinkhorn_attacks" / "zoo" / "weights"
TRAINED = {"clean": "standard training", "uot": "fine-tuned against the UOT attack (thesis 'normal': steps 0.1)",
           "uot-robust": "fine-tuned against the UOT attack (thesis 'robust': steps 0.4)",
           "wong": "fine-tuned against Wong et al.'s projected Sinkhorn attack",
           "hu": "fine-tuned against Hu et al.'s improved Wasserstein attack",
           "linf": "fine-tuned against l_inf PGD (8/255)"}  # fmt: skip
VARIANTS = ("clean", "uot", "uot-robust", "wong", "hu", "linf")
CHECK_IMAGES = 500
LOADER_NAME = {"cifar10": "cifar10", "tinyimagenet": "tiny-imagenet"}


def _trained(ds: str, variant: str, cfg: dict) -> str:
    if variant == "linf":
        return f"fine-tuned against l_inf PGD ({255 * cfg['attack_overrides']['radius']:.0f}/255)"
    if ds == "tinyimagenet" and variant == "clean":
        return "top fine-tuned on the clean training images"
    return TRAINED[variant]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(LOADER_NAME), default="cifar10")
    ap.add_argument("--runs", default="runs", help="folder holding the <dataset>-<variant> run folders")
    ap.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--out", help="the cards' JSON (default docs/results/<dataset>/models.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = args.dataset
    test = load_dataset(LOADER_NAME[ds], "test")
    out_path = Path(args.out or ROOT / "docs" / "results" / ds / "models.json")
    manifest = WEIGHTS / f"{ds}.json"
    lock = open(WEIGHTS / f".{ds}.lock", "w")  # noqa: SIM115 - two training lanes may export at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    cards = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for variant in args.variants:
        run = Path(args.runs) / f"{ds}-{variant}"
        if not (run / "model.pt").is_file():
            print(f"{variant}: {run}/model.pt missing, skipped", file=sys.stderr)
            continue
        cfg = json.loads((run / "config.json").read_text())
        history = json.loads((run / "history.json").read_text())
        sd = torch.load(run / "model.pt", weights_only=True)
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        buf = io.BytesIO()
        torch.save(half, buf)
        data = buf.getvalue()
        name = f"sinkhorn_attacks_{ds}_{variant.replace('-', '_')}.pt"
        atomic_write(WEIGHTS / name, data)
        net = build(cfg["arch"], **cfg["arch_kwargs"])
        net.load_state_dict(torch.load(WEIGHTS / name, weights_only=True))  # the trained part (strict)
        t0 = time.process_time()
        acc = accuracy(net, test.images, test.labels, batch=100)
        check = accuracy(net, test.images[:CHECK_IMAGES], test.labels[:CHECK_IMAGES], batch=100)
        cards[variant] = {
            "zoo_name": f"sinkhorn-attacks-{ds}-{variant}",
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "recipe": f"{ds}_{variant.replace('-', '_')}",
            "command": f"sinkhorn-attacks train --config {ds}_{variant.replace('-', '_')}",
            "arch": cfg["arch"],
            "arch_kwargs": cfg["arch_kwargs"],
            "parameters": sum(v.numel() for k, v in sd.items() if v.is_floating_point() and "running" not in k),
            "parameters_total": sum(p.numel() for p in net.parameters()),
            "seed": cfg["seed"],
            "epochs": cfg["epochs"],
            "train_images": history[-1]["steps"] * cfg["batch_size"],
            "attack": cfg["attack"],
            "attack_overrides": cfg["attack_overrides"],
            "wall_time_s": round(sum(r["epoch_time_s"] for r in history), 1),
            "cpu_time_s": (
                round(sum(r["epoch_cpu_time_s"] for r in history), 1)
                if all("epoch_cpu_time_s" in r for r in history)
                else None
            ),
            "threads": 1,
            "trained": _trained(ds, variant, cfg),
            "clean_accuracy_full_test": acc,
            "test_images": len(test),
            "check_images": CHECK_IMAGES,  # the first ones: a quick reproduction check (tests)
            "clean_accuracy_check_images": check,
        }
        print(f"{variant}: clean {acc:.4f} on {len(test)} ({time.process_time() - t0:.0f} CPU s), "
              f"sha256 {cards[variant]['sha256']} size {len(data)}")  # fmt: skip
    atomic_write(out_path, json.dumps(cards, indent=1, sort_keys=True) + "\n")
    atomic_write(manifest, json.dumps(cards, indent=1, sort_keys=True) + "\n")
    lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
