"""The retrieval experiment behind ``sinkhorn-attacks retrieval experiment``: several attacks, two radii each.

A configuration (a TOML file; bundled: ``retrieval_flickr8k``, ``retrieval_coco_mini``) names the data, the
number of attacked images, the iterations, the heads' training recipe, the yardstick and a list of attacks
(``preset`` of :func:`sinkhorn_attacks.attacks.from_preset`, ``label``, ``radii``, ``params``). The first
``n_images`` images of the split are attacked with every (attack, radius); galleries are the whole split with
the attacked images replaced. Every iterate is recorded, the best iterate of each image is kept
(:mod:`.iterates`) and both the best and the last image are measured with the yardstick.

Run folder ``OUT``::

    config.json           the configuration, the data's and the heads' identity (a rerun must match)
    heads.pt, train.json  the trained heads (unless --heads names a checkpoint)
    units/<attack>-<hash>/batch-00000.pt   one (attack, radius, batch): written atomically when it finishes
    results.json, results.md, recall_vs_iterations.png, recall_vs_radius.png

A rerun skips finished units, so a killed run continues where it stopped; a larger ``n_images`` reuses the
full batches (a partial last batch is recomputed). One process at a time may write a folder (a lock), and
a folder holding another configuration, other data or other heads is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runfolder import RunFolder, check_examples, fingerprint
from .._util import UserError, atomic_write, suggest
from ..data.captions import RetrievalData
from ..data.remote import sha256_file
from ..ot.yardstick import Yardstick
from .attack import OBJECTIVES, RetrievalObjective
from .features import data_identity
from .iterates import UNIT_FIELDS, BatchOutcome, attack_batch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "StudyAttack",
    "StudyConfig",
    "bundled_studies",
    "load_study",
    "check_data",
    "check_npz",
    "run_study",
]

Log = Callable[[str], None]
UNIT_FORMAT = "sinkhorn_attacks.retrieval.unit/1"
_TABLES = {"experiment", "heads", "yardstick", "attacks"}
_EXPERIMENT_KEYS = {
    "title", "data", "split", "n_images", "iterations", "batch_size", "objective", "expect_images",
    "expect_captions", "captions_per_image",
}  # fmt: skip
_HEADS_KEYS = {
    "data", "image_backbone", "text_backbone", "image_size", "epochs", "batch_size", "lr", "weight_decay",
    "embed_dim", "seed",
}  # fmt: skip
_ATTACK_KEYS = {"preset", "label", "radii", "params"}


@dataclass
class StudyAttack:
    """One attack of the experiment: a preset, its label, the radii (in the preset's own units) and fixed
    keyword overrides."""

    preset: str
    label: str
    radii: list[float]
    params: dict[str, Any] = field(default_factory=dict)

    def params_at(self, radius: float) -> dict[str, Any]:
        """The keyword overrides at ``radius``: a value ``"xF"`` is ``F`` times the radius (``step_size = "x0.25"``)."""
        rel = re.compile(r"x([0-9.]+(?:[eE][+-]?[0-9]+)?)")
        return {
            k: float(rel.fullmatch(v).group(1)) * radius if isinstance(v, str) and rel.fullmatch(v) else v
            for k, v in self.params.items()
        }

    def key(self, radius: float) -> str:
        """Collision-free folder name of one (attack, radius): a readable part and a hash of everything."""
        ident = json.dumps([self.preset, self.label, float(radius), self.params], sort_keys=True, default=str)
        slug = re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{self.label}_r{radius:g}").lstrip(".") or "attack"
        return f"{slug[:60]}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


@dataclass
class StudyConfig:
    """Everything that defines an experiment (see the module docstring and the bundled TOML files)."""

    data: str
    attacks: list[StudyAttack]
    title: str = ""
    split: str = "test"
    n_images: int = 200
    iterations: int = 75
    batch_size: int = 8
    objective: str = "cmpm"
    expect_images: int | None = None
    expect_captions: int | None = None
    captions_per_image: int | None = None
    heads: dict[str, Any] = field(default_factory=dict)
    yardstick: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("n_images", "iterations", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{self.source}: {name} must be an integer >= 1, got {v!r}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"{self.source}: objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if not self.attacks:
            raise UserError(f"{self.source}: no [[attacks]]")
        labels = [a.label for a in self.attacks]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise UserError(f"{self.source}: attack labels must be unique; repeated: {', '.join(dup)}")
        Yardstick(**self.yardstick)  # its own checks

    def ruler(self) -> Yardstick:
        return Yardstick(**self.yardstick)

    def cells(self) -> list[tuple[StudyAttack, float]]:
        return [(a, float(r)) for a in self.attacks for r in a.radii]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    def identity(self) -> dict[str, Any]:
        """What a run folder must agree on: all but ``n_images`` (more images reuse the finished batches),
        ``title`` and the data's path (the data itself is compared by content)."""
        d = self.to_dict()
        for k in ("n_images", "title", "data"):
            d.pop(k)
        return d


# ----------------------------------------------------------------------------------------------------------
# configuration files
# ----------------------------------------------------------------------------------------------------------


def bundled_studies() -> list[str]:
    """Names of the bundled experiment configurations (``configs/retrieval_*.toml``)."""
    folder = resources.files("sinkhorn_attacks.configs")
    return sorted(f.name[: -len(".toml")] for f in folder.iterdir() if re.fullmatch(r"retrieval_\w+\.toml", f.name))


def _expand(value: str, where: str) -> str:
    out = os.path.expandvars(value)
    left = re.findall(r"\$\{?(\w+)", out)
    if left:
        raise UserError(f"{where}: {value!r} needs the environment variable ${left[0]} (not set)")
    return out


def _unknown(table: dict, known: set[str], where: str) -> None:
    for k in table:
        if k not in known:
            raise UserError(f"{where}: unknown key {k!r}{suggest(k, known)}; valid keys: {', '.join(sorted(known))}")


def _attack(item: Any, where: str) -> StudyAttack:
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected a table with preset, label, radii and params")
    _unknown(item, _ATTACK_KEYS, where)
    for k in ("preset", "radii"):
        if k not in item:
            raise UserError(f"{where}: missing {k!r}")
    radii = item["radii"]
    ok = (
        isinstance(radii, list)
        and radii
        and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in radii)
    )
    if not ok or not all(math.isfinite(r) and r >= 0 for r in radii):
        raise UserError(f"{where}: radii must be a non-empty list of finite numbers >= 0, got {radii!r}")
    params = item.get("params", {})
    if not isinstance(params, dict) or {"radius", "eps", "steps"} & set(params):
        raise UserError(f"{where}: params must be a table without radius/eps/steps (set by radii and iterations)")
    label = str(item.get("label", item["preset"]))
    return StudyAttack(str(item["preset"]), label, [float(r) for r in radii], dict(params))


