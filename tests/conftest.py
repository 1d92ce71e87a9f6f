import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test on one torch thread (tiny tensors: threads only add overhead and contention on shared
    CI), and a test that changes the thread count does not leak it into the next."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def data_dir() -> Path:
    d = os.environ.get("SINKHORN_ATTACKS_DATA")
    if not d or not Path(d).is_dir():
        pytest.skip("set SINKHORN_ATTACKS_DATA to the shared data folder to run this test")
    return Path(d)


def train_digits_cnn(epochs: int, seed: int = 0) -> torch.nn.Module:
    """The small CNN of the tests, trained on scikit-learn's 8x8 digits (offline, seconds)."""
    import torch.nn.functional as F

    from sinkhorn_attacks.data import load_dataset
    from sinkhorn_attacks.zoo.models import small_cnn

    tr = load_dataset("digits", "train")
    torch.manual_seed(seed)
    model = small_cnn(1, 10, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(tr.labels))
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(tr.images[idx]), tr.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def models_dir() -> Path:
    d = os.environ.get("SINKHORN_ATTACKS_MODELS")
    if not d or not Path(d).is_dir():
        pytest.skip("set SINKHORN_ATTACKS_MODELS to the folder of published checkpoints to run this test")
    return Path(d)


# hypothesis profiles (tests/test_properties.py): "ci" by default (small, fast, reproducible: the whole
# property suite well under 90 s), "long" for local runs: pytest --hypothesis-profile=long
try:
    from hypothesis import HealthCheck
    from hypothesis import settings as _hyp_settings
except ImportError:  # pragma: no cover - hypothesis is a test extra
    pass
else:
    _hyp_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hyp_settings.register_profile("ci", max_examples=8, derandomize=True, print_blob=True, **_hyp_common)
    _hyp_settings.register_profile("long", max_examples=300, print_blob=True, **_hyp_common)
    if _hyp_settings.get_current_profile_name() == "default":  # no --hypothesis-profile given
        _hyp_settings.load_profile("ci")


# ``SINKHORN_ATTACKS_SKIPPED=<file>``: append the node id of every skipped test (and skipped module) to that
# file, one per line, so that a second run can take exactly those (``python -m pytest @<file>``): `.ci/run`
# runs the suite once without the data folder, then only what that run skipped, with it.
_CONFIG: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config


def _log_skipped(report: pytest.CollectReport | pytest.TestReport) -> None:
    path = os.environ.get("SINKHORN_ATTACKS_SKIPPED")
    if not path or not report.skipped or (_CONFIG is not None and hasattr(_CONFIG, "workerinput")):
        return  # xdist workers forward their reports: the controller writes each once
    with open(path, "a", encoding="utf-8") as f:
        f.write(report.nodeid + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _log_skipped(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _log_skipped(report)
