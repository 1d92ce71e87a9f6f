"""The train / evaluate / attack pipeline behind ``sinkhorn-attacks retrieval`` and the Flickr8k benchmark.

* ``run_train``: cache backbone features of a split, train the projection heads with CMPM + CMPC, save
  ``heads.pt`` (heads, CMPC ``W``, backbone names, image size, history) and ``train.json``.
* ``run_evaluate``: clean R@K both ways on a split (``evaluate.json``).
* ``run_attack``: attack the first ``n_images`` gallery images of a split with one or more attacks of
  ``sinkhorn_attacks.attacks`` (each optionally swept over a radius), record R@K at chosen iterations,
  meter the radii, and write ``attack.json`` plus plots. The output folder follows the run-folder engine
  (:mod:`sinkhorn_attacks._runfolder`): one lock for every command, ``config.json`` with the run's identity
  (a rerun of another identity is refused, naming the differing keys), every (attack, radius) cell stored in
  ``parts/`` under a collision-free key as soon as it finishes (its examples file first, then the part that
  lists it, atomically), and a rerun reuses the finished cells whose settings, images and examples check out.

Dataset specs (``--data``): ``flickr8k-npz:PATH``, ``flickr8k:ROOT``, ``cuhk-pedes:ROOT``,
``captions:FILE[@IMAGE_ROOT]``, ``coco-mini-npz:PATH``, ``synthetic[:N]``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runfolder import RunFolder, check_examples, conflict_message, differing_keys, fingerprint, key_part
from .._util import UserError, atomic_write
from ..data.captions import (
    RetrievalData,
    load_captions_file,
    load_coco_mini_npz,
    load_cuhk_pedes,
    load_flickr8k,
    load_flickr8k_npz,
    make_synthetic,
)
from ..data.remote import sha256_file
from .attack import RetrievalObjective, attack_gallery
from .encoders import make_image_backbone, make_text_backbone
from .features import data_identity, image_features, text_features
from .metrics import retrieval_metrics
from .model import DualEncoder, load_heads, save_heads
from .train import TrainConfig, embed_features, train_heads

__all__ = [
    "load_dataset",
    "TrainRun",
    "run_train",
    "load_model",
    "run_evaluate",
    "AttackSpec",
    "parse_attack_spec",
    "run_attack",
    "default_attack_factory",
    "matched_radius_table",
    "write_json",
]

Log = Callable[[str], None]


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (:func:`sinkhorn_attacks._util.atomic_write`)."""
    path = Path(path)
    atomic_write(path, json.dumps(obj, indent=1, default=_json_default))
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_dataset(spec: str, split: str = "test") -> RetrievalData:
    """Load a split from a dataset spec string (see the module docstring); an empty split is an error."""
    data = _load_dataset(spec, split)
    if data.n_images == 0:
        raise ValueError(f"dataset {spec!r} has no images in split {split!r}")
    return data


def _load_dataset(spec: str, split: str = "test") -> RetrievalData:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        n = int(arg) if arg else 64
        codes = {"train": 0, "val": 1, "test": 2}
        if {"dev": "val"}.get(split, split) not in codes:
            raise ValueError(f"unknown split {split!r} of synthetic data; splits: train, val (or dev), test")
        code = codes[{"dev": "val"}.get(split, split)]
        return make_synthetic(n, size=16, captions_per_image=3, seed=code, name=f"synthetic/{split}")
    if not arg:
        raise ValueError(f"dataset spec {spec!r} needs a path: KIND:PATH")
    if kind == "flickr8k-npz":
        return load_flickr8k_npz(arg, split)
    if kind == "flickr8k":
        return load_flickr8k(arg, split)
    if kind == "cuhk-pedes":
        return load_cuhk_pedes(arg, split)
    if kind == "coco-mini-npz":
        return load_coco_mini_npz(arg, None if split in ("all", "test") else split)
    if kind == "captions":
        file, _, root = arg.partition("@")
        return load_captions_file(file, root or None, None if split == "all" else split)
    raise ValueError(
        f"unknown dataset kind {kind!r}; use flickr8k-npz, flickr8k, cuhk-pedes, captions, coco-mini-npz or synthetic"
    )