def load_study(name_or_path: str | os.PathLike[str]) -> StudyConfig:
    """Read an experiment configuration: a TOML file, or the name of a bundled one (``retrieval_flickr8k``)."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if not p.is_file():
        stem = p.name.removesuffix(".toml")
        known = bundled_studies()
        if stem not in known:
            raise UserError(
                f"--config {str(name_or_path)!r} is neither a file nor a bundled experiment"
                f"{suggest(stem, known)}; bundled: {', '.join(known)}"
            )
        with resources.as_file(resources.files("sinkhorn_attacks.configs") / f"{stem}.toml") as f:
            return load_study(Path(f))
    try:
        with p.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{p}: {err}") from None
    _unknown(raw, _TABLES, str(p))
    exp, heads = dict(raw.get("experiment", {})), dict(raw.get("heads", {}))
    _unknown(exp, _EXPERIMENT_KEYS, f"{p} [experiment]")
    _unknown(heads, _HEADS_KEYS, f"{p} [heads]")
    if "data" not in exp:
        raise UserError(f"{p} [experiment]: missing 'data' (a dataset spec such as flickr8k-npz:PATH)")
    exp["data"] = _expand(str(exp["data"]), f"{p} [experiment] data")
    if "data" in heads:
        heads["data"] = _expand(str(heads["data"]), f"{p} [heads] data")
    attacks = [_attack(a, f"{p} [[attacks]] #{i + 1}") for i, a in enumerate(raw.get("attacks", []))]
    return StudyConfig(attacks=attacks, heads=heads, yardstick=dict(raw.get("yardstick", {})), source=str(p), **exp)


def check_attacks(cfg: StudyConfig, factory: Callable[..., Any]) -> dict[str, str]:
    """Build every (attack, radius) once on a stand-in model: unknown presets, keys and bad values are refused
    before any work, naming the attack. Returns the units of each cell's nominal radius."""
    units = {}
    for a, r in cfg.cells():
        try:
            atk = factory(a.preset, torch.nn.Identity(), radius=r, steps=cfg.iterations, **a.params_at(r))
        except (TypeError, ValueError, KeyError) as err:
            msg = err.args[0] if err.args else str(err)
            raise UserError(f"{cfg.source}: attack {a.label!r} at radius {r:g}: {msg}") from None
        units[a.key(r)] = str(getattr(atk, "units", "") or "")
    return units


