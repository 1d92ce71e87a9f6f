"""The CIFAR-10 models trained by the bundled recipes ship with the package, load offline, are pinned by
sha256, and reproduce the clean accuracy on the full test split that their cards state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import data_dir

from sinkhorn_attacks import zoo
from sinkhorn_attacks.data import load_dataset

CARDS = Path(zoo.__file__).parent / "weights" / "cifar10.json"
VARIANTS = sorted(json.loads(CARDS.read_text())) if CARDS.is_file() else []


def test_every_card_is_a_pinned_offline_zoo_entry() -> None:
    assert VARIANTS, "no CIFAR-10 model cards shipped"
    for v in VARIANTS:
        entry = zoo.info(f"sinkhorn-attacks-cifar10-{v}")
        path = zoo.locate(entry.name, download=False)  # the package's own file: no network
        assert path.parent == CARDS.parent and entry.sha256 and path.stat().st_size == entry.size
        entry.verify(path)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_card_clean_accuracy_on_the_full_test_split(variant: str) -> None:
    card = json.loads(CARDS.read_text())[variant]
    test = load_dataset("cifar10", "test", data_dir())
    assert len(test) == card["test_images"] == 10_000
    model = zoo.load(f"sinkhorn-attacks-cifar10-{variant}", download=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # 10,000 forward passes per model: both cores of the CI machine
    try:
        with torch.no_grad():
            correct = sum(
                int((model(test.images[i : i + 1000]).argmax(1) == test.labels[i : i + 1000]).sum())
                for i in range(0, len(test), 1000)
            )
    finally:
        torch.set_num_threads(threads)
    assert correct / len(test) == pytest.approx(card["clean_accuracy_full_test"], abs=1e-9)