# ----------------------------------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainRun:
    """Settings of :func:`run_train`."""

    data: str
    out: str
    image_backbone: str = "efficientnet-lite0"
    text_backbone: str = "minilm"
    image_size: int | None = 128
    eval_split: str = "val"
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    limit: int | None = None  # only the first `limit` images of each split (and their captions)


def _backbones(image: str, text: str, kwargs: dict | None = None):
    kw = dict(kwargs or {})
    ib_kw = kw.get("image", {})
    tb_kw = kw.get("text", {})
    return make_image_backbone(image, **ib_kw), make_text_backbone(text, **tb_kw)


def _features(ib, tb, data: RetrievalData, size: int | None, cache_dir: str | None, log: Log | None):
    cache: Any = Path(cache_dir) if cache_dir else None
    if log:
        log(f"{data.name}: {data.n_images} images, {data.n_captions} captions")
    ft = text_features(tb, data.captions, cache)
    fi = image_features(ib, data, size, cache, log=log)
    return fi, ft


def run_train(run: TrainRun, log: Log | None = print) -> dict:
    """Train heads on ``run.data``'s train split, evaluating on ``run.eval_split`` after each epoch."""
    out = Path(run.out)
    ib, tb = _backbones(run.image_backbone, run.text_backbone, run.backbone_kwargs)
    tr = load_dataset(run.data, "train").head(run.limit)
    ev = load_dataset(run.data, run.eval_split).head(run.limit)
    t0 = time.time()
    fi, ft = _features(ib, tb, tr, run.image_size, run.cache_dir, log)
    fi_e, ft_e = _features(ib, tb, ev, run.image_size, run.cache_dir, log)
    t_feat = time.time() - t0

    def eval_fn(heads) -> dict:
        ei, et = embed_features(heads, fi_e, ft_e)
        m = retrieval_metrics(ei, ev.image_labels, et, ev.caption_labels)
        return {"t2i": m["t2i"], "i2t": m["i2t"]}

    heads, hist = train_heads(fi, ft, tr.caption_image, tr.image_labels, run.train, eval_fn=eval_fn, log=log)
    meta = {
        "image_backbone": run.image_backbone,
        "text_backbone": run.text_backbone,
        "image_size": run.image_size,
        "data": run.data,
        "train_split": "train",
        "eval_split": run.eval_split,
        "train_config": run.train.to_dict(),
        "history": hist,
        "match": tr.match,
        "backbone_kwargs": run.backbone_kwargs,
    }
    save_heads(out / "heads.pt", heads, meta)
    summary = {
        **{k: v for k, v in meta.items() if k != "history"},
        "history": hist,
        "feature_seconds": round(t_feat, 1),
        "total_seconds": round(time.time() - t0, 1),
        "n_train_images": tr.n_images,
        "n_train_captions": tr.n_captions,
        "final_eval": hist[-1].get("eval") if hist else None,
    }
    write_json(out / "train.json", summary)
    return summary


def load_model(heads_path: str | Path) -> tuple[DualEncoder, dict]:
    """Rebuild the :class:`DualEncoder` of a ``heads.pt`` (backbones from their registered names)."""
    heads, meta = load_heads(heads_path)
    ib, tb = _backbones(meta["image_backbone"], meta["text_backbone"], meta.get("backbone_kwargs"))
    return DualEncoder(ib, tb, heads).eval(), meta


def _clean_embeddings(model: DualEncoder, meta: dict, data: RetrievalData, cache_dir: str | None, log: Log | None):
    fi, ft = _features(model.image_backbone, model.text_backbone, data, meta.get("image_size"), cache_dir, log)
    return embed_features(model.heads, fi, ft)