# ----------------------------------------------------------------------------------------------------------
# data checks (before any work)
# ----------------------------------------------------------------------------------------------------------

_NPZ_IDS = {"flickr8k-npz": "filenames", "coco-mini-npz": "image_ids"}


def check_npz(spec: str) -> None:
    """For the ``flickr8k-npz`` / ``coco-mini-npz`` files: every per-image array describes the same images
    (``offsets``, the ids, ``captions``, ``split``), caption ids match the captions, ids are unique."""
    kind, _, path = spec.partition(":")
    if kind not in _NPZ_IDS or not Path(path).is_file():
        return
    with np.load(path, allow_pickle=False) as d:
        if "offsets" not in d.files:
            return
        n = int(d["offsets"].shape[0]) - 1
        for key in (_NPZ_IDS[kind], "captions", "split", "caption_ids"):
            if key not in d.files:
                continue
            rows = int(d[key].shape[0])
            if rows != n:
                raise UserError(f"{path}: {key!r} has {rows} rows but the file holds {n} images ('offsets')")
        if "caption_ids" in d.files and d["caption_ids"].shape != d["captions"].shape:
            raise UserError(
                f"{path}: 'caption_ids' {d['caption_ids'].shape} does not match 'captions' {d['captions'].shape}"
            )
        for key in (_NPZ_IDS[kind], "caption_ids"):
            if key in d.files:
                vals, counts = np.unique(d[key].reshape(-1), return_counts=True)
                if (counts > 1).any():
                    raise UserError(f"{path}: {key!r} repeats ids, e.g. {vals[counts > 1][0].item()!r}")


