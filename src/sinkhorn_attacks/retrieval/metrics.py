"""Recall@K for text->image (t2i) and image->text (i2t) retrieval, with label matching and pessimistic ties.

Scores are cosine similarities of the L2-normalised embeddings. For a query ``q`` with score vector
``s`` over the gallery and positive set ``P`` (gallery items carrying the query's label)::

    rank(q) = #{ j not in P : s_j >= max_{i in P} s_i }            (0 = a positive is strictly first)
    R@K     = 100 * mean_q [ rank(q) < K ]

so a hit means "at least one correct item in the top K" and every tie with a negative counts *against* the
query (pessimistic). Optimistic tie-breaking would let an attack that collapses all embeddings to one point
keep a high R@1; with this rule all-equal scores give rank ``= #negatives``. A query without any positive
gets ``rank = #gallery`` (always a miss).

Directions and conventions (galleries are the *unique* images of a split; see ``datasets.py``):

* t2i: every caption queries all gallery images. Flickr8k/COCO (``match="image"``): the hit is the
  caption's own image. CUHK-PEDES (``match="identity"``): any image of the same person id.
* i2t: every gallery image queries all captions. Flickr8k/COCO: a hit is any of the image's own (5)
  captions. CUHK-PEDES: any caption of the same person id.

Both conventions are expressed by the labels alone: image index for Flickr/COCO, person id for CUHK-PEDES.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["cosine_scores", "pessimistic_ranks", "retrieval_ranks", "recall_from_ranks", "retrieval_metrics"]


def cosine_scores(queries: Tensor, gallery: Tensor) -> Tensor:
    """``(Q, G)`` cosine similarities (computed in float32 or the inputs' float64)."""
    dt = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    return F.normalize(queries.to(dt), dim=1) @ F.normalize(gallery.to(dt), dim=1).T


def pessimistic_ranks(scores: Tensor, positive: Tensor) -> Tensor:
    """``rank[q] = #{negatives j : scores[q, j] >= max positive score}``; ``G`` if the row has no positive."""
    positive = positive.bool()
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    best_pos = torch.where(positive, scores, neg_inf).max(dim=1, keepdim=True).values
    ranks = ((scores >= best_pos) & ~positive).sum(dim=1)
    no_pos = ~positive.any(dim=1)
    return torch.where(no_pos, torch.full_like(ranks, scores.shape[1]), ranks)


@torch.no_grad()
def retrieval_ranks(
    img_emb: Tensor,
    img_labels: Tensor | np.ndarray,
    txt_emb: Tensor,
    txt_labels: Tensor | np.ndarray,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Pessimistic ranks of every query: ``(t2i (n_captions,), i2t (n_images,))``, int64 on CPU."""
    il = torch.as_tensor(np.asarray(img_labels), dtype=torch.int64).to(img_emb.device)
    tl = torch.as_tensor(np.asarray(txt_labels), dtype=torch.int64).to(img_emb.device)
    t2i, i2t = [], []
    for s in range(0, txt_emb.shape[0], chunk):
        sc = cosine_scores(txt_emb[s : s + chunk], img_emb)
        t2i.append(pessimistic_ranks(sc, tl[s : s + chunk, None] == il[None, :]).cpu())
    for s in range(0, img_emb.shape[0], chunk):
        sc = cosine_scores(img_emb[s : s + chunk], txt_emb)
        i2t.append(pessimistic_ranks(sc, il[s : s + chunk, None] == tl[None, :]).cpu())
    empty = torch.zeros(0, dtype=torch.int64)
    return (torch.cat(t2i) if t2i else empty), (torch.cat(i2t) if i2t else empty)


def recall_from_ranks(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"R@K": 100 * mean(rank < K)}`` plus the median and mean 1-based rank."""
    r = torch.as_tensor(ranks)
    if r.numel() == 0:
        return {**{f"R@{k}": float("nan") for k in ks}, "medr": float("nan"), "meanr": float("nan")}
    out = {f"R@{k}": 100.0 * float((r < k).double().mean()) for k in ks}
    out["medr"] = float((r.double() + 1).median())
    out["meanr"] = float((r.double() + 1).mean())
    return out


def retrieval_metrics(
    img_emb: Tensor,
    img_labels: Tensor | np.ndarray,
    txt_emb: Tensor,
    txt_labels: Tensor | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    image_queries: Tensor | np.ndarray | None = None,
    caption_queries: Tensor | np.ndarray | None = None,
) -> dict:
    """R@K in both directions (percent) for a deduplicated image gallery and its captions.

    Args:
        img_emb, img_labels: ``(n_images, d)`` gallery image embeddings and their labels.
        txt_emb, txt_labels: ``(n_captions, d)`` caption embeddings and their labels.
        ks: the cut-offs.
        image_queries / caption_queries: optional index arrays (or boolean masks) restricting which
            queries are averaged (e.g. the attacked images and their captions); the galleries stay full.
    Returns:
        ``{"t2i": {"R@1": ..., "medr": ...}, "i2t": {...}, "n_images": ..., "n_captions": ...,
        "n_t2i_queries": ..., "n_i2t_queries": ...}``.
    """
    t2i, i2t = retrieval_ranks(img_emb, img_labels, txt_emb, txt_labels)
    if caption_queries is not None:
        t2i = t2i[torch.as_tensor(np.asarray(caption_queries))]
    if image_queries is not None:
        i2t = i2t[torch.as_tensor(np.asarray(image_queries))]
    return {
        "t2i": recall_from_ranks(t2i, ks),
        "i2t": recall_from_ranks(i2t, ks),
        "n_images": int(img_emb.shape[0]),
        "n_captions": int(txt_emb.shape[0]),
        "n_t2i_queries": int(t2i.numel()),
        "n_i2t_queries": int(i2t.numel()),
    }