def run_evaluate(
    heads_path: str | Path,
    data: str | None = None,
    split: str = "test",
    out: str | None = None,
    cache_dir: str | None = None,
    log: Log | None = print,
    limit: int | None = None,
) -> dict:
    """Clean R@1/5/10 both ways of a trained model on a split (``limit``: its first images and their captions)."""
    model, meta = load_model(heads_path)
    ds = load_dataset(data or meta["data"], split).head(limit)
    ei, et = _clean_embeddings(model, meta, ds, cache_dir, log)
    m = retrieval_metrics(ei, ds.image_labels, et, ds.caption_labels)
    res = {"heads": str(heads_path), "data": data or meta["data"], "split": split, "match": ds.match, **m}
    if log:
        log(f"t2i {_fmt(m['t2i'])} | i2t {_fmt(m['i2t'])}")
    if out:
        write_json(Path(out) / "evaluate.json", res)
    return res


def _fmt(d: dict) -> str:
    return "/".join(f"{d[k]:.1f}" for k in ("R@1", "R@5", "R@10") if k in d)


def _num(v: Any, spec: str = ".4g") -> str:
    """A number for a log line: ``-`` for none, else ``format(v, spec)``."""
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def format_metrics(m: dict) -> str:
    """``t2i R@1/5/10 a/b/c | i2t ...`` (one decimal)."""
    return " | ".join(f"{d} R@1/5/10 {_fmt(m[d])}" for d in ("t2i", "i2t") if isinstance(m.get(d), dict))


# ----------------------------------------------------------------------------------------------------------
# attack
# ----------------------------------------------------------------------------------------------------------


@dataclass
class AttackSpec:
    """One attack preset with fixed overrides and an optional sweep of one parameter (the radius)."""

    preset: str
    overrides: dict = field(default_factory=dict)
    sweep_key: str | None = None
    sweep: list = field(default_factory=list)
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.preset

    def cells(self) -> list[tuple[str, dict]]:
        """``(cell key, overrides)`` per sweep value (one cell without a sweep)."""
        if not self.sweep_key:
            return [(self.name, dict(self.overrides))]
        out = []
        for v in self.sweep:
            key = f"{self.name}@{self.sweep_key}={v:g}" if isinstance(v, float) else f"{self.name}@{self.sweep_key}={v}"
            ov = {
                k: (float(o[1:]) * v if isinstance(o, str) and re.fullmatch(r"x[0-9.eE+-]+", o) else o)
                for k, o in self.overrides.items()
            }
            out.append((key, {**ov, self.sweep_key: v}))
        return out


def _value(s: str) -> Any:
    s = s.strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if s.lower() in ("none", "null"):
        return None
    m = re.fullmatch(r"(-?\d+(?:\.\d*)?)/(\d+(?:\.\d*)?)", s)
    if m:
        return float(m.group(1)) / float(m.group(2))
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


_KEY_ALIASES = {"eps": "radius", "epsilon": "radius"}  # the usual l_p name of the presets' ``radius``


def parse_attack_spec(text: str) -> AttackSpec:
    """``PRESET[:key=value,...][#LABEL]``; one value may be a ``|``-separated sweep, e.g.
    ``linf-pgd:radius=2/255|4/255|8/255`` or ``uot:radius=0.005|0.01,step_size=0.1#UOT``. A value ``xF``
    means ``F`` times the swept value (``linf-pgd:radius=1/255|4/255,step_size=x0.25``). ``eps`` (or
    ``epsilon``) is accepted for ``radius``."""
    text, _, label = text.partition("#")
    preset, _, rest = text.partition(":")
    spec = AttackSpec(preset=preset.strip(), label=label.strip() or None)
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"attack option {item!r} is not key=value")
        key = _KEY_ALIASES.get(key.strip(), key.strip())
        if "|" in val:
            if spec.sweep_key:
                raise ValueError("only one swept key per attack")
            spec.sweep_key, spec.sweep = key, [_value(v) for v in val.split("|")]
        else:
            spec.overrides[key] = _value(val)
    return spec


def default_attack_factory(preset: str, model: torch.nn.Module, **kwargs) -> Any:
    """``sinkhorn_attacks.attacks.from_preset(preset, model, **kwargs)`` (imported lazily)."""
    try:
        from sinkhorn_attacks.attacks import from_preset
    except ImportError as err:  # pragma: no cover - depends on the attacks package
        raise ImportError("sinkhorn_attacks.attacks.from_preset is not available") from err
    return from_preset(preset, model, **kwargs)


