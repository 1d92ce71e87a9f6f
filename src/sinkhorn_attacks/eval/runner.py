"""Resumable evaluation of models x attacks x a dataset slice.

Work unit = (model, attack, batch). After each unit its per-example rows are written to
``<out>/units/<key>.json`` and then the state file ``<out>/state.json`` lists it, both atomically (temp file +
``os.replace``). The output folder follows the rules of :mod:`sinkhorn_attacks._runfolder`: unit keys that
identify the model and the attack exactly (:attr:`Unit.key`), one lock per folder whatever the command, the
configuration's fingerprint checked on resume (a run of another configuration is refused, naming the
differing keys), every path inside ``--out``. A restarted run skips the units listed in the state file after
checking that each holds exactly the examples of its batch; every unit seeds torch with a seed derived from
(base seed, model, attack, batch), so a killed-and-resumed run gives the same results as an uninterrupted one.
The slice is clipped to the data before units are planned. Attacks listed only under ``worst_case`` run as
cascade units on the examples still robust after the previous attacks of the cascade (AutoAttack style).

Outputs: ``examples.csv`` (one row per model x attack x example), ``worst_case.csv``, ``curves.json``,
``results.json``, ``grids/*.npz`` (examples for the report), ``evaluate.log``, ``config.json``.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._runfolder import RunFolder, check_examples, conflict_message, key_part, legacy_slug
from .._util import UserError, resolve_device
from ..attacks.base import misclassified, predicted_class
from ..ot.yardstick import Yardstick
from . import curves as C
from .config import AttackSpec, EvalConfig, config_identity, preflight
from .io import json_text, read_json, save_npz, write_csv, write_json

__all__ = ["Unit", "run_evaluation", "run_unit", "plan_units", "EXAMPLE_COLUMNS", "RESULTS_VERSION"]

RESULTS_VERSION = 1
EVAL_YARDSTICK = Yardstick()  # the one yardstick of every evaluation: curves, worst case, labels
COMMAND = "evaluate"


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


@dataclass(frozen=True)
class Unit:
    model: str
    attack: str  # attack label
    batch: int
    cascade: bool = False  # worst-case-only attack: runs on the still-robust examples

    @property
    def key(self) -> str:
        """``grid__<model>__<attack>__b<batch>`` (``wc__`` for cascade units); model and attack as
        :func:`~sinkhorn_attacks._runfolder.key_part` components, so that different names never share a key."""
        kind = "wc" if self.cascade else "grid"
        return f"{kind}__{key_part(self.model)}__{key_part(self.attack)}__b{self.batch:04d}"

    @property
    def legacy_key(self) -> str:
        """The key earlier versions gave this unit (lossy: equal to :attr:`key` for plain names)."""
        kind = "wc" if self.cascade else "grid"
        m, a = legacy_slug(self.model, path_stem=True), legacy_slug(self.attack, path_stem=True)
        return f"{kind}__{m}__{a}__b{self.batch:04d}"

    def seed(self, base: int) -> int:
        return zlib.crc32(f"{base}|{self.model}|{self.attack}|{self.batch}".encode()) & 0x7FFFFFFF


def grid_file(model: str, attack: str, *, legacy: bool = False) -> str:
    """Name of the example-grid file of (model, attack) under ``grids/``."""
    if legacy:
        return f"{legacy_slug(model, path_stem=True)}__{legacy_slug(attack, path_stem=True)}.npz"
    return f"{key_part(model)}__{key_part(attack)}.npz"


def plan_units(cfg: EvalConfig, n: int | None = None) -> list[Unit]:
    """The grid units of ``cfg`` for ``n`` examples (default ``cfg.limit``; never more)."""
    n = cfg.limit if n is None else min(n, cfg.limit)
    nb = math.ceil(n / cfg.batch_size)
    return [Unit(m, a.label, b) for m in cfg.models for a in cfg.attacks for b in range(nb)]


# ------------------------------------------------------------------------------------------------ one unit
def _steps_of(atk: Any, res: Any) -> int:
    s = getattr(atk, "steps", None)
    return int(s) if s is not None else int(res.iterations.max()) if len(res) else 0


def _build_attack(model: nn.Module, spec: AttackSpec) -> Any:
    from ..attacks import from_preset

    params = dict(spec.params)
    for key in ("yardstick", "meter_cost"):
        if key in params:
            raise UserError(
                f"attack {spec.label!r}: {key!r} cannot be set per attack; an evaluation has one yardstick "
                f"({EVAL_YARDSTICK.label})"
            )
    atk = from_preset(spec.preset, model, yardstick=EVAL_YARDSTICK, **params)
    atk.batch_size = None  # one part: the callback then sees exactly the clean-correct examples
    return atk


class _FirstFooled:
    """PGD loop callback: the step after which each example was first fooled (0: clean error, -1: never)."""

    def __init__(self, model: nn.Module, y: torch.Tensor, pred_clean: torch.Tensor, on_step: Any) -> None:
        self.model, self.y, self.on_step = model, y, on_step
        self.first = torch.full((y.shape[0],), -1, dtype=torch.long)
        self.first[pred_clean.cpu() != y.cpu()] = 0
        self.todo = (pred_clean == y).nonzero().squeeze(1)
        self.calls = 0
        self.mismatch = False

    def __call__(self, t: int, cur: torch.Tensor, done: torch.Tensor) -> None:
        self.calls += 1
        if self.on_step is not None:
            self.on_step(t, cur, done)
        if cur.shape[0] != self.todo.numel():
            self.mismatch = True
            return
        with torch.no_grad():
            fooled = (done | misclassified(self.model(cur), self.y[self.todo])).cpu()  # NaN logits: no class
        idx = self.todo.cpu()
        newly = fooled & (self.first[idx] < 0)
        self.first[idx[newly]] = t

    def result(self, res: Any) -> tuple[torch.Tensor, str]:
        """``first_fooled`` per example and its source: ``callback``, or ``iterations`` of the successful
        examples when the attack never called back."""
        success, cc, it = res.success.cpu(), res.clean_correct.cpu(), res.iterations.cpu()
        if not self.calls or self.mismatch:
            return torch.where(cc & success, it, torch.where(cc, -1, 0)), "iterations"
        first = torch.where(cc & success & (self.first < 0), it, self.first)  # the curve ends at the final result
        return torch.where(cc & ~success, torch.full_like(first, -1), first), "callback"


def _example_rows(
    res: Any,
    y: torch.Tensor,
    index: torch.Tensor,
    pred_clean: torch.Tensor,
    pred_adv: torch.Tensor,
    first: torch.Tensor,
    source: str,
) -> list[dict[str, Any]]:
    cc, success = res.clean_correct.cpu(), res.success.cpu()
    return [
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
        for i in range(y.shape[0])
    ]


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
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - presets may use the global RNG
    atk = _build_attack(model, spec)
    with torch.no_grad():
        pred_clean = predicted_class(model(x))
    tracker = _FirstFooled(model, y, pred_clean, on_step)
    atk.callback = tracker
    t0 = time.perf_counter()
    res = atk(x, y)
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        pred_adv = predicted_class(model(res.adv)).cpu()  # -1: non-finite logits (neither fooled nor robust)
    first, source = tracker.result(res)
    rows = _example_rows(res, y, index, pred_clean, pred_adv, first, source)
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
        "success": res.success.cpu().numpy(),
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


# ------------------------------------------------------------------------------------------------ the run
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


def _data_slice(cfg: EvalConfig, data: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluated examples, clipped to the data (a ``limit`` beyond the data plans no extra unit)."""
    if data is None:
        images, labels = _load_data(cfg)
    else:
        stop = min(cfg.offset + cfg.limit, data[0].shape[0])
        images, labels = data[0][cfg.offset : stop], data[1][cfg.offset : stop]
    if images.shape[0] == 0:
        raise UserError(f"--offset {cfg.offset}: the data has no example from there on ({cfg.dataset}/{cfg.split})")
    return images, labels


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
        fresh: ignore (and overwrite) an existing state file of an evaluate run (a folder holding another
            command's run is refused all the same).
        keep_adversarial: also write every grid unit's adversarial images to ``<out>/adversarial/<unit>.npz``
            (finished units without that file are rerun).
    Returns the content of ``results.json``.
    """
    if models is None or data is None:  # before anything is written: a refused run leaves no trace on disk
        preflight(cfg, check_models=models is None, check_data=data is None)
    folder = RunFolder(cfg.out, COMMAND)
    with folder.lock():  # one writer per output folder, whatever the command
        state, old_n = _open_state(folder, cfg, fresh)
        folder.path("units").mkdir(parents=True, exist_ok=True)
        handler = _setup_log(folder.root)
        try:
            images, labels = _data_slice(cfg, data)
            run = _Evaluation(cfg, folder, state, images, labels, models, after_unit, progress, keep_adversarial)
            run.resume(old_n, fresh)
            run.run_grid()
            run.run_cascade()
            results = aggregate(cfg, folder.root, run.n)
            log.info("results written to %s", folder.root)
            return results
        finally:
            log.removeHandler(handler)
            handler.close()


# ------------------------------------------------------------------------------------------------ resume
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


def _open_state(folder: RunFolder, cfg: EvalConfig, fresh: bool) -> tuple[dict[str, Any], int | None]:
    """The state to resume from and, when the folder's run differs from ``cfg`` only in ``limit``, its number
    of examples. Refuses (before writing anything) a folder of another command, or of another configuration."""
    record = folder.refuse_foreign()
    fp = cfg.fingerprint()
    path = folder.path("state.json")
    if fresh or not path.exists():
        return {"fingerprint": fp, "done": {}}, None
    old = _read_state(path)
    if old["fingerprint"] == fp:
        return old, None
    stored = old.get("config") if isinstance(old.get("config"), dict) else (record or {}).get("config")
    old_n = _other_limit(old, stored, cfg)
    if old_n is None:
        before = config_identity(stored) if isinstance(stored, dict) else None
        raise OutputConflictError(conflict_message(folder.root, COMMAND, before, cfg.identity()))
    return old, old_n


def _other_limit(old_state: dict[str, Any], stored: dict[str, Any] | None, cfg: EvalConfig) -> int | None:
    """Examples of the previous run when it differs from ``cfg`` only in ``limit``, else None."""
    old_limit = stored.get("limit") if isinstance(stored, dict) else None
    if not isinstance(old_limit, int) or isinstance(old_limit, bool):
        return None
    try:
        probe = EvalConfig(
            **{**cfg.to_dict(), "limit": old_limit, "attacks": cfg.attacks, "cascade_attacks": cfg.cascade_attacks}
        )
    except ValueError:
        return None
    if probe.fingerprint() != old_state.get("fingerprint"):
        return None
    return int(old_state.get("n_examples", old_limit))


def _batch_of(key: str) -> int:
    return int(key.rsplit("__b", 1)[1])


class _Evaluation:
    """One call of :func:`run_evaluation` on an opened, locked folder: resume, the grid units, the cascade."""

    def __init__(
        self,
        cfg: EvalConfig,
        folder: RunFolder,
        state: dict[str, Any],
        images: torch.Tensor,
        labels: torch.Tensor,
        models: Any,
        after_unit: Any,
        progress: bool,
        keep_adversarial: bool,
    ) -> None:
        self.cfg, self.folder, self.state = cfg, folder, state
        self.images, self.labels, self.n = images, labels, images.shape[0]
        self.nb = math.ceil(self.n / cfg.batch_size)
        self.indices = torch.arange(cfg.offset, cfg.offset + self.n)
        self.loader: Callable[[str], nn.Module] = (
            models.__getitem__ if isinstance(models, dict) else models or _default_model_loader(cfg)
        )
        self.device = torch.device(resolve_device(cfg.device))
        self.after_unit, self.progress, self.keep_adversarial = after_unit, progress, keep_adversarial
        grid_labels = {a.label for a in cfg.attacks}
        self.cascade_labels = [lab for lab in cfg.worst_case_labels if lab not in grid_labels]
        self.units = plan_units(cfg, self.n)
        self.cascade_units = [
            Unit(m, lab, b, cascade=True) for m in cfg.models for lab in self.cascade_labels for b in range(self.nb)
        ]
        self._cache: dict[str, nn.Module] = {}
        self.finished = 0
        self.bar: Any = None

    # -------------------------------------------------------------------------------------- files
    def unit_path(self, key: str) -> Path:
        return self.folder.path("units", f"{key}.json")

    def batch_span(self, b: int) -> tuple[int, int]:
        return b * self.cfg.batch_size, min(self.n, (b + 1) * self.cfg.batch_size)

    def grid_examples(self, u: Unit) -> list[int]:
        """Dataset indices of the examples of grid unit ``u``."""
        lo, hi = self.batch_span(u.batch)
        return list(range(self.cfg.offset + lo, self.cfg.offset + hi))

    def save_state(self) -> None:
        self.state["n_examples"] = self.n
        self.state["config"] = self.cfg.to_dict()
        write_json(self.folder.path("state.json"), self.state)

    # -------------------------------------------------------------------------------------- resume
    def resume(self, old_n: int | None, fresh: bool) -> None:
        """Keep the finished units that still hold this run's examples, adopt units of earlier versions'
        keys, then write the state and ``config.json`` (in that order: the state is what a resume trusts)."""
        done = self.state["done"]
        if old_n is not None:  # another limit: keep the units whose examples are the same
            bs, n = self.cfg.batch_size, self.n
            same = {b for b in range(math.ceil(max(n, old_n) / bs)) if min(n, (b + 1) * bs) == min(old_n, (b + 1) * bs)}
            kept = {k: v for k, v in done.items() if _batch_of(k) in same}
            log.info("limit %d -> %d examples: reusing %d of %d finished units", old_n, n, len(kept), len(done))
            self.state = {"fingerprint": self.cfg.fingerprint(), "done": kept}
        elif done and not fresh:
            log.info("resuming: %d units already done", len(done))
        self._adopt_legacy_units()
        self.save_state()
        self.folder.write_record(self.cfg.fingerprint(), self.cfg.to_dict(), dumps=json_text)

    def _adopt_legacy_units(self) -> None:
        """Units that earlier versions stored under a lossy key: renamed to their exact key when the old key
        names one unit of this configuration only and its rows are that unit's (else recomputed)."""
        done, units = self.state["done"], self.units + self.cascade_units
        counts = Counter(u.legacy_key for u in units)
        adopted = []
        for u in units:
            old = u.legacy_key
            if old == u.key or u.key in done or old not in done or counts[old] > 1:
                continue
            try:
                d = read_json(self.unit_path(old))
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            rows = d.get("rows") if isinstance(d, dict) else None
            if not isinstance(rows, list) or any(
                r.get("model") != u.model or r.get("attack") != u.attack for r in rows
            ):
                continue
            write_json(self.unit_path(u.key), {**d, "unit": u.key})
            self._adopt_file("adversarial", f"{old}.npz", f"{u.key}.npz")
            if u.batch == 0 and not u.cascade:
                self._adopt_file("grids", grid_file(u.model, u.attack, legacy=True), grid_file(u.model, u.attack))
            done[u.key] = done.pop(old)
            adopted.append(old)
        if adopted:
            self.save_state()
            for old in adopted:
                self.unit_path(old).unlink(missing_ok=True)
            log.info("renamed %d units of an earlier version to their exact keys", len(adopted))

    def _adopt_file(self, sub: str, old: str, new: str) -> None:
        src, dst = self.folder.path(sub, old), self.folder.path(sub, new)
        if src.exists() and not dst.exists():
            src.replace(dst)

    def unit_finished(self, u: Unit, expected: list[int]) -> bool:
        """Whether unit ``u`` listed in the state is really finished: its file holds the rows of exactly the
        examples ``expected`` (dataset indices), of this model and attack.

        A listed unit whose file is missing is dropped from the state (recomputed); a corrupt file, or one
        whose rows do not match the unit's examples (emptied, truncated, edited, another run's), is a
        :class:`UserError` naming the file and the remedy.
        """
        done = self.state["done"]
        if u.key not in done:
            return False
        path = self.unit_path(u.key)
        if not path.exists():
            log.info("unit %s is listed as done but %s is missing: recomputing it", u.key, path)
            del done[u.key]
            return False
        remedy = "delete it (the unit will be recomputed) or rerun with --fresh"
        try:
            d = read_json(path)
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is corrupt ({type(err).__name__}: {err}); {remedy}") from None
        rows = d.get("rows") if isinstance(d, dict) else None
        if not isinstance(rows, list) or not isinstance(d.get("info"), dict) or d.get("unit") != u.key:
            raise UserError(f"{path} is not a result file of unit {u.key}; {remedy}")
        if len(rows) != len(expected) or int(done[u.key]["n"]) != len(expected):
            raise UserError(
                f"{path} holds {len(rows)} rows but unit {u.key} has {len(expected)} examples (emptied, truncated "
                f"or from another run); {remedy}"
            )
        if any(not isinstance(r, dict) or r.get("model") != u.model or r.get("attack") != u.attack for r in rows):
            raise UserError(f"{path} holds rows of another model or attack than unit {u.key}; {remedy}")
        check_examples(path, u.key, [r.get("index", -1) for r in rows], expected, remedy)
        return True

    # -------------------------------------------------------------------------------------- running
    def model(self, name: str) -> nn.Module:
        if name not in self._cache:
            self._cache.clear()
            self._cache[name] = self.loader(name).to(self.device).eval()
        return self._cache[name]

    def attack(self, u: Unit, sel: torch.Tensor) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
        """Run unit ``u`` on the examples ``sel`` (positions in the slice), with a step bar."""
        from tqdm.auto import tqdm

        if not sel.numel():
            return [], {"steps": 0, "time_s": 0.0}, None
        spec = self.cfg.attack(u.attack)
        self.bar.set_postfix_str(f"{u.model} / {u.attack} / batch {u.batch}")
        x, y = self.images[sel].to(self.device), self.labels[sel].to(self.device)
        steps = spec.params.get("steps") or _default_steps(spec.preset)
        step_bar = tqdm(total=steps, desc="  steps", unit="step", leave=False, disable=not self.progress)

        def on_step(t: int, cur: torch.Tensor, done: torch.Tensor) -> None:
            step_bar.update(max(0, int(t) - step_bar.n))

        try:
            return run_unit(self.model(u.model), spec, x, y, self.indices[sel], u.seed(self.cfg.seed), on_step)
        finally:
            step_bar.close()

    def do_unit(self, u: Unit, sel: torch.Tensor) -> None:
        """Attack, then write the unit's files, then list it in the state (each write atomic)."""
        rows, info, grid = self.attack(u, sel)
        for r in rows:
            r["model"], r["attack"] = u.model, u.attack
        write_json(self.unit_path(u.key), {"unit": u.key, "info": info, "rows": rows})
        if grid is not None and self.keep_adversarial and not u.cascade:
            extra = {"model": np.array(u.model), "attack": np.array(u.attack)}
            save_npz(self.folder.path("adversarial", f"{u.key}.npz"), **grid, **extra)
        if grid is not None and u.batch == 0 and not u.cascade:
            k = min(self.cfg.grid_examples, sel.numel())
            save_npz(
                self.folder.path("grids", grid_file(u.model, u.attack)),
                **{key: v[:k] for key, v in grid.items()},
                model=np.array(u.model),
                attack=np.array(u.attack),
            )
        self.state["done"][u.key] = {"time_s": info["time_s"], "n": len(rows)}
        self.save_state()
        log.info("unit %s done: %d examples, %.2fs", u.key, len(rows), info["time_s"])
        self.finished += 1
        self.bar.update(1)
        if self.after_unit is not None:
            self.after_unit(u, self.finished)

    def run_grid(self) -> None:
        """Every grid unit not yet finished (all listed units are checked before the first one runs)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        todo = [
            u
            for u in self.units
            if not self.unit_finished(u, self.grid_examples(u))
            or (self.keep_adversarial and not self.folder.path("adversarial", f"{u.key}.npz").exists())
        ]
        log.info(
            "evaluate: %d models x %d attacks x %d examples = %d units (%d to do)",
            len(cfg.models),
            len(cfg.attacks),
            self.n,
            len(self.units),
            len(todo),
        )
        self.bar = tqdm(
            total=len(self.units),
            initial=len(self.units) - len(todo),
            desc="evaluate",
            unit="unit",
            disable=not self.progress,
        )
        for u in todo:
            self.do_unit(u, torch.arange(*self.batch_span(u.batch)))

    def run_cascade(self) -> None:
        """Worst-case-only attacks, each on the examples still robust after the previous cascade attacks."""
        if self.cascade_units:
            self.bar.total += len(self.cascade_units)
            self.bar.refresh()
        for u in self.cascade_units:
            lo, hi = self.batch_span(u.batch)
            robust = sorted(_still_robust(self.folder.root, self.cfg, u.model, u.attack, lo, hi))
            if self.unit_finished(u, robust):
                self.bar.update(1)
                continue
            self.do_unit(u, torch.tensor(robust, dtype=torch.long) - self.cfg.offset)
        self.bar.close()


# ------------------------------------------------------------------------------------------------ aggregate
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


Cells = dict[tuple[str, str], list[dict[str, Any]]]


def _read_cells(cfg: EvalConfig, out: Path, n: int) -> tuple[Cells, dict[tuple[str, str], list[dict[str, Any]]]]:
    """Rows and unit infos of every (model, attack) of the grid and the cascade, batch by batch."""
    nb = math.ceil(n / cfg.batch_size)
    grid_labels = [a.label for a in cfg.attacks]
    cells: Cells = {}
    infos: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in cfg.models:
        for lab in dict.fromkeys(grid_labels + cfg.worst_case_labels):
            cells[(m, lab)], infos[(m, lab)] = [], []
            for b in range(nb):
                rows, info = _load_rows(out, Unit(m, lab, b, cascade=lab not in grid_labels))
                cells[(m, lab)] += rows
                infos[(m, lab)].append(info)
    return cells, infos


def _cell_summary(rows: list[dict[str, Any]], infos: list[dict[str, Any]]) -> dict[str, Any]:
    s = C.summarize(rows)
    s["time_s"] = float(sum(i.get("time_s", 0.0) for i in infos))
    s["steps"] = max((int(i.get("steps", 0)) for i in infos), default=0)
    s["units"] = next((i.get("units") for i in infos if i.get("units")), "")
    s["attack_config"] = next((i.get("attack_config") for i in infos if i.get("attack_config")), {})
    s["curve_source"] = sorted({r["curve_source"] for r in rows})
    return s


def _worst_summary(cfg: EvalConfig, w: list[dict[str, Any]], cells: Cells, m: str) -> dict[str, Any]:
    grid_labels = {a.label for a in cfg.attacks}
    cc = np.asarray([r["clean_correct"] for r in w], dtype=bool)
    return {
        "n": len(w),
        "clean_accuracy": float(cc.mean()) if len(w) else math.nan,
        "robust_accuracy": float(C.robust(w).mean()) if len(w) else math.nan,
        "order": cfg.worst_case_labels,
        "median_metered_radius": _median_finite(w),
        "fooled_by": {lab: sum(1 for r in w if r["worst_attack"] == lab) for lab in cfg.worst_case_labels},
        "cascade_examples_attacked": {
            lab: len(cells[(m, lab)]) for lab in cfg.worst_case_labels if lab not in grid_labels
        },
    }


def _curves_and_summary(
    cfg: EvalConfig, cells: Cells, infos: dict, worst: dict, rgrid: list[float]
) -> tuple[dict, dict]:
    """``curves.json`` (accuracy vs iteration, vs radius, at the fixed radii) and the per-cell summary."""
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
        for lab in (a.label for a in cfg.attacks):
            rows, key = cells[(m, lab)], f"{m}|{lab}"
            summary.setdefault(m, {})[lab] = s = _cell_summary(rows, infos[(m, lab)])
            curves["iteration"][key] = C.accuracy_vs_iteration(rows, s["steps"])
            curves["radius"][key] = C.accuracy_vs_radius(rows, rgrid)
            curves["at_radii"][key] = C.accuracy_at_radii(rows, cfg.radii)
        w, key = worst[m], f"{m}|worst-case"
        curves["radius"][key] = C.accuracy_vs_radius(w, rgrid)
        curves["at_radii"][key] = C.accuracy_at_radii(w, cfg.radii)
        # worst case after t iterations of each attack (cascade attacks count from their own start)
        steps = max((int(i.get("steps", 0)) for lab in cfg.worst_case_labels for i in infos[(m, lab)]), default=0)
        curves["iteration"][key] = C.accuracy_vs_iteration(w, steps)
        summary[m]["worst-case"] = _worst_summary(cfg, w, cells, m)
    return curves, summary


def aggregate(cfg: EvalConfig, out: Path, n: int) -> dict[str, Any]:
    """Read the finished units and write examples.csv, worst_case.csv, curves.json and results.json."""
    cells, infos = _read_cells(cfg, out, n)
    grid_labels = {a.label for a in cfg.attacks}
    all_grid_rows = [r for (m, lab), rs in cells.items() if lab in grid_labels for r in rs]
    write_csv(out / "examples.csv", all_grid_rows, EXAMPLE_COLUMNS)
    worst = {
        m: C.worst_case({lab: cells[(m, lab)] for lab in cfg.worst_case_labels}, cfg.worst_case_labels)
        for m in cfg.models
    }
    wc_rows = [{"model": m, **r} for m in cfg.models for r in worst[m]]
    write_csv(out / "worst_case.csv", wc_rows)
    rgrid = C.radius_grid(all_grid_rows + wc_rows, cfg.radius_points)
    curves, summary = _curves_and_summary(cfg, cells, infos, worst, rgrid)
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
