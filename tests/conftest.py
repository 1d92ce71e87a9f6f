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