def matched_radius_table(cells: dict[str, dict], grid: Sequence[float] | None = None) -> dict:
    """R@K of the final adversarial images interpolated at common *metered* radii.

    For every attack (cells grouped by attack name), the points (mean metered radius, R@K) of its sweep
    are sorted by radius and linearly interpolated on ``grid`` (default: every radius measured for any
    attack, so each attack is read off at the others' radii; outside an attack's own range: ``null``,
    never extrapolated).
    """
    by_attack: dict[str, list[tuple[float, dict]]] = {}
    key = (
        "metered_common_mean"
        if any(c.get("metered_common_mean") is not None for c in cells.values())
        else "metered_radius_mean"
    )
    for c in cells.values():
        r = c.get(key)
        if r is None or not math.isfinite(r):
            continue
        by_attack.setdefault(c["attack"], []).append((r, c["final"]))
    if not by_attack:
        return {}
    if grid is None:  # every radius some attack was measured at: each attack is read off at the others' radii
        grid = sorted({round(r, 12) for pts in by_attack.values() for r, _ in pts})
    out: dict = {"radius_field": key, "metered_radius": [float(g) for g in grid], "attacks": {}}
    for name, pts in by_attack.items():
        pts.sort(key=lambda t: t[0])
        rs = np.array([p[0] for p in pts])
        table: dict = {}
        for d in ("t2i", "i2t"):
            for k in ("R@1", "R@5", "R@10"):
                ys = np.array([p[1][d][k] for p in pts])
                vals = []
                for g in grid:
                    if g < rs[0] - 1e-12 or g > rs[-1] + 1e-12:
                        vals.append(None)
                    else:
                        vals.append(float(np.interp(g, rs, ys)))
                table[f"{d} {k}"] = vals
        out["attacks"][name] = table
    return out


ATTACK_COMMAND = "retrieval attack"
PART_FORMAT = "sinkhorn_attacks.retrieval.cell/1"
_ATTACK_OUTPUTS = ("attack.json", "recall_vs_iterations.png", "recall_vs_radius.png", "examples.png")


def part_stem(key: str) -> str:
    """The file name stem of a cell's files in ``OUT/parts`` (a collision-free
    :func:`~sinkhorn_attacks._runfolder.key_part` of the cell key)."""
    return key_part(key)


