"""Core retrieval tests: losses, metrics, adapters, heads training and the attack objective (synthetic, fast)."""

from __future__ import annotations

import csv
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sinkhorn_attacks.retrieval import (
    CMPCClassifier,
    DualEncoder,
    HashingTextBackbone,
    ProjectionHeads,
    RetrievalObjective,
    SmallCNNBackbone,
    TrainConfig,
    WrappedImageBackbone,
    attack_gallery,
    cmpc_loss,
    cmpc_terms,
    cmpm_loss,
    cmpm_terms,
    embed_features,
    load_captions_file,
    load_cuhk_pedes,
    load_flickr8k,
    load_heads,
    make_synthetic,
    pessimistic_ranks,
    retrieval_metrics,
    retrieval_ranks,
    save_heads,
    seeded_split,
    train_heads,
)

# --------------------------------------------------------------------------------------------------------------
# direct float64 references (loops, no vectorisation)
# --------------------------------------------------------------------------------------------------------------


def ref_cmpm(x, z, lx, lz, eps=1e-8):
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    n, m = len(x), len(z)

    def direction(a, b, la, lb):
        tot = 0.0
        for i in range(len(a)):
            logits = [float(a[i] @ (b[j] / np.linalg.norm(b[j]))) for j in range(len(b))]
            mx = max(logits)
            den = sum(math.exp(v - mx) for v in logits)
            p = [math.exp(v - mx) / den for v in logits]
            npos = sum(1 for j in range(len(b)) if la[i] == lb[j])
            for j in range(len(b)):
                q = (1.0 / npos) if la[i] == lb[j] else 0.0
                tot += p[j] * math.log(p[j] / (q + eps))
        return tot / len(a)

    assert n and m
    return direction(x, z, lx, lz) + direction(z, x, lz, lx)


def ref_cmpc(x, z, y, w):
    x, z, w = np.asarray(x, np.float64), np.asarray(z, np.float64), np.asarray(w, np.float64)
    wn = w / np.linalg.norm(w, axis=0, keepdims=True)
    tot = 0.0
    for i in range(len(x)):
        zb, xb = z[i] / np.linalg.norm(z[i]), x[i] / np.linalg.norm(x[i])
        for feat in ((x[i] @ zb) * zb, (z[i] @ xb) * xb):
            logits = feat @ wn
            mx = logits.max()
            tot += -(logits[y[i]] - mx - math.log(np.exp(logits - mx).sum()))
    return tot / len(x)


def ref_rank(scores, pos):
    """Pessimistic rank by sorting: position of the best positive when ties are broken against it."""
    best = max(s for s, p in zip(scores, pos) if p)
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], 0 if not pos[j] else 1))
    for r, j in enumerate(order):
        if pos[j] and scores[j] == best:
            return r
    raise AssertionError


# --------------------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------------------


def _gallery(make_attack, tower, data, obj, ei, et, idx, **kw):
    """``attack_gallery`` on a retrieval dataset's own labels and loader."""
    return attack_gallery(
        make_attack, tower, lambda ii: data.load_images(ii), obj, ei, data.image_labels, et, data.caption_labels,
        data.caption_image, idx, **kw,
    )  # fmt: skip


def test_cmpm_matches_direct_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2
    z = torch.randn(8, 7, generator=g, dtype=torch.float64) * 2
    lx = torch.tensor([0, 1, 2, 2, 3])
    lz = torch.tensor([0, 0, 1, 2, 3, 3, 1, 2])
    got = cmpm_loss(x, z, lx, lz)
    assert abs(got.item() - ref_cmpm(x.numpy(), z.numpy(), lx.tolist(), lz.tolist())) < 1e-10
    # paired batch (m == n, shared labels)
    z2 = z[:5]
    assert abs(cmpm_loss(x, z2, lx).item() - ref_cmpm(x.numpy(), z2.numpy(), lx.tolist(), lx.tolist())) < 1e-10


