"""Evaluation configuration: models x attacks x dataset slice, read from TOML or built from flags.

TOML layout (every section optional except ``models`` and ``attacks``)::

    [run]
    out = "runs/thesis_mnist"   # output folder (results, state, log)
    seed = 0                    # base seed; each work unit gets its own seed derived from it
    batch_size = 50             # examples per work unit
    device = "auto"             # auto (cuda when available), cpu, cuda
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

import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._runfolder import fingerprint
from .._util import UserError, suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "AttackSpec",
    "ConfigError",
    "EvalConfig",
    "bundled_configs",
    "config_identity",
    "config_from_dict",
    "PreflightError",
    "preflight",
    "load_config",
    "resolve_config",
    "validate_attack",
    "check_model_on",
]


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
    device: str = "auto"
    grid_examples: int = 8
    radii: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0])
    radius_points: int = 50
    worst_case: list[str] | None = None  # labels in cascade order; None = all attacks
    cascade_attacks: list[AttackSpec] = field(default_factory=list)  # worst-case-only attacks
    arch: str | None = None  # architecture of the models given as bare checkpoint files (None: inferred)

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
        self._check_sizes()
        if self.worst_case is not None:
            unknown = [w for w in self.worst_case if w not in labels]
            if unknown:
                raise ValueError(f"config: worst_case names unknown attacks {unknown}; attacks are {labels}")

    def _check_sizes(self) -> None:
        """Counts and radii, each refused in one line naming its flag and config key."""
        import math

        where = {"limit": ("--limit", "[data] limit"), "offset": ("--offset", "[data] offset"),
                 "batch_size": ("--batch-size", "[run] batch_size"),
                 "grid_examples": ("--grid", "[run] grid_examples"),
                 "radius_points": (None, "[curves] radius_points")}  # fmt: skip
        lower = {"limit": 1, "offset": 0, "batch_size": 1, "grid_examples": 0, "radius_points": 2}
        for key, lo in lower.items():
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                flag, toml = where[key]
                name = f"{flag} ({toml})" if flag else toml
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        radii = self.radii
        if not isinstance(radii, (list, tuple)) or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0 for r in radii
        ):
            raise ValueError(f"--radii ([curves] radii) must be finite numbers >= 0, got {radii!r}")

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

    def identity(self, *, with_limit: bool = True) -> dict[str, Any]:
        """Everything that changes results (not the output folder, the device or the data and model folders);
        ``with_limit=False`` also leaves out ``limit``."""
        return config_identity(self.to_dict(), with_limit=with_limit)

    def fingerprint(self, *, with_limit: bool = True) -> str:
        """Hash of :meth:`identity`. ``with_limit=False`` leaves out ``limit``: runs that differ only in it
        share their finished work units."""
        return fingerprint(self.identity(with_limit=with_limit))


def config_identity(d: dict[str, Any], *, with_limit: bool = True) -> dict[str, Any]:
    """The fingerprinted part of an :meth:`EvalConfig.to_dict` dict (also of a stored ``config.json``)."""
    drop = {"out", "device", "data_dir", "models_dir", "fingerprint", "command"} | (set() if with_limit else {"limit"})
    d = {k: v for k, v in d.items() if k not in drop}
    if d.get("arch", "absent") is None:  # runs from before the field existed keep their fingerprint
        d.pop("arch")
    return d


_SCHEMA: dict[str, dict[str, str]] = {
    "run": {"out": "str", "seed": "int", "batch_size": "int", "device": "str", "grid_examples": "int"},
    "data": {"dataset": "str", "split": "str", "limit": "int", "offset": "int", "data_dir": "str"},
    "models": {"names": "list[str]", "models_dir": "str"},
    "curves": {"radii": "list[float]", "radius_points": "int"},
    "worst_case": {"attacks": "list"},
}
_ATTACK_KEYS = {"preset": "str", "label": "str", "params": "dict"}
_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "list[str]": "a list of strings",
    "list[float]": "a list of numbers",
    "list": "a list",
    "dict": "a table",
}


class ConfigError(UserError):
    """A config file or value that cannot be used; the message names the file, the key and the fix."""


def _where(source: str | None, key: str) -> str:
    return f"{source}: {key}" if source else key


def _check_type(value: Any, kind: str, where: str) -> Any:
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[float]": lambda v: (
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
    }[kind](value)
    if not ok:
        hint = ""
        if kind.startswith("list") and isinstance(value, str):
            hint = f"; write [{value!r}] for a single entry".replace("'", '"')
        raise ConfigError(f"{where} = {value!r}: expected {_TYPE_WORDS[kind]}{hint}")
    return value


def _check_keys(table: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for k in table:
        if k not in allowed:
            raise ConfigError(f"unknown key {k!r} in {where}{suggest(k, allowed)}; valid keys: {', '.join(allowed)}")


def _attack_spec(item: Any, where: str = "attacks") -> AttackSpec:
    if isinstance(item, str):
        return AttackSpec(item)
    if isinstance(item, dict):
        _check_keys(item, _ATTACK_KEYS, where)
        if "preset" not in item:
            raise ConfigError(f'{where}: an attack table needs preset = "NAME" (and optional label, params)')
        for k, kind in _ATTACK_KEYS.items():
            if k in item:
                _check_type(item[k], kind, f"{where}.{k}")
        return AttackSpec(item["preset"], item.get("label", ""), dict(item.get("params", {})))
    raise ConfigError(f"{where}: an attack is a preset name or a table {{ preset = ..., params = ... }}, got {item!r}")


def validate_attack(spec: AttackSpec, where: str = "") -> None:
    """Check the preset name and the keyword overrides of ``spec`` (names and value types) without a model.

    Unknown names get the nearest valid one; a value whose type differs from the preset's default (``steps =
    "abc"``) is refused. Raises :class:`ConfigError`.
    """
    import inspect

    from torch import nn

    from ..attacks import from_preset, preset_names

    where = where or f"attack {spec.label!r}"
    names = preset_names()
    if spec.preset not in names:
        raise ConfigError(
            f"{where}: unknown attack preset {spec.preset!r}{suggest(spec.preset, names)}; "
            "list them with `sinkhorn-attacks attack --list`"
        )
    default = from_preset(spec.preset, nn.Identity())
    valid = set(default.config()) | {
        n for c in type(default).__mro__ for n in inspect.signature(c.__init__).parameters if c is not object
    }
    valid -= {"self", "model", "args", "kwargs", "kw"}
    for k, v in spec.params.items():
        if k not in valid:
            raise ConfigError(
                f"{where}: preset {spec.preset!r} has no parameter {k!r}{suggest(k, valid)}; "
                f"parameters: {', '.join(sorted(valid))}"
            )
        d = getattr(default, k, None)
        num = (int, float)
        bad = (
            (isinstance(d, bool) and not isinstance(v, bool))
            or (isinstance(d, num) and not isinstance(d, bool) and (isinstance(v, bool) or not isinstance(v, num)))
            or (isinstance(d, int) and not isinstance(d, bool) and isinstance(v, float))
        )
        if bad:
            raise ConfigError(f"{where}: {k} = {v!r}: expected {type(d).__name__} like the default {d!r}")
    try:
        from_preset(spec.preset, nn.Identity(), **spec.params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: preset {spec.preset!r} with {spec.params}: {err}") from None


def config_from_dict(
    d: dict[str, Any], base_dir: str | os.PathLike[str] | None = None, source: str | None = None
) -> EvalConfig:
    """Build an :class:`EvalConfig` from the parsed TOML structure (see the module docstring).

    Unknown sections or keys (at any depth) and values of the wrong type raise :class:`ConfigError` naming
    ``source`` (the file), the key and the nearest valid name.
    """
    known = ["run", "data", "models", "attacks", "curves", "worst_case"]
    _check_keys(d, known, _where(source, "the config (sections)"))
    models = d.get("models", {})
    if isinstance(models, list):
        models = {"names": models}
    tables: dict[str, dict[str, Any]] = {}
    for sec, schema in _SCHEMA.items():
        t = models if sec == "models" else d.get(sec, {})
        if not isinstance(t, dict):
            raise ConfigError(f"{_where(source, sec)}: expected a [{sec}] table, got {t!r}")
        _check_keys(t, schema, _where(source, f"[{sec}]"))
        for k, kind in schema.items():
            if k in t:
                _check_type(t[k], kind, _where(source, f"[{sec}] {k}"))
        tables[sec] = t
    run, data, curves, wc = tables["run"], tables["data"], tables["curves"], tables["worst_case"]
    attacks = d.get("attacks", [])
    if not isinstance(attacks, list):
        raise ConfigError(f"{_where(source, 'attacks')}: expected a list of presets or [[attacks]] tables")

    def _path(v: Any) -> str | None:
        if not v:
            return None
        p = Path(os.path.expandvars(os.path.expanduser(str(v))))
        if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
            p = Path(base_dir) / p
        return str(p)

    kw: dict[str, Any] = dict(
        models=list(models.get("names", [])),
        attacks=[_attack_spec(a, _where(source, f"[[attacks]] #{i + 1}")) for i, a in enumerate(attacks)],
        models_dir=_path(models.get("models_dir")),
        dataset=data.get("dataset", "mnist"),
        split=data.get("split", "test"),
        limit=data.get("limit", 100),
        offset=data.get("offset", 0),
        data_dir=_path(data.get("data_dir")),
        out=run.get("out", "runs/evaluate"),
        seed=run.get("seed", 0),
        batch_size=run.get("batch_size", 50),
        device=run.get("device", "auto"),
        grid_examples=run.get("grid_examples", 8),
        radius_points=curves.get("radius_points", 50),
    )
    if "attacks" in wc:
        grid = {a.label for a in kw["attacks"]}
        order, extra = [], []
        for i, item in enumerate(wc["attacks"]):
            if isinstance(item, str) and item in grid:
                order.append(item)
            else:  # an attack run only in the worst-case cascade, on the still-robust examples
                spec = _attack_spec(item, _where(source, f"[worst_case] attacks #{i + 1}"))
                extra.append(spec)
                order.append(spec.label)
        kw["worst_case"], kw["cascade_attacks"] = order, extra
    if "radii" in curves:
        kw["radii"] = [float(r) for r in curves["radii"]]
    try:
        return EvalConfig(**kw)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None


def bundled_configs() -> list[str]:
    """Names of the configs shipped with the package (``sinkhorn-attacks evaluate --config NAME``)."""
    from importlib import resources

    return sorted(
        f.name[: -len(".toml")]
        for f in resources.files("sinkhorn_attacks.configs").iterdir()
        if f.name.endswith(".toml")
    )


def resolve_config(name_or_path: str | os.PathLike[str]) -> Path:
    """A config file path: an existing path, else a bundled config by name (``thesis_mnist``, with or without
    ``.toml`` or a leading ``configs/``). Raises :class:`ConfigError` listing the bundled names."""
    from importlib import resources

    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_file():
        return p
    stem = p.name[: -len(".toml")] if p.name.endswith(".toml") else p.name
    if stem in bundled_configs():
        with resources.as_file(resources.files("sinkhorn_attacks.configs") / f"{stem}.toml") as f:
            return Path(f)
    known = bundled_configs()
    raise ConfigError(
        f"config {str(name_or_path)!r} is neither a file nor a bundled config{suggest(stem, known)}; "
        f"bundled: {', '.join(known)}"
    )


class PreflightError(UserError):
    """Some model, data or device of a run is not available; the message lists every problem."""


def preflight(cfg: EvalConfig, *, check_models: bool = True, check_data: bool = True) -> None:
    """Check, before any work, that the device exists, every attack preset and override is valid, the data
    slice can be read and every model is available (local file, or downloadable). Raises
    :class:`PreflightError` listing everything that is missing."""
    from .._util import resolve_device

    problems: list[str] = []
    try:
        resolve_device(cfg.device)
    except UserError as err:
        problems.append(f"device: {err}")
    for spec in cfg.attacks + cfg.cascade_attacks:
        try:
            validate_attack(spec)
        except ConfigError as err:
            problems.append(str(err))
    sample = None
    if check_data:
        from ..data import DatasetError, load_dataset

        try:
            sample = load_dataset(cfg.dataset, cfg.split, cfg.data_dir, limit=1, offset=cfg.offset)
        except (DatasetError, ValueError, OSError) as err:
            problems.append(f"data {cfg.dataset}/{cfg.split}: {str(err).splitlines()[0]}")
    if check_models:
        problems += [p for p in (_model_problem(cfg, name, sample) for name in cfg.models) if p]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(f"nothing was run; {len(problems)} problem(s) to fix first:\n{lines}")


def _model_problem(cfg: EvalConfig, name: str, sample: Any) -> str | None:
    """What keeps model ``name`` from running on ``cfg``'s data (``sample``: one example, or None), or None:
    a missing or unreadable checkpoint, an unknown architecture, or one forward pass that fails."""
    from .. import zoo

    try:
        if name in zoo.REGISTRY:
            zoo.locate(name, models_dir=cfg.models_dir, download=True)
        elif not Path(name).expanduser().is_file():
            return f"model {name!r}: not a zoo name{suggest(name, zoo.REGISTRY)} nor an existing checkpoint file"
        elif cfg.arch is not None and cfg.arch not in zoo.ARCHITECTURES:
            return f"--arch {cfg.arch!r}: unknown; known: {', '.join(zoo.ARCHITECTURES)}"
        elif cfg.arch is None and zoo.infer_arch(zoo.load_state_dict_any(Path(name).expanduser())) is None:
            return (
                f"model {name}: cannot infer its architecture from the checkpoint's keys; pass --arch "
                f"(one of {', '.join(zoo.ARCHITECTURES)})"
            )
        model = zoo.load(name, models_dir=cfg.models_dir, arch=None if name in zoo.REGISTRY else cfg.arch)
        if sample is not None:
            check_model_on(model, sample.images, sample.labels, f"{cfg.dataset}/{cfg.split}")
    except (FileNotFoundError, ValueError) as err:
        return f"model {name}: {str(err).splitlines()[0]}"
    return None


def check_model_on(model: Any, images: Any, labels: Any, data: str) -> None:
    """One forward pass on a few examples of the run's data (``data`` names them): ``ValueError`` when the
    model cannot take these images (an MNIST model on CIFAR-10) or has fewer outputs than the labels need."""
    import torch

    from ..attacks.base import default_output

    try:
        with torch.no_grad():
            out = default_output(model(images))
    except (RuntimeError, TypeError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"cannot take {data} images of shape {tuple(images.shape[1:])} ({msg})") from None
    if out.dim() != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(f"returns shape {tuple(out.shape)} on {data} images, expected (batch, classes) logits")
    top = int(labels.max()) if labels.numel() else 0
    if out.shape[1] <= top:
        raise ValueError(f"has {out.shape[1]} outputs but the {data} labels go up to {top}")


def load_config(path: str | os.PathLike[str]) -> EvalConfig:
    """Read a TOML evaluation config (a path or a bundled name; see the module docstring for the layout)."""
    p = resolve_config(path)
    try:
        with p.open("rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: TOML syntax error: {err}") from None
    return config_from_dict(d, base_dir=p.parent, source=str(p))
