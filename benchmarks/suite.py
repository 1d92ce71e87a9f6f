"""Benchmark suite (issue "Speed and scale"): kernel bandwidth, projections, full attacks, peers, memory.

Run ``python -m benchmarks [--quick] [--out docs/benchmarks/cpu.json]``. Every timing is the median of a few
repetitions after one warm-up; every ratio is measured in the same process, back to back, so that it
survives a loaded machine better than absolute times. The load average is recorded with each section.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sinkhorn_attacks.ot.cost import LocalCost

# data and checkpoint folders: $SINKHORN_ATTACKS_DATA / $SINKHORN_ATTACKS_MODELS (the library's defaults)
DATA_DIR = os.environ.get("SINKHORN_ATTACKS_DATA") or None
MODELS_DIR = os.environ.get("SINKHORN_ATTACKS_MODELS") or None


# --------------------------------------------------------------------------------------------- helpers
def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def peak_rss_mib() -> float:
    """Process high-water resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timeit(fn: Callable[[], Any], reps: int = 3, warmup: int = 1) -> tuple[float, list[float], Any]:
    """Median process CPU time of ``fn`` over ``reps`` runs after ``warmup`` runs; also the last output.

    CPU time, not wall time: torch runs on one thread here, and on a shared machine the wall time of a
    single-threaded call grows with the other jobs' load while its CPU time does not.
    """
    out = None
    for _ in range(warmup):
        out = fn()
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        out = fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts), ts, out


