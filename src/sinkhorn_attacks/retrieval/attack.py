r"""Retrieval attack objectives and the loop that attacks a whole image gallery.

Only images are perturbed. The objective is **per image and independent**: for a gallery image ``i``
whose adversarial embedding is ``e = encode_image(x_i^adv)``, everything else is fixed and precomputed:
the caption embeddings ``Z`` (all captions of the split, labels ``l_j``) and the clean embeddings
``X`` of the other gallery images. So any classifier attack of the library (UOT, Wong, Hu, Wu, l_p PGD)
can maximise it unchanged through its ``loss_fn(outputs, labels) -> (B,)`` hook, with ``outputs = e``
and ``labels = i`` (the gallery index of each attacked image).

Objectives (``kind``; all are *maximised* by the attack):

* ``"cmpm"`` (default): the CMPM loss of the image's true pairs against the full gallery,
  ``L = KL(p || q)_{i2t} + mean_{c: l_c = y_i} KL(p'_c || q'_c)_{t2i}`` with
  ``p_j = softmax_j(e . zbar_j)`` over all captions, ``q`` uniform over the captions with the image's
  label, and, for each positive caption ``c``, ``p'_c = softmax_k(z_c . xbar_k)`` over the gallery in which
  image ``i``'s clean embedding is replaced by ``e``, ``q'_c`` uniform over the images with label ``l_c``.
  ``directions`` selects one or both terms.
* ``"nll"``: ``-log sum_{j pos} p_j`` (i2t) and ``-log sum_{k pos} p'_{c,k}`` (t2i), the positive-mass
  part of the same KL; unbounded, so it keeps pushing after R@K hits 0.
* ``"cosine"``: ``-mean_{c pos} cos(e, z_c)``, i.e. minimise the similarity of the matched pairs.
* ``"margin"``: ``min(kappa, max_{j neg} cos(e, z_j) - max_{j pos} cos(e, z_j))``, a CW-style rank margin.
* ``"cmpc"``: the CMPC cross-entropies of the pairs (``e`` with each own caption ``z_c``),
  ``CE(Wbar^T xhat, y) + CE(Wbar^T zhat, y)`` with ``xhat = (e.zbar_c) zbar_c``, ``zhat = (z_c.ebar) ebar``.
  Test labels are not training classes (Flickr: each training image is a class; CUHK-PEDES: test ids are
  unseen), so the trained ``W`` cannot score them; by default the class weights are the text
  prototypes ``W_c = mean_{j: l_j = c} zbar_j`` of the evaluation split (our adaptation, stated in
  result files). A trained ``W`` can be given with ``class_of_label`` mapping labels to its classes.

Evaluation after the attack substitutes the adversarial embeddings of all attacked images at once, so the
objective (which keeps the *other* images clean) is a per-image surrogate of the joint ranking.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .losses import CMPM_EPS
from .metrics import retrieval_metrics

__all__ = ["RetrievalObjective", "OBJECTIVES", "GalleryAttackResult", "attack_gallery", "embed_images"]

OBJECTIVES = ("cmpm", "nll", "cosine", "margin", "cmpc")


class RetrievalObjective:
    """Per-image retrieval loss against a fixed caption gallery and fixed clean image embeddings.

    Args:
        txt_emb: ``(n_captions, d)`` caption embeddings of the evaluation split.
        txt_labels: ``(n_captions,)`` their labels.
        img_emb: ``(n_images, d)`` clean embeddings of the gallery images.
        img_labels: ``(n_images,)`` their labels.
        kind: one of :data:`OBJECTIVES`.
        directions: ``("i2t", "t2i")`` or one of them (``cmpm``/``nll``/``cmpc``).
        kappa: clip of the ``margin`` objective.
        cmpc_weight, class_of_label: a trained CMPC ``W`` ``(d, C)`` and a ``(n_labels,)`` map from labels to its
            classes; default the text-prototype classifier of the split.
        eps: the ``eps`` inside ``log(q + eps)``.
    Call: ``objective(outputs (B, d), idx (B,)) -> (B,)`` where ``idx`` are gallery indices.
    """

    def __init__(
        self,
        txt_emb: Tensor,
        txt_labels: Tensor | np.ndarray,
        img_emb: Tensor,
        img_labels: Tensor | np.ndarray,
        kind: str = "cmpm",
        directions: Sequence[str] = ("i2t", "t2i"),
        kappa: float = float("inf"),
        cmpc_weight: Tensor | None = None,
        class_of_label: Tensor | np.ndarray | None = None,
        eps: float = CMPM_EPS,
    ) -> None:
        if kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {kind!r}; choose from {OBJECTIVES}")
        bad = set(directions) - {"i2t", "t2i"}
        if bad or not directions:
            raise ValueError(f"directions must be a non-empty subset of ('i2t', 't2i'), got {directions}")
        self.kind, self.directions, self.kappa, self.eps = kind, tuple(directions), float(kappa), eps
        self._moved: dict[tuple[str, str], Tensor] = {}  # fixed tensors copied to an attack's device, once
        self.txt = txt_emb.detach().float()
        self.zbar = F.normalize(self.txt, dim=1)
        self.txt_labels = torch.as_tensor(np.asarray(txt_labels), dtype=torch.int64)
        self.img = img_emb.detach().float()
        self.xbar = F.normalize(self.img, dim=1)
        self.img_labels = torch.as_tensor(np.asarray(img_labels), dtype=torch.int64)
        # clean t2i logits z_c . xbar_k, (n_captions, n_images)
        self.t2i_logits = self.txt @ self.xbar.T
        n_labels = int(max(self.img_labels.max(), self.txt_labels.max())) + 1
        # positives of each label among captions, as a padded index table
        self._cap_of_label = [torch.nonzero(self.txt_labels == c).flatten() for c in range(n_labels)]
        if kind == "cmpc":
            if cmpc_weight is None:
                w = torch.zeros(self.txt.shape[1], n_labels)
                w.index_add_(1, self.txt_labels, self.zbar.T)
                self.cmpc_w = F.normalize(w, dim=0)
                self.class_of_label = torch.arange(n_labels)
            else:
                if class_of_label is None:
                    raise ValueError("a trained cmpc_weight needs class_of_label (label -> class index)")
                self.cmpc_w = F.normalize(cmpc_weight.detach().float(), dim=0)
                self.class_of_label = torch.as_tensor(np.asarray(class_of_label), dtype=torch.int64)

    def _on(self, name: str, dev: torch.device) -> Tensor:
        """The fixed tensor ``name`` on ``dev`` (copied once per device, so CUDA runs copy nothing per step)."""
        t = getattr(self, name)
        if t.device == dev:
            return t
        key = (name, str(dev))
        if key not in self._moved:
            self._moved[key] = t.to(dev)
        return self._moved[key]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "directions": list(self.directions),
            "kappa": self.kappa,
            "gallery": "full split, other images clean",
            "n_captions": int(self.txt.shape[0]),
            "n_images": int(self.img.shape[0]),
            "cmpc_weights": "text prototypes" if self.kind == "cmpc" else None,
        }

    # ------------------------------------------------------------------------------------------------------
    def _pairs(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Flattened (batch row, positive caption) pairs for the images ``idx``."""
        rows, caps = [], []
        for b, i in enumerate(idx.tolist()):
            c = self._cap_of_label[int(self.img_labels[i])]
            rows.append(torch.full((c.numel(),), b, dtype=torch.int64))
            caps.append(c)
        return torch.cat(rows), torch.cat(caps)

    def _mean_over_pairs(self, vals: Tensor, rows: Tensor, batch: int) -> Tensor:
        tot = torch.zeros(batch, dtype=vals.dtype, device=vals.device).index_add(0, rows, vals)
        cnt = torch.zeros(batch, dtype=vals.dtype, device=vals.device).index_add(0, rows, torch.ones_like(vals))
        return tot / cnt.clamp_min(1.0)

    def _kl_or_nll(self, logits: Tensor, pos: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1)
        if self.kind == "nll":
            return -torch.logsumexp(log_p.masked_fill(~pos, float("-inf")), dim=1)
        q = pos.to(logits.dtype)
        q = q / q.sum(1, keepdim=True).clamp_min(1.0)
        return (log_p.exp() * (log_p - torch.log(q + self.eps))).sum(1)

    def __call__(self, outputs: Tensor, idx: Tensor) -> Tensor:
        e = outputs.float()
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        dev = e.device
        lab = self.img_labels[idx].to(dev)
        B = e.shape[0]
        if self.kind == "cosine":
            rows, caps = self._pairs(idx)
            cos = (F.normalize(e, dim=1)[rows.to(dev)] * self._on("zbar", dev)[caps.to(dev)]).sum(1)
            return -self._mean_over_pairs(cos, rows.to(dev), B)
        if self.kind == "margin":
            s = F.normalize(e, dim=1) @ self._on("zbar", dev).T
            pos = lab[:, None] == self._on("txt_labels", dev)[None, :]
            best_pos = s.masked_fill(~pos, float("-inf")).max(1).values
            best_neg = s.masked_fill(pos, float("-inf")).max(1).values
            return (best_neg - best_pos).clamp(max=self.kappa)
        if self.kind == "cmpc":
            rows, caps = self._pairs(idx)
            rows, caps = rows.to(dev), caps.to(dev)
            ee, zz = e[rows], self._on("txt", dev)[caps]
            zbar, ebar = F.normalize(zz, dim=1), F.normalize(ee, dim=1)
            x_hat = (ee * zbar).sum(1, keepdim=True) * zbar
            z_hat = (zz * ebar).sum(1, keepdim=True) * ebar
            w = self._on("cmpc_w", dev)
            y = self._on("class_of_label", dev)[lab[rows]]
            loss = torch.zeros_like(rows, dtype=e.dtype)
            if "i2t" in self.directions:
                loss = loss + F.cross_entropy(x_hat @ w, y, reduction="none")
            if "t2i" in self.directions:
                loss = loss + F.cross_entropy(z_hat @ w, y, reduction="none")
            return self._mean_over_pairs(loss, rows, B)
        # cmpm / nll
        total = torch.zeros(B, dtype=e.dtype, device=dev)
        if "i2t" in self.directions:
            logits = e @ self._on("zbar", dev).T
            pos = lab[:, None] == self._on("txt_labels", dev)[None, :]
            total = total + self._kl_or_nll(logits, pos)
        if "t2i" in self.directions:
            rows, caps = self._pairs(idx)
            rows, caps = rows.to(dev), caps.to(dev)
            own = (self._on("txt", dev)[caps] * F.normalize(e, dim=1)[rows]).sum(1)  # z_c . ebar
            logits = self._on("t2i_logits", dev)[caps].scatter(1, idx.to(dev)[rows][:, None], own[:, None])
            pos = self._on("txt_labels", dev)[caps][:, None] == self._on("img_labels", dev)[None, :]
            total = total + self._mean_over_pairs(self._kl_or_nll(logits, pos), rows, B)
        return total

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def i2t_rank(self, outputs: Tensor, idx: Tensor) -> Tensor:
        """Pessimistic i2t rank of each attacked image (0 = a true caption is first)."""
        from .metrics import pessimistic_ranks

        e = outputs.detach().float()
        dev = e.device
        lab = self.img_labels[torch.as_tensor(idx, dtype=torch.int64).cpu()].to(dev)
        s = F.normalize(e, dim=1) @ self._on("zbar", dev).T
        return pessimistic_ranks(s, lab[:, None] == self._on("txt_labels", dev)[None, :]).cpu()

    @torch.no_grad()
    def pair_recall(self, outputs: Tensor, idx: Tensor, ks: Sequence[int] = (1, 5, 10)) -> tuple[Tensor, Tensor]:
        """How well each image's own true pairs are still retrieved with its embedding ``outputs`` substituted
        (every other image clean, as in the objective).

        Returns ``(recall, rank)``, both ``(B,)`` float64 on the CPU: ``recall`` is 100 times the mean of the
        ``2 len(ks)`` numbers [i2t hit@K of the image, mean over its captions of the t2i hit@K]; ``rank`` is
        the image's pessimistic i2t rank plus the mean pessimistic t2i rank of its captions (0-based, cosine
        similarity as in :func:`~sinkhorn_attacks.retrieval.metrics.retrieval_metrics`). A lower ``recall``,
        then a higher ``rank``, is a better attack.
        """
        from .metrics import pessimistic_ranks

        e = F.normalize(outputs.detach().float(), dim=1)
        dev, B = e.device, e.shape[0]
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        lab = self.img_labels[idx].to(dev)
        zbar, txt_labels = self._on("zbar", dev), self._on("txt_labels", dev)
        r_i2t = pessimistic_ranks(e @ zbar.T, lab[:, None] == txt_labels[None, :]).double()
        rows, caps = (t.to(dev) for t in self._pairs(idx))
        scores = zbar[caps] @ self._on("xbar", dev).T  # clean cosine of each positive caption to the gallery
        own = (zbar[caps] * e[rows]).sum(1)
        scores = scores.scatter(1, idx.to(dev)[rows][:, None], own[:, None])
        r_t2i = pessimistic_ranks(scores, txt_labels[caps][:, None] == self._on("img_labels", dev)[None, :]).double()
        hits = []
        for k in ks:
            hits += [(r_i2t < k).double(), self._mean_over_pairs((r_t2i < k).double(), rows, B)]
        recall = 100.0 * torch.stack(hits).mean(0)
        return recall.cpu(), (r_i2t + self._mean_over_pairs(r_t2i, rows, B)).cpu()

    def batch_view(self, idx: Sequence[int] | np.ndarray | Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """``loss_fn(outputs, positions)`` for one batch whose images are the gallery images ``idx``:
        ``positions`` (``0 .. B-1``) index ``idx``. Attacks then see small labels (an attack checks its labels
        against the width of the model's output, here the embedding size, so gallery indices beyond it would
        be refused)."""
        gallery = torch.as_tensor(np.asarray(idx), dtype=torch.int64)

        def loss(outputs: Tensor, positions: Tensor) -> Tensor:
            return self(outputs, gallery[torch.as_tensor(positions).cpu()])

        return loss

    def success_fn(self, k: int = 1) -> Callable[[Tensor, Tensor], Tensor]:
        """``(outputs, idx) -> bool (B,)``: no true caption of the image is in the top ``k`` (i2t)."""

        def success(outputs: Tensor, idx: Tensor) -> Tensor:
            return (self.i2t_rank(outputs, idx) >= k).to(outputs.device)

        return success


@torch.no_grad()
def embed_images(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """``model(images)`` in batches without gradients (``model`` maps ``[0,1]`` images to embeddings)."""
    out = [model(images[s : s + batch_size]).float().cpu() for s in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class GalleryAttackResult:
    """Outcome of :func:`attack_gallery`.

    ``embeddings[t]`` is ``(n_attacked, d)``: the embeddings of the attacked images after ``t`` iterations
    (``t = 0`` clean); ``metrics[t]`` the R@K over the attacked images' queries with those embeddings
    substituted in the gallery.
    """

    image_indices: np.ndarray
    steps: list[int]
    embeddings: dict[int, Tensor]
    metrics: dict[int, dict]
    final_metrics: dict
    success: np.ndarray
    radius: np.ndarray
    metered_radius: np.ndarray
    iterations: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    seconds: float
    examples: dict[str, Tensor] = field(default_factory=dict)
    metered_common: np.ndarray | None = None
    meter_description: str | None = None

    def summary(self) -> dict[str, Any]:
        known = ~np.isnan(self.metered_radius)
        fin = np.isfinite(self.metered_radius)

        def stat(a: np.ndarray) -> float | None:
            a = a[~np.isnan(a)]
            return float(np.mean(a)) if a.size else None

        return {
            "n_images": int(self.image_indices.size),
            "steps": self.steps,
            "curve": {str(t): self.metrics[t] for t in self.steps},
            "final": self.final_metrics,
            "success_rate": stat(self.success.astype(float)),  # None when the attack reports no success
            "nominal_radius_mean": stat(self.radius),
            "metered_radius_mean": float(np.mean(self.metered_radius[fin])) if fin.any() else None,
            "metered_radius_median": float(np.median(self.metered_radius[fin])) if fin.any() else None,
            "metered_infinite": int((known & ~fin).sum()),
            "linf_mean": stat(self.linf),
            "l2_mean": stat(self.l2),
            "iterations_mean": stat(self.iterations),
            "seconds": round(self.seconds, 1),
            **self._common_summary(),
        }

    def _common_summary(self) -> dict[str, Any]:
        if self.metered_common is None:
            return {}
        m = self.metered_common[~np.isnan(self.metered_common)]
        fin = m[np.isfinite(m)]
        return {
            "meter": self.meter_description,
            "metered_common_n": int(m.size),
            "metered_common_infinite": int(m.size - fin.size),
            "metered_common_mean": float(fin.mean()) if fin.size else None,
            "metered_common_median": float(np.median(fin)) if fin.size else None,
            "metered_common_values": [float(v) for v in m],
        }


_ALIASES = {
    "adv": ("adv", "x_adv"),
    "radius": ("radius", "radius_nominal"),
    "metered_radius": ("metered_radius", "radius_metered"),
    "iterations": ("iterations", "n_steps"),
    "success": ("success",),
}


def _get(res: Any, name: str) -> Any:
    for n in _ALIASES.get(name, (name,)):
        v = getattr(res, n, None)
        if v is not None:
            return v
    return None


def _attr(res: Any, name: str, batch: int) -> np.ndarray:
    v = _get(res, name)
    if v is None:
        return np.full(batch, np.nan)
    v = torch.as_tensor(v).detach().double().cpu().reshape(-1)
    return (v.expand(batch) if v.numel() == 1 else v).numpy().copy()


def attack_gallery(
    make_attack: Callable[..., Callable[[Tensor, Tensor], Any]],
    tower: nn.Module,
    load_images: Callable[[Sequence[int]], Tensor],
    objective: RetrievalObjective,
    clean_img_emb: Tensor,
    img_labels: np.ndarray,
    txt_emb: Tensor,
    txt_labels: np.ndarray,
    caption_image: np.ndarray,
    image_indices: Sequence[int],
    record_steps: Sequence[int] = (),
    batch_size: int = 8,
    ks: Sequence[int] = (1, 5, 10),
    log: Callable[[str], None] | None = print,
    keep_examples: int = 3,
    meter: Callable[[Tensor, Tensor], Tensor] | None = None,
    meter_images: int = 0,
    meter_description: str | None = None,
) -> GalleryAttackResult:
    """Attack the gallery images ``image_indices`` in batches and measure R@K along the way.

    Args:
        make_attack: ``make_attack(callback=fn) -> atk`` building the attack for ``tower``, with the
            objective as its ``loss_fn``; ``atk(images, idx)`` returns a result with ``.adv`` and optionally
            ``.success``, ``.radius``, ``.metered_radius``, ``.iterations``. ``callback(step, x_adv, ...)`` is
            called by the attack loop after each step (``step`` = 1, 2, ...; extra arguments are ignored).
            A ``make_attack`` that takes ``gallery=`` is called with the batch's gallery indices and its attack
            with the labels ``0 .. B-1`` instead (its loss: ``objective.batch_view(gallery)``), so that gallery
            indices beyond the embedding size pass the attack's check of its labels against the output width.
        tower: the image model handed to the attack (``x -> embedding``), used for recording.
        load_images: ``indices -> (B, 3, H, W)`` in ``[0, 1]``.
        objective: its ``img_labels`` etc. must describe the same split as the other arguments.
        clean_img_emb: ``(n_images, d)`` clean embeddings of the whole gallery.
        img_labels, txt_emb, txt_labels, caption_image: the split's labels, caption embeddings and caption
            owners (the t2i queries evaluated are the captions of the attacked images).
        record_steps: iterations at which to embed ``x_adv`` (``0`` = clean is always included); the final
            adversarial images are evaluated separately as ``final_metrics``.
        meter, meter_images: ``meter(clean, adv) -> (B,)`` applied to the first ``meter_images`` attacked images
            (one common ruler for all attacks, e.g. ``exact_ot`` with a fixed cost), stored as ``metered_common``.
    """
    idx_all = np.asarray(image_indices, dtype=np.int64)
    steps = sorted({0, *[int(s) for s in record_steps]})
    acc = _GalleryRecords(clean_img_emb[idx_all].clone().float(), steps, meter is not None, keep_examples)
    n = idx_all.size
    t0 = time.time()
    for s in range(0, n, batch_size):
        sl = slice(s, min(s + batch_size, n))
        bidx = idx_all[sl]
        x = load_images(bidx.tolist())
        res, stop = _attack_recording(make_attack, tower, x, bidx, acc.rec, sl)
        acc.add(sl, x, res, stop, tower)
        if meter is not None and sl.start < meter_images:
            k = min(meter_images - sl.start, len(bidx))
            acc.common[sl.start : sl.start + k] = torch.as_tensor(meter(x[:k], acc.last_adv[:k])).double().cpu().numpy()
        if log is not None:
            log(f"  attacked {sl.stop}/{n} images ({time.time() - t0:.0f}s)")

    cap_q = np.flatnonzero(np.isin(caption_image, idx_all))

    def evaluate(emb: Tensor) -> dict:
        g = clean_img_emb.clone().float()
        g[torch.as_tensor(idx_all)] = emb
        return retrieval_metrics(g, img_labels, txt_emb, txt_labels, ks, image_queries=idx_all, caption_queries=cap_q)

    return GalleryAttackResult(
        image_indices=idx_all, steps=steps, embeddings=acc.rec, metrics={t: evaluate(acc.rec[t]) for t in steps},
        final_metrics=evaluate(acc.final), success=acc.succ, radius=acc.radius, metered_radius=acc.metered,
        iterations=acc.iters, linf=acc.linf, l2=acc.l2, seconds=time.time() - t0,
        examples={k: torch.stack(v) for k, v in acc.examples.items() if v}, metered_common=acc.common,
        meter_description=meter_description,
    )  # fmt: skip


def _attack_recording(
    make_attack: Callable[..., Callable[[Tensor, Tensor], Any]],
    tower: nn.Module,
    x: Tensor,
    bidx: np.ndarray,
    rec: dict[int, Tensor],
    sl: slice,
) -> tuple[Any, int]:
    """Attack one batch, embedding ``x_adv`` after the iterations in ``rec``; returns (result, last step seen)."""
    last: dict[str, int] = {}

    def callback(step: int, x_adv: Tensor, *_rest: Any) -> None:
        last["step"] = step
        if step in rec:
            with torch.no_grad():
                rec[step][sl] = tower(x_adv.detach()).float().cpu()

    if "gallery" in inspect.signature(make_attack).parameters:  # labels 0 .. B-1, see attack_gallery
        res = make_attack(callback=callback, gallery=bidx)(x, torch.arange(len(bidx)))
    else:
        res = make_attack(callback=callback)(x, torch.as_tensor(bidx))
    return res, int(last.get("step", max(rec)))


class _GalleryRecords:
    """The per-image arrays :func:`attack_gallery` fills batch by batch."""

    def __init__(self, clean: Tensor, steps: list[int], metered: bool, keep_examples: int) -> None:
        n = clean.shape[0]
        self.rec = {t: clean.clone() for t in steps}
        self.final = clean.clone()
        self.succ = np.full(n, np.nan)
        self.radius, self.metered, self.iters = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        self.linf, self.l2 = np.zeros(n), np.zeros(n)
        self.common = np.full(n, np.nan) if metered else None
        self.examples: dict[str, list[Tensor]] = {"clean": [], "adv": []}
        self.keep_examples = keep_examples
        self.last_adv = torch.zeros(0)

    def add(self, sl: slice, x: Tensor, res: Any, stop: int, tower: nn.Module) -> None:
        adv = _get(res, "adv").detach()
        self.last_adv = adv
        with torch.no_grad():
            e_adv = tower(adv).float().cpu()
        self.final[sl] = e_adv
        for t in self.rec:  # steps beyond an early stop keep the final embedding
            if t > stop:
                self.rec[t][sl] = e_adv
        b = adv.shape[0]
        sv = _attr(res, "success", b)
        self.succ[sl] = np.where(np.isnan(sv), np.nan, sv > 0.5)
        self.radius[sl] = _attr(res, "radius", b)
        self.metered[sl] = _attr(res, "metered_radius", b)
        self.iters[sl] = _attr(res, "iterations", b)
        d = (adv - x).flatten(1)
        self.linf[sl] = d.abs().max(1).values.double().cpu().numpy()
        self.l2[sl] = d.norm(dim=1).double().cpu().numpy()
        if len(self.examples["clean"]) < self.keep_examples:
            k = self.keep_examples - len(self.examples["clean"])
            self.examples["clean"].extend(list(x[:k].cpu()))
            self.examples["adv"].extend(list(adv[:k].cpu()))