def run_attack(
    heads_path: str | Path,
    specs: Sequence[AttackSpec],
    out: str | Path,
    data: str | None = None,
    split: str = "test",
    steps: int = 20,
    record_steps: Sequence[int] | None = None,
    n_images: int | None = 100,
    batch_size: int = 8,
    objective: str = "cmpm",
    directions: Sequence[str] = ("i2t", "t2i"),
    cache_dir: str | None = None,
    attack_factory: Callable[..., Any] | None = None,
    time_budget_s: float | None = None,
    log: Log | None = print,
    plots: bool = True,
    extra_meta: dict | None = None,
    meter_images: int = 0,
    meter_kernel: int | None = 5,
    meter_p: float = 1.0,
    library_meter: bool = True,
    fresh: bool = False,
    limit: int | None = None,
) -> dict:
    """Attack the first ``n_images`` images of a split and write ``attack.json`` (+ plots) to ``out``.

    ``limit`` keeps only the split's first that many images (and their captions) as the gallery (smoke runs).

    Each cell runs ``steps`` iterations with ``success_fn=None`` (no early stop, so the R@K-vs-iteration
    curve is complete) and records the embeddings after the iterations in ``record_steps`` through the
    attack's ``callback``. With ``time_budget_s`` no new cell starts once the budget is spent (the skipped
    cells are listed). ``meter_images > 0`` measures the first that many images of every cell with the
    yardstick ``ot.measure`` (``Yardstick(meter_kernel, meter_p)``): one ruler for all attacks (including l_p
    ones), used by the matched-radius table. ``library_meter=False`` passes ``meter_cost=None`` so that the
    attacks do not meter every returned image themselves (their ``metered_radius`` is then ``nan``).

    The folder follows the run-folder engine: one lock for every command; ``config.json`` records the run's
    identity (heads and data by content, images, iterations, objective, meter), and a rerun of another
    identity is refused naming the differing keys (``fresh`` discards the folder's cells instead). Each
    finished cell is kept in ``out/parts`` (its examples file first, then the part that lists it, both
    atomic) and reused by a rerun once its settings, images and examples file check out.
    """
    t_start = time.time()
    folder = RunFolder(out, ATTACK_COMMAND)
    _check_cell_keys(specs)
    with folder.lock():
        model, meta = load_model(heads_path)
        if batch_size > model.embed_dim:  # the attack's labels are positions in the batch, < its output width
            raise UserError(f"batch_size {batch_size} exceeds the embedding size {model.embed_dim} of {heads_path}")
        ds = load_dataset(data or meta["data"], split).head(limit)
        n = ds.n_images if n_images is None else min(int(n_images), ds.n_images)
        rec = [t for t in sorted({0, steps, *(record_steps or range(steps + 1))}) if t <= steps]
        identity = {
            "heads": sha256_file(Path(heads_path)), "data": data_identity(ds), "split": split, "n_images": n,
            "steps": steps, "record_steps": rec, "batch_size": batch_size, "objective": objective,
            "directions": list(directions), "library_meter": library_meter, "meter_images": meter_images,
            **({"meter_kernel": meter_kernel, "meter_p": meter_p} if meter_images > 0 else {}),
        }  # fmt: skip
        fp = _open_attack_folder(folder, identity, fresh)
        ei, et = _clean_embeddings(model, meta, ds, cache_dir, log)
        obj = RetrievalObjective(et, ds.caption_labels, ei, ds.image_labels, kind=objective, directions=directions)
        ctx = _CellContext(
            factory=attack_factory or default_attack_factory, tower=model.image_tower(),
            load=lambda ii: ds.load_images(ii, size=meta.get("image_size")), obj=obj, ds=ds, ei=ei, et=et,
            idx=np.arange(n), steps=steps, rec=rec, batch_size=batch_size, library_meter=library_meter,
            meter_images=meter_images, log=log, folder=folder, fp=fp,
        )  # fmt: skip
        if meter_images > 0:
            ctx.set_meter(meter_kernel, meter_p)
        cells, skipped = ctx.run_all(specs, t_start, time_budget_s)
        result = _attack_result(ctx, str(heads_path), data or meta["data"], split, meta, cells, skipped)
        result.update({"seconds": round(time.time() - t_start, 1), **(extra_meta or {})})
        write_json(folder.path("attack.json"), result)
        if plots and cells:
            _attack_plots(result, folder.root)
    return result


def _check_cell_keys(specs: Sequence[AttackSpec]) -> None:
    """Refuse two attack specs that make the same cell (one would be reported under the other's key)."""
    seen: set[str] = set()
    for spec in specs:
        for key, _ in spec.cells():
            if key in seen:
                raise UserError(f"two --attack specs make the cell {key!r}; give one of them another #LABEL")
            seen.add(key)


def _open_attack_folder(folder: RunFolder, identity: dict[str, Any], fresh: bool) -> str:
    """Check ``config.json`` against ``identity`` (another command's folder is refused whatever ``fresh`` says;
    another identity unless ``fresh``, which discards the folder's cells), then record it. Returns the
    fingerprint the cells of this run carry."""
    rec = folder.refuse_foreign()
    fp = fingerprint(identity)
    if rec is not None and rec["fingerprint"] != fp and not fresh:
        raise UserError(conflict_message(folder.root, ATTACK_COMMAND, rec["config"], identity))
    if fresh:
        parts = folder.path("parts")
        for f in [*parts.glob("*.json"), *parts.glob("*.examples.pt")] if parts.is_dir() else []:
            f.unlink()
        for name in _ATTACK_OUTPUTS:
            folder.path(name).unlink(missing_ok=True)
    folder.write_record(fp, identity)
    return fp


