"""Resumable evaluation of models x attacks x a dataset slice.

Work unit = (model, attack, batch). After each unit its per-example rows are written to
``<out>/units/<key>.json`` and the state file ``<out>/state.json`` is updated, both atomically (temp file +
``os.replace``). A restarted run skips the units listed in the state file; every unit seeds torch with a
seed derived from (base seed, model, attack, batch), so a killed-and-resumed run gives the same results as
an uninterrupted one. Attacks listed only under ``worst_case`` run as cascade units on the examples still
robust after the previous attacks of the cascade (AutoAttack style).

Outputs: ``examples.csv`` (one row per model x attack x example), ``worst_case.csv``, ``curves.json``,
``results.json``, ``grids/*.npz`` (examples for the report), ``evaluate.log``.
"""

from __future__ import annotations

import logging
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._util import FolderLock, UserError, resolve_device
from ..ot.yardstick import Yardstick
from . import curves as C
from .config import AttackSpec, EvalConfig, preflight
from .io import read_json, save_npz, write_csv, write_json

__all__ = ["Unit", "run_evaluation", "run_unit", "plan_units", "EXAMPLE_COLUMNS", "RESULTS_VERSION"]

RESULTS_VERSION = 1
EVAL_YARDSTICK = Yardstick()  # the one yardstick of every evaluation: curves, worst case, labels


class OutputConflictError(UserError, RuntimeError):
    """The output folder holds a run of another configuration."""


log = logging.getLogger("sinkhorn_attacks.eval")

EXAMPLE_COLUMNS = [
    "model",
    "attack",
    "index",
    "label",
    "pred_clean",
    "pred_adv",
    "clean_correct",
    "success",
    "first_fooled",
    "iterations",
    "radius",
    "metered_radius",
    "certified_radius",
    "mass_change",
    "linf",
    "l2",
    "curve_source",
]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem if ("/" in name or "\\" in name) else name)


@dataclass(frozen=True)
class Unit:
    model: str
    attack: str  # attack label
    batch: int
    cascade: bool = False  # worst-case-only attack: runs on the still-robust examples

    @property
    def key(self) -> str:
        kind = "wc" if self.cascade else "grid"
        return f"{kind}__{_safe(self.model)}__{_safe(self.attack)}__b{self.batch:04d}"

    def seed(self, base: int) -> int:
        return zlib.crc32(f"{base}|{self.model}|{self.attack}|{self.batch}".encode()) & 0x7FFFFFFF


def plan_units(cfg: EvalConfig) -> list[Unit]:
    nb = math.ceil(cfg.limit / cfg.batch_size)
    units = [Unit(m, a.label, b) for m in cfg.models for a in cfg.attacks for b in range(nb)]
    return units


def _steps_of(atk: Any, res: Any) -> int:
    s = getattr(atk, "steps", None)
    return int(s) if s is not None else int(res.iterations.max()) if len(res) else 0