def mnist(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from sinkhorn_attacks.data import load_dataset

    ds = load_dataset("mnist", "test", DATA_DIR, limit=n, offset=offset, download=False)
    return ds.images, ds.labels


def images(size: tuple[int, int, int], n: int) -> torch.Tensor:
    """Real test images of shape (n, C, H, W): MNIST for 1 channel, CIFAR-10 (resized) for 3 channels."""
    h, w, c = size
    if c == 1:
        x, _ = mnist(n)
        if (h, w) != (28, 28):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x.clamp(0, 1)
    from sinkhorn_attacks.data import load_dataset

    x = load_dataset("cifar10", "test", DATA_DIR, limit=n, download=False).images
    if (h, w) != (32, 32):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def sign_step(x: torch.Tensor, a: float = 0.1, seed: int = 0) -> torch.Tensor:
    """``x + a * sign(noise)``: an l_inf sign step standing in for the gradient sign."""
    g = torch.Generator().manual_seed(seed)
    return x + a * torch.randn(x.shape, generator=g).sign()


# ------------------------------------------------------------------------------------ (a) bandwidth
def bench_bandwidth(quick: bool) -> dict[str, Any]:
    """Copy bandwidth of the machine vs one window pass ``local_lse(v, LocalCost(5, 1), eta)``."""
    from sinkhorn_attacks.ot import kernel
    from sinkhorn_attacks.ot.kernel import local_lse

    n = (64 if quick else 128) << 20  # bytes of the float32 copy buffer
    a = torch.rand(n // 4)
    b = torch.empty_like(a)
    t_copy, _, _ = timeit(lambda: b.copy_(a), reps=5)
    t_clone, _, _ = timeit(lambda: a.clone(), reps=5)
    copy_bw = 2 * n / t_copy  # read + write
    clone_bw = 2 * n / t_clone
    cost = LocalCost(5, 1.0)
    k = len(cost.offsets(32, 32))
    rows = []
    shapes = [(64, 3, 32, 32), (16, 3, 64, 64)] if quick else [(256, 3, 32, 32), (64, 3, 64, 64), (8, 3, 224, 224)]
    for shape in shapes:
        for dt in (torch.float32, torch.float64):
            # a potential whose v/eta varies by O(1) between neighbours, like a Sinkhorn potential of an image
            # (white noise of v/eta with std 20, the previous setting, makes most windows underflow float32
            # and measures the log-domain fallback instead)
            v = 0.05 * torch.randn(shape, dtype=dt)
            t, _, _ = timeit(lambda v=v: local_lse(v, cost, 0.05), reps=3)
            kernel._SCALING_FIRST = False  # the log-domain path alone (gathered windows), same process
            try:
                t_log, _, _ = timeit(lambda v=v: local_lse(v, cost, 0.05), reps=1)
            finally:
                kernel._SCALING_FIRST = True
            nbytes = v.numel() * v.element_size()
            compulsory = 2 * nbytes  # read v once, write the output once
            rows.append(
                {
                    "shape": list(shape),
                    "dtype": str(dt).replace("torch.", ""),
                    "window": k,
                    "time_s": t,
                    "log_domain_time_s": t_log,
                    "speedup_over_log_domain": t_log / t,
                    "compulsory_bytes_per_s": compulsory / t,
                    "fraction_of_copy_bw": compulsory / t / copy_bw,
                    "ns_per_pixel": t / v.numel() * 1e9,
                    "ns_per_pixel_per_offset": t / v.numel() / k * 1e9,
                }
            )
            print(
                f"  local_lse {shape} {rows[-1]['dtype']}: {t * 1e3:.2f} ms, "
                f"{rows[-1]['fraction_of_copy_bw']:.1%} of copy bandwidth, x{t_log / t:.1f} vs log domain",
                flush=True,
            )
    return {
        "copy_buffer_bytes": n,
        "copy_bw_bytes_per_s": copy_bw,
        "clone_bw_bytes_per_s": clone_bw,
        "local_lse": rows,
        "note": "compulsory traffic = read v + write out; fraction = compulsory B/s over copy_ B/s "
        "(a pure copy is the upper bound for a single pass). The scaling form does one exp and one log per pixel "
        "plus a grouped convolution with a k*k kernel (two planes: sums and the mass indicator), about 8 "
        "image-sized passes; log_domain_time_s is the exact gathered-window path alone (one exp per offset).",
    }


# ----------------------------------------------------------------------------------- (b) projections
def bench_projections(quick: bool) -> dict[str, Any]:
    from sinkhorn_attacks.projections.sinkhorn import hu_project, sinkhorn_project
    from sinkhorn_attacks.projections.uot import uot_project

    cost = LocalCost(5, 1.0)
    if quick:
        grid = [((28, 28, 1), 4), ((64, 64, 3), 1)]
        methods = ["uot_penalised", "uot_budgeted", "wong", "hu"]
    else:
        grid = [
            ((28, 28, 1), 1),
            ((28, 28, 1), 16),
            ((28, 28, 1), 64),
            ((32, 32, 3), 1),
            ((32, 32, 3), 16),
            ((64, 64, 3), 1),
            ((64, 64, 3), 8),
            ((224, 224, 3), 1),
        ]
        methods = ["uot_penalised", "uot_budgeted", "wong", "hu"]
    rows = []
    for size, bsz in grid:
        x = images(size, bsz)
        w = sign_step(x)
        mass = x.flatten(1).sum(1)
        pixels = x.numel()
        reps = 1 if (quick or size[0] >= 224) else 3
        for m in methods:
            if m == "uot_penalised":
                fn = lambda x=x, w=w: uot_project(x, w, cost, eta=0.05, tau=10.0, gamma=1.0, radius=None)  # noqa: E731
            elif m == "uot_budgeted":
                fn = lambda x=x, w=w, e=0.3 * mass: uot_project(x, w, cost, eta=0.05, tau=10.0, gamma=1.0, radius=e)  # noqa: E731
            elif m == "wong":
                fn = lambda x=x, w=w: sinkhorn_project(x, w, cost, 0.3, lam=1000.0, max_iter=400)  # noqa: E731
            else:
                fn = lambda x=x, w=w: hu_project(x, w, cost, 0.3, lam=1000.0, max_iter=100)  # noqa: E731
            t, ts, r = timeit(fn, reps=reps, warmup=0 if (quick or size[0] >= 224) else 1)
            it = r.iterations.double()
            rows.append(
                {
                    "method": m,
                    "size": "x".join(map(str, size)),
                    "batch": bsz,
                    "time_s": t,
                    "times_s": ts,
                    "us_per_pixel": t / pixels * 1e6,
                    "sweeps_mean": float(it.mean()),
                    "sweeps_max": int(it.max()),
                    "ns_per_pixel_per_sweep": t / pixels / max(1.0, float(it.mean())) * 1e9,
                    "load": load_avg(),
                }
            )
            print(
                f"  proj {m:14s} {rows[-1]['size']:9s} B={bsz:3d} {t:8.3f}s sweeps={float(it.mean()):.0f}", flush=True
            )
    return {
        "cost": cost.describe(),
        "eta": 0.05,
        "tau": 10.0,
        "gamma": 1.0,
        "budget": "0.3 * ||x||_1",
        "wong_hu_radius_normalised": 0.3,
        "rows": rows,
    }


def bench_vs_pot(quick: bool) -> dict[str, Any]:
    """``uot_sinkhorn`` vs POT's dense ``sinkhorn_unbalanced`` on the same fixed-marginal 28x28 problem."""
    import ot

    from sinkhorn_attacks.ot.sinkhorn import uot_sinkhorn

    n = 1 if quick else 4
    eta, tau = 0.05, 10.0
    cost = LocalCost(None, 1.0)
    x, _ = mnist(n)
    x = x.double() + 1e-3
    z = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # blurred copy
    M = cost.dense(28, 28).numpy()
    xs, zs = x.reshape(n, -1).numpy(), z.reshape(n, -1).numpy()
    sweeps = 20 if quick else 100

    def pot(iters: int, thr: float) -> list[np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [
                ot.unbalanced.sinkhorn_unbalanced(xs[i], zs[i], M, eta, tau, method="sinkhorn_stabilized",
                                                  reg_type="entropy", numItermax=iters, stopThr=thr)
                for i in range(n)
            ]  # fmt: skip

    reps = 1 if quick else 3
    t_ours, _, _ = timeit(lambda: uot_sinkhorn(x, z, cost, eta, tau, tol=1e-300, max_iter=sweeps), reps=reps)
    t_pot, _, _ = timeit(lambda: pot(sweeps, 0.0), reps=reps)
    out = {
        "problem": f"{n} MNIST image(s) (+1e-3) vs their 3x3 blur, 28x28, cost |d|_2 over the whole image "
        f"(dense 784x784), eta={eta}, tau={tau}, float64",
        "fixed_sweeps": sweeps,
        "ours_fixed_s": t_ours,
        "pot_fixed_s": t_pot,
        "ratio_pot_over_ours_fixed_sweeps": t_pot / t_ours,
        "note": "POT method='sinkhorn_stabilized', reg_type='entropy' (the objective the library solves; plain "
        "'sinkhorn' underflows at eta=0.05 with costs up to 38); POT runs one image at a time.",
    }
    if not quick:
        t_ours_c, _, r = timeit(lambda: uot_sinkhorn(x, z, cost, eta, tau, tol=1e-6, max_iter=2000), reps=1, warmup=0)
        # POT's own stopThr (change of its scalings) fires far too early here (objective off by ~100%):
        # give it exactly as many sweeps as ours needed instead
        n_sw = int(r.iterations.max())
        t_pot_c, _, Ps = timeit(lambda: pot(n_sw, 0.0), reps=1, warmup=0)

        def objective(P, a, b):
            P = np.where(P > 0, P, 0.0)
            ent = np.sum(np.where(P > 0, P * (np.log(np.where(P > 0, P, 1.0)) - 1), 0.0))

            def kl(p, q):
                return np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0) - p + q)

            return (P * M).sum() + eta * ent + tau * (kl(P.sum(1), a) + kl(P.sum(0), b))

        ref = np.array([objective(Ps[i], xs[i], zs[i]) for i in range(n)])
        out |= {
            "ours_converged_s": t_ours_c,
            "ours_sweeps": [int(v) for v in r.iterations],
            "pot_converged_s": t_pot_c,
            "ratio_pot_over_ours_converged": t_pot_c / t_ours_c,
            "converged_note": "ours to tol 1e-6 (max |log marginal ratio|); POT run for as many sweeps as ours needed",
            "max_rel_objective_diff": float(np.max(np.abs(r.value.numpy() - ref) / np.abs(ref))),
        }
    out["load"] = load_avg()
    return out


# ------------------------------------------------------------------------------------ (c) attacks
def bench_attacks(quick: bool) -> dict[str, Any]:
    from sinkhorn_attacks import zoo
    from sinkhorn_attacks.attacks.presets import from_preset

    n = 4 if quick else 100
    model = zoo.load("wong2019-mnist-vanilla", models_dir=MODELS_DIR, download=False)
    x, y = mnist(n)
    rows = []
    for name, kw in [("uot", {"steps": 10}), ("linf-pgd", {})]:
        atk = from_preset(name, model, **kw)
        t0, c0 = time.perf_counter(), time.process_time()
        res = atk(x, y)
        wall, dt = time.perf_counter() - t0, time.process_time() - c0
        rows.append(
            {
                "preset": name,
                "overrides": kw,
                "n_images": n,
                "cpu_s": dt,
                "wall_s": wall,
                "s_per_image": dt / n,
                "grad_evals": int(res.grad_evals),
                "clean_accuracy": res.clean_accuracy,
                "robust_accuracy": res.robust_accuracy,
                "load": load_avg(),
            }
        )
        print(
            f"  attack {name}: {dt:.1f}s, grad evals {res.grad_evals}, robust acc {res.robust_accuracy:.3f}", flush=True
        )
    return {"model": "wong2019-mnist-vanilla", "rows": rows}


# --------------------------------------------------------------------------------------- (d) peers
def bench_peers(quick: bool) -> dict[str, Any]:
    """Our Wong projection vs ``projected-sinkhorn==0.2`` (the measurement of peers_projected_sinkhorn.py:
    whole calls, interleaved, median ratio), at 20 and 100 images (quick: 10)."""
    from .peers_projected_sinkhorn import _import_peer, compare

    out: dict[str, Any] = {}
    try:
        ps = _import_peer()
    except SystemExit as e:
        return {"projected_sinkhorn": {"skipped": str(e)}}
    for n in (10,) if quick else (20, 100):
        res = compare(ps, n, torch.float32, 1 if quick else 3)
        res["load"] = load_avg()
        out["projected_sinkhorn" if n == (10 if quick else 100) else f"projected_sinkhorn_n{n}"] = res
    out["art"] = bench_art(quick)
    return out


def bench_art(quick: bool) -> dict[str, Any]:
    """ART's ``Wasserstein`` evasion attack (if installed) on a few MNIST images, vs our Wong preset."""
    try:
        from art.attacks.evasion import Wasserstein  # type: ignore[import-not-found]
        from art.estimators.classification import PyTorchClassifier  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"adversarial-robustness-toolbox not importable: {type(e).__name__}: {e}"}
    from sinkhorn_attacks import zoo
    from sinkhorn_attacks.attacks.presets import from_preset

    n = 4 if quick else 10
    model = zoo.load("wong2019-mnist-vanilla", models_dir=MODELS_DIR, download=False)
    x, y = mnist(n)
    clf = PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0)
    )
    steps = 10 if quick else 50
    kw = dict(
        regularization=1000.0,
        p=2,
        kernel_size=7,
        eps_step=0.1,
        norm="wasserstein",
        ball="wasserstein",
        eps=0.7,
        eps_iter=10,
        eps_factor=1.1,
        max_iter=steps,
        conjugate_sinkhorn_max_iter=400,
        projected_sinkhorn_max_iter=400,
        batch_size=n,
        verbose=False,
    )
    atk = Wasserstein(clf, **kw)
    t0 = time.process_time()
    adv = atk.generate(x.numpy(), y=y.numpy())
    t_art = time.process_time() - t0
    pred = clf.predict(adv).argmax(1)
    ours = from_preset("wong2019-mnist", model, steps=steps)
    t0 = time.process_time()
    res = ours(x, y)
    t_ours = time.process_time() - t0
    return {
        "n_images": n,
        "steps": steps,
        "settings": kw | {"note": "Wong's MNIST settings; both run the same number of attack steps"},
        "art_time_s": t_art,
        "art_fooled": int((torch.tensor(pred) != y).sum()),
        "ours_time_s": t_ours,
        "ours_fooled": int(res.success.sum()),
        "ratio_art_over_ours": t_art / t_ours,
        "note": "ours stops fooled images early (early_stop); ART runs every image for all steps",
        "load": load_avg(),
    }