def _attack_result(
    ctx: _CellContext, heads: str, data: str, split: str, meta: dict, cells: dict[str, dict], skipped: list[str]
) -> dict:
    """The content of ``attack.json`` (without the timing and the caller's extra keys)."""
    ds = ctx.ds
    return {
        "heads": heads,
        "data": data,
        "split": split,
        "match": ds.match,
        "model": {k: meta.get(k) for k in ("image_backbone", "text_backbone", "image_size", "train_config")},
        "objective": ctx.obj.describe(),
        "steps": ctx.steps,
        "record_steps": ctx.rec,
        "n_images": int(ctx.idx.size),
        "n_caption_queries": int(np.isin(ds.caption_image, ctx.idx).sum()),
        "clean_full_split": retrieval_metrics(ctx.ei, ds.image_labels, ctx.et, ds.caption_labels),
        "cells": cells,
        "skipped_cells": skipped,
        "matched_radius": matched_radius_table(cells),
        "conventions": _conventions(ds.match),
    }


def _attack_plots(result: dict, out: Path) -> None:
    from .plots import plot_examples, plot_recall_vs_iterations, plot_recall_vs_radius

    plot_recall_vs_iterations(result, out / "recall_vs_iterations.png")
    plot_recall_vs_radius(result, out / "recall_vs_radius.png")
    plot_examples(out, result, out / "examples.png")


def _conventions(match: str) -> dict[str, str]:
    return {
        "recall": "R@K = % of queries with a correct item in the top K; pessimistic ties",
        "t2i": "queries = captions of the attacked images; gallery = all split images with the attacked ones "
        "replaced by their adversarial versions",
        "i2t": "queries = the attacked (adversarial) images; gallery = all captions of the split",
        "hit": "same image (Flickr8k/COCO)" if match == "image" else "same person id (CUHK-PEDES)",
        "metered_radius": "exact OT cost between clean and adversarial image (library meter), mean over images",
    }


def _settings(spec: AttackSpec, overrides: dict) -> dict[str, Any]:
    """What a cell's result depends on besides the run's identity."""
    return {"attack": spec.name, "preset": spec.preset, "overrides": overrides, "sweep_key": spec.sweep_key}