def run_unit(
    model: nn.Module,
    spec: AttackSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    seed: int,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, np.ndarray]]:
    """Attack one batch; returns per-example rows, unit info and the arrays for the example grid.

    ``first_fooled`` comes from the PGD loop's ``callback`` (model evaluated on the current images after
    every step); attacks that never call it fall back to ``iterations`` of the successful examples.
    """
    from ..attacks import from_preset

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - presets may use the global RNG
    params = dict(spec.params)
    for key in ("yardstick", "meter_cost"):
        if key in params:
            raise UserError(
                f"attack {spec.label!r}: {key!r} cannot be set per attack; an evaluation has one yardstick "
                f"({EVAL_YARDSTICK.label})"
            )
    atk = from_preset(spec.preset, model, yardstick=EVAL_YARDSTICK, **params)
    atk.batch_size = None  # one part: the callback then sees exactly the clean-correct examples
    with torch.no_grad():
        pred_clean = model(x).argmax(1)
    B = x.shape[0]
    first = torch.full((B,), -1, dtype=torch.long)
    first[pred_clean.cpu() != y.cpu()] = 0
    todo = (pred_clean == y).nonzero().squeeze(1)
    calls = {"n": 0, "mismatch": False}

    def callback(t: int, cur: torch.Tensor, done: torch.Tensor) -> None:
        calls["n"] += 1
        if on_step is not None:
            on_step(t, cur, done)
        if cur.shape[0] != todo.numel():
            calls["mismatch"] = True
            return
        with torch.no_grad():
            fooled = (done | (model(cur).argmax(1) != y[todo])).cpu()
        idx = todo.cpu()
        newly = fooled & (first[idx] < 0)
        first[idx[newly]] = t

    atk.callback = callback
    t0 = time.perf_counter()
    res = atk(x, y)
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        pred_adv = model(res.adv).argmax(1).cpu()
    success = res.success.cpu()
    cc = res.clean_correct.cpu()
    source = "callback" if calls["n"] and not calls["mismatch"] else "iterations"
    if source == "iterations":
        first = torch.where(cc & success, res.iterations.cpu(), torch.where(cc, -1, 0))
    else:  # keep the curve's end consistent with the final re-evaluation
        first = torch.where(cc & success & (first < 0), res.iterations.cpu(), first)
        first = torch.where(cc & ~success, torch.full_like(first, -1), first)
    rows = []
    for i in range(B):
        rows.append(
            {
                "index": int(index[i]),
                "label": int(y[i]),
                "pred_clean": int(pred_clean[i]),
                "pred_adv": int(pred_adv[i]),
                "clean_correct": bool(cc[i]),
                "success": bool(success[i]),
                "first_fooled": int(first[i]),
                "iterations": int(res.iterations[i]),
                "radius": float(res.radius[i]),
                "metered_radius": float(res.metered_radius[i]),
                "certified_radius": float(res.certified_radius[i]),
                "mass_change": float(res.mass_change[i]),
                "linf": float(res.linf[i]),
                "l2": float(res.l2[i]),
                "curve_source": source,
            }
        )
    info = {
        "steps": _steps_of(atk, res),
        "time_s": elapsed,
        "grad_evals": int(res.grad_evals),
        "units": res.units,
        "attack_name": res.name,
        "attack_config": {k: _plain(v) for k, v in res.config.items()},
        "seed": seed,
    }
    grid = {
        "x": x.detach().cpu().numpy().astype(np.float32),
        "adv": res.adv.detach().cpu().numpy().astype(np.float32),
        "label": y.cpu().numpy(),
        "pred_clean": pred_clean.cpu().numpy(),
        "pred_adv": pred_adv.numpy(),
        "metered_radius": res.metered_radius.cpu().numpy().astype(np.float64),
        "success": success.numpy(),
        "index": index.cpu().numpy(),
    }
    return rows, info, grid


def _default_steps(preset: str) -> int | None:
    """The preset's number of steps (for the progress bar's total)."""
    from ..attacks import from_preset

    try:
        return getattr(from_preset(preset, nn.Identity()), "steps", None)
    except Exception:  # noqa: BLE001 - only a progress-bar total
        return None