# --------------------------------------------------------------------------------------- (e) memory
def bench_memory(quick: bool) -> dict[str, Any]:
    """Python-heap peak (tracemalloc) and process RSS high-water around one UOT projection."""
    from sinkhorn_attacks.projections.uot import uot_project

    rows = []
    for size, bsz in [((28, 28, 1), 4)] if quick else [((28, 28, 1), 64), ((64, 64, 3), 8)]:
        x = images(size, bsz)
        w = sign_step(x)
        rss0 = peak_rss_mib()
        tracemalloc.start()
        uot_project(x, w, LocalCost(5, 1.0), eta=0.05, tau=10.0, gamma=1.0, radius=0.3 * x.flatten(1).sum(1))
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            {
                "size": "x".join(map(str, size)),
                "batch": bsz,
                "input_mib": x.numel() * 4 / 2**20,
                "python_heap_peak_mib": py_peak / 2**20,
                "rss_highwater_before_mib": rss0,
                "rss_highwater_after_mib": peak_rss_mib(),
            }
        )
    return {
        "rows": rows,
        "note": "tracemalloc sees only Python allocations (not torch tensors); ru_maxrss is the process high-water "
        "mark, so it only grows; the stacked window block is capped at 2^24 elements (64 MiB float32) per chunk.",
    }


