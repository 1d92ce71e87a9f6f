"""The retrieval experiment (``retrieval experiment``): best iterate, yardstick radii, matched radii, resume,
refusals. Synthetic data, the small CNN and the hashing text backbone: a few images, 2-3 iterations."""

from __future__ import annotations

import io
import json
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sinkhorn_attacks._util import UserError
from sinkhorn_attacks.ot import Yardstick, measure
from sinkhorn_attacks.retrieval import RetrievalObjective, retrieval_metrics
from sinkhorn_attacks.retrieval.experiment import TrainRun, load_dataset, load_model, run_train
from sinkhorn_attacks.retrieval.iterates import attack_batch
from sinkhorn_attacks.retrieval.study import bundled_studies, check_attacks, load_study, run_study
from sinkhorn_attacks.retrieval.study_summary import JointRecall, matched_radius, running_best
from sinkhorn_attacks.retrieval.train import TrainConfig

RULER = Yardstick(3)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Feature caches in a scratch folder, never the user's."""
    monkeypatch.setenv("SINKHORN_ATTACKS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heads")
    cfg = TrainConfig(epochs=20, batch_size=32, lr=1e-2, embed_dim=16)
    run = TrainRun(
        data="synthetic:24", out=str(out), image_backbone="small-cnn", text_backbone="hashing", image_size=None,
        train=cfg, cache_dir=str(out / "cache"),
    )  # fmt: skip
    run_train(run, log=None)
    return out / "heads.pt"


@pytest.fixture(scope="module")
def setup(heads):
    model, _ = load_model(heads)
    ds = load_dataset("synthetic:24", "test")
    x = ds.load_images()
    with torch.no_grad():
        ei, et = model.encode_image(x), model.encode_text(ds.captions)
    obj = RetrievalObjective(et, ds.caption_labels, ei, ds.image_labels)
    return SimpleNamespace(model=model, tower=model.image_tower(), ds=ds, x=x, ei=ei, et=et, obj=obj)


def _library(preset: str, radius: float, **kw):
    from sinkhorn_attacks.attacks import from_preset

    def make(s, idx, steps, seen=None):
        def build(callback=None, success_fn=None):
            atk = from_preset(
                preset, s.tower, loss_fn=s.obj.batch_view(idx), success_fn=success_fn, callback=callback, steps=steps,
                radius=radius, yardstick=None, **kw,
            )  # fmt: skip
            if seen is None:
                return atk

            def run(images, labels):
                res = atk(images, labels)
                seen.append(res.adv.clone())
                return res

            return run

        return build

    return make


