"""Evaluation configuration: models x attacks x dataset slice, read from TOML or built from flags.

TOML layout (every section optional except ``models`` and ``attacks``)::

    [run]
    out = "runs/thesis_mnist"   # output folder (results, state, log)
    seed = 0                    # base seed; each work unit gets its own seed derived from it
    batch_size = 50             # examples per work unit
    device = "cpu"
    grid_examples = 8           # examples saved per (model, attack) for the report's grids

    [data]
    dataset = "mnist"          # sinkhorn_attacks.data.load_dataset name
    split = "test"
    limit = 100
    offset = 0
    data_dir = ""              # default $SINKHORN_ATTACKS_DATA

    [models]
    names = ["wong2019-mnist-vanilla", "path/to/ckpt.pth"]
    models_dir = ""            # default $SINKHORN_ATTACKS_MODELS

    [[attacks]]                # or: attacks = ["linf-pgd", "fgsm"]
    preset = "thesis"
    label = "uot-thesis"       # optional display name (default: preset)
    params = { steps = 75 }    # keyword overrides for from_preset

    [curves]
    radii = [0.1, 0.25, 0.5, 1.0]   # fixed metered radii for "accuracy at radius"
    radius_points = 50              # grid size of the accuracy-vs-metered-radius curve

    [worst_case]
    # cascade order (default: every attack of the grid). A grid label reuses the grid's results (each grid
    # attack ran on every example); any other entry (preset name or {preset, label, params} table) runs
    # only in the cascade, on the examples still robust after the previous entries (AutoAttack style).
    attacks = ["thesis", "linf-pgd", { preset = "l2-pgd", params = { steps = 20 } }]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["AttackSpec", "EvalConfig", "load_config", "config_from_dict"]


@dataclass
class AttackSpec:
    """One attack of the grid: a preset name, its display label and keyword overrides."""

    preset: str
    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.preset


@dataclass
class EvalConfig:
    models: list[str]
    attacks: list[AttackSpec]
    dataset: str = "mnist"
    split: str = "test"
    limit: int = 100
    offset: int = 0
    data_dir: str | None = None
    models_dir: str | None = None
    out: str = "runs/evaluate"
    seed: int = 0
    batch_size: int = 50
    device: str = "cpu"
    grid_examples: int = 8
    radii: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0])
    radius_points: int = 50
    worst_case: list[str] | None = None  # labels in cascade order; None = all attacks
    cascade_attacks: list[AttackSpec] = field(default_factory=list)  # worst-case-only attacks

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("config: at least one model is needed")
        if not self.attacks:
            raise ValueError("config: at least one attack is needed")
        labels = [a.label for a in self.attacks + self.cascade_attacks]
        if len(set(labels)) != len(labels):
            raise ValueError(f"config: attack labels must be unique, got {labels}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"config: model names must be unique, got {self.models}")
        if self.batch_size < 1 or self.limit < 1 or self.offset < 0:
            raise ValueError("config: batch_size and limit must be >= 1 and offset >= 0")
        if self.worst_case is not None:
            unknown = [w for w in self.worst_case if w not in labels]
            if unknown:
                raise ValueError(f"config: worst_case names unknown attacks {unknown}; attacks are {labels}")

    @property
    def worst_case_labels(self) -> list[str]:
        return list(self.worst_case) if self.worst_case is not None else [a.label for a in self.attacks]

    def attack(self, label: str) -> AttackSpec:
        for a in self.attacks + self.cascade_attacks:
            if a.label == label:
                return a
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not the output folder or the device)."""
        d = self.to_dict()
        for k in ("out", "device", "data_dir", "models_dir"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _attack_spec(item: Any) -> AttackSpec:
    if isinstance(item, str):
        return AttackSpec(item)
    if isinstance(item, dict):
        extra = set(item) - {"preset", "label", "params"}
        if "preset" not in item or extra:
            raise ValueError(f"config: an attack needs 'preset' (and optional 'label', 'params'), got {item}")
        return AttackSpec(str(item["preset"]), str(item.get("label", "")), dict(item.get("params", {})))
    raise ValueError(f"config: an attack is a preset name or a table, got {item!r}")


def config_from_dict(d: dict[str, Any], base_dir: str | os.PathLike[str] | None = None) -> EvalConfig:
    """Build an :class:`EvalConfig` from the parsed TOML structure (see the module docstring)."""
    known = {"run", "data", "models", "attacks", "curves", "worst_case"}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"config: unknown sections {sorted(unknown)}; known: {sorted(known)}")
    run, data, curves = d.get("run", {}), d.get("data", {}), d.get("curves", {})
    models = d.get("models", {})
    if isinstance(models, list):
        models = {"names": models}
    attacks = d.get("attacks", [])
    if not isinstance(attacks, list):
        raise ValueError("config: 'attacks' must be a list")
    wc = d.get("worst_case", {})

    def _path(v: Any) -> str | None:
        if not v:
            return None
        p = Path(os.path.expandvars(os.path.expanduser(str(v))))
        if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
            p = Path(base_dir) / p
        return str(p)

    kw: dict[str, Any] = dict(
        models=[str(m) for m in models.get("names", [])],
        attacks=[_attack_spec(a) for a in attacks],
        models_dir=_path(models.get("models_dir")),
        dataset=str(data.get("dataset", "mnist")),
        split=str(data.get("split", "test")),
        limit=int(data.get("limit", 100)),
        offset=int(data.get("offset", 0)),
        data_dir=_path(data.get("data_dir")),
        out=str(run.get("out", "runs/evaluate")),
        seed=int(run.get("seed", 0)),
        batch_size=int(run.get("batch_size", 50)),
        device=str(run.get("device", "cpu")),
        grid_examples=int(run.get("grid_examples", 8)),
        radius_points=int(curves.get("radius_points", 50)),
    )
    if "attacks" in wc:
        grid = {a.label for a in kw["attacks"]}
        order, extra = [], []
        for item in wc["attacks"]:
            if isinstance(item, str) and item in grid:
                order.append(item)
            else:  # an attack run only in the worst-case cascade, on the still-robust examples
                spec = _attack_spec(item)
                extra.append(spec)
                order.append(spec.label)
        kw["worst_case"], kw["cascade_attacks"] = order, extra
    if "radii" in curves:
        kw["radii"] = [float(r) for r in curves["radii"]]
    return EvalConfig(**kw)


def load_config(path: str | os.PathLike[str]) -> EvalConfig:
    """Read a TOML evaluation config (see the module docstring for the layout)."""
    p = Path(path)
    with p.open("rb") as f:
        d = tomllib.load(f)
    return config_from_dict(d, base_dir=p.parent)