# ------------------------------------------------------------------------------------------ driver
def run(
    quick: bool, sections: list[str] | None = None, on_section: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any]:
    """Run the sections in order; ``on_section(partial_results)`` after each one (incremental writes)."""
    threads = torch.get_num_threads()
    res: dict[str, Any] = {
        "quick": quick,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": threads,
            "load_avg_start": list(os.getloadavg()),
        },
    }
    table = {
        "bandwidth": bench_bandwidth,
        "projections": bench_projections,
        "vs_pot": bench_vs_pot,
        "attacks": bench_attacks,
        "peers": bench_peers,
        "memory": bench_memory,
    }
    t_all = time.perf_counter()
    for name, fn in table.items():
        if sections and name not in sections:
            continue
        print(f"[{name}] load {load_avg()}", flush=True)
        t0 = time.perf_counter()
        try:
            res[name] = fn(quick)
        except Exception as e:  # noqa: BLE001 - a failing section must not lose the others
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        res[name]["section_wall_s"] = time.perf_counter() - t0
        res[name]["peak_rss_mib"] = peak_rss_mib()
        if on_section is not None:
            res["total_wall_s"] = time.perf_counter() - t_all
            res["machine"]["load_avg_end"] = list(os.getloadavg())
            res["imagenet_estimate"] = imagenet_estimate(res)
            on_section(res)
    res["total_wall_s"] = time.perf_counter() - t_all
    res["total_cpu_s"] = time.process_time()
    res["machine"]["load_avg_end"] = list(os.getloadavg())
    res["imagenet_estimate"] = imagenet_estimate(res)
    return res


