"""Import Wu et al.'s attack code (watml/fast-wasserstein-adversarial) on a CPU-only machine with today's torch.

Their files are used unmodified from a checkout outside the project (``--peer-dir``). Compatibility shims,
installed in ``sys.modules`` / ``torch.cuda`` only while their code runs:

* ``sparse_tensor_cpp`` (their CUDA-era C++ extension) -> the pure-torch test double
  :mod:`benchmarks.wu_sparse_tensor_double`;
* ``advertorch.attacks.Attack`` (only used as a base class) -> a minimal class storing
  ``predict, loss_fn, clip_min, clip_max``;
* ``data`` / ``model`` (need torchvision, unused by the attack loops) -> empty modules;
* ``torch.cuda.Event`` / ``torch.cuda.synchronize`` (used to time the dual solver) -> a wall-clock timer.

A checkout can be made from a git mirror with ``git show HEAD:<file>`` for every non-LFS file.
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from pathlib import Path

import torch

from . import wu_sparse_tensor_double

__all__ = ["import_wu", "cuda_timer_shim"]


class _Attack:
    def __init__(self, predict, loss_fn=None, clip_min=0.0, clip_max=1.0):
        self.predict, self.loss_fn, self.clip_min, self.clip_max = predict, loss_fn, clip_min, clip_max


class _Event:
    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1e3


@contextlib.contextmanager
def cuda_timer_shim():
    """Replace ``torch.cuda.Event``/``synchronize`` with a CPU wall-clock timer for the duration."""
    old = torch.cuda.Event, torch.cuda.synchronize
    torch.cuda.Event, torch.cuda.synchronize = _Event, (lambda *a, **k: None)
    try:
        yield
    finally:
        torch.cuda.Event, torch.cuda.synchronize = old


def import_wu(peer_dir: str | Path) -> dict[str, types.ModuleType]:
    """Import their ``frank_wolfe``, ``projected_gradient``, ``projection``, ``lmo`` and ``utils`` modules."""
    peer = Path(peer_dir)
    if not (peer / "frank_wolfe.py").is_file():
        raise SystemExit(f"{peer} holds no checkout of watml/fast-wasserstein-adversarial (frank_wolfe.py missing)")
    adv = types.ModuleType("advertorch")
    adv_attacks = types.ModuleType("advertorch.attacks")
    adv_attacks.Attack = _Attack
    adv.attacks = adv_attacks
    sys.modules.setdefault("advertorch", adv)
    sys.modules.setdefault("advertorch.attacks", adv_attacks)
    sys.modules["sparse_tensor_cpp"] = wu_sparse_tensor_double
    for name in ("data", "model"):
        stub = types.ModuleType(name)
        stub.str2dataset = stub.str2model = None
        sys.modules[name] = stub
    sys.path.insert(0, str(peer))
    import frank_wolfe  # type: ignore[import-not-found]
    import lmo  # type: ignore[import-not-found]
    import projected_gradient  # type: ignore[import-not-found]
    import projection  # type: ignore[import-not-found]
    import utils  # type: ignore[import-not-found]

    return {"frank_wolfe": frank_wolfe, "projected_gradient": projected_gradient, "projection": projection,
            "lmo": lmo, "utils": utils}  # fmt: skip
