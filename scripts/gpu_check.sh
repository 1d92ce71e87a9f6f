#!/usr/bin/env bash
# GPU check: the CUDA tests (pytest -m gpu) and a timing table of the `uot` attack, written to
# docs/benchmarks/gpu.json and docs/benchmarks/gpu.md. Meant to finish in under 4 minutes on one GPU.
#
#   scripts/gpu_check.sh                  # from the repository root (or anywhere: it cd's there)
#   GPU_CHECK_COMPILE=0 scripts/gpu_check.sh   # skip the torch.compile trial
#   GPU_CHECK_TESTS=0 scripts/gpu_check.sh     # timing only
#   GPU_CHECK_DRYRUN=1 GPU_CHECK_OUT=/tmp/gpu scripts/gpu_check.sh   # the script itself, on the CPU, tiny sizes
#
# Timing: UOT image-steps per second (batch x attack steps / wall seconds, CUDA synchronised, after a
# one-step warm-up) of the `uot` preset (default projection settings, no early stop, yardstick off) with a
# small conv net, on MNIST 28x28, CIFAR-10 32x32x3 and 224x224x3 (Tiny ImageNet upsampled); random images
# stand in where SINKHORN_ATTACKS_DATA does not hold the data. torch.compile of the model is tried on the
# CIFAR configuration and reported; it is used for the table only where it is measurably faster (> 5%).
set -u
cd "$(dirname "$0")/.." || exit 1
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${GPU_CHECK_OUT:-docs/benchmarks/gpu}
mkdir -p "$(dirname "$OUT")"

DRY=${GPU_CHECK_DRYRUN:-0}
if [ "$DRY" = "1" ]; then
    export GPU_CHECK_TESTS=0
elif ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: torch.cuda.is_available() is False (or torch is missing); nothing to check" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && [ "$DRY" != "1" ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

TEST_RC=-1
TEST_SUMMARY="not run"
if [ "${GPU_CHECK_TESTS:-1}" != "0" ]; then
    LOG=$(mktemp)
    timeout 100 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$LOG"
    TEST_RC=${PIPESTATUS[0]}
    TEST_SUMMARY=$(grep -E "passed|failed|error|skipped" "$LOG" | tail -n 1)
    rm -f "$LOG"
fi

TEST_RC="$TEST_RC" TEST_SUMMARY="$TEST_SUMMARY" OUT="$OUT" timeout 130 "$PY" - <<'PYEOF'
import json
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from sinkhorn_attacks.attacks import from_preset

DRY = os.environ.get("GPU_CHECK_DRYRUN") == "1"
dev = torch.device("cpu" if DRY else "cuda")


def sync() -> None:
    if not DRY:
        torch.cuda.synchronize()


torch.backends.cudnn.benchmark = True


def small_net(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def images(kind: str, n: int) -> tuple[torch.Tensor, str]:
    try:
        from sinkhorn_attacks.data import load_dataset

        if kind == "mnist":
            return load_dataset("mnist", "test", limit=n, download=False).images, "MNIST test"
        if kind == "cifar":
            return load_dataset("cifar10", "test", limit=n, download=False).images, "CIFAR-10 test"
        x = load_dataset("tiny-imagenet", "val", limit=n, download=False).images
        return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).clamp(0, 1), "Tiny ImageNet"
    except Exception as err:  # no data here: random images keep the timing meaningful
        shape = {"mnist": (n, 1, 28, 28), "cifar": (n, 3, 32, 32), "large": (n, 3, 224, 224)}[kind]
        return torch.rand(shape, generator=torch.Generator().manual_seed(0)), f"random ({type(err).__name__})"


def time_attack(model: nn.Module, x: torch.Tensor, steps: int) -> dict:
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(meter_cost=None, early_stop=False)
    from_preset("uot", model, steps=1, **kw)(x, y)  # warm-up: CUDA context, cudnn, caches
    sync()
    t0 = time.perf_counter()
    res = from_preset("uot", model, steps=steps, **kw)(x, y)
    sync()
    wall = time.perf_counter() - t0
    cert = res.certified_radius
    return {
        "wall_s": wall,
        "image_steps_per_s": x.shape[0] * steps / wall,
        "max_certified_radius": float(cert.max()),
        "all_certified_within_radius": bool((cert <= 0.3 * (1 + 1e-6)).all()),
        "robust_accuracy": float(res.robust_accuracy),
    }


