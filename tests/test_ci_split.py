"""The list `.ci/run` builds: a run with ``SINKHORN_ATTACKS_SKIPPED=<file>`` writes the node id of each test it
skipped to that file, once (also under pytest-xdist), and none of the tests that ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_lists_exactly_its_skipped_tests(tmp_path: Path) -> None:
    listing = tmp_path / "skipped.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINKHORN_ATTACKS_")}
    env["SINKHORN_ATTACKS_SKIPPED"] = str(listing)
    ran = "tests/test_readme_examples.py::test_blocks_found"
    skips = ["tests/test_data.py::test_real_mnist_and_cifar", "tests/test_zoo.py::test_real_wong_checkpoints"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", ran, *skips]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    listed = listing.read_text(encoding="utf-8").splitlines()
    zoo_ids = [f"{skips[1]}[wong2019-mnist-{v}]" for v in ("vanilla", "adv", "binarize", "robust")]
    assert sorted(listed) == sorted([skips[0], *zoo_ids])
