import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def data_dir() -> Path:
    d = os.environ.get("SINKHORN_ATTACKS_DATA")
    if not d or not Path(d).is_dir():
        pytest.skip("set SINKHORN_ATTACKS_DATA to the shared data folder to run this test")
    return Path(d)


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