def _own_recall(s, i: int, emb: torch.Tensor) -> float:
    """Independent per-image recall: image ``i`` replaced by ``emb`` in an otherwise clean gallery, its own
    queries only (retrieval_metrics), summed over R@1/5/10 both ways."""
    g = s.ei.clone()
    g[i] = emb
    caps = np.flatnonzero(s.ds.caption_image == i)
    m = retrieval_metrics(g, s.ds.image_labels, s.et, s.ds.caption_labels, image_queries=[i], caption_queries=caps)
    return sum(m[d][f"R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))


class BackAndForth:
    """A stand-in attack whose first iterate is a large step and whose later iterates return to the clean
    image: the best iterate is the first one, the last is clean."""

    def __init__(self, model, loss_fn, callback=None, success_fn=None, steps=3, **_):
        self.model, self.loss_fn, self.callback, self.steps = model, loss_fn, callback, steps

    def __call__(self, images, labels):
        x = images.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss_fn(self.model(x), labels).sum(), x)
        far = (images + 0.3 * g.sign()).clamp(0, 1).detach()
        for t in range(1, self.steps + 1):
            self.callback(t, far if t == 1 else images.clone())
        return SimpleNamespace(adv=images.clone(), radius=torch.full((len(x),), 0.3))


def test_best_iterate_is_never_worse_than_the_last_per_image(setup):
    s = setup
    idx = np.arange(6)
    for make in (_library("linf-pgd", 8 / 255, step_size=4 / 255), None):
        if make is None:  # an attack whose last iterate undoes its first step

            def build(callback=None, success_fn=None):
                return BackAndForth(s.tower, s.obj.batch_view(idx), callback=callback, steps=3)

        else:
            build = make(s, idx, 3)
        out = attack_batch(build, s.tower, s.obj, s.x[idx], idx, 3, s.ei[idx], RULER)
        assert out.embeddings.shape == (6, 4, 16) and torch.isfinite(out.recall).all()
        assert ((out.best_step >= 0) & (out.best_step <= 4)).all()
        for b, i in enumerate(idx):
            assert _own_recall(s, i, out.best_embedding[b]) <= _own_recall(s, i, out.last_embedding[b]) + 1e-9
        if make is None:  # the first step lowered the recall of some image: its best is iterate 1, not the last
            lowered = out.recall[:, 1] < out.recall[:, 0]
            assert lowered.any() and (out.best_step[lowered] == 1).all()
            assert (out.yardstick_last == 0).all() and (out.yardstick_best[lowered] > 0).all()


def test_embeddings_taken_from_the_attack_equal_a_forward_pass(setup):
    s = setup
    idx = np.arange(4)
    out = attack_batch(
        _library("linf-pgd", 4 / 255, step_size=2 / 255)(s, idx, 2), s.tower, s.obj, s.x[idx], idx, 2, s.ei[idx], RULER
    )
    assert out.captured
    with torch.no_grad():
        assert torch.allclose(out.embeddings[:, 2], s.tower(out.last_images), atol=1e-5)
        assert torch.allclose(out.last_embedding, s.tower(out.last_images), atol=1e-5)


def test_radii_are_measured_on_the_returned_images(setup):
    s = setup
    idx = np.arange(5)
    seen: list[torch.Tensor] = []
    build = _library("linf-pgd", 6 / 255, step_size=3 / 255)(s, idx, 2, seen)
    out = attack_batch(build, s.tower, s.obj, s.x[idx], idx, 2, s.ei[idx], RULER)
    assert torch.equal(out.last_images, seen[0])
    assert torch.allclose(out.yardstick_last, measure(s.x[idx], seen[0], RULER).value, rtol=1e-9, atol=0)
    assert torch.allclose(out.yardstick_best, measure(s.x[idx], out.best_images, RULER).value, rtol=1e-9, atol=0)
    assert (out.linf_last <= 6 / 255 + 1e-6).all() and (out.yardstick_last > 0).all()


def test_running_best_and_joint_recall(setup):
    s = setup
    g = torch.Generator().manual_seed(0)
    recall = torch.randint(0, 4, (7, 6), generator=g).double()
    rank = torch.rand(7, 6, generator=g).double()
    best = running_best(recall, rank)
    for i in range(7):
        for t in range(6):
            key = min(range(t + 1), key=lambda u: (recall[i, u].item(), -rank[i, u].item(), u))
            assert best[i, t] == key
    idx = np.arange(4)
    emb = s.ei[idx] + 0.3 * torch.randn(4, 16, generator=g)
    gal = s.ei.clone()
    gal[idx] = emb
    caps = np.flatnonzero(np.isin(s.ds.caption_image, idx))
    ref = retrieval_metrics(gal, s.ds.image_labels, s.et, s.ds.caption_labels, image_queries=idx, caption_queries=caps)
    got = JointRecall(s.ei, s.ds.image_labels, s.et, s.ds.caption_labels, s.ds.caption_image, idx)(emb)
    for d in ("t2i", "i2t"):
        for k in ("R@1", "R@5", "R@10"):
            assert got[d][k] == pytest.approx(ref[d][k])


def _cell(attack, r, t2i1):
    m = {d: {"R@1": t2i1, "R@5": 2 * t2i1, "R@10": 3 * t2i1} for d in ("t2i", "i2t")}
    return {"attack": attack, "n_images": 4, "yardstick": {"best": {"mean": r}}, "final": {"best": m}}


def test_matched_radius_interpolates_inside_each_range_and_never_extrapolates():
    cells = [_cell("A", 0.01, 40.0), _cell("A", 0.03, 20.0), _cell("B", 0.02, 30.0), _cell("B", 0.05, 0.0)]
    cells += [_cell("C", 0.04, 10.0), {"attack": "D", "n_images": 0}]
    mr = matched_radius(cells, "best")
    assert mr["radius"] == [0.01, 0.02, 0.03, 0.04, 0.05] and set(mr["attacks"]) == {"A", "B", "C"}
    # by hand: A on [0.01, 0.03] from 40 to 20; B on [0.02, 0.05] from 30 to 0; C only at 0.04
    assert mr["attacks"]["A"]["t2i R@1"] == pytest.approx([40.0, 30.0, 20.0, None, None])
    assert mr["attacks"]["B"]["i2t R@10"] == pytest.approx([None, 90.0, 60.0, 30.0, 0.0])
    assert mr["attacks"]["C"]["t2i R@5"] == [None, None, None, 20.0, None]
    for name, table in mr["attacks"].items():
        lo, hi = mr["range"][name]
        for col in table.values():
            for g, v in zip(mr["radius"], col):
                assert (v is None) == (not lo <= g <= hi)


# --------------------------------------------------------------------------------------------------------------
# the experiment end to end
# --------------------------------------------------------------------------------------------------------------

CONFIG = """
[experiment]
title = "synthetic"
data = "synthetic:24"
split = "test"
n_images = {n}
iterations = {t}
batch_size = 2
expect_images = 24

[yardstick]
kernel_size = 3

[[attacks]]
preset = "linf-pgd"
label = "linf"
radii = [0.01, 0.03]
params = {{ step_size = "x0.5" }}

[[attacks]]
preset = "l2-pgd"
label = "l2"
radii = [0.2]
params = {{ step_size = 0.1 }}
"""


def _config(tmp_path: Path, n: int = 5, t: int = 2, extra: str = "") -> Path:
    p = tmp_path / f"cfg_{n}_{t}.toml"
    p.write_text(CONFIG.format(n=n, t=t).replace("[yardstick]", extra + "\n[yardstick]"))
    return p


def _stable(res: dict) -> dict:
    """The results without times."""
    out = json.loads(json.dumps(res))
    for c in out["cells"]:
        c.pop("timing")
    out["heads"] = None
    return out


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, heads):
    cfg = _config(tmp_path)
    whole = run_study(load_study(cfg), tmp_path / "whole", heads=str(heads), log=None)
    assert whole["n_images"] == 5 and whole["complete"]
    assert list(whole)[:4] == ["dataset", "n_images", "iterations", "attacks"]
    assert whole["attacks"] == ["linf", "l2"] and whole["iterations"] == 2 and whole["dataset"] == "synthetic"
    from sinkhorn_attacks.attacks import from_preset

    calls, kill = [], [4]

    def killed(preset, model, **kw):
        if not isinstance(model, torch.nn.Identity):
            calls.append(preset)
            if len(calls) in kill:
                kill.clear()
                raise Killed  # the process dies in the middle of its fourth unit
        return from_preset(preset, model, **kw)

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_study(load_study(cfg), out, heads=str(heads), attack_factory=killed, log=None)
    units = sorted(out.glob("units/*/batch-*.pt"))
    assert len(units) == 3 and not (out / "results.json").exists()
    (out / "units" / units[0].parent.name / ".batch-00001.pt.x.tmp").write_bytes(b"half")  # a write cut short
    (out / ".lock").write_text(f"{socket.gethostname()}:999999999")  # the killed process's lock
    calls.clear()
    again = run_study(load_study(cfg), out, heads=str(heads), attack_factory=killed, log=None)
    assert len(calls) == 3 * 3 - 3  # only the missing units ran
    assert _stable(again) == _stable(whole)
    assert (out / "results.md").read_text().startswith("# Retrieval under image attacks: synthetic")
    assert (out / "recall_vs_iterations.png").stat().st_size > 1000 and (out / "recall_vs_radius.png").is_file()
    # a larger n reuses the full batches and recomputes the partial last one
    calls.clear()
    more = run_study(load_study(cfg), out, heads=str(heads), attack_factory=killed, n_images=6, log=None)
    assert more["n_images"] == 6 and len(calls) == 3