configs = [("mnist", "28x28x1", 256, 10), ("cifar", "32x32x3", 256, 10), ("large", "224x224x3", 16, 5)]
if DRY:
    configs = [(k, s, 2, 1) for k, s, _, _ in configs]
rows = []
compile_info = {"tried": False}
use_compile = False
if os.environ.get("GPU_CHECK_COMPILE", "0" if DRY else "1") != "0":
    try:
        x, _ = images("cifar", 2 if DRY else 256)
        x = x.to(dev)
        plain = small_net(3).to(dev)
        base = time_attack(plain, x, 5)["image_steps_per_s"]
        t0 = time.perf_counter()
        comp = torch.compile(small_net(3).to(dev))
        fast = time_attack(comp, x, 5)["image_steps_per_s"]
        use_compile = fast > 1.05 * base
        compile_info = {
            "tried": True,
            "plain_image_steps_per_s": base,
            "compiled_image_steps_per_s": fast,
            "compile_and_run_s": time.perf_counter() - t0,
            "used": use_compile,
        }
    except Exception as err:  # compile unavailable (no triton, ...): report and go on
        compile_info = {"tried": True, "error": f"{type(err).__name__}: {err}"[:300], "used": False}
print("compile:", json.dumps(compile_info))


def write_report() -> None:
    report = {
        "device": "CPU (dry run)" if DRY else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "tests": {"rc": int(os.environ["TEST_RC"]), "summary": os.environ["TEST_SUMMARY"]},
        "compile": compile_info,
        "preset": "uot (eta 0.05, tau 10, 5x5 window, p 1, radius 0.3), no early stop, yardstick off",
        "rows": rows,
    }
    out = os.environ["OUT"]
    with open(out + ".json", "w") as fh:
        fh.write(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# UOT attack on the GPU ({report['device']}, torch {report['torch']})",
        "",
        "Produced by `scripts/gpu_check.sh`. Image-steps per second: batch x attack steps / wall seconds of the",
        "`uot` preset (default projection settings, no early stop, yardstick off) with a small conv net, after a",
        "one-step warm-up.",
        "",
        f"CUDA tests (`pytest -m gpu`): {report['tests']['summary']} (exit status {report['tests']['rc']}).",
        "",
        "| data | images | batch | steps | image-steps / s | wall s | certified within radius |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['data']} | {r['images']} | {r['batch']} | {r['steps']} | error: {r['error']} | | |")
        else:
            lines.append(
                f"| {r['data']} | {r['images']} | {r['batch']} | {r['steps']} | {r['image_steps_per_s']:.0f} | "
                f"{r['wall_s']:.2f} | {r['all_certified_within_radius']} |"
            )
    c = compile_info
    if c.get("tried") and "error" not in c:
        lines += [
            "",
            f"torch.compile of the model (CIFAR configuration): {c['compiled_image_steps_per_s']:.0f} vs "
            f"{c['plain_image_steps_per_s']:.0f} image-steps / s plain; "
            + ("used for the table." if c["used"] else "not used (no measurable gain: the projection dominates)."),
        ]
    elif c.get("error"):
        lines += ["", f"torch.compile failed: {c['error']}"]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


for kind, size, batch, steps in configs:
    x, source = images(kind, batch)
    x = x.to(dev)
    model = small_net(x.shape[1]).to(dev)
    if use_compile:
        model = torch.compile(model)
    try:
        r = time_attack(model, x, steps)
    except Exception as err:
        r = {"error": f"{type(err).__name__}: {err}"[:300]}
    rows.append({"data": size, "images": source, "batch": batch, "steps": steps, **r})
    print(json.dumps(rows[-1]))
    write_report()  # a run cut short by the time limit keeps the rows done

write_report()
print("wrote", os.environ["OUT"] + ".json", os.environ["OUT"] + ".md")
PYEOF
RC=$?
if [ "$TEST_RC" != "-1" ] && [ "$TEST_RC" != "0" ]; then
    echo "gpu_check: CUDA tests failed (exit status $TEST_RC)" >&2
    exit 1
fi
exit $RC
