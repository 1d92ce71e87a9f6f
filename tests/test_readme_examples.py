"""The README's Python examples run as written (the shell commands are covered by test_documented_commands)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)


def test_blocks_found() -> None:
    assert len(BLOCKS) >= 3 and "from_preset" in BLOCKS[0]


def test_worked_example_runs_and_its_numbers_hold() -> None:
    from conftest import data_dir, models_dir

    data_dir()
    models_dir()
    ns: dict = {}
    exec(compile(BLOCKS[0], "README.md:worked-example", "exec"), ns)  # noqa: S102 - our own documentation
    res = ns["res"]
    assert len(res) == 20 and res.yardstick is not None
    ok = res.clean_correct & res.success
    assert ok.any() and (res.certified_radius[ok] <= 0.3 * (1 + 1e-6)).all()


@pytest.mark.parametrize("i", [1, 2])
def test_other_examples_run(i: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    ns = {"x": x, "z": (x + 0.1 * torch.rand(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1), "w": x + 0.05}
    exec(compile(BLOCKS[i], f"README.md:block-{i}", "exec"), ns)  # noqa: S102 - our own documentation
    if i == 1:
        assert ns["model"](torch.rand(2, 3, 32, 32)).shape == (2, 10)
    else:
        assert torch.isfinite(ns["m"].value).all() and (ns["exact"] >= 0).all()
