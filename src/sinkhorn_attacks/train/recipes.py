"""Bundled training recipes: TOML files whose ``[train]`` table holds :class:`TrainConfig` fields.

``sinkhorn-attacks train --config cifar10_clean`` runs one by name (flags given on the command line override
its values); ``TrainConfig.from_dict(load_recipe("cifar10_clean"))`` does the same from Python. A run's own
``config.json`` is a recipe too, so ``--config runs/x/config.json`` repeats a run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from .._util import UserError, suggest
from .config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["bundled_recipes", "load_recipe"]


def _folder() -> Any:
    return resources.files("sinkhorn_attacks.configs") / "train"


def bundled_recipes() -> list[str]:
    """Names of the training recipes shipped with the package."""
    return sorted(f.name[: -len(".toml")] for f in _folder().iterdir() if f.name.endswith(".toml"))


def _without_record_keys(p: Path, table: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config.json`` less the run folder's bookkeeping (``command``, ``fingerprint``); a record of
    another command is refused."""
    if "command" not in table:
        return table
    if table["command"] != "train":
        raise UserError(f"{p}: the config.json of a {table['command']} run, not a training recipe")
    return {k: v for k, v in table.items() if k not in ("command", "fingerprint")}


def load_recipe(name_or_path: str | os.PathLike[str], _depth: int = 0) -> dict[str, Any]:
    """The ``TrainConfig`` fields of a recipe: a bundled name, a TOML file with a ``[train]`` table, or a JSON
    file of fields (a run's ``config.json``). ``extends = "other"`` starts from another recipe's fields (a
    bundled name or a path) and replaces the ones given. Raises :class:`UserError` naming the file and any
    unknown key."""
    p = Path(os.path.expanduser(str(name_or_path)))
    if not p.is_file():
        stem = p.name.removesuffix(".toml")
        known = bundled_recipes()
        if stem not in known:
            raise UserError(
                f"training recipe {str(name_or_path)!r} is neither a file nor a bundled recipe"
                f"{suggest(stem, known)}; bundled: {', '.join(known)}"
            )
        with resources.as_file(_folder() / f"{stem}.toml") as f:
            return load_recipe(Path(f), _depth)
    try:
        if p.suffix == ".json":
            table = json.loads(p.read_text(encoding="utf-8"))
        else:
            with p.open("rb") as f:
                table = tomllib.load(f).get("train")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{p}: syntax error: {err}") from None
    if not isinstance(table, dict):
        raise UserError(f"{p}: no [train] table of TrainConfig fields")
    table = _without_record_keys(p, dict(table))
    known_fields = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(table) - known_fields - {"extends"})
    if unknown:
        raise UserError(f"{p}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known_fields))}")
    base = table.pop("extends", None)
    if base is None:
        return table
    if _depth > 8:
        raise UserError(f"{p}: recipes extend each other in a cycle")
    return {**load_recipe(base, _depth=_depth + 1), **table}  # this recipe's values win
