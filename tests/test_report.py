"""Report: figures and a self-contained report.html from a tiny evaluation (random CNN, random 1x8x8 images)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from sinkhorn_attacks.eval import AttackSpec, EvalConfig, run_evaluation
from sinkhorn_attacks.report import write_report


def test_report_html_embeds_images(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(6, 1, 8, 8) * 0.5 + 0.25
    y = torch.randint(0, 3, (6,))
    cfg = EvalConfig(
        models=["net"],
        attacks=[AttackSpec("linf-pgd", params={"steps": 3, "radius": 0.1, "step_size": 0.05}), AttackSpec("fgsm")],
        limit=6,
        batch_size=3,
        out=str(tmp_path / "run"),
        grid_examples=3,
    )
    run_evaluation(cfg, models={"net": net}, data=(x, y), progress=False)
    path = write_report(cfg.out)
    rep = path.parent
    for f in ("acc_vs_iteration.png", "acc_vs_radius.png", "acc_at_radii.png", "grid_net__linf-pgd.png"):
        assert (rep / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    text = path.read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 3 + 2  # three figures + one grid per attack
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in imgs)
    assert "http://" not in text and "https://" not in text  # nothing fetched: opens offline
    assert "robust acc" in text and "linf-pgd" in text


def test_cli_attack_help_and_list(capsys) -> None:
    from sinkhorn_attacks.cli import main

    with pytest.raises(SystemExit) as e:
        main(["attack", "--help"])
    assert e.value.code == 0
    assert "W1" in capsys.readouterr().out
    assert main(["attack", "--list"]) == 0
    assert "linf-pgd" in capsys.readouterr().out