def _plain(v: Any) -> Any:
    """A JSON-friendly copy of a config value: dicts and lists kept, numbers as Python numbers."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    return str(v)


def _setup_log(out: Path) -> logging.Handler:
    h = logging.FileHandler(out / "evaluate.log", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    return h


def _load_data(cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import load_dataset

    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir, limit=cfg.limit, offset=cfg.offset)
    return ds.images, ds.labels


def _default_model_loader(cfg: EvalConfig) -> Callable[[str], nn.Module]:
    def load(name: str) -> nn.Module:
        from .. import zoo

        arch = cfg.arch if name not in zoo.REGISTRY else None
        return zoo.load(name, models_dir=cfg.models_dir, device=resolve_device(cfg.device), arch=arch)

    return load


def run_evaluation(
    cfg: EvalConfig,
    *,
    models: dict[str, nn.Module] | Callable[[str], nn.Module] | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    after_unit: Callable[[Unit, int], None] | None = None,
    progress: bool = True,
    fresh: bool = False,
    keep_adversarial: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the evaluation described by ``cfg`` and write its outputs under ``cfg.out``.

    Args:
        models: name -> module mapping or loader (default: :func:`sinkhorn_attacks.zoo.load`).
        data: ``(images, labels)`` instead of loading ``cfg.dataset`` (the slice is then ``data[offset:]``
            up to ``limit``; ``index`` in the results is ``offset + i``).
        after_unit: called after each finished unit with (unit, units finished in this call); tests use
            it to simulate a kill.
        fresh: ignore (and overwrite) an existing state file.
        keep_adversarial: also write every grid unit's adversarial images to ``<out>/adversarial/<unit>.npz``
            (finished units without that file are rerun).
    Returns the content of ``results.json``.
    """
    out = Path(cfg.out)
    if models is None or data is None:  # before anything is written: a refused run leaves no trace on disk
        preflight(cfg, check_models=models is None, check_data=data is None)
    (out / "units").mkdir(parents=True, exist_ok=True)
    with FolderLock(out, ".lock", what="evaluate run"):  # one writer per output folder
        handler = _setup_log(out)
        try:
            return _run(cfg, out, models, data, after_unit, progress, fresh, keep_adversarial)
        finally:
            log.removeHandler(handler)
            handler.close()


def _read_state(path: Path) -> dict[str, Any]:
    """The resume state file, checked: a corrupt or malformed file is one :class:`UserError` line."""
    remedy = "rerun with --fresh to start over (or use another --out)"
    try:
        st = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path} is corrupt ({type(err).__name__}: {err}); {remedy}") from None
    done = st.get("done") if isinstance(st, dict) else None
    ok = isinstance(done, dict) and all(
        isinstance(v, dict) and isinstance(v.get("n"), int) and not isinstance(v.get("n"), bool) and v["n"] >= 0
        for v in done.values()
    )
    if not ok or not isinstance(st.get("fingerprint"), str):
        raise UserError(f"{path} is not an evaluate state file (expected fingerprint and done units); {remedy}")
    return st


def _unit_finished(out: Path, state: dict[str, Any], u: Unit, n_expected: int) -> bool:
    """Whether unit ``u`` listed in the state is really finished: its file holds ``n_expected`` rows.

    A listed unit whose file is missing is dropped from the state (recomputed); a corrupt file, or one
    whose rows do not match the unit's examples (emptied, truncated, another run's), is a :class:`UserError`
    naming the file and the remedy.
    """
    if u.key not in state["done"]:
        return False
    path = out / "units" / f"{u.key}.json"
    if not path.exists():
        log.info("unit %s is listed as done but %s is missing: recomputing it", u.key, path)
        del state["done"][u.key]
        return False
    remedy = "delete it (the unit will be recomputed) or rerun with --fresh"
    try:
        d = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt ({type(err).__name__}: {err}); {remedy}") from None
    rows = d.get("rows") if isinstance(d, dict) else None
    if not isinstance(rows, list) or not isinstance(d.get("info"), dict) or d.get("unit") != u.key:
        raise UserError(f"{path} is not a result file of unit {u.key}; {remedy}")
    if len(rows) != n_expected or int(state["done"][u.key]["n"]) != n_expected:
        raise UserError(
            f"{path} holds {len(rows)} rows but unit {u.key} has {n_expected} examples (emptied, truncated or "
            f"from another run); {remedy}"
        )
    return True


