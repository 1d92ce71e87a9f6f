"""One batch of a retrieval attack with every iterate kept: embeddings, true-pair recall, best iterate, yardstick.

:func:`attack_batch` runs an attack of the library on a batch of gallery images and, through the attack's
``callback``, embeds every iterate ``x_t`` (``t = 0`` clean, ``1 .. T``). For each image it scores each iterate
by :meth:`RetrievalObjective.pair_recall` (the recall of the image's own true pairs with that iterate
substituted, every other image clean; ties broken by the larger rank) and keeps the best one. The image the
attack returns is a candidate too, so the best image never retrieves its true pairs better than the returned
(last) one. Both the best and the last image of every example are measured with the library's yardstick
(:func:`sinkhorn_attacks.ot.measure`).

Embeddings come for free where the attack evaluates ``success_fn`` on each new iterate (the library's PGD
loop does): :class:`IterateTracker` is then also the attack's ``success_fn`` (it records the outputs and never
reports success, so no image leaves the loop early). The first recorded step of every batch is checked against
a forward pass of its own; if they differ, or the attack never calls ``success_fn``, the tracker embeds each
iterate itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..ot.yardstick import Yardstick, measure
from .attack import RetrievalObjective

__all__ = ["IterateTracker", "BatchOutcome", "attack_batch", "UNIT_FIELDS"]

# what a unit file keeps of a :class:`BatchOutcome` (the images are not stored)
UNIT_FIELDS = (
    "indices", "embeddings", "recall", "rank", "best_step", "best_embedding", "last_embedding", "yardstick_best",
    "yardstick_last", "linf_best", "linf_last", "l2_best", "l2_last", "nominal_radius", "attack_cpu_s",
    "meter_cpu_s", "wall_s", "captured",
)  # fmt: skip


class IterateTracker:
    """The attack's ``callback`` (and ``success_fn``): embeds and scores every iterate, keeps the best image.

    Args:
        tower: the attacked image model (``x -> embedding``).
        objective: gives :meth:`~RetrievalObjective.pair_recall`.
        indices: gallery indices of the batch's images.
        x: the clean images ``(B, C, H, W)`` on the attack's device.
        steps: the attack's iterations ``T``.
        clean_embedding: ``(B, d)`` clean embeddings of the batch.
    """

    def __init__(
        self,
        tower: nn.Module,
        objective: RetrievalObjective,
        indices: np.ndarray,
        x: Tensor,
        steps: int,
        clean_embedding: Tensor,
    ) -> None:
        self.tower, self.objective, self.steps = tower, objective, int(steps)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        B, d = clean_embedding.shape
        self.embeddings = torch.zeros(B, self.steps + 1, d)
        self.recall = torch.full((B, self.steps + 1), float("nan"), dtype=torch.float64)
        self.rank = torch.full((B, self.steps + 1), float("nan"), dtype=torch.float64)
        self.seen = torch.zeros(self.steps + 1, dtype=torch.bool)
        self.best_images = x.detach().clone()
        self.best_step = torch.zeros(B, dtype=torch.int64)
        self.best_embedding = clean_embedding.detach().float().cpu().clone()
        self.best_recall = torch.full((B,), float("inf"), dtype=torch.float64)
        self.best_rank = torch.full((B,), -float("inf"), dtype=torch.float64)
        self._pending: Tensor | None = None
        self._trusted: bool | None = None  # whether the attack's own outputs are the iterates' embeddings
        self.offer(0, x, clean_embedding)

    @property
    def captured(self) -> bool:
        """Whether the embeddings were taken from the attack's own forward passes."""
        return bool(self._trusted)

    def success_fn(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Records ``outputs`` (the attack's embeddings of its newest iterate); never reports success."""
        self._pending = outputs.detach()
        return torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)

    def __call__(self, step: int, x_adv: Tensor, *_rest: Any) -> None:
        step = int(step)
        emb = self._embed(x_adv)
        if 1 <= step <= self.steps:
            self.offer(step, x_adv, emb)

    def _embed(self, x_adv: Tensor) -> Tensor:
        pending, self._pending = self._pending, None
        usable = pending is not None and pending.shape[0] == x_adv.shape[0] and self._trusted is not False
        if usable and self._trusted:
            return pending.float()
        with torch.no_grad():
            own = self.tower(x_adv.detach()).float()
        if usable:  # first recorded step: do the attack's outputs embed exactly this iterate?
            self._trusted = bool(torch.allclose(pending.float(), own, rtol=1e-4, atol=1e-5))
        return own

    def offer(self, step: int, images: Tensor, embedding: Tensor) -> None:
        """Score iterate ``step`` (``steps + 1``: the returned image) and keep it where it beats the best."""
        emb = embedding.detach().float()
        recall, rank = self.objective.pair_recall(emb, self.indices)
        emb = emb.cpu()
        if step <= self.steps:
            self.embeddings[:, step], self.recall[:, step], self.rank[:, step] = emb, recall, rank
            self.seen[step] = True
        better = (recall < self.best_recall) | ((recall == self.best_recall) & (rank > self.best_rank))
        if bool(better.any()):
            self.best_recall[better], self.best_rank[better] = recall[better], rank[better]
            self.best_step[better] = step
            self.best_embedding[better] = emb[better]
            self.best_images[better.to(images.device)] = images.detach()[better.to(images.device)]

    def fill_unseen(self) -> None:
        """Iterations the attack did not report (it stopped early) keep the previous iterate."""
        for t in range(1, self.steps + 1):
            if not bool(self.seen[t]):
                self.embeddings[:, t], self.recall[:, t], self.rank[:, t] = (
                    self.embeddings[:, t - 1], self.recall[:, t - 1], self.rank[:, t - 1],
                )  # fmt: skip


@dataclass
class BatchOutcome:
    """One attacked batch. Per-image tensors have ``B`` rows; ``embeddings``, ``recall`` and ``rank`` have one
    column per iterate ``0 .. T``. ``best_step`` is the iterate of the best image (``T + 1``: the returned image,
    where it is not iterate ``T`` and retrieves its pairs worse). Radii are yardstick values of exactly
    ``best_images`` / ``last_images`` (the returned images)."""

    indices: np.ndarray
    embeddings: Tensor
    recall: Tensor
    rank: Tensor
    best_step: Tensor
    best_embedding: Tensor
    last_embedding: Tensor
    best_images: Tensor
    last_images: Tensor
    yardstick_best: Tensor
    yardstick_last: Tensor
    linf_best: Tensor
    linf_last: Tensor
    l2_best: Tensor
    l2_last: Tensor
    nominal_radius: Tensor
    attack_cpu_s: float
    meter_cpu_s: float
    wall_s: float
    captured: bool

    def to_unit(self) -> dict[str, Any]:
        """The fields a unit file stores (everything but the images)."""
        return {k: getattr(self, k) for k in UNIT_FIELDS}


def _nominal(res: Any, B: int) -> Tensor:
    r = getattr(res, "radius", None)
    if r is None:
        return torch.full((B,), float("nan"), dtype=torch.float64)
    r = torch.as_tensor(r).detach().double().cpu().reshape(-1)
    return r.expand(B).clone() if r.numel() == 1 else r


def _measure_pair(x: Tensor, best: Tensor, last: Tensor, yardstick: Yardstick) -> tuple[Tensor, Tensor]:
    """Yardstick of the best and the last images, measuring an image only once where both are the same."""
    same = (best == last).flatten(1).all(1)
    v_last = measure(x, last, yardstick).value
    v_best = v_last.clone()
    if bool((~same).any()):
        v_best[~same] = measure(x[~same], best[~same], yardstick).value
    return v_best, v_last


def attack_batch(
    make_attack: Callable[..., Callable[[Tensor, Tensor], Any]],
    tower: nn.Module,
    objective: RetrievalObjective,
    x: Tensor,
    indices: np.ndarray,
    steps: int,
    clean_embedding: Tensor,
    yardstick: Yardstick | None = None,
) -> BatchOutcome:
    """Attack the gallery images ``indices`` (pixels ``x``, on the attack's device) and keep every iterate.

    ``make_attack(callback=..., success_fn=...)`` builds the attack for ``tower`` with the batch's loss (see
    :meth:`RetrievalObjective.batch_view`); it is called with the labels ``0 .. B-1``. ``yardstick`` (default
    :class:`~sinkhorn_attacks.ot.Yardstick` ``()``) measures the best and the last image of every example.
    """
    yardstick = yardstick or Yardstick()
    B = x.shape[0]
    tracker = IterateTracker(tower, objective, indices, x, steps, clean_embedding)
    atk = make_attack(callback=tracker, success_fn=tracker.success_fn)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    res = atk(x, torch.arange(B, device=x.device))
    last = getattr(res, "adv", None)
    last = (res.x_adv if last is None else last).detach()
    with torch.no_grad():
        last_emb = tower(last).float()
    attack_cpu = time.process_time() - t_cpu
    tracker.fill_unseen()
    tracker.offer(steps + 1, last, last_emb)
    t_meter = time.process_time()
    xc, best_c, last_c = x.detach().cpu(), tracker.best_images.cpu(), last.cpu()
    v_best, v_last = _measure_pair(xc, best_c, last_c, yardstick)
    d_best, d_last = (best_c - xc).flatten(1).double(), (last_c - xc).flatten(1).double()
    return BatchOutcome(
        indices=np.asarray(indices, dtype=np.int64), embeddings=tracker.embeddings, recall=tracker.recall,
        rank=tracker.rank, best_step=tracker.best_step, best_embedding=tracker.best_embedding,
        last_embedding=last_emb.cpu(), best_images=best_c, last_images=last_c, yardstick_best=v_best,
        yardstick_last=v_last, linf_best=d_best.abs().amax(1), linf_last=d_last.abs().amax(1),
        l2_best=d_best.norm(dim=1), l2_last=d_last.norm(dim=1), nominal_radius=_nominal(res, B),
        attack_cpu_s=attack_cpu, meter_cpu_s=time.process_time() - t_meter, wall_s=time.perf_counter() - t_wall,
        captured=tracker.captured,
    )  # fmt: skip
