"""The Wasserstein robustness leaderboard: every attack, one yardstick, per-example minimal radii.

For each model and attack the board records, per test example, the **minimal radius**: the smallest
yardstick value (:func:`sinkhorn_attacks.ot.measure`) of a misclassified image the attack produced.

* Search attacks (a growing radius schedule: ``wong2019-*``, ``hu2020-*``, ``uot-search``) return the first
  fooling iterate; fixed-radius attacks (``linf-pgd``, ``wu2020-*``, ``uot``) run at a list of nominal radii,
  each on the examples not fooled at a smaller one.
* Optional line search: ``line_search`` bisection steps on ``t`` in ``x + t (z - x)`` keep the smallest ``t``
  that still fools the model (its image in [0, 1] because ``x`` and ``z`` are).
* The returned (or line-searched) image is measured; that value is the example's minimal radius (0 for clean
  errors, ``inf`` if never fooled). The worst case per example is the minimum over attacks, and robust
  accuracy at radius ``r`` is the fraction of examples whose minimal radius exceeds ``r`` (Wilson 95 %
  interval).

Work unit = (model, attack, batch of images), batch-major (every model and attack finishes the first batch
before the second starts, so a stopped run leaves a complete board on fewer images): written atomically to
``units/<model>/<attack>/<first>.json`` when done, so a killed run resumes where it stopped and a larger ``n``
reuses finished units (a partial last batch is recomputed in full). The output folder follows
:mod:`sinkhorn_attacks._runfolder`: exact keys for the labels, every path inside ``out``, one lock whatever the
command, the configuration's fingerprint checked on resume, each unit checked against the images it claims.
Sharding: under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment, or an initialised
``torch.distributed`` group) rank ``r`` runs the units ``i`` with ``i % world_size == r``; rank 0 then waits
for the other ranks' units (no collective call, so ranks may finish hours apart) and aggregates.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from torch import nn

from .. import __version__ as LIBRARY_VERSION
from .._runfolder import RunFolder, _canonical, check_examples, conflict_message, fingerprint, key_part, legacy_slug
from .._util import UserError, suggest
from ..attacks.base import Attack, predicted_class
from ..attacks.presets import from_preset, preset_names
from ..ot.yardstick import Yardstick, measure
from .distributed import world_and_rank
from .io import json_text, read_json, write_json

__all__ = [
    "BoardAttack",
    "BoardModel",
    "BoardConfig",
    "load_board_config",
    "minimal_radii",
    "run_leaderboard",
    "aggregate_board",
    "wilson_interval",
    "board_fingerprint",
    "unit_file",
    "find_unit_file",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 1
#: The one-call cascade (:func:`sinkhorn_attacks.benchmark`): board attack labels, strongest first.
CASCADE_ORDER: tuple[str, ...] = ("yardstick-ddn", "yardstick-pgd", "hu2020")


@dataclass(frozen=True)
class BoardAttack:
    """One attack of the board: a preset, its overrides, and how its minimal radius is found.

    ``radii`` (nominal, in the attack's own units) makes a fixed-radius attack run once per radius on the
    examples still robust; ``None`` uses the attack once (search presets record the first fooling radius).
    """

    label: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    radii: tuple[float, ...] | None = None

    def build(self, model: nn.Module, yardstick: Yardstick, radius: float | None = None) -> Attack:
        kw = dict(self.overrides)
        if radius is not None:
            kw["radius"] = radius
        return from_preset(self.preset, model, yardstick=None, **kw)  # measured once, after the line search


@dataclass(frozen=True)
class BoardModel:
    """A model: a zoo name, or a checkpoint path with its architecture."""

    label: str
    source: str
    arch: str | None = None


@dataclass(frozen=True)
class BoardConfig:
    models: tuple[BoardModel, ...]
    attacks: tuple[BoardAttack, ...]
    dataset: str = "mnist"
    split: str = "test"
    n: int = 500
    first: int = 0
    batch: int = 100
    radii: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
    line_search: int = 6
    seed: int = 0
    grid_examples: int = 6
    yardstick: Yardstick = field(default_factory=Yardstick)

    def identity(self) -> dict[str, Any]:
        """Everything that defines the per-example results except ``n`` (which may grow on resume)."""
        d = asdict(self)
        d.pop("n")
        d["yardstick"] = self.yardstick.to_dict()
        return d


_TOP = {"board", "yardstick", "models", "attacks"}
_BOARD = {"dataset", "split", "n", "first", "batch", "radii", "line_search", "seed", "grid_examples"}
_MODEL = {"label", "name", "path", "arch"}
_ATTACK = {"label", "preset", "overrides", "radii"}


def _check_keys(d: dict[str, Any], known: set[str], where: str) -> None:
    for k in d:
        if k not in known:
            raise UserError(f"{where}: unknown key {k!r}{suggest(k, known)}; known: {', '.join(sorted(known))}")


def _typed(v: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where} must be {name}, got {v!r}")
    return v


def load_board_config(source: str | os.PathLike[str] | dict[str, Any]) -> BoardConfig:
    """Read a leaderboard config (TOML file or dict); unknown keys and wrong types are :class:`UserError`."""
    where = str(source) if not isinstance(source, dict) else "config"
    if isinstance(source, dict):
        raw = source
    else:
        try:
            raw = tomllib.loads(Path(source).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"{where}: TOML syntax error: {err}") from err
    _check_keys(raw, _TOP, where)
    board = dict(raw.get("board", {}))
    _check_keys(board, _BOARD, f"{where} [board]")
    kw: dict[str, Any] = {}
    for k in ("dataset", "split"):
        if k in board:
            kw[k] = _typed(board[k], str, f"[board] {k}")
    for k in ("n", "first", "batch", "line_search", "seed", "grid_examples"):
        if k in board:
            v = _typed(board[k], int, f"[board] {k}")
            if v < (1 if k in ("n", "batch") else 0):
                raise UserError(f"[board] {k} must be >= {1 if k in ('n', 'batch') else 0}, got {v}")
            kw[k] = v
    if "radii" in board:
        radii = [_typed(r, (int, float), "[board] radii entry") for r in _typed(board["radii"], list, "[board] radii")]
        if not radii or any(not (math.isfinite(r) and r >= 0) for r in radii):
            raise UserError(f"[board] radii must be a non-empty list of finite numbers >= 0, got {radii}")
        kw["radii"] = tuple(sorted(float(r) for r in radii))
    ys = _typed(raw.get("yardstick", {}), dict, "[yardstick]")
    try:
        kw["yardstick"] = Yardstick.from_dict(ys)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where} [yardstick]: {err}") from err
    models = []
    for i, m in enumerate(_typed(raw.get("models", []), list, "[[models]]")):
        _check_keys(_typed(m, dict, f"[[models]] #{i + 1}"), _MODEL, f"{where} [[models]] #{i + 1}")
        if ("name" in m) == ("path" in m):
            raise UserError(f"[[models]] #{i + 1}: give exactly one of name (zoo) or path (checkpoint)")
        src = m.get("name") or m["path"]
        models.append(BoardModel(str(m.get("label", src)), str(src), m.get("arch")))
    attacks = []
    known = set(preset_names())
    for i, a in enumerate(_typed(raw.get("attacks", []), list, "[[attacks]]")):
        _check_keys(_typed(a, dict, f"[[attacks]] #{i + 1}"), _ATTACK, f"{where} [[attacks]] #{i + 1}")
        preset = _typed(a.get("preset"), str, f"[[attacks]] #{i + 1} preset")
        if preset not in known:
            raise UserError(f"[[attacks]] #{i + 1}: unknown preset {preset!r}{suggest(preset, known)}")
        radii = a.get("radii")
        if radii is not None:
            radii = tuple(sorted(float(_typed(r, (int, float), "radii entry")) for r in _typed(radii, list, "radii")))
        overrides = dict(_typed(a.get("overrides", {}), dict, f"[[attacks]] #{i + 1} overrides"))
        attacks.append(BoardAttack(str(a.get("label", preset)), preset, overrides, radii))
    if not models or not attacks:
        raise UserError(f"{where}: need at least one [[models]] and one [[attacks]] entry")
    for kind, labels in (("model", [m.label for m in models]), ("attack", [a.label for a in attacks])):
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise UserError(f"{where}: duplicate {kind} label(s) {sorted(dup)}; give each a unique label")
    return BoardConfig(models=tuple(models), attacks=tuple(attacks), **kw)


# ------------------------------------------------------------------------------------------------ per unit
def _not_robust(attack: Attack, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The attack's success on ``z``, or no class (non-finite logits: not a correct answer either)."""
    with torch.no_grad():
        out = attack._forward(z)
        return attack.is_success(out, y) | (predicted_class(out) < 0)


def _line_search(attack: Attack, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` bisections on ``t`` in ``x + t (adv - x)``: the image at the smallest ``t`` still not robust."""
    lo = torch.zeros(x.shape[0], dtype=x.dtype)
    hi = torch.ones(x.shape[0], dtype=x.dtype)
    d = adv - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = _not_robust(attack, (x + mid.view(-1, 1, 1, 1) * d).clamp(0, 1), y)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return (x + hi.view(-1, 1, 1, 1) * d).clamp(0, 1)


def minimal_radii(
    board_attack: BoardAttack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    yardstick: Yardstick,
    line_search: int = 6,
    on_step: Callable[[int], None] | None = None,
    known: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Per-example minimal yardstick radius of one attack on ``(x, y)``; see the module docstring.

    ``known`` (B,), the radii other attacks already reached: an attack whose radii are yardstick values (its
    ball is ``yardstick``) then runs each radius of its list only on the examples whose known radius exceeds
    the list's previous radius (up to the first radius at or above the known one, whose line search may
    still end below it).

    Returns plain lists: ``min_radius`` (0 clean error, ``inf`` not fooled), ``nominal`` (the attack's own
    radius at the found image), ``clean_correct``, ``no_class`` (the clean or the returned image gave
    non-finite logits: such an example is not robust from that image's radius on, and says so), and the
    images (``adv``, clean where not fooled).
    """
    B = x.shape[0]
    nominal = torch.full((B,), math.inf, dtype=torch.float64)
    adv = x.clone()
    fooled = torch.zeros(B, dtype=torch.bool)
    probe = board_attack.build(model, yardstick, None)  # clean forward and line search: the attack's own rules
    with torch.no_grad():
        out0 = probe._forward(x)
        no_class = (predicted_class(out0) < 0).cpu()
    # the first run's clean predictions, unless ``known`` may keep examples out of it
    clean_correct = None if known is None else (~probe.is_success(out0, y)).cpu()
    grad_evals = 0
    below = 0.0  # the previous radius of the list
    for r in board_attack.radii or (None,):
        atk = board_attack.build(model, yardstick, r)
        if on_step is not None:
            atk.callback = lambda t, cur, done: on_step(t)
        want = ~fooled if clean_correct is None else clean_correct & ~fooled
        if known is not None and r is not None and getattr(atk, "ball", None) == yardstick:
            want = want & (known.to(want.device) > below)
            below = r
        todo = want.nonzero().squeeze(1)
        if todo.numel() == 0:
            continue
        res = atk(x[todo], y[todo])
        grad_evals += res.grad_evals
        if clean_correct is None:
            clean_correct = res.clean_correct.cpu().clone()
        hit = (res.success & res.clean_correct).cpu()
        blank = res.nonfinite.cpu() & res.clean_correct.cpu() & ~hit  # no class: not robust either
        no_class[todo[blank]] = True
        hit |= blank
        idx = todo[hit]
        adv[idx] = res.adv[hit.to(res.adv.device)].to(adv.dtype).cpu()
        nominal[idx] = res.radius.cpu()[hit]
        fooled[idx] = True
    assert clean_correct is not None
    final = adv.clone()
    idx = fooled.nonzero().squeeze(1)
    if line_search > 0 and idx.numel():
        final[idx] = _line_search(probe, x[idx], adv[idx], y[idx], line_search)
    radius = torch.full((B,), math.inf, dtype=torch.float64)
    if idx.numel():
        radius[idx] = measure(x[idx], final[idx], yardstick).value
    radius[~clean_correct] = 0.0
    nominal[~clean_correct] = 0.0
    return {
        "min_radius": radius.tolist(),
        "nominal": nominal.tolist(),
        "clean_correct": clean_correct.tolist(),
        "no_class": no_class.tolist(),
        "grad_evals": grad_evals,
        "adv": final,
    }


# ------------------------------------------------------------------------------------------------ the run
def grid_record(clean: torch.Tensor, adv: torch.Tensor, radius: list[float]) -> dict[str, Any]:
    """Example images for the report as JSON: shape and 8-bit pixel values (enough to draw them)."""

    def q(t: torch.Tensor) -> list[int]:
        return (t.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8).flatten().tolist()

    rad = [float(v) if math.isfinite(float(v)) else "inf" for v in radius]  # strict JSON has no inf
    return {"shape": list(clean.shape), "clean": q(clean), "adv": q(adv), "min_radius": rad}


def read_grid(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean, adv, min_radius)`` of a :func:`grid_record` file, images as float arrays in [0, 1]."""
    d = read_json(path)
    shape = d["shape"]
    clean = np.asarray(d["clean"], dtype=np.float64).reshape(shape) / 255
    adv = np.asarray(d["adv"], dtype=np.float64).reshape(shape) / 255
    return clean, adv, np.asarray([float(v) for v in d["min_radius"]])


COMMAND = "leaderboard"
Unit = tuple[BoardModel, BoardAttack, int]  # model, attack, first image of the batch


def board_fingerprint(cfg: BoardConfig) -> str:
    """The fingerprint of everything that defines a board's per-example results (all but ``n``)."""
    return fingerprint(cfg.identity())


_NOT_SETTINGS = ("n", "models", "attacks", "unit_scheme", "legacy_units", "scheme2_settings")


def _settings(identity: dict[str, Any]) -> dict[str, Any]:
    """The settings every unit of a board shares: its identity without the models, the attacks and the reporting
    ``radii`` (they only aggregate the per-example minimal radii, so changing them recomputes nothing)."""
    return {k: v for k, v in identity.items() if k not in (*_NOT_SETTINGS, "radii")}


def _settings_scheme2(identity: dict[str, Any]) -> dict[str, Any]:
    """The shared settings as unit scheme 2 fingerprinted them (reporting radii included)."""
    return {k: v for k, v in identity.items() if k not in _NOT_SETTINGS}


def _digest(settings: dict[str, Any], model: BoardModel, attack: BoardAttack) -> str:
    return fingerprint({"settings": settings, "model": asdict(model), "attack": asdict(attack)})


def unit_digest(cfg: BoardConfig, model: BoardModel, attack: BoardAttack) -> str:
    """The fingerprint of everything that defines one (model, attack)'s per-example results: the board's
    settings, the model and the attack. Units of other models and attacks do not enter it (every unit seeds
    torch from its own labels), so a board that gains a model or an attack keeps its finished units."""
    return _digest(_settings(cfg.identity()), model, attack)


@dataclass(frozen=True)
class _Accepted:
    """The digests a finished unit of a (model, attack) may carry: its :func:`unit_digest`; the digest of unit
    scheme 2 (whose settings held the reporting radii) under the settings of the board that wrote it; or the
    whole-board fingerprint under which the first versions wrote every unit, where that board defined the model
    and the attack identically."""

    cfg: BoardConfig
    legacy: dict[str, Any] | None = None  # {"fingerprint", "models", "attacks"} of a first-version board
    scheme2: dict[str, Any] | None = None  # the settings (radii included) of a scheme-2 board

    def __call__(self, model: BoardModel, attack: BoardAttack) -> set[str]:
        ok = {unit_digest(self.cfg, model, attack)}
        if self.scheme2 is not None:
            ok.add(_digest(self.scheme2, model, attack))
        old = self.legacy
        if old and _canonical(asdict(model)) in old["models"] and _canonical(asdict(attack)) in old["attacks"]:
            ok.add(old["fingerprint"])
        return ok

    def record(self) -> dict[str, Any]:
        """``config.json``'s body: the configuration, its unit scheme and the earlier boards it accepts."""
        return {"digest": board_fingerprint(self.cfg), "n": self.cfg.n, **self.cfg.identity(), "unit_scheme": 3,
                "legacy_units": self.legacy, "scheme2_settings": self.scheme2}  # fmt: skip


def unit_file(model: str, attack: str, first: int) -> str:
    """The file of a unit, relative to the run folder: ``units/<model>/<attack>/<first>.json`` with model and
    attack as :func:`~sinkhorn_attacks._runfolder.key_part` components."""
    return f"units/{key_part(model)}/{key_part(attack)}/{first:06d}.json"


def find_unit_file(
    out: str | os.PathLike[str],
    model: str,
    attack: str,
    first: int,
    models: Sequence[str],
    attacks: Sequence[str],
    suffix: str = ".json",
) -> Path:
    """The file of a unit (``suffix`` ``.grid.json``: its example grid): at :func:`unit_file`, or where an
    earlier version (lossy names) put it when that file exists, lies inside ``out`` and no other (model,
    attack) of ``models`` x ``attacks`` shares its place."""
    folder = RunFolder(out, COMMAND)
    rel = unit_file(model, attack, first).removesuffix(".json") + suffix
    old_parts = (legacy_slug(model), legacy_slug(attack))
    old_rel = f"units/{old_parts[0]}/{old_parts[1]}/{first:06d}{suffix}"
    new = folder.path(rel)
    if new.exists() or old_rel == rel:
        return new
    if sum((legacy_slug(m), legacy_slug(a)) == old_parts for m in models for a in attacks) != 1:
        return new
    try:
        old = folder.path(old_rel)
    except UserError:  # an earlier version's path outside the folder is never read
        return new
    return old if old.exists() else new


def _unit_path(folder: RunFolder, cfg: BoardConfig, m: BoardModel, a: BoardAttack, lo: int) -> Path:
    labels_m, labels_a = [x.label for x in cfg.models], [x.label for x in cfg.attacks]
    return find_unit_file(folder.root, m.label, a.label, lo, labels_m, labels_a)


def _check_unit(path: Path, m: str, a: str, lo: int, n_expected: int, digests: set[str]) -> dict[str, Any] | None:
    """A finished unit, or ``None`` if absent or to be recomputed (a partial last batch of a run with a smaller
    ``n``); a corrupt or foreign unit, one of another model, attack or first image, or one holding more images
    than this run's batch, is a :class:`UserError`."""
    if not path.exists():
        return None
    remedy = "delete it (it will be recomputed) or rerun with --fresh"
    try:
        u = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt ({err}); {remedy}") from err
    if not isinstance(u, dict) or u.get("config") not in digests:
        raise UserError(f"{path} belongs to another configuration; use another --out (or --fresh to discard it)")
    have = len(u.get("min_radius", []))
    if (
        u.get("model") != m
        or u.get("attack") != a
        or any(len(u.get(k, [])) != have for k in ("nominal", "clean_correct"))
    ):
        raise UserError(f"{path} is not the unit of model {m!r} and attack {a!r}; {remedy}")
    first = u.get("first") if isinstance(u.get("first"), int) else -1
    check_examples(
        path,
        f"{m} / {a} / {lo}",
        range(first, first + min(have, n_expected)),
        range(lo, lo + min(have, n_expected)),
        remedy,
    )
    if have < n_expected:
        return None  # the partial last batch of a smaller n: recomputed with the full batch
    if have > n_expected:
        raise UserError(
            f"{path} holds {have} finished images of this board but this run's batch covers {n_expected}: the folder "
            "holds a run with a larger n; run with that n (or larger) to keep its finished units, or use another --out"
        )
    return u


def _batch_end(cfg: BoardConfig, lo: int) -> int:
    return min(lo + cfg.batch, cfg.first + cfg.n)


def _finished(folder: RunFolder, cfg: BoardConfig, unit: Unit, accepted: _Accepted) -> dict[str, Any] | None:
    m, a, lo = unit
    path = _unit_path(folder, cfg, m, a, lo)
    return _check_unit(path, m.label, a.label, lo, _batch_end(cfg, lo) - lo, accepted(m, a))


def _open_board(folder: RunFolder, cfg: BoardConfig, fresh: bool) -> _Accepted:
    """Refuse a folder of another command, or (without ``fresh``) of other settings or of another definition
    under a model or attack label; models and attacks may be added or dropped. With ``fresh``, rank 0 deletes
    the finished units. Returns the digests each unit may carry."""
    record = folder.refuse_foreign()
    if fresh and folder.rank == 0:
        for p in sorted(folder.path("units").glob("**/*.json")):
            p.unlink()
    if record is None or fresh:
        return _Accepted(cfg)
    stored = record["config"]
    new = _canonical(cfg.identity())
    if not isinstance(stored, dict) or _settings(stored) != _settings(new):
        before = _settings(stored) if isinstance(stored, dict) else None
        raise UserError(conflict_message(folder.root, COMMAND, before, _settings(new)))
    for kind in ("models", "attacks"):
        old = {d.get("label"): d for d in stored.get(kind) or [] if isinstance(d, dict)}
        changed = [d["label"] for d in new[kind] if d["label"] in old and old[d["label"]] != d]
        if changed:
            raise UserError(
                f"{folder.root} holds a {COMMAND} run whose {kind} {changed} are defined differently "
                f"({[old[k] for k in changed]}); give the new definition another label, use another --out, or "
                "--fresh to discard the finished units"
            )
    return _accepted_in(folder, cfg)


def _run_unit(
    folder: RunFolder,
    cfg: BoardConfig,
    digest: str,
    unit: Unit,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    on_step: Callable[[int], None],
) -> None:
    """Attack one batch, then write its example grid (first batch) and, last, the unit file."""
    m, a, lo = unit
    hi = _batch_end(cfg, lo)
    torch.manual_seed(cfg.seed + int(fingerprint([m.label, a.label, lo]), 16) % 100_000)
    sl = slice(lo - cfg.first, hi - cfg.first)
    t0, c0 = time.perf_counter(), time.process_time()
    r = minimal_radii(a, model, images[sl], labels[sl], cfg.yardstick, cfg.line_search, on_step)
    adv = r.pop("adv")
    rec = {
        "config": digest,
        "model": m.label,
        "attack": a.label,
        "first": lo,
        **r,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }
    path = folder.path(unit_file(m.label, a.label, lo))
    if lo == cfg.first and cfg.grid_examples:
        g = slice(0, min(cfg.grid_examples, hi - lo))
        grid = grid_record(images[sl][g], adv[g], r["min_radius"][g])
        folder.write(path.with_suffix(".grid.json"), json.dumps(grid, separators=(",", ":")))
    write_json(path, rec)


def _run_units(
    folder: RunFolder,
    cfg: BoardConfig,
    accepted: _Accepted,
    mine: list[Unit],
    load_model: Callable,
    images: torch.Tensor,
    labels: torch.Tensor,
    progress: Callable | None,
) -> None:
    """This rank's units, in order; finished ones (all checked before the first write) are skipped."""
    finished = [_finished(folder, cfg, u, accepted) is not None for u in mine]
    if folder.rank == 0:
        body = accepted.record()
        folder.write_record(body["digest"], body, dumps=json_text)
    models: dict[str, nn.Module] = {}
    for k, (unit, done) in enumerate(zip(mine, finished)):
        if done:
            continue
        m, a, lo = unit
        if m.label not in models:
            models[m.label] = load_model(m)
        tag = f"{m.label} / {a.label} / images {lo}-{_batch_end(cfg, lo) - 1} (unit {k + 1}/{len(mine)})"

        def on_step(t: int, _tag: str = tag) -> None:
            if progress is not None:
                progress(_tag, t, -1)

        _run_unit(folder, cfg, unit_digest(cfg, m, a), unit, models[m.label], images, labels, on_step)
        if progress is not None:
            progress(tag, 1, 1)


def run_leaderboard(
    cfg: BoardConfig,
    out: str | os.PathLike[str],
    *,
    load_model: Callable[[BoardModel], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    fresh: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    attacks: Collection[str] | None = None,
    models: Collection[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every unit of this rank, then aggregate on rank 0; returns the board (rank 0).

    ``attacks`` / ``models`` (labels; None: all) restrict the units run now; the board aggregates every finished
    unit of the whole configuration, and a model whose attacks are not all finished says so
    (``attacks_complete``).

    The output folder follows :mod:`sinkhorn_attacks._runfolder`: one lock per folder whatever the command,
    the configuration's fingerprint checked (a run of another configuration or command is refused before
    anything is written), unit files named by exact keys inside ``out``, every file written atomically.
    """
    world, rank = world_and_rank()
    if images.shape[0] < cfg.n:
        raise UserError(f"the dataset slice has {images.shape[0]} images but the board asks for n = {cfg.n}")
    folder = RunFolder(out, COMMAND, rank=rank, world=world)
    with folder.lock():
        accepted = _open_board(folder, cfg, fresh)
        batches = range(cfg.first, cfg.first + cfg.n, cfg.batch)
        units = [(m, a, lo) for lo in batches for m in cfg.models for a in cfg.attacks
                 if (attacks is None or a.label in attacks) and (models is None or m.label in models)]  # fmt: skip
        todo = [u for u in units if _finished(folder, cfg, u, accepted) is None]  # ranks share the unfinished
        _run_units(folder, cfg, accepted, todo[rank::world], load_model, images, labels, progress)
        if rank != 0:
            return {}
        if world > 1:
            _wait_for_ranks(folder, units, cfg, accepted, progress)
            # a unit no rank ran (a rank that stopped early, or a split seen differently): rank 0 runs it
            _run_units(folder, cfg, accepted, units, load_model, images, labels, progress)
        board = aggregate_board(cfg, folder.root)
        write_json(folder.path("leaderboard.json"), board)
        return board


def _wait_for_ranks(folder: RunFolder, units: list[Unit], cfg: BoardConfig, accepted: _Accepted, progress: Any) -> None:
    """Rank 0: poll until every unit is written or no other rank holds its lock any more."""
    while True:
        missing = sum(_finished(folder, cfg, u, accepted) is None for u in units)
        if missing == 0:
            return
        if not any(folder.rank_alive(r) for r in range(1, folder.world)):
            return  # the board covers what was finished; rerun to complete it
        if progress is not None:
            progress(f"waiting for {missing} unit(s) of other ranks", 0, -1)
        time.sleep(5)


# ------------------------------------------------------------------------------------------------ aggregate
def _accepted_in(folder: RunFolder, cfg: BoardConfig) -> _Accepted:
    """The unit digests a report of ``cfg`` accepts in ``folder`` (its record's earlier-version board)."""
    rec = folder.record()
    stored = rec["config"] if rec is not None and rec["command"] == COMMAND else None
    if not isinstance(stored, dict):
        return _Accepted(cfg)
    if stored.get("unit_scheme") == 3:
        return _Accepted(cfg, stored.get("legacy_units"), stored.get("scheme2_settings"))
    if stored.get("unit_scheme") == 2:
        return _Accepted(cfg, stored.get("legacy_units"), _settings_scheme2(stored))
    if _settings(stored) != _settings(_canonical(cfg.identity())):
        return _Accepted(cfg)
    return _Accepted(cfg, {"fingerprint": rec["fingerprint"], "models": stored.get("models"),
                           "attacks": stored.get("attacks")})  # fmt: skip


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def _load_units(
    cfg: BoardConfig, out: Path, model: BoardModel, attack: BoardAttack, accepted: _Accepted
) -> dict[str, Any] | None:
    folder = RunFolder(out, COMMAND)
    rad: list[float] = []
    nom: list[float] = []
    cc: list[bool] = []
    blank: list[bool] = []
    wall: list[float] = []
    cpu: list[float] = []
    for lo in range(cfg.first, cfg.first + cfg.n, cfg.batch):
        u = _finished(folder, cfg, (model, attack, lo), accepted)
        if u is None:
            break  # the board covers the leading finished batches only
        rad += [float(v) for v in u["min_radius"]]
        nom += [float(v) for v in u["nominal"]]
        cc += list(u["clean_correct"])
        blank += list(u.get("no_class") or [False] * len(u["min_radius"]))  # units written before the flag
        wall.append(u["wall_s"])
        cpu.append(u["cpu_s"])
    if not rad:
        return None
    return {"min_radius": np.asarray(rad), "nominal": np.asarray(nom), "clean_correct": np.asarray(cc),
            "no_class": np.asarray(blank, dtype=bool),
            "wall_s": np.cumsum(wall), "cpu_s": np.cumsum(cpu)}  # fmt: skip  # per leading batch count


def _acc_rows(r: np.ndarray, radii: tuple[float, ...]) -> list[dict[str, Any]]:
    n = len(r)
    rows = []
    for rad in radii:
        k = int(np.sum(r > rad))
        lo, hi = wilson_interval(k, n)
        rows.append({"radius": rad, "robust_accuracy": k / n, "ci95": [lo, hi]})
    return rows


def _cascade_entry(
    done: dict[str, dict[str, Any]], n: int, k: int, worst: np.ndarray, radii: tuple[float, ...]
) -> dict[str, Any] | None:
    """The cascade's attacks on this board: per example the minimum of their radii, its robust accuracy, the
    share of examples where it is at most the board's worst case, and their CPU time on every example (the
    cascade itself runs later attacks only on the examples still robust, so it costs at most that)."""
    labels = [a for a in CASCADE_ORDER if a in done]
    if not labels:
        return None
    r = np.min(np.stack([done[a]["min_radius"][:n] for a in labels]), axis=0)
    return {
        "attacks": labels,
        "robust_accuracy": _acc_rows(r, radii),
        "at_or_below_worst": float(np.mean(r <= worst * (1 + 1e-6))),
        "cpu_s_upper_bound": sum(float(done[a]["cpu_s"][k]) for a in labels),
        "per_example": [float(v) for v in r],
    }


def aggregate_board(cfg: BoardConfig, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Combine the finished units into the leaderboard document (schema in docs/leaderboard.md)."""
    out = Path(out)
    accepted = _accepted_in(RunFolder(out, COMMAND), cfg)
    models = []
    for m in cfg.models:
        per = {a.label: _load_units(cfg, out, m, a, accepted) for a in cfg.attacks}
        done = {k: v for k, v in per.items() if v is not None}
        if not done:
            continue
        n = min(len(v["min_radius"]) for v in done.values())  # examples every finished attack has covered
        k = -(-n // cfg.batch) - 1  # index of the last batch inside n: times are counted up to it
        labels = list(done)
        R = np.stack([done[k]["min_radius"][:n] for k in labels])  # (attacks, n)
        worst = R.min(0)
        best_attack = np.asarray(labels)[R.argmin(0)]
        worst_rows = _acc_rows(worst, cfg.radii)
        for row in worst_rows:
            within = worst <= row["radius"]
            counts = {lab: int(np.sum(within & (best_attack == lab))) for lab in labels}
            row["fooled_by"] = counts
            row["strongest_attack"] = max(counts, key=lambda k: counts[k]) if any(counts.values()) else None
        attacks = {}
        for lab in labels:
            r = done[lab]["min_radius"][:n]
            fooled = np.isfinite(r) & (r > 0)
            attacks[lab] = {
                "n": n,
                "robust_accuracy": _acc_rows(r, cfg.radii),
                "not_fooled": float(np.mean(np.isinf(r))),
                "median_min_radius": float(np.median(r[fooled])) if fooled.any() else None,
                "no_class": int(done[lab]["no_class"][:n].sum()),
                "wall_s": float(done[lab]["wall_s"][k]),
                "cpu_s": float(done[lab]["cpu_s"][k]),
                "s_per_image": float(done[lab]["cpu_s"][k]) / n,
            }
        cc = done[labels[0]]["clean_correct"][:n]
        models.append(
            {
                "label": m.label,
                "source": m.source,
                "arch": m.arch,
                "n": n,
                "clean_accuracy": float(np.mean(cc)),
                "no_class": int(np.any(np.stack([done[a]["no_class"][:n] for a in labels]), axis=0).sum()),
                "robust_accuracy": worst_rows,
                "attacks": attacks,
                "attacks_complete": sorted(labels) == sorted(a.label for a in cfg.attacks),
                "cpu_s": sum(float(v["cpu_s"][k]) for v in done.values()),
                "per_example_worst": [float(v) for v in worst],
                "per_example_strongest": [
                    str(v) if math.isfinite(w) and w > 0 else None for v, w in zip(best_attack, worst)
                ],
                "cascade": _cascade_entry(done, n, k, worst, cfg.radii),
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "yardstick": {**cfg.yardstick.to_dict(), "label": cfg.yardstick.label, "describe": cfg.yardstick.describe()},
        "dataset": {"name": cfg.dataset, "split": cfg.split, "first": cfg.first, "n_requested": cfg.n},
        "radii": list(cfg.radii),
        "line_search": cfg.line_search,
        "attacks": [asdict(a) for a in cfg.attacks],
        "models": models,
        "library_version": LIBRARY_VERSION,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
