"""The results of a retrieval experiment (:mod:`.study`) from its finished units: curves, radii, matched radii.

Every cell (attack, radius) is evaluated on the same first ``n_images`` attacked images (the images every
cell has finished). For each iteration ``t = 0 .. T`` two R@K curves are computed, each with all attacked
images substituted at once in the split's gallery:

* ``last``: the embeddings of iterate ``t``;
* ``best``: per image, the iterate among ``0 .. t`` whose true pairs are retrieved worst (lowest recall of
  :meth:`RetrievalObjective.pair_recall`, then highest rank, then the earliest), so the curve of each image
  never rises.

``final.best`` / ``final.last`` use the kept best image and the image the attack returned. Radii are the
yardstick values of those images. :func:`matched_radius` reads each attack's final R@K at common yardstick
radii, interpolating linearly between its own radii and leaving cells outside its range empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .metrics import pessimistic_ranks, retrieval_metrics

__all__ = ["JointRecall", "running_best", "matched_radius", "summarise"]

KS = (1, 5, 10)
DIRECTIONS = ("t2i", "i2t")


class JointRecall:
    """R@K of the attacked images' queries with their embeddings substituted in the gallery.

    t2i: the captions of the attacked images query all split images (the attacked ones replaced); i2t: the
    attacked images query all captions. Cosine similarity, pessimistic ties (as
    :func:`~sinkhorn_attacks.retrieval.metrics.retrieval_metrics`, restricted to these queries)."""

    def __init__(
        self,
        img_emb: Tensor,
        img_labels: np.ndarray,
        txt_emb: Tensor,
        txt_labels: np.ndarray,
        caption_image: np.ndarray,
        idx: np.ndarray,
    ) -> None:
        il = torch.as_tensor(np.asarray(img_labels), dtype=torch.int64)
        tl = torch.as_tensor(np.asarray(txt_labels), dtype=torch.int64)
        self.idx = torch.as_tensor(np.asarray(idx), dtype=torch.int64)
        cap_q = torch.as_tensor(np.flatnonzero(np.isin(caption_image, np.asarray(idx))), dtype=torch.int64)
        self.gallery = F.normalize(img_emb.float(), dim=1)
        self.text = F.normalize(txt_emb.float(), dim=1)
        self.queries = self.text[cap_q]
        self.pos_t2i = tl[cap_q][:, None] == il[None, :]
        self.pos_i2t = il[self.idx][:, None] == tl[None, :]
        self.n_caption_queries = int(cap_q.numel())

    def __call__(self, emb: Tensor) -> dict[str, dict[str, float]]:
        g = self.gallery.clone()
        g[self.idx] = F.normalize(emb.float(), dim=1)
        ranks = {
            "t2i": pessimistic_ranks(self.queries @ g.T, self.pos_t2i),
            "i2t": pessimistic_ranks(g[self.idx] @ self.text.T, self.pos_i2t),
        }
        return {d: {f"R@{k}": 100.0 * float((r < k).double().mean()) for k in KS} for d, r in ranks.items()}


def running_best(recall: Tensor, rank: Tensor) -> Tensor:
    """``(n, T+1)`` index of each image's best iterate among ``0 .. t``: lowest recall, then highest rank,
    then the earliest."""
    n, t1 = recall.shape
    out = torch.zeros(n, t1, dtype=torch.int64)
    cur = torch.zeros(n, dtype=torch.int64)
    best_recall, best_rank = recall[:, 0].clone(), rank[:, 0].clone()
    for t in range(1, t1):
        better = (recall[:, t] < best_recall) | ((recall[:, t] == best_recall) & (rank[:, t] > best_rank))
        cur = torch.where(better, torch.full_like(cur, t), cur)
        best_recall = torch.where(better, recall[:, t], best_recall)
        best_rank = torch.where(better, rank[:, t], best_rank)
        out[:, t] = cur
    return out


def _stats(v: Tensor) -> dict[str, Any]:
    v = v.double()
    fin = v[torch.isfinite(v)]
    if not fin.numel():
        return {"mean": None, "median": None, "min": None, "max": None, "values": []}
    return {
        "mean": float(fin.mean()),
        "median": float(fin.median()),
        "min": float(fin.min()),
        "max": float(fin.max()),
        "values": [float(f"{x:.6g}") for x in v.tolist()],
    }


def _cat(units: Sequence[dict[str, Any]], key: str, n: int) -> Tensor:
    return torch.cat([torch.as_tensor(u[key]) for u in units])[:n]


def _cell(attack: Any, radius: float, units: list[dict[str, Any]], n: int, joint: JointRecall, iterations: int) -> dict:
    """The summary of one (attack, radius) on the first ``n`` images."""
    cell: dict[str, Any] = {"attack": attack.label, "preset": attack.preset, "radius": radius, "params": attack.params}
    cell["key"] = attack.key(radius)
    done = sum(len(u["indices"]) for u in units)
    cpu = sum(float(u["attack_cpu_s"]) for u in units)
    cell["timing"] = {
        "images_done": done,
        "attack_cpu_s": round(cpu, 2),
        "cpu_s_per_image_iteration": cpu / (done * iterations) if done else None,
        "meter_cpu_s_per_image": sum(float(u["meter_cpu_s"]) for u in units) / done if done else None,
        "wall_s": round(sum(float(u["wall_s"]) for u in units), 2),
        "devices": sorted({str(u.get("device", "cpu")) for u in units}),
        "embeddings_from_attack": all(bool(u["captured"]) for u in units) if units else None,
    }
    cell["n_images"] = n
    if n == 0:
        return cell
    emb, recall, rank = _cat(units, "embeddings", n), _cat(units, "recall", n), _cat(units, "rank", n)
    best = running_best(recall, rank)
    rows = torch.arange(n)
    cell["curves"] = {
        "best": {str(t): joint(emb[rows, best[:, t]]) for t in range(iterations + 1)},
        "last": {str(t): joint(emb[:, t]) for t in range(iterations + 1)},
    }
    cell["final"] = {"best": joint(_cat(units, "best_embedding", n)), "last": joint(_cat(units, "last_embedding", n))}
    cell["yardstick"] = {m: _stats(_cat(units, f"yardstick_{m}", n)) for m in ("best", "last")}
    cell["linf_mean"] = {m: float(_cat(units, f"linf_{m}", n).mean()) for m in ("best", "last")}
    cell["l2_mean"] = {m: float(_cat(units, f"l2_{m}", n).mean()) for m in ("best", "last")}
    step = _cat(units, "best_step", n).double()
    cell["best_step"] = {"mean": float(step.mean()), "share_last": float((step >= iterations).double().mean())}
    nominal = _cat(units, "nominal_radius", n).double()
    cell["nominal_radius_mean"] = float(nominal.mean()) if bool(torch.isfinite(nominal).all()) else None
    return cell


def matched_radius(cells: Sequence[dict[str, Any]], mode: str = "best") -> dict[str, Any]:
    """Final R@K of every attack at common yardstick radii (mean over images).

    The grid is every mean radius measured for any cell; an attack's values at a grid radius are the linear
    interpolation between its own (radius, R@K) points, and ``None`` outside the range of its own radii
    (never extrapolated)."""
    pts: dict[str, list[tuple[float, dict]]] = {}
    for c in cells:
        r = (c.get("yardstick") or {}).get(mode, {}).get("mean")
        if c.get("n_images") and r is not None and math.isfinite(r):
            pts.setdefault(c["attack"], []).append((float(r), c["final"][mode]))
    grid = sorted({r for p in pts.values() for r, _ in p})
    table: dict[str, dict[str, list[float | None]]] = {}
    ranges: dict[str, list[float]] = {}
    for name, p in pts.items():
        p.sort(key=lambda t: t[0])
        rs = np.array([r for r, _ in p])
        ranges[name] = [float(rs[0]), float(rs[-1])]
        table[name] = {}
        for d in DIRECTIONS:
            for k in KS:
                ys = np.array([m[d][f"R@{k}"] for _, m in p])
                table[name][f"{d} R@{k}"] = [
                    float(np.interp(g, rs, ys)) if rs[0] <= g <= rs[-1] else None for g in grid
                ]
    return {"mode": mode, "radius": grid, "range": ranges, "attacks": table}


def _conventions(match: str, yardstick_label: str) -> dict[str, str]:
    return {
        "recall": "R@K = % of queries with a correct item in the top K; cosine similarity, pessimistic ties",
        "t2i": "queries = the captions of the attacked images; gallery = every image of the split, the attacked "
        "ones replaced by their adversarial versions",
        "i2t": "queries = the attacked images; gallery = every caption of the split",
        "hit": "the same image" if match == "image" else "the same person id",
        "best": "per image, the iterate (or the returned image) whose own true pairs are retrieved worst "
        "(lowest true-pair recall with the other images clean, then highest rank, then the earliest)",
        "last": "the iterate t (curves) or the image the attack returned (final)",
        "radius": f"yardstick {yardstick_label} between the clean and the adversarial image, mean over images",
        "matched_radius": "final R@K interpolated linearly between an attack's own radii; empty outside them",
    }


def summarise(cfg: Any, s: Any, units: dict[str, list[dict[str, Any]]], nominal_units: dict[str, str]) -> dict:
    """The results dict of an experiment from its units (see the module docstring)."""
    ds, T = s.data, cfg.iterations
    sizes = [sum(len(u["indices"]) for u in us) for us in units.values()]
    n = min(min(sizes, default=0), cfg.n_images)
    idx = np.arange(n)
    joint = JointRecall(
        s.image_embeddings, ds.image_labels, s.text_embeddings, ds.caption_labels, ds.caption_image, idx
    )
    cells = []
    for a, r in cfg.cells():
        cell = _cell(a, r, units[a.key(r)], n, joint, T)
        cell["units"] = nominal_units.get(a.key(r), "")
        cells.append(cell)
    full = retrieval_metrics(s.image_embeddings, ds.image_labels, s.text_embeddings, ds.caption_labels)
    ruler = cfg.ruler()
    return {
        "dataset": cfg.title or ds.name,
        "n_images": n,
        "iterations": T,
        "attacks": [a.label for a in cfg.attacks],
        "n_images_planned": cfg.n_images,
        "complete": n >= cfg.n_images,
        "data": cfg.data,
        "split": cfg.split,
        "n_gallery_images": ds.n_images,
        "n_captions": ds.n_captions,
        "n_caption_queries": joint.n_caption_queries,
        "model": {k: s.meta.get(k) for k in ("image_backbone", "text_backbone", "image_size", "train_config")},
        "heads": str(s.heads_path),
        "objective": s.objective.describe(),
        "yardstick": {"label": ruler.label, "description": ruler.describe(), **ruler.to_dict()},
        "clean": {
            "full_split": full,
            "attacked_queries": joint(s.image_embeddings[torch.as_tensor(idx)]) if n else None,
        },
        "cells": cells,
        "matched_radius": {m: matched_radius(cells, m) for m in ("best", "last")},
        "conventions": _conventions(ds.match, ruler.label),
        "config": cfg.to_dict(),
    }