def imagenet_estimate(res: dict[str, Any], steps: int = 40, gpus: int = 8) -> dict[str, Any] | None:
    """Paper estimate for the UOT attack on ImageNet-1k val (50k images, 224x224x3) on ``gpus`` GPUs.

    Scales the measured budgeted-projection cost per pixel per sweep by the ratio of GPU (H100 HBM3,
    3.35 TB/s) to measured CPU copy bandwidth, assuming the kernel reaches the same fraction of copy
    bandwidth on both; adds a ResNet-50 forward+backward (~12 GFLOP/image) at 30% of 990 TFLOP/s bf16.
    Only full runs (224x224x3 measured) give an estimate; quick runs return None, so that the one published
    figure comes from ``docs/benchmarks/cpu.json``.
    """
    if res.get("quick"):
        return None
    proj = res.get("projections", {}).get("rows")
    bw = res.get("bandwidth", {}).get("copy_bw_bytes_per_s")
    if not proj or not bw:
        return None
    big = [r for r in proj if r["method"] == "uot_budgeted"]
    big = max(big, key=lambda r: (int(r["size"].split("x")[0]), r["batch"]))
    ns_pp_sweep = big["ns_per_pixel_per_sweep"]
    sweeps = big["sweeps_mean"]
    pixels = 224 * 224 * 3
    n_img = 50_000
    cpu_proj_s = ns_pp_sweep * 1e-9 * pixels * sweeps  # per image per attack step, this CPU
    gpu_bw = 3.35e12
    speedup = gpu_bw / bw
    gpu_proj_s = cpu_proj_s / speedup
    model_s = 12e9 / (0.3 * 990e12)
    per_img = steps * (gpu_proj_s + model_s)
    total_h = per_img * n_img / gpus / 3600
    return {
        "from": f"uot_budgeted at {big['size']} batch {big['batch']}",
        "ns_per_pixel_per_sweep_cpu": ns_pp_sweep,
        "sweeps_per_projection": sweeps,
        "cpu_projection_s_per_224_image_per_step": cpu_proj_s,
        "assumed_gpu_bw_bytes_per_s": gpu_bw,
        "bandwidth_speedup_gpu_over_this_cpu": speedup,
        "gpu_projection_s_per_image_per_step": gpu_proj_s,
        "gpu_model_fwd_bwd_s_per_image": model_s,
        "attack_steps": steps,
        "gpus": gpus,
        "total_gpu_hours_wall": total_h,
        "cpu_single_process_days_equivalent": steps * cpu_proj_s * n_img / 86400,
    }