def _run(cfg, out, models, data, after_unit, progress, fresh, keep_adversarial=False) -> dict[str, Any]:
    state_path = out / "state.json"
    fp = cfg.fingerprint()
    state: dict[str, Any] = {"fingerprint": fp, "done": {}}
    old_n: int | None = None  # examples of a previous run with another --limit (its units are reused)
    if state_path.exists() and not fresh:
        old = _read_state(state_path)
        if old.get("fingerprint") != fp:
            old_n = _other_limit(out, old, cfg)
            if old_n is None:
                raise OutputConflictError(
                    f"{out} holds a run with another configuration (fingerprint {old.get('fingerprint')} != {fp}); "
                    "use another --out folder, or --fresh to discard it"
                )
        state = old
        log.info("resuming: %d units already done", len(state["done"]))
    write_json(out / "config.json", {"fingerprint": fp, **cfg.to_dict()})

    if data is None:
        images, labels = _load_data(cfg)
    else:
        images, labels = data[0][cfg.offset : cfg.offset + cfg.limit], data[1][cfg.offset : cfg.offset + cfg.limit]
    n = images.shape[0]
    if old_n is not None:  # another limit: keep the units whose examples are the same
        bs = cfg.batch_size
        same = {b for b in range(math.ceil(max(n, old_n) / bs)) if min(n, (b + 1) * bs) == min(old_n, (b + 1) * bs)}
        kept = {k: v for k, v in state["done"].items() if int(k.rsplit("__b", 1)[1]) in same}
        log.info("limit %d -> %d examples: reusing %d of %d finished units", old_n, n, len(kept), len(state["done"]))
        state = {"fingerprint": fp, "done": kept}
    state["n_examples"] = n
    indices = torch.arange(cfg.offset, cfg.offset + n)
    if isinstance(models, dict):
        loader: Callable[[str], nn.Module] = models.__getitem__
    else:
        loader = models or _default_model_loader(cfg)
    device = torch.device(resolve_device(cfg.device))

    grid_labels = {a.label for a in cfg.attacks}
    units = plan_units(cfg)
    nb = math.ceil(n / cfg.batch_size)
    units = [u for u in units if u.batch < nb]
    cascade_labels = [lab for lab in cfg.worst_case_labels if lab not in grid_labels]
    todo = [
        u
        for u in units
        if not _unit_finished(out, state, u, min(n, (u.batch + 1) * cfg.batch_size) - u.batch * cfg.batch_size)
        or (keep_adversarial and not (out / "adversarial" / f"{u.key}.npz").exists())
    ]
    log.info(
        "evaluate: %d models x %d attacks x %d examples = %d units (%d to do)",
        len(cfg.models),
        len(cfg.attacks),
        n,
        len(units),
        len(todo),
    )

    from tqdm.auto import tqdm

    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="evaluate", unit="unit", disable=not progress)
    cache: dict[str, nn.Module] = {}
    finished = 0

    def get_model(name: str) -> nn.Module:
        if name not in cache:
            cache.clear()
            cache[name] = loader(name).to(device).eval()
        return cache[name]

    def do_unit(u: Unit, sel: torch.Tensor) -> None:
        nonlocal finished
        spec = cfg.attack(u.attack)
        bar.set_postfix_str(f"{u.model} / {u.attack} / batch {u.batch}")
        x, y = images[sel].to(device), labels[sel].to(device)
        if sel.numel():
            steps = spec.params.get("steps") or _default_steps(spec.preset)
            step_bar = tqdm(total=steps, desc="  steps", unit="step", leave=False, disable=not progress)

            def on_step(t: int, cur: torch.Tensor, done: torch.Tensor) -> None:
                step_bar.update(max(0, int(t) - step_bar.n))

            try:
                rows, info, grid = run_unit(get_model(u.model), spec, x, y, indices[sel], u.seed(cfg.seed), on_step)
            finally:
                step_bar.close()
        else:
            rows, info, grid = [], {"steps": 0, "time_s": 0.0}, None
        for r in rows:
            r["model"], r["attack"] = u.model, u.attack
        write_json(out / "units" / f"{u.key}.json", {"unit": u.key, "info": info, "rows": rows})
        if grid is not None and keep_adversarial and not u.cascade:
            save_npz(out / "adversarial" / f"{u.key}.npz", **grid, model=np.array(u.model), attack=np.array(u.attack))
        if grid is not None and u.batch == 0 and not u.cascade:
            k = min(cfg.grid_examples, sel.numel())
            save_npz(
                out / "grids" / f"{_safe(u.model)}__{_safe(u.attack)}.npz",
                **{key: v[:k] for key, v in grid.items()},
                model=np.array(u.model),
                attack=np.array(u.attack),
            )
        state["done"][u.key] = {"time_s": info["time_s"], "n": len(rows)}
        write_json(state_path, state)
        log.info("unit %s done: %d examples, %.2fs", u.key, len(rows), info["time_s"])
        finished += 1
        bar.update(1)
        if after_unit is not None:
            after_unit(u, finished)

    for u in todo:
        lo, hi = u.batch * cfg.batch_size, min(n, (u.batch + 1) * cfg.batch_size)
        do_unit(u, torch.arange(lo, hi))

    # worst-case cascade: attacks not in the grid run only on the still-robust examples
    if cascade_labels:
        bar.total += len(cfg.models) * len(cascade_labels) * nb
        bar.refresh()
        for m in cfg.models:
            for lab in cascade_labels:
                for b in range(nb):
                    u = Unit(m, lab, b, cascade=True)
                    lo, hi = b * cfg.batch_size, min(n, (b + 1) * cfg.batch_size)
                    robust = _still_robust(out, cfg, m, lab, lo, hi)
                    if _unit_finished(out, state, u, len(robust)):
                        bar.update(1)
                        continue
                    do_unit(u, torch.tensor(sorted(robust), dtype=torch.long) - cfg.offset)
    bar.close()
    results = aggregate(cfg, out, n)
    log.info("results written to %s", out)
    return results


