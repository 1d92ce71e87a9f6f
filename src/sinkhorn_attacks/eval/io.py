"""File writes (atomic, through :func:`sinkhorn_attacks._util.atomic_write`) and the CSV / JSON readers."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write

__all__ = [
    "plain_float",
    "atomic_write_bytes",
    "atomic_write_text",
    "json_text",
    "write_json",
    "read_json",
    "write_csv",
    "read_csv",
    "save_npz",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the complete new file."""
    atomic_write(path, data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def plain_float(v: float) -> float:
    """``v`` as a plain float; a value that is exactly a float32 number is written with float32's shortest
    digits (``0.3`` rather than ``0.30000001192092896``)."""
    v = float(v)
    if math.isfinite(v) and v != 0.0 and abs(v) < 3.4e38:
        f32 = np.float32(v)
        if float(f32) == v:
            return float(str(f32))
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if hasattr(v, "tolist") and hasattr(v, "dim"):  # torch tensor
        return _jsonable(v.tolist())
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else ("-inf" if v < 0 else "nan")  # strict JSON has no inf / nan
        return plain_float(v)
    if isinstance(v, Path):
        return str(v)
    return v


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON text; non-finite floats as the strings "inf", "-inf", "nan"."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomic JSON write; non-finite floats are written as the strings "inf", "-inf", "nan"."""
    atomic_write_text(path, json_text(obj))


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> None:
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _parse(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv`, converting bools, ints and floats back."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