def test_cmpm_hand_made_two_pairs():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # norms must not matter for i2t logits
    lab = torch.tensor([0, 1])
    e = math.e
    p_pos, p_neg = e / (e + 1), 1 / (e + 1)  # logits (1, 0) in both rows
    kl_i2t = p_pos * math.log(p_pos / (1 + 1e-8)) + p_neg * math.log(p_neg / 1e-8)
    i2t, t2i = cmpm_terms(x, z, lab)
    assert torch.allclose(i2t, torch.full((2,), kl_i2t, dtype=torch.float64), atol=1e-12)
    # t2i logits: z_j . xbar_k -> row 0: (2, 0), row 1: (0, 3)
    for j, s in enumerate((2.0, 3.0)):
        pp, pn = math.exp(s) / (math.exp(s) + 1), 1 / (math.exp(s) + 1)
        assert abs(t2i[j].item() - (pp * math.log(pp / (1 + 1e-8)) + pn * math.log(pn / 1e-8))) < 1e-12


def test_cmpm_target_is_l1_normalised():
    """Two positives at equal score: the KL to the L1 target (0.5, 0.5) vanishes; an L2 target would not."""
    x = torch.tensor([[30.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    i2t, _ = cmpm_terms(x, z, torch.tensor([0]), torch.tensor([0, 0, 1]))
    assert abs(i2t.item()) < 1e-6
    p = torch.softmax(x @ F.normalize(z, dim=1).T, 1)[0]
    l2_target = torch.tensor([1, 1, 0.0], dtype=torch.float64) / math.sqrt(2)
    wrong = (p * (p.log() - (l2_target + 1e-8).log())).sum()
    assert wrong.item() < -0.3  # the port's L2 mask gives a negative "KL"


def test_cmpm_symmetry_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    lx, lz = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2, 0, 1])
    a_i2t, a_t2i = cmpm_terms(x, z, lx, lz)
    b_i2t, b_t2i = cmpm_terms(z, x, lz, lx)
    assert torch.allclose(a_i2t, b_t2i) and torch.allclose(a_t2i, b_i2t)
    assert torch.autograd.gradcheck(lambda a, b: cmpm_loss(a, b, lx, lz), (x, z))
    assert cmpm_loss(x, z, lx, lz).item() >= 0


def test_cmpc_matches_direct_and_weight_normalisation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    z = torch.randn(5, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    got = cmpc_loss(x, z, y, w).item()
    assert abs(got - ref_cmpc(x.numpy(), z.numpy(), y.numpy(), w.numpy())) < 1e-10
    # column norms of W are irrelevant (norm-softmax), feature norms are not
    assert abs(cmpc_loss(x, z, y, w * torch.tensor([1.0, 5.0, 0.1, 3.0], dtype=torch.float64)).item() - got) < 1e-10
    assert abs(cmpc_loss(3 * x, 3 * z, y, w).item() - got) > 1e-3
    clf = CMPCClassifier(6, 4).double()
    with torch.no_grad():
        clf.weight.copy_(w)
    assert abs(cmpc_loss(x, z, y, clf).item() - got) < 1e-12
    assert torch.allclose(clf.normalized_weight().norm(dim=0), torch.ones(4, dtype=torch.float64))
    ipt, tpi = cmpc_terms(x, z, y, w)
    assert ipt.shape == tpi.shape == (5,)


def test_cmpc_hand_made():
    x = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    w = torch.eye(2, dtype=torch.float64)
    # xhat = (x . zbar) zbar = sqrt2 * (1,1)/sqrt2 = (1, 1); zhat = (z . xbar) xbar = (1, 0)

    def ce(v, c):
        return -(v[c] - math.log(sum(math.exp(t) for t in v)))

    expect = ce([1.0, 1.0], 0) + ce([1.0, 0.0], 0)
    assert abs(cmpc_loss(x, z, torch.tensor([0]), w).item() - expect) < 1e-12
    with pytest.raises(ValueError):
        cmpc_loss(x, torch.cat([z, z]), torch.tensor([0]), w)


# --------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------


def test_ranks_match_sorting_reference():
    rng = np.random.default_rng(0)
    for _ in range(30):
        s = rng.integers(0, 4, size=(3, 9)).astype(np.float64)  # many ties
        pos = rng.random((3, 9)) < 0.3
        pos[:, 0] |= ~pos.any(1)
        got = pessimistic_ranks(torch.tensor(s), torch.tensor(pos))
        assert got.tolist() == [ref_rank(list(s[q]), list(pos[q])) for q in range(3)]


def test_recall_identity_level_and_i2t_any_caption():
    # 3 images: 0 and 1 show the same person (label 0), image 2 another (label 1); 2 captions each
    img = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    img_labels = np.array([0, 0, 1])
    txt = torch.tensor(
        [
            [0.1, 1.0, 0.0],  # caption of image 0, closest to image 1 (same person)
            [1.0, 0.0, 0.2],  # caption of image 0
            [0.0, 1.0, 0.3],  # caption of image 1
            [0.0, 0.2, 1.0],  # caption of image 1 but closest to image 2 (other person)
            [1.0, 0.0, 0.5],  # caption of image 2, closest to image 0
            [0.0, 0.0, 1.0],
        ]
    )  # caption of image 2
    txt_labels = img_labels[[0, 0, 1, 1, 2, 2]]
    m = retrieval_metrics(img, img_labels, txt, txt_labels, ks=(1, 2))
    # t2i: identity hits for captions 0,1,2,5; caption 3 ranks image 2 first (miss at 1), caption 4 ranks 0 first
    assert m["t2i"]["R@1"] == pytest.approx(100 * 4 / 6)
    assert m["t2i"]["R@2"] == pytest.approx(100 * 6 / 6)
    # i2t: image 2's best caption is caption 5 (score 1) > caption 3 (1.0/|.|...) -> all hits at 1 except none
    t2i, i2t = retrieval_ranks(img, img_labels, txt, txt_labels)
    sc = F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    for i in range(3):
        pos = txt_labels == img_labels[i]
        assert i2t[i].item() == ref_rank(sc[i].tolist(), pos.tolist())
    # image-level matching (Flickr convention) on the same data: caption 0 no longer hits at 1
    m_img = retrieval_metrics(img, np.arange(3), txt, np.array([0, 0, 1, 1, 2, 2]), ks=(1,))
    assert m_img["t2i"]["R@1"] < m["t2i"]["R@1"]


def test_recall_ties_are_pessimistic_and_query_subsets():
    img = torch.ones(4, 3)
    txt = torch.ones(8, 3)
    labels_img, labels_txt = np.arange(4), np.repeat(np.arange(4), 2)
    m = retrieval_metrics(img, labels_img, txt, labels_txt, ks=(1, 3, 4, 7))
    assert m["t2i"]["R@1"] == 0.0 and m["t2i"]["R@3"] == 0.0 and m["t2i"]["R@4"] == 100.0
    assert m["i2t"]["R@1"] == 0.0 and m["i2t"]["R@7"] == 100.0
    good = torch.eye(4)
    m2 = retrieval_metrics(
        good, labels_img, good[labels_txt], labels_txt, image_queries=[1, 2], caption_queries=[2, 3, 4, 5]
    )
    assert m2["n_i2t_queries"] == 2 and m2["n_t2i_queries"] == 4 and m2["i2t"]["R@1"] == 100.0


# --------------------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------------------


def _png(path, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.mark.filterwarnings("ignore:Flickr8k. dropping")
def test_flickr8k_token_file_split_files_and_missing(tmp_path):
    root = tmp_path / "f8k"
    for n, c in (("a.jpg", (255, 0, 0)), ("b.jpg", (0, 255, 0)), ("c.jpg", (0, 0, 255))):
        _png(root / "Flicker8k_Dataset" / n, c)
    lines = [f"{n}#{k}\tcaption {k} of {n}" for n in ("a.jpg", "b.jpg", "c.jpg") for k in range(2)]
    lines += ["ghost.jpg.1#0\tno image"]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("c.jpg\na.jpg\nbogus.jpg\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = load_flickr8k(root, "test")
    msgs = " ".join(str(x.message) for x in w)
    assert "ghost.jpg.1" in msgs and "bogus.jpg" in msgs
    assert d.image_names == ["c.jpg", "a.jpg"] and d.n_captions == 4 and d.match == "image"
    assert d.captions[0] == "caption 0 of c.jpg" and d.caption_labels.tolist() == [0, 0, 1, 1]
    x = d.load_images(size=4)
    assert x.shape == (2, 3, 4, 4) and x[0, 2].mean() > 0.9
    # without split files: seeded split with a warning, and the splits partition the images
    (root / "Flickr_8k.testImages.txt").unlink()
    with pytest.warns(UserWarning, match="seeded random split"):
        names = [set(load_flickr8k(root, s).image_names) for s in ("train", "val", "test")]
    assert set.union(*names) == {"a.jpg", "b.jpg", "c.jpg"} and sum(map(len, names)) == 3
    with pytest.raises(FileNotFoundError, match="caption file"):
        load_flickr8k(tmp_path / "f8k", captions_file=tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError):
        load_flickr8k(tmp_path / "missing")


def test_flickr8k_kaggle_csv_and_karpathy_json(tmp_path):
    root = tmp_path / "k"
    _png(root / "Images" / "x.jpg", (10, 10, 10))
    _png(root / "Images" / "y.jpg", (200, 200, 200))
    with open(root / "captions.txt", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["image", "caption"])
        wr.writerows([["x.jpg", 'a "dark"  square'], ["y.jpg", "a light square"], ["x.jpg", "black"]])
    (root / "Flickr_8k.trainImages.txt").write_text("x.jpg\ny.jpg\n")
    d = load_flickr8k(root, "train")
    assert d.captions == ['a "dark" square', "black", "a light square"]
    js = {
        "images": [
            {"filename": "x.jpg", "split": "test", "sentences": [{"raw": "dark"}]},
            {"filename": "y.jpg", "split": "val", "sentences": [{"raw": "light"}, {"raw": "pale"}]},
        ]
    }
    (root / "dataset_flickr8k.json").write_text(json.dumps(js))
    d = load_flickr8k(root, "dev", captions_file=root / "dataset_flickr8k.json", split_dir=tmp_path)
    assert d.image_names == ["y.jpg"] and d.captions == ["light", "pale"]


def test_cuhk_pedes_reid_raw_and_caption_all(tmp_path):
    root = tmp_path / "CUHK-PEDES"
    recs = []
    for k, (pid, split) in enumerate([(5, "train"), (7, "test"), (7, "test"), (9, "test"), (3, "val")]):
        fp = f"cam{k % 2}/{k:04d}.png"
        _png(root / "imgs" / fp, (k * 40, 0, 0))
        recs.append(
            {
                "split": split,
                "captions": [f"person {pid} view {k} a", f"person {pid} view {k} b"],
                "file_path": fp,
                "id": pid,
                "processed_tokens": [[], []],
            }
        )
    recs.append(dict(recs[1], captions=["a third caption of image 1"]))  # duplicate file_path row
    (root / "reid_raw.json").write_text(json.dumps(recs))
    d = load_cuhk_pedes(root, "test")
    assert d.match == "identity" and d.n_images == 3 and d.n_captions == 7
    assert d.image_labels.tolist() == [0, 0, 1] and d.label_names == ["7", "9"]
    assert d.caption_image.tolist() == [0, 0, 1, 1, 2, 2, 0]
    m = retrieval_metrics(torch.eye(3), d.image_labels, torch.eye(3)[d.caption_image], d.caption_labels)
    assert m["t2i"]["R@1"] == 100.0
    # caption_all.json without split: the last ids (by first appearance) are test
    (root / "reid_raw.json").unlink()
    (root / "caption_all.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "split"} for r in recs]))
    t = load_cuhk_pedes(root, "test", n_val_ids=1, n_test_ids=1)
    v = load_cuhk_pedes(root, "val", n_val_ids=1, n_test_ids=1)
    assert t.label_names == ["3"] and v.label_names == ["9"]
    (root / "imgs" / "cam1/0001.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_cuhk_pedes(root, "train", n_val_ids=1, n_test_ids=1)
    with pytest.raises(FileNotFoundError, match="reid_raw.json"):
        load_cuhk_pedes(tmp_path / "empty")


def test_generic_captions_csv_and_jsonl(tmp_path):
    for n in ("p.png", "q.png"):
        _png(tmp_path / "im" / n, (1, 2, 3))
    (tmp_path / "caps.csv").write_text("image,caption,split\np.png,one,train\nq.png,two,test\np.png,three,train\n")
    d = load_captions_file(tmp_path / "caps.csv", tmp_path / "im", split="train")
    assert d.image_names == ["p.png"] and d.captions == ["one", "three"] and d.match == "image"
    rows = [{"image": "p.png", "caption": "a", "label": "u1"}, {"image": "q.png", "caption": "b", "label": "u1"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    d = load_captions_file(tmp_path / "caps.jsonl", tmp_path / "im")
    assert d.match == "identity" and d.image_labels.tolist() == [0, 0]
    with pytest.raises(FileNotFoundError, match="missing"):
        load_captions_file(tmp_path / "caps.jsonl", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_captions_file(tmp_path / "none.csv")


def test_seeded_split_recipe():
    code = seeded_split(20, seed=0, n_test=5, n_val=3)
    perm = np.random.default_rng(0).permutation(20)
    assert (code[perm[:5]] == 2).all() and (code[perm[5:8]] == 1).all() and (code == 0).sum() == 12


# --------------------------------------------------------------------------------------------------------------
# encoders, heads, training
# --------------------------------------------------------------------------------------------------------------


def _setup(n=40, seed=0, epochs=80):
    data = make_synthetic(n, size=16, captions_per_image=3, seed=seed)
    ib, tb = SmallCNNBackbone(feature_dim=32), HashingTextBackbone(feature_dim=32)
    x = data.load_images()
    with torch.no_grad():
        fi = ib(x)
    ft = tb.encode(data.captions)
    heads, hist = train_heads(
        fi,
        ft,
        data.caption_image,
        data.image_labels,
        TrainConfig(epochs=epochs, batch_size=32, lr=1e-2, embed_dim=16),
        log=None,
    )
    model = DualEncoder(ib, tb, heads)
    return data, model, x, fi, ft, hist


def test_backbones_frozen_and_hashing_deterministic():
    tb = HashingTextBackbone(feature_dim=8)
    a = tb.encode(["A red square.", "a red square"])
    assert torch.equal(a[0], a[1])
    assert torch.equal(HashingTextBackbone(feature_dim=8).encode(["red"]), tb.encode(["red"]))
    ib = SmallCNNBackbone()
    ib.train()
    assert not ib.training and not any(p.requires_grad for p in ib.parameters())
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    ib(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    user = WrappedImageBackbone(torch.nn.Conv2d(3, 5, 3), feature_dim=5, input_size=12)
    assert user(torch.rand(2, 3, 20, 20)).shape == (2, 5)


def test_train_heads_improves_recall_and_checkpoint_roundtrip(tmp_path):
    data, model, x, fi, ft, hist = _setup()
    assert hist[-1]["cmpm"] < hist[0]["cmpm"] and "cmpc" in hist[0]
    ei, et = embed_features(model.heads, fi, ft)
    m = retrieval_metrics(ei, data.image_labels, et, data.caption_labels)
    untrained = ProjectionHeads(32, 32, 16, seed=5)
    m0 = retrieval_metrics(
        *embed_features(untrained, fi, ft)[:1],
        data.image_labels,
        embed_features(untrained, fi, ft)[1],
        data.caption_labels,
    )
    assert m["t2i"]["R@5"] > m0["t2i"]["R@5"] + 20 and m["i2t"]["R@5"] > 40
    assert torch.allclose(model.encode_image(x), ei, atol=1e-5)
    p = save_heads(tmp_path / "h.pt", model.heads, {"image_backbone": "small-cnn"})
    h2, meta = load_heads(p)
    assert meta["image_backbone"] == "small-cnn" and h2.cmpc is not None
    assert torch.allclose(h2.image(fi), ei, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# attack objective and gallery loop (with a stand-in for sinkhorn_attacks.attacks under the same contract)
# --------------------------------------------------------------------------------------------------------------


class StandInPGD:
    """l_inf PGD with the library's call contract (only for these tests)."""

    def __init__(self, model, loss_fn, steps=5, eps=8 / 255, step_size=2 / 255, success_fn=None, callback=None):
        self.model, self.loss_fn, self.steps, self.eps, self.alpha = model, loss_fn, steps, eps, step_size
        self.success_fn, self.callback = success_fn, callback

    def __call__(self, images, labels):
        x = images.clone()
        for t in range(1, self.steps + 1):
            x.requires_grad_(True)
            loss = self.loss_fn(self.model(x), labels)
            (g,) = torch.autograd.grad(loss.sum(), x)
            x = (images + (x.detach() + self.alpha * g.sign() - images).clamp(-self.eps, self.eps)).clamp(0, 1)
            if self.callback is not None:
                self.callback(t, x)
        with torch.no_grad():
            out = self.model(x)
        succ = self.success_fn(out, labels) if self.success_fn else torch.zeros(len(x), dtype=torch.bool)
        return SimpleNamespace(
            adv=x,
            success=succ,
            radius=torch.full((len(x),), self.eps),
            metered_radius=None,
            iterations=torch.full((len(x),), self.steps),
        )


@pytest.fixture(scope="module")
def trained():
    return _setup()


def _objective(model, data, x, kind="cmpm", **kw):
    with torch.no_grad():
        ei = model.encode_image(x)
        et = model.encode_text(data.captions)
    return RetrievalObjective(et, data.caption_labels, ei, data.image_labels, kind=kind, **kw), ei, et


def test_objective_matches_cmpm_rows_and_substituted_gallery(trained):
    data, model, x, *_ = trained
    obj, ei, et = _objective(model, data, x, directions=("i2t",))
    idx = torch.tensor([3, 7])
    e = ei[idx] * 1.3 + 0.1
    got = obj(e, idx)
    i2t, _ = cmpm_terms(
        e.double(), et.double(), torch.as_tensor(data.image_labels[idx.numpy()]), torch.as_tensor(data.caption_labels)
    )
    assert torch.allclose(got.double(), i2t, atol=1e-4)
    obj_t, *_ = _objective(model, data, x, directions=("t2i",))
    for b, i in enumerate(idx.tolist()):
        gal = ei.clone().double()
        gal[i] = e[b].double()
        caps = np.flatnonzero(data.caption_labels == data.image_labels[i])
        _, t2i = cmpm_terms(
            gal, et[caps].double(), torch.as_tensor(data.image_labels), torch.as_tensor(data.caption_labels[caps])
        )
        assert abs(obj_t(e[b : b + 1], idx[b : b + 1]).item() - t2i.mean().item()) < 1e-4


@pytest.mark.parametrize("kind", ["cmpm", "nll", "cosine", "margin", "cmpc"])
def test_objective_is_per_sample_and_differentiable(trained, kind):
    data, model, x, *_ = trained
    obj, ei, _ = _objective(model, data, x, kind=kind)
    idx = torch.tensor([0, 5, 9])
    e = (ei[idx] + 0.05 * torch.randn_like(ei[idx])).requires_grad_(True)
    batch = obj(e, idx)
    single = torch.cat([obj(e[i : i + 1], idx[i : i + 1]) for i in range(3)])
    assert batch.shape == (3,) and torch.allclose(batch, single, atol=1e-5)
    (g,) = torch.autograd.grad(batch.sum(), e)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_gallery_attack_lowers_recall_with_standin(trained):
    data, model, x, *_ = trained
    obj, ei, et = _objective(model, data, x)
    tower = model.image_tower()

    def make_attack(callback=None):
        return StandInPGD(
            tower, obj, steps=4, eps=16 / 255, step_size=6 / 255, success_fn=obj.success_fn(1), callback=callback
        )

    idx = np.arange(0, 24)
    res = _gallery(
        make_attack,
        tower,
        data,
        obj,
        ei,
        et,
        idx,
        record_steps=[1, 2, 4],
        batch_size=10,
        log=None,
    )
    r0, r4 = res.metrics[0], res.metrics[4]
    assert res.steps == [0, 1, 2, 4] and r0["n_i2t_queries"] == 24 and r0["n_t2i_queries"] == 72
    assert r4["i2t"]["R@5"] < r0["i2t"]["R@5"] and r4["t2i"]["R@5"] < r0["t2i"]["R@5"]
    assert res.final_metrics["i2t"]["R@1"] == r4["i2t"]["R@1"]
    assert res.linf.max() <= 16 / 255 + 1e-6 and res.examples["adv"].min() >= 0 and res.examples["adv"].max() <= 1
    s = res.summary()
    assert s["n_images"] == 24 and s["metered_radius_mean"] is None and "curve" in s
    json.dumps(s)


def test_cli_train_evaluate_attack_on_synthetic(tmp_path, monkeypatch):
    import sinkhorn_attacks.retrieval.experiment as ex
    from sinkhorn_attacks.cli import main

    def factory(preset, model, loss_fn, success_fn=None, callback=None, steps=5, radius=8 / 255, **kw):
        assert preset in ("linf-pgd", "fgsm")  # `eps` on the command line is the presets' `radius`
        return StandInPGD(model, loss_fn, steps=steps, success_fn=success_fn, callback=callback, eps=radius, **kw)

    monkeypatch.setattr(ex, "default_attack_factory", factory)
    out, cache = tmp_path / "run", tmp_path / "cache"
    common = ["--cache-dir", str(cache), "--threads", "1"]
    assert (
        main(
            [
                "retrieval",
                "train",
                "--data",
                "synthetic:32",
                "--out",
                str(out),
                "--image-backbone",
                "small-cnn",
                "--text-backbone",
                "hashing",
                "--image-size",
                "0",
                "--epochs",
                "5",
                "--lr",
                "1e-2",
                "--embed-dim",
                "16",
                *common,
            ]
        )
        == 0
    )
    assert (out / "heads.pt").is_file() and json.loads((out / "train.json").read_text())["history"]
    assert main(["retrieval", "evaluate", "--heads", str(out / "heads.pt"), "--out", str(out), *common]) == 0
    ev = json.loads((out / "evaluate.json").read_text())
    assert ev["n_images"] == 32 and ev["match"] == "image"
    monkeypatch.setenv("SINKHORN_ATTACKS_SMOKE", "2")  # a smoke run evaluates the first 16 images only
    assert main(["retrieval", "evaluate", "--heads", str(out / "heads.pt"), "--out", str(out / "smoke"), *common]) == 0
    assert json.loads((out / "smoke" / "evaluate.json").read_text())["n_images"] == 16
    smoke = ["retrieval", "attack", "--heads", str(out / "heads.pt"), "--out", str(out / "smoke_atk"), "--no-plots"]
    assert main([*smoke, "--attack", "fgsm:eps=1/255", *common]) == 0  # ... and attacks within those 16
    res = json.loads((out / "smoke_atk" / "attack.json").read_text())
    assert res["n_images"] == 2 and res["clean_full_split"]["n_images"] == 16
    monkeypatch.delenv("SINKHORN_ATTACKS_SMOKE")
    args = [
        "retrieval",
        "attack",
        "--heads",
        str(out / "heads.pt"),
        "--out",
        str(out / "atk"),
        "--n-images",
        "6",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--attack",
        "linf-pgd:eps=2/255|8/255,step_size=x0.5",
        "--attack",
        "fgsm:eps=1/255#B",
        "--meter-images",
        "1",
        "--meter-kernel",
        "3",
        *common,
    ]
    assert main(args) == 0
    res = json.loads((out / "atk" / "attack.json").read_text())
    assert set(res["cells"]) == {"linf-pgd@radius=0.00784314", "linf-pgd@radius=0.0313725", "B"}
    cell = res["cells"]["linf-pgd@radius=0.0313725"]
    assert cell["overrides"]["step_size"] == pytest.approx(4 / 255)
    assert cell["steps"] == [0, 1, 2] and cell["metered_common_n"] == 1 and cell["metered_common_mean"] > 0
    assert res["matched_radius"]["radius_field"] == "metered_common_mean"
    for f in ("recall_vs_iterations.png", "recall_vs_radius.png", "examples.png"):
        assert (out / "atk" / f).stat().st_size > 1000
    # a rerun resumes from parts/ without attacking again
    monkeypatch.setattr(ex, "default_attack_factory", None)
    assert main(args + ["--no-plots"]) == 0


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("linf-pgd", {"radius": 8 / 255, "step_size": 2 / 255}),
        pytest.param("uot", {"radius": 0.3, "inner_max_iter": 60}, marks=pytest.mark.slow),
    ],
)
def test_library_attacks_plug_in(trained, preset, overrides):
    """The real attacks of the library accept the retrieval objective, callback and no-early-stop contract."""
    attacks = pytest.importorskip("sinkhorn_attacks.attacks", reason="attacks package not built yet")
    data, model, x, *_ = trained
    obj, ei, et = _objective(model, data, x)
    tower = model.image_tower()
    seen = []

    def make_attack(callback=None):
        def cb(step, x_adv, *rest):
            seen.append(step)
            callback(step, x_adv, *rest)

        return attacks.from_preset(
            preset, tower, loss_fn=obj, success_fn=None, callback=cb, steps=3, meter_cost=None, **overrides
        )

    idx = np.arange(4)
    res = _gallery(
        make_attack,
        tower,
        data,
        obj,
        ei,
        et,
        idx,
        record_steps=[1, 3],
        batch_size=4,
        log=None,
    )
    assert seen == [1, 2, 3]
    assert res.final_metrics["i2t"]["R@5"] <= res.metrics[0]["i2t"]["R@5"]
    loss0 = obj(ei[torch.as_tensor(idx)], torch.as_tensor(idx))
    loss3 = obj(res.embeddings[3], torch.as_tensor(idx))
    assert loss3.mean() > loss0.mean()