def _other_limit(out: Path, old_state: dict[str, Any], cfg: EvalConfig) -> int | None:
    """Examples of the previous run in ``out`` when it differs from ``cfg`` only in ``limit``, else None."""
    old_cfg = read_json(out / "config.json") if (out / "config.json").exists() else {}
    old_limit = old_cfg.get("limit")
    if not isinstance(old_limit, int):
        return None
    try:
        probe = EvalConfig(**{**cfg.to_dict(), "limit": old_limit, "attacks": cfg.attacks,
                              "cascade_attacks": cfg.cascade_attacks})  # fmt: skip
    except ValueError:
        return None
    if probe.fingerprint() != old_state.get("fingerprint"):
        return None
    return int(old_state.get("n_examples", old_limit))


def _load_rows(out: Path, u: Unit) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    d = read_json(out / "units" / f"{u.key}.json")
    rows = d["rows"]
    for r in rows:
        for k in ("metered_radius", "certified_radius", "radius"):
            if isinstance(r.get(k), str):
                r[k] = float(r[k])
    return rows, d["info"]


def _still_robust(out: Path, cfg: EvalConfig, model: str, label: str, lo: int, hi: int) -> set[int]:
    """Dataset indices in [offset+lo, offset+hi) not fooled by the cascade attacks before ``label``."""
    robust = set(range(cfg.offset + lo, cfg.offset + hi))
    grid_labels = {a.label for a in cfg.attacks}
    for prev in cfg.worst_case_labels:
        if prev == label:
            break
        b = lo // cfg.batch_size
        rows, _ = _load_rows(out, Unit(model, prev, b, cascade=prev not in grid_labels))
        for r in rows:
            if not r["clean_correct"] or r["success"]:
                robust.discard(r["index"])
    return robust


def _median_finite(rows: list[dict[str, Any]]) -> float | None:
    m = np.asarray([r["metered_radius"] for r in rows if r["clean_correct"] and r["success"]], dtype=float)
    if not m.size:
        return None
    fin = m[np.isfinite(m)]
    return float(np.median(fin)) if fin.size else math.inf


