"""sinkhorn-attacks: adversarial robustness under the Wasserstein threat model.

``sinkhorn_attacks.benchmark(model, images, labels)`` is the one-call evaluation (a fixed attack cascade,
per-example yardstick radii; :mod:`sinkhorn_attacks.eval.cascade`); the attacks live in
:mod:`sinkhorn_attacks.attacks`, the transport mathematics in :mod:`sinkhorn_attacks.ot`.
"""

from typing import Any

from .ot import LocalCost  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # the evaluation layer is imported on first use only
    if name == "benchmark":
        from .eval.cascade import benchmark

        return benchmark
    raise AttributeError(f"module 'sinkhorn_attacks' has no attribute {name!r}")