def test_results_curves_and_best_iterate_in_the_json(tmp_path, heads):
    res = run_study(load_study(_config(tmp_path, n=4, t=3)), tmp_path / "r", heads=str(heads), log=None)
    clean = res["clean"]["attacked_queries"]
    for c in res["cells"]:
        assert set(c["curves"]) == {"best", "last"} and len(c["curves"]["best"]) == 4
        assert c["curves"]["best"]["0"] == clean == c["curves"]["last"]["0"]
        assert c["final"]["last"] == c["curves"]["last"]["3"]
        assert len(c["yardstick"]["best"]["values"]) == 4 and c["yardstick"]["last"]["mean"] > 0
        assert c["timing"]["cpu_s_per_image_iteration"] > 0 and c["timing"]["embeddings_from_attack"]
    assert set(res["matched_radius"]) == {"best", "last"} and res["matched_radius"]["last"]["radius"]
    assert res["n_gallery_images"] == 24
    small = run_study(load_study(_config(tmp_path, n=4, t=3)), tmp_path / "s", heads=str(heads), smoke=1, log=None)
    assert small["n_gallery_images"] == 8  # a smoke run keeps the split's first 8 images as the gallery


def test_a_changed_configuration_or_other_heads_are_refused(tmp_path, heads):
    out = tmp_path / "r"
    run_study(load_study(_config(tmp_path, n=2, t=2)), out, heads=str(heads), log=None)
    with pytest.raises(UserError, match=r"another config \(iterations: 2 -> 3\)"):
        run_study(load_study(_config(tmp_path, n=2, t=3)), out, heads=str(heads), log=None)
    other = tmp_path / "other.pt"
    blob = torch.load(heads, weights_only=True)
    blob["state_dict"]["image.bias"] = blob["state_dict"]["image.bias"] + 1
    torch.save(blob, other)
    with pytest.raises(UserError, match="another heads"):
        run_study(load_study(_config(tmp_path, n=2, t=2)), out, heads=str(other), log=None)
    # a unit that claims other images than its batch's (edited, or copied from another run)
    unit = next(out.glob("units/*/batch-00000.pt"))
    blob = torch.load(unit, weights_only=True)
    blob["indices"] = [5, 6]
    torch.save(blob, unit)
    with pytest.raises(UserError, match=r"holds examples 5..6 but unit .* covers examples 0..1"):
        run_study(load_study(_config(tmp_path, n=2, t=2)), out, heads=str(heads), log=None)
    # heads copied into a run folder must follow the configuration's [heads] recipe
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "heads.pt").write_bytes(heads.read_bytes())
    with pytest.raises(UserError, match="trained with another recipe .*image_backbone: 'small-cnn' -> 'efficientnet"):
        run_study(load_study(_config(tmp_path, n=2, t=2)), tmp_path / "copied", log=None)
    # another command's folder
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "config.json").write_text(json.dumps({"command": "evaluate", "fingerprint": "0"}))
    with pytest.raises(UserError, match="holds a evaluate run; use another --out"):
        run_study(load_study(_config(tmp_path, n=2, t=2)), tmp_path / "ev", heads=str(heads), log=None)