def aggregate(cfg: EvalConfig, out: Path, n: int) -> dict[str, Any]:
    """Read the finished units and write examples.csv, worst_case.csv, curves.json and results.json."""
    nb = math.ceil(n / cfg.batch_size)
    grid_labels = [a.label for a in cfg.attacks]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    infos: dict[tuple[str, str], list[dict[str, Any]]] = {}
    labels_all = list(dict.fromkeys(grid_labels + cfg.worst_case_labels))
    for m in cfg.models:
        for lab in labels_all:
            rows_all: list[dict[str, Any]] = []
            inf_all: list[dict[str, Any]] = []
            for b in range(nb):
                rows, info = _load_rows(out, Unit(m, lab, b, cascade=lab not in grid_labels))
                rows_all += rows
                inf_all.append(info)
            cells[(m, lab)] = rows_all
            infos[(m, lab)] = inf_all
    all_grid_rows = [r for (m, lab), rs in cells.items() if lab in grid_labels for r in rs]
    write_csv(out / "examples.csv", all_grid_rows, EXAMPLE_COLUMNS)

    wc_rows: list[dict[str, Any]] = []
    worst: dict[str, list[dict[str, Any]]] = {}
    for m in cfg.models:
        worst[m] = C.worst_case({lab: cells[(m, lab)] for lab in cfg.worst_case_labels}, cfg.worst_case_labels)
        wc_rows += [{"model": m, **r} for r in worst[m]]
    write_csv(out / "worst_case.csv", wc_rows)

    rgrid = C.radius_grid(all_grid_rows + wc_rows, cfg.radius_points)
    curves: dict[str, Any] = {
        "yardstick": {**EVAL_YARDSTICK.to_dict(), "label": EVAL_YARDSTICK.label},
        "radius_grid": rgrid,
        "radii": cfg.radii,
        "iteration": {},
        "radius": {},
        "at_radii": {},
    }
    summary: dict[str, Any] = {}
    for m in cfg.models:
        for lab in grid_labels:
            rows = cells[(m, lab)]
            steps = max((int(i.get("steps", 0)) for i in infos[(m, lab)]), default=0)
            key = f"{m}|{lab}"
            curves["iteration"][key] = C.accuracy_vs_iteration(rows, steps)
            curves["radius"][key] = C.accuracy_vs_radius(rows, rgrid)
            curves["at_radii"][key] = C.accuracy_at_radii(rows, cfg.radii)
            s = C.summarize(rows)
            s["time_s"] = float(sum(i.get("time_s", 0.0) for i in infos[(m, lab)]))
            s["steps"] = steps
            s["units"] = next((i.get("units") for i in infos[(m, lab)] if i.get("units")), "")
            s["attack_config"] = next((i.get("attack_config") for i in infos[(m, lab)] if i.get("attack_config")), {})
            s["curve_source"] = sorted({r["curve_source"] for r in rows})
            summary.setdefault(m, {})[lab] = s
        w = worst[m]
        key = f"{m}|worst-case"
        curves["radius"][key] = C.accuracy_vs_radius(w, rgrid)
        curves["at_radii"][key] = C.accuracy_at_radii(w, cfg.radii)
        # worst case after t iterations of each attack (cascade attacks count from their own start)
        steps = max((int(i.get("steps", 0)) for lab in cfg.worst_case_labels for i in infos[(m, lab)]), default=0)
        curves["iteration"][key] = C.accuracy_vs_iteration(w, steps)
        cc = np.asarray([r["clean_correct"] for r in w], dtype=bool)
        s_ = np.asarray([r["success"] for r in w], dtype=bool)
        summary[m]["worst-case"] = {
            "n": len(w),
            "clean_accuracy": float(cc.mean()) if len(w) else math.nan,
            "robust_accuracy": float((cc & ~s_).mean()) if len(w) else math.nan,
            "order": cfg.worst_case_labels,
            "median_metered_radius": _median_finite(w),
            "fooled_by": {lab: sum(1 for r in w if r["worst_attack"] == lab) for lab in cfg.worst_case_labels},
            "cascade_examples_attacked": {
                lab: len(cells[(m, lab)]) for lab in cfg.worst_case_labels if lab not in grid_labels
            },
        }
    write_json(out / "curves.json", curves)
    results = {
        "version": RESULTS_VERSION,
        "fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "n_examples": n,
        "yardstick": {**EVAL_YARDSTICK.to_dict(), "label": EVAL_YARDSTICK.label},
        "units_meaning": {
            "metered_radius": EVAL_YARDSTICK.describe(),
            "radius": "nominal radius of the attack (units per preset, see 'units')",
            "first_fooled": "PGD iteration after which the example was first fooled (0: clean error, -1: never)",
        },
        "summary": summary,
        "at_radii": {"radii": cfg.radii, **curves["at_radii"]},
    }
    write_json(out / "results.json", results)
    return results