def load_checked(spec: str, split: str) -> RetrievalData:
    """Load a split, turning the loaders' warnings about captions without images into errors."""
    from .experiment import load_dataset

    check_npz(spec)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Flickr8k: (dropping|\d+ names)")
        try:
            return load_dataset(spec, split)
        except UserWarning as err:
            raise UserError(f"{spec}: the captions do not match the images: {err}") from None
        except (FileNotFoundError, ValueError, KeyError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise UserError(f"{spec}: {msg}") from None


def check_data(ds: RetrievalData, cfg: StudyConfig) -> None:
    """The split holds the images and captions the configuration expects, each image with its captions."""
    where = f"{cfg.data} ({cfg.split})"
    counts = np.bincount(ds.caption_image, minlength=ds.n_images)
    problems = []
    if cfg.expect_images is not None and ds.n_images != cfg.expect_images:
        problems.append(f"{ds.n_images} images where the configuration expects {cfg.expect_images}")
    if cfg.expect_captions is not None and ds.n_captions != cfg.expect_captions:
        problems.append(f"{ds.n_captions} captions where the configuration expects {cfg.expect_captions}")
    bare = np.flatnonzero(counts == 0)
    if bare.size:
        problems.append(f"{bare.size} images without a caption (e.g. id {ds.image_names[bare[0]]!r})")
    if cfg.captions_per_image is not None:
        odd = np.flatnonzero((counts != cfg.captions_per_image) & (counts > 0))
        if odd.size:
            problems.append(
                f"{odd.size} images without exactly {cfg.captions_per_image} captions "
                f"(e.g. id {ds.image_names[odd[0]]!r} has {counts[odd[0]]})"
            )
    names, n_names = np.unique(np.asarray(ds.image_names), return_counts=True)
    if (n_names > 1).any():
        problems.append(f"repeated image ids (e.g. {names[n_names > 1][0]!r})")
    if cfg.n_images > ds.n_images:
        problems.append(f"n_images = {cfg.n_images} but the split has {ds.n_images} images")
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------
# run folder
# ----------------------------------------------------------------------------------------------------------


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


COMMAND = "retrieval experiment"


def check_state(folder: RunFolder, state: dict[str, Any]) -> None:
    """Refuse a folder whose ``config.json`` records another command, another configuration, other data or
    other heads, naming what differs."""
    rec = folder.refuse_foreign()
    if rec is None:
        return
    old = rec["config"] or {}
    for key in state:
        if key in old and old[key] != state[key]:
            diff = _differences(old[key], state[key])
            what = "; ".join(diff[:4]) if key == "config" else f"{old[key]} -> {state[key]}"
            raise UserError(f"{folder.root} holds a {COMMAND} run with another {key} ({what}); use another --out")


def unit_path(folder: RunFolder, attack: StudyAttack, radius: float, batch: int) -> Path:
    return folder.path("units", attack.key(radius), f"batch-{batch:05d}.pt")


def load_unit(path: Path, key: str, indices: np.ndarray, iterations: int) -> dict[str, Any] | None:
    """A finished unit, or ``None`` if it is missing, unreadable, or the partial last batch of a smaller
    ``n_images`` (then it is recomputed). A unit that claims other images than its batch's is refused."""
    if not path.is_file():
        return None
    try:
        u = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable unit is recomputed
        return None
    if not (isinstance(u, dict) and u.get("format") == UNIT_FORMAT and all(k in u for k in UNIT_FIELDS)):
        return None
    claimed = [int(i) for i in u["indices"]]
    if claimed == indices[: len(claimed)].tolist() and len(claimed) < indices.size:
        return None  # the partial last batch of a smaller run: recomputed with the images added since
    remedy = "delete it to recompute it"
    check_examples(path, f"{key} batch {path.stem}", claimed, indices.tolist(), remedy)
    if u.get("key") != key or u.get("iterations") != iterations or u["embeddings"].shape[1] != iterations + 1:
        raise UserError(f"{path} belongs to another attack or number of iterations; {remedy}")
    return u


def save_unit(path: Path, key: str, iterations: int, outcome: BatchOutcome, device: str) -> dict[str, Any]:
    u = {"format": UNIT_FORMAT, "key": key, "iterations": iterations, "device": device, **outcome.to_unit()}
    u["indices"] = outcome.indices.tolist()
    atomic_write(path, lambda f: torch.save(u, f))
    u["indices"] = np.asarray(u["indices"])
    return u


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    """The loaded model, data and clean embeddings of a run."""

    tower: torch.nn.Module
    objective: RetrievalObjective
    data: RetrievalData
    image_embeddings: torch.Tensor
    text_embeddings: torch.Tensor
    meta: dict[str, Any]
    heads_path: Path
    device: str


def _train_run(cfg: StudyConfig, out: Path, cache_dir: str | None, smoke: int | None) -> Any:
    """The :class:`~.experiment.TrainRun` of the ``[heads]`` recipe (a few images and one epoch when smoke)."""
    from .experiment import TrainRun
    from .train import TrainConfig

    h = dict(cfg.heads)
    train_keys = ("epochs", "batch_size", "lr", "weight_decay", "embed_dim", "seed")
    tc = TrainConfig(**{k: h.pop(k) for k in train_keys if k in h})
    if smoke:
        tc.epochs, tc.batch_size = 1, min(tc.batch_size, 8 * smoke)
    if h.get("image_size") == 0:  # keep the images' own size
        h["image_size"] = None
    limit = 8 * smoke if smoke else None
    return TrainRun(data=h.pop("data", cfg.data), out=str(out), train=tc, cache_dir=cache_dir, limit=limit, **h)


def _recipe(meta: dict[str, Any]) -> dict[str, Any]:
    data = str(meta.get("data", ""))
    kind, _, path = data.partition(":")
    return {
        "data": f"{kind}:{Path(path).name}" if path else data,
        **{k: meta.get(k) for k in ("image_backbone", "text_backbone", "image_size", "train_config")},
    }


def _heads(
    cfg: StudyConfig, out: Path, heads: str | None, cache_dir: str | None, smoke: int | None, log: Log | None
) -> Path:
    """The heads checkpoint: ``heads`` as given, else ``OUT/heads.pt`` (trained with ``[heads]`` if missing; an
    existing one must have been trained with that recipe)."""
    from .experiment import run_train
    from .model import load_heads

    if heads is not None:
        p = Path(heads)
        if not p.is_file():
            raise UserError(f"--heads {heads}: retrieval heads checkpoint not found")
        try:
            load_heads(p)
        except ValueError as err:
            raise UserError(f"--heads {heads}: {err}") from None
        return p
    p, run = out / "heads.pt", _train_run(cfg, out, cache_dir, smoke)
    want = _recipe({"data": run.data, "image_backbone": run.image_backbone, "text_backbone": run.text_backbone,
                    "image_size": run.image_size, "train_config": run.train.to_dict()})  # fmt: skip
    if p.is_file():
        diff = _differences(_recipe(load_heads(p)[1]), want)
        if diff:
            raise UserError(f"{p} was trained with another recipe ({'; '.join(diff[:4])}); use another --out")
        return p
    if log:
        log(f"training the heads into {p} ({run.train.epochs} epochs on {run.data})")
    run_train(run, log=log)
    return p


def _setup(
    cfg: StudyConfig,
    folder: RunFolder,
    heads: str | None,
    device: str,
    cache_dir: str | None,
    smoke: int | None,
    log: Log | None,
) -> _Setup:
    from .experiment import _clean_embeddings, load_model

    ds = load_checked(cfg.data, cfg.split)
    check_data(ds, cfg)
    ds = ds.head(8 * smoke if smoke else None)  # a smoke run: the split's first images; its identity says so
    state = {"config": cfg.identity(), "data": data_identity(ds)}
    check_state(folder, state)
    path = _heads(cfg, folder.root, heads, cache_dir, smoke, log)
    state["heads"] = sha256_file(path)
    check_state(folder, state)
    model, meta = load_model(path)
    if cfg.batch_size > model.embed_dim:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the embedding size {model.embed_dim}")
    ei, et = _clean_embeddings(model, meta, ds, cache_dir, log)
    folder.write_record(fingerprint(state), {**state, "heads_path": str(path)})
    obj = RetrievalObjective(et, ds.caption_labels, ei, ds.image_labels, kind=cfg.objective)
    tower = model.to(device).image_tower()
    return _Setup(tower, obj, ds, ei, et, meta, path, device)


def _make_factory(factory: Callable[..., Any], s: _Setup, attack: StudyAttack, radius: float, iterations: int, loss):
    def make(callback=None, success_fn=None):
        return factory(
            attack.preset, s.tower, loss_fn=loss, success_fn=success_fn, callback=callback, steps=iterations,
            radius=radius, yardstick=None, **attack.params_at(radius),
        )  # fmt: skip

    return make


def _run_unit(
    cfg: StudyConfig, s: _Setup, attack: StudyAttack, radius: float, idx: np.ndarray, factory
) -> BatchOutcome:
    x = s.data.load_images(idx.tolist(), size=s.meta.get("image_size")).to(s.device)
    make = _make_factory(factory, s, attack, radius, cfg.iterations, s.objective.batch_view(idx))
    clean = s.image_embeddings[torch.as_tensor(idx)]
    return attack_batch(make, s.tower, s.objective, x, idx, cfg.iterations, clean, cfg.ruler())


def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _run_units(
    cfg: StudyConfig, s: _Setup, folder: RunFolder, n: int, factory, budget_s: float | None, log: Log | None
) -> dict[str, list[dict[str, Any]]]:
    """Every (batch, attack, radius) unit, batch by batch so that all attacks grow together; finished units are
    loaded. Returns the units done per cell key, in batch order (stopping at the first missing batch)."""
    t0 = time.time()
    done: dict[str, list[dict[str, Any]]] = {a.key(r): [] for a, r in cfg.cells()}
    complete = dict.fromkeys(done, True)
    for b, idx in enumerate(_batches(n, cfg.batch_size)):
        for a, r in cfg.cells():
            key, path = a.key(r), unit_path(folder, a, r, b)
            unit = load_unit(path, key, idx, cfg.iterations)
            if unit is None and (budget_s is None or time.time() - t0 < budget_s):
                outcome = _run_unit(cfg, s, a, r, idx, factory)
                unit = save_unit(path, key, cfg.iterations, outcome, s.device)
                if log:
                    log(
                        f"[{a.label} r={r:g}] images {idx[0]}-{idx[-1]}: {outcome.attack_cpu_s:.1f} CPU s, "
                        f"yardstick best/last {outcome.yardstick_best.mean():.4g}/{outcome.yardstick_last.mean():.4g}"
                    )
            if unit is None:
                complete[key] = False
            elif complete[key]:
                done[key].append(unit)
    return done


def run_study(
    cfg: StudyConfig,
    out: str | os.PathLike[str],
    *,
    heads: str | None = None,
    device: str = "cpu",
    n_images: int | None = None,
    time_budget_s: float | None = None,
    attack_factory: Callable[..., Any] | None = None,
    cache_dir: str | None = None,
    smoke: int | None = None,
    log: Log | None = print,
) -> dict[str, Any]:
    """Run (or continue) the experiment ``cfg`` in ``out`` and write ``results.json``, ``results.md`` and the
    plots. ``n_images`` overrides the configuration's; with ``time_budget_s`` no unit starts after that many
    seconds (rerun to continue). ``attack_factory(preset, model, **kw)`` defaults to
    :func:`sinkhorn_attacks.attacks.from_preset`. Returns the results dict."""
    from .experiment import default_attack_factory
    from .study_report import write_report
    from .study_summary import summarise

    folder = RunFolder(out, COMMAND)
    if n_images is not None:
        cfg.n_images = int(n_images)
    factory = attack_factory or default_attack_factory
    nominal_units = check_attacks(cfg, factory)
    with folder.lock():
        s = _setup(cfg, folder, heads, device, cache_dir, smoke, log)
        units = _run_units(cfg, s, folder, cfg.n_images, factory, time_budget_s, log)
        result = summarise(cfg, s, units, nominal_units)
        write_report(result, folder.root)
    return result