@dataclass
class _CellContext:
    """What every (attack, radius) cell of :func:`run_attack` shares."""

    factory: Callable[..., Any]
    tower: torch.nn.Module
    load: Callable[[Sequence[int]], torch.Tensor]
    obj: RetrievalObjective
    ds: RetrievalData
    ei: torch.Tensor
    et: torch.Tensor
    idx: np.ndarray
    steps: int
    rec: list[int]
    batch_size: int
    library_meter: bool
    meter_images: int
    log: Log | None
    folder: RunFolder
    fp: str
    meter: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    meter_desc: str | None = None

    def set_meter(self, kernel: int | None, p: float) -> None:
        from sinkhorn_attacks.ot import Yardstick, measure

        yardstick = Yardstick(kernel, p)
        self.meter_desc = f"yardstick {yardstick.label} (ot.measure), first {self.meter_images} images of each cell"
        self.meter = lambda a, b: measure(a, b, yardstick).value

    def run_all(
        self, specs: Sequence[AttackSpec], t_start: float, budget_s: float | None
    ) -> tuple[dict[str, dict], list[str]]:
        """Every cell of ``specs``: loaded from ``parts/`` when finished, else run (unless over the budget)."""
        cells: dict[str, dict] = {}
        skipped: list[str] = []
        for spec in specs:
            for key, overrides in spec.cells():
                part = self.folder.path("parts", part_stem(key) + ".json")
                cell = self.load_part(part, key, _settings(spec, overrides))
                if cell is not None:
                    cells[key] = cell
                    if self.log:
                        self.log(f"[{key}] loaded from {part}")
                elif budget_s is not None and time.time() - t_start > budget_s:
                    skipped.append(key)
                else:
                    cells[key] = self.run_cell(spec, key, overrides, part)
        return cells, skipped

    def load_part(self, path: Path, key: str, settings: dict[str, Any]) -> dict | None:
        """The finished cell in ``path``, or ``None`` when there is none, or it was written by an earlier version
        or for another identity (then it is recomputed). A part of other settings, or whose images or examples
        file do not check out, is refused."""
        if not path.is_file():
            return None
        remedy = f"delete {path.name} and its examples file to recompute the cell, or use --fresh"
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path} is corrupt (not JSON); {remedy}") from None
        if not isinstance(part, dict) or part.get("format") != PART_FORMAT or part.get("fingerprint") != self.fp:
            if self.log:
                self.log(f"[{key}] {path} is of an earlier version or another run: recomputed")
            return None
        cell = part.get("cell")
        if part.get("key") != key or not isinstance(cell, dict):
            raise UserError(f"{path} does not hold the cell {key!r} (edited?); {remedy}")
        diff = differing_keys({k: cell.get(k) for k in settings}, settings)
        if diff:
            raise UserError(
                f"{path} holds the cell {key!r} of other settings (differing keys: {', '.join(diff)}); use another "
                "--out, or --fresh to discard it"
            )
        check_examples(path, key, part.get("image_indices") or [], self.idx.tolist(), remedy)
        self._check_examples_file(path, key, part.get("examples"), remedy)
        return cell

    def _check_examples_file(self, path: Path, key: str, listed: Any, remedy: str) -> None:
        """The examples file a part lists must be the one written with it (same SHA-256, the listed images)."""
        if listed is None:
            return
        if not isinstance(listed, dict) or not isinstance(listed.get("file"), str):
            raise UserError(f"{path} lists its examples file in an unknown form; {remedy}")
        f = self.folder.path("parts", listed["file"])
        if not f.is_file():
            raise UserError(f"{f} is missing but {path.name} lists it; {remedy}")
        if sha256_file(f) != listed.get("sha256"):
            raise UserError(f"{f} is truncated or not the file {path.name} lists (its SHA-256 differs); {remedy}")
        ex = torch.load(f, map_location="cpu", weights_only=True)
        n = int(ex["clean"].shape[0]) if ex["adv"].shape == ex["clean"].shape else -1
        check_examples(f, f"{key} (examples)", list(range(n)), listed.get("indices") or [], remedy)

    def _write_examples(self, key: str, examples: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        """Write a cell's example images (uint8) atomically; what its part lists about them."""
        if not examples:
            return None
        ex = {k: (v * 255).round().to(torch.uint8) for k, v in examples.items()}
        f = self.folder.path("parts", part_stem(key) + ".examples.pt")
        atomic_write(f, lambda fh: torch.save(ex, fh))
        return {"file": f.name, "indices": self.idx[: ex["clean"].shape[0]].tolist(), "sha256": sha256_file(f)}

    def run_cell(self, spec: AttackSpec, key: str, overrides: dict, part: Path) -> dict:
        """Attack every image with one (attack, radius) cell; write its examples, then ``part``, atomically."""
        log = self.log
        if log:
            log(f"[{key}] {self.idx.size} images x {self.steps} iterations, overrides {overrides}")

        def make(callback=None, gallery=None, _p=spec.preset, _o=overrides):
            kw = dict(_o)
            if not self.library_meter:
                kw.setdefault("meter_cost", None)
            loss = self.obj if gallery is None else self.obj.batch_view(gallery)  # labels: positions in the batch
            return self.factory(
                _p, self.tower, loss_fn=loss, success_fn=None, callback=callback, steps=self.steps, **kw
            )

        ds = self.ds
        res = attack_gallery(
            make, self.tower, self.load, self.obj, self.ei, ds.image_labels, self.et, ds.caption_labels,
            ds.caption_image, self.idx, record_steps=self.rec, batch_size=self.batch_size, log=log,
            meter=self.meter, meter_images=self.meter_images, meter_description=self.meter_desc,
        )  # fmt: skip
        cell = {**_settings(spec, overrides), **res.summary()}
        examples = self._write_examples(key, res.examples)  # before the part that lists them
        write_json(part, {"format": PART_FORMAT, "fingerprint": self.fp, "key": key,
                          "image_indices": self.idx.tolist(), "examples": examples, "cell": cell})  # fmt: skip
        if log:
            f = cell["final"]
            log(
                f"[{key}] final t2i {_fmt(f['t2i'])} i2t {_fmt(f['i2t'])}, metered "
                f"{_num(cell['metered_radius_mean'])} / common {_num(cell.get('metered_common_mean'))}, "
                f"{_num(cell['seconds'], '.1f')}s"
            )
        return cell


def _asdict(obj: Any) -> dict:
    return asdict(obj)