def _coco_like(path: Path, n: int = 6, caption_rows: int | None = None, ids: list[int] | None = None) -> Path:
    from PIL import Image

    blobs = []
    for k in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 30 * k, np.uint8)).save(buf, format="JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
    rows = n if caption_rows is None else caption_rows
    caps = np.array([[f"picture {k} caption {j}" for j in range(5)] for k in range(rows)])
    np.savez(
        path, jpeg=np.concatenate(blobs), offsets=offsets, image_ids=np.array(ids or list(range(100, 100 + n))),
        captions=caps, caption_ids=np.arange(rows * 5).reshape(rows, 5), split=np.array(["val2017"] * n),
    )  # fmt: skip
    return path


def test_data_that_does_not_match_the_images_is_refused_before_any_work(tmp_path, heads):
    def run(data: str, extra: str = "", n: int = 2):
        text = _config(tmp_path, n=n).read_text().replace('"synthetic:24"', f'"{data}"')
        text = text.replace("expect_images = 24", extra)
        (tmp_path / "c.toml").write_text(text)
        out = tmp_path / "out"
        with pytest.raises(UserError) as err:
            run_study(load_study(tmp_path / "c.toml"), out, heads=str(heads), log=None)
        assert not (out / "units").exists() and not (out / "config.json").exists()
        return str(err.value)

    short = _coco_like(tmp_path / "short.npz", caption_rows=5)
    assert "'captions' has 5 rows but the file holds 6 images" in run(f"coco-mini-npz:{short}")
    twice = _coco_like(tmp_path / "twice.npz", ids=[7, 8, 9, 9, 10, 11])
    assert "'image_ids' repeats ids, e.g. 9" in run(f"coco-mini-npz:{twice}")
    good = f"coco-mini-npz:{_coco_like(tmp_path / 'good.npz')}"
    assert "6 images where the configuration expects 159" in run(good, "expect_images = 159")
    assert "30 captions where the configuration expects 795" in run(good, "expect_captions = 795")
    msg = run(good, "captions_per_image = 4")
    assert "6 images without exactly 4 captions (e.g. id '100' has 5)" in msg
    assert "n_images = 9 but the split has 6 images" in run(good, n=9)
    # a captions file naming an image that is not there
    (tmp_path / "img").mkdir()
    (tmp_path / "caps.csv").write_text("image,caption,split\na.png,a red thing,test\nb.png,a blue thing,test\n")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    assert "missing" in run(f"captions:{tmp_path / 'caps.csv'}@{tmp_path / 'img'}")


def test_configuration_files_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKHORN_ATTACKS_DATA", str(tmp_path))
    assert {"retrieval_flickr8k", "retrieval_coco_mini"} <= set(bundled_studies())
    from sinkhorn_attacks.retrieval.experiment import default_attack_factory

    for name in ("retrieval_flickr8k", "retrieval_coco_mini"):
        cfg = load_study(name)
        assert {"UOT", "Wong", "Hu", "linf"} <= {a.label for a in cfg.attacks}
        assert all(len(a.radii) == 2 for a in cfg.attacks) and cfg.iterations == 75
        assert cfg.data.endswith(".npz") and str(tmp_path) in cfg.data
        units = check_attacks(cfg, default_attack_factory)
        assert len(units) == 2 * len(cfg.attacks)
    bad = tmp_path / "bad.toml"
    bad.write_text(_config(tmp_path).read_text().replace("batch_size = 2", "batch_sise = 2"))
    with pytest.raises(UserError, match="unknown key 'batch_sise'.*batch_size"):
        load_study(bad)
    bad.write_text(_config(tmp_path).read_text().replace('preset = "l2-pgd"', 'preset = "l2-pdg"'))
    with pytest.raises(UserError, match="attack 'l2'"):
        check_attacks(load_study(bad), default_attack_factory)
    monkeypatch.delenv("SINKHORN_ATTACKS_DATA")
    with pytest.raises(UserError, match=r"SINKHORN_ATTACKS_DATA \(not set\)"):
        load_study("retrieval_coco_mini")
    with pytest.raises(UserError, match="bundled: .*retrieval_flickr8k"):
        load_study("retrieval_flikr8k")


def test_cli_experiment_and_report(tmp_path, heads, capsys):
    from sinkhorn_attacks.cli import main

    cfg = _config(tmp_path, n=2, t=2)
    out = tmp_path / "cli"
    args = ["retrieval", "experiment", "--config", str(cfg), "--out", str(out), "--heads", str(heads)]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_images"] == 2 and math.isfinite(res["cells"][0]["yardstick"]["last"]["mean"])
    assert main(["retrieval", "report", str(out / "results.json"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "results.md").read_text() == (out / "results.md").read_text()
    assert main(["retrieval", "experiment", "--config", "nope", "--out", str(out)]) == 2
    assert "bundled" in capsys.readouterr().err
    # --time-budget 0: everything checked and set up, no unit started
    zero = tmp_path / "zero"
    assert main(["retrieval", "experiment", "--config", str(cfg), "--out", str(zero), "--heads", str(heads),
                 "--time-budget", "0", "--quiet"]) == 0  # fmt: skip
    res = json.loads((zero / "results.json").read_text())
    assert res["n_images"] == 0 and not res["complete"] and not list(zero.glob("units/*/*.pt"))
    assert "0 attacked images (of 2 planned" in (zero / "results.md").read_text()
