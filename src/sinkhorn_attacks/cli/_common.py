"""Helpers shared by every command: thread count, device, progress bars, user errors, number formatting.

Thread default: the attacks are many small torch operations per step (a 28x28 Sinkhorn sweep is ~150 tiny
ops), where intra-op parallelism costs more in OpenMP hand-offs than it gains, and on a shared machine two
threads per process spin-wait against the other jobs. ``sinkhorn-attacks demo`` on the 2-core development
machine: 15 s with one thread and 19.5 s with torch's default (2 threads) when idle; a user on a loaded machine
saw 3 min 16 s against 28 min. With the default below it took 22.6 s at load average 6.7. So every command
runs with **1 intra-op thread** unless ``--threads N`` or ``$SINKHORN_ATTACKS_THREADS`` / ``$OMP_NUM_THREADS``
says otherwise (``--threads 0`` keeps torch's own default).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._util import UserError, fmt, resolve_device

__all__ = [
    "UserError",
    "add_threads",
    "add_device",
    "default_threads",
    "setup_threads",
    "resolve_device",
    "user_errors",
    "fmt",
    "StepBar",
    "smoke_limit",
    "check_output",
    "check_count_flag",
    "check_real_flag",
]

ENV_THREADS = "SINKHORN_ATTACKS_THREADS"
ENV_SMOKE = "SINKHORN_ATTACKS_SMOKE"


def default_threads() -> int:
    """``$SINKHORN_ATTACKS_THREADS``, else ``$OMP_NUM_THREADS``, else 1 (see the module docstring)."""
    for var in (ENV_THREADS, "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def add_threads(p: argparse.ArgumentParser) -> None:
    """Add ``--threads`` (intra-op torch threads) to a (sub-)parser."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads (default 1, or $OMP_NUM_THREADS; 0 = torch's default). One thread is "
        "fastest for these many-small-op workloads on a shared CPU.",
    )


def setup_threads(threads: int | None) -> int:
    """Apply the thread choice; returns the number in use."""
    import torch

    n = default_threads() if threads is None else int(threads)
    if n < 0:
        raise UserError(f"--threads must be >= 0, got {n}")
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--device", default=default, help="auto (cuda when available, else cpu), cpu, cuda or cuda:N (default auto)"
    )


@contextlib.contextmanager
def user_errors(what: str = "") -> Iterator[None]:
    """Turn the errors of loading user input (ValueError, KeyError, FileNotFoundError, TOML syntax errors)
    into :class:`UserError` so that the CLI prints one line instead of a traceback."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except UserError:
        raise
    except KeyError as err:
        msg = err.args[0] if err.args else str(err)
        raise UserError(f"{prefix}{msg}") from err
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        raise UserError(f"{prefix}{err}") from err


def check_output(path: str | os.PathLike[str] | None, flag: str) -> None:
    """Before any work: the output folder ``path`` (given by ``flag``) is, or can be made, a writable folder.
    Nothing is created; a folder whose writes still fail later (root on a read-only mount point) is reported
    by :func:`sinkhorn_attacks.cli.main`, naming the flag too."""
    if path is None:
        return
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder")
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable (read-only folder or file system)")


def check_count_flag(value: int | None, flag: str, lower: int = 1) -> None:
    """An integer flag ``>= lower`` (``None``: not given)."""
    if value is not None and value < lower:
        raise UserError(f"{flag} must be >= {lower}, got {value}")


def check_real_flag(value: float | None, flag: str, *, positive: bool = False) -> None:
    """A finite number flag ``>= 0`` (``> 0`` when ``positive``; ``None``: not given)."""
    if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise UserError(f"{flag} must be a finite number {'>' if positive else '>='} 0, got {value}")


def smoke_limit() -> int | None:
    """``$SINKHORN_ATTACKS_SMOKE`` (an int): cap the work of every command for a smoke run (tests of the
    documented commands set it); ``None`` when unset."""
    v = os.environ.get(ENV_SMOKE, "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else None


class StepBar:
    """A tqdm bar over attack steps, fed by an attack's ``callback(step, images, done)`` hook."""

    def __init__(self, total: int, desc: str, *, disable: bool = False, position: int | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, desc=desc, unit="step", disable=disable, leave=False, position=position, file=sys.stderr
        )
        self.last = 0

    def __call__(self, step: int, images: Any = None, done: Any = None) -> None:
        step = int(step)
        if step > self.last:
            self.bar.update(min(step, self.bar.total or step) - self.last)
            self.last = step
        if done is not None:
            with contextlib.suppress(Exception):
                self.bar.set_postfix_str(f"fooled {int(done.sum())}/{done.numel()}", refresh=False)

    def close(self) -> None:
        self.bar.close()
