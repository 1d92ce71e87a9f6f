"""Small shared helpers: atomic file writes, a name registry, user-facing errors.

* :func:`atomic_write` / :func:`atomic_open`: write a file so that readers see either the old or the complete
  new content (temporary file in the same folder, ``fsync``, ``os.replace``; usual permissions).
* :class:`Registry`: a ``dict`` of named entries that refuses duplicate names, lists names by wildcard and
  suggests the nearest name for a typo.
* :class:`UserError`: a mistake in the user's input (config, flag, path). The command line prints its message
  as one line (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "UserError",
    "fmt",
    "atomic_open",
    "atomic_write",
    "Registry",
    "resolve_device",
    "suggest",
]

T = TypeVar("T")


class UserError(ValueError):
    """An error in the user's input; the CLI shows ``str(err)`` on one line and exits with code 2."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest of ``choices``, or ``""``."""
    best = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {best[0]!r}?)" if best else ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    fsync: bool = True,
    check: Callable[[Path], Any] | None = None,
) -> Iterator[IO[Any]]:
    """Context manager yielding a file opened on a temporary sibling of ``path``; renamed onto ``path`` on
    a clean exit, removed on an exception. ``mode`` is ``"wb"`` or ``"w"`` (UTF-8). ``check(tmp_path)`` runs
    on the complete temporary file before the rename (e.g. a checksum; raising keeps ``path`` untouched)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str | Callable[[IO[bytes]], Any], *, fsync: bool = True
) -> Path:
    """Write ``data`` (bytes, text, or a callable writing to a binary file object, e.g.
    ``lambda f: torch.save(obj, f)``) to ``path`` atomically. Returns the path."""
    with atomic_open(path, "wb", fsync=fsync) as f:
        if callable(data):
            data(f)
        elif isinstance(data, str):
            f.write(data.encode("utf-8"))
        else:
            f.write(data)
    return Path(path)


class Registry(dict[str, T]):
    """Named entries. Registering a name twice (:meth:`register`, or the constructor) raises ``ValueError``
    (item assignment replaces on purpose, e.g. in tests); an unknown name raises ``KeyError``
    (a :class:`UserError` message naming the nearest entry); :meth:`names` filters by wildcard."""

    def __init__(self, kind: str, items: Iterable[tuple[str, T]] = ()) -> None:
        super().__init__()
        self.kind = kind
        for name, value in items:
            self.register(name, value)

    def register(self, name: str, value: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        super().__setitem__(name, value)
        return value

    def __missing__(self, name: str) -> T:
        raise KeyError(self.unknown(name))

    def unknown(self, name: str) -> str:
        """The message for an unknown ``name``: the nearest name, else the list."""
        hint = suggest(name, self)
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self)}"

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, optionally only those matching a shell wildcard (``"wong2019-*"``)."""
        return [n for n in self if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def resolve_device(name: str | None) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a clear error for a device this machine lacks (CUDA on
    a CPU-only build, ``cuda:N`` past the visible GPUs, ``mps`` without Metal)."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:]
        if index and not index.isdigit():
            raise UserError(f"--device {name!r}: use cuda or cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build but no GPU is visible"
            raise UserError(f"--device {name}: torch {torch.__version__} is {build}; use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 and up)")
        return name
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: Apple's Metal (MPS) backend is not available here; use --device cpu")
        return name
    if name == "cpu":
        return name
    raise UserError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps")


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for missing, ``inf``, or the number rounded to ``digits`` significant-ish digits
    (fixed point for values >= 0.01, otherwise 3 significant digits)."""
    if v is None or v == "":
        return "-"
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0 or abs(v) >= 0.01:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}g}"