def markdown(res: dict[str, Any]) -> str:
    L = [f"# Benchmark summary ({'quick' if res['quick'] else 'full'})", ""]
    m = res["machine"]
    L.append(
        f"{m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load avg {m['load_avg_start'][0]:.1f} -> {m['load_avg_end'][0]:.1f}; total {res['total_wall_s']:.0f} s wall, "
        f"{res.get('total_cpu_s', float('nan')):.0f} s CPU."
    )
    L.append("")
    bw = res.get("bandwidth", {})
    if "copy_bw_bytes_per_s" in bw:
        L.append(f"**(a) bandwidth** copy_ {bw['copy_bw_bytes_per_s'] / 1e9:.2f} GB/s (read+write). local_lse 5x5:")
        L.append("")
        L.append("| shape | dtype | CPU ms | compulsory GB/s | fraction of copy | ns/pixel/offset |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: |")
        for r in bw["local_lse"]:
            L.append(
                f"| {r['shape']} | {r['dtype']} | {r['time_s'] * 1e3:.1f} | "
                f"{r['compulsory_bytes_per_s'] / 1e9:.3f} | {r['fraction_of_copy_bw']:.3f} | "
                f"{r['ns_per_pixel_per_offset']:.2f} |"
            )
        L.append("")
    pr = res.get("projections", {})
    if "rows" in pr:
        L += [
            "**(b) projections** (LocalCost(5,1), eta 0.05, tau 10; Wong/Hu radius 0.3 normalised)",
            "",
            "| method | size | batch | CPU s | us/pixel | sweeps (mean) | ns/pixel/sweep |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in pr["rows"]:
            L.append(
                f"| {r['method']} | {r['size']} | {r['batch']} | {r['time_s']:.3f} | {r['us_per_pixel']:.1f} | "
                f"{r['sweeps_mean']:.0f} | {r['ns_per_pixel_per_sweep']:.1f} |"
            )
        L.append("")
    vp = res.get("vs_pot", {})
    if "ratio_pot_over_ours_fixed_sweeps" in vp:
        L.append(
            f"**vs POT** ({vp['problem']}): POT/ours time at {vp['fixed_sweeps']} fixed sweeps: "
            f"{vp['ratio_pot_over_ours_fixed_sweeps']:.2f}x"
            + (
                f"; to convergence: {vp['ratio_pot_over_ours_converged']:.2f}x, max rel. objective diff "
                f"{vp['max_rel_objective_diff']:.1e}."
                if "ratio_pot_over_ours_converged" in vp
                else "."
            )
        )
        L.append("")
    at = res.get("attacks", {})
    if "rows" in at:
        L += [
            "**(c) attacks** on " + at["model"],
            "",
            "| preset | images | CPU s | s/image | grad evals | clean acc | robust acc |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in at["rows"]:
            L.append(
                f"| {r['preset']} {r['overrides'] or ''} | {r['n_images']} | {r.get('cpu_s', r['wall_s']):.1f} | "
                f"{r['s_per_image']:.2f} | {r['grad_evals']} | {r['clean_accuracy']:.3f} | "
                f"{r['robust_accuracy']:.3f} |"
            )
        L.append("")
    pe = res.get("peers", {})
    for key in ("projected_sinkhorn_n20", "projected_sinkhorn"):
        ps = pe.get(key, {})
        if "speed_ratio_theirs_over_ours" in ps:
            L.append(
                f"**(d) peers** projected-sinkhorn 0.2 / ours, whole call: {ps['speed_ratio_theirs_over_ours']:.2f}x "
                f"({ps['n_images']} images; max |dz| {ps['max_abs_diff']:.2e})."
            )
    art = pe.get("art", {})
    if "ratio_art_over_ours" in art:
        L.append(
            f"ART Wasserstein / ours (wong2019-mnist, {art['steps']} steps, {art['n_images']} images): "
            f"{art['ratio_art_over_ours']:.2f}x; fooled ART {art['art_fooled']}, ours {art['ours_fooled']}."
        )
    elif art:
        L.append(f"ART: {art.get('skipped', art.get('error', ''))}")
    L.append("")
    me = res.get("memory", {})
    if "rows" in me:
        L.append(
            "**(e) memory** "
            + "; ".join(
                f"{r['size']} B={r['batch']}: RSS high-water {r['rss_highwater_after_mib']:.0f} MiB, "
                f"python heap peak {r['python_heap_peak_mib']:.1f} MiB"
                for r in me["rows"]
            )
            + "."
        )
        L.append("")
    est = res.get("imagenet_estimate")
    if est:
        L.append(
            f"**ImageNet estimate** (see README): {est['total_gpu_hours_wall']:.2f} h wall on {est['gpus']} GPUs "
            f"({est['attack_steps']} steps; from {est['from']})."
        )
    for k, v in res.items():
        if isinstance(v, dict) and "error" in v:
            L.append(f"- section {k} failed: {v['error']}")
    return "\n".join(L) + "\n"


def write(res: dict[str, Any], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    from sinkhorn_attacks._util import atomic_write

    p = Path(out)
    atomic_write(p, json.dumps(res, indent=1, default=str) + "\n")
    md = atomic_write(p.with_suffix(".md"), markdown(res))
    return p, md
