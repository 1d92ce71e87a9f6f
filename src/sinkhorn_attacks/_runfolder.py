"""The run folder of every long command: unit keys, one lock, the stored configuration, checked paths.

A long command writes its results under one output folder (``--out``) and may be killed and restarted at any
time. Every such folder follows the same rules, implemented here once:

* **Unit keys** (:func:`key_part`): a model or attack name becomes a file-name component that identifies it
  exactly. A plain name (lowercase letters, digits, ``.`` and ``-``, words joined by single ``_``, at most 64
  characters, not ``.`` or ``..``) is its own component; any other name becomes a readable slug, ``+`` and 12
  hex digits of the SHA-256 of the exact name (``a/model.pt`` -> ``a_model.pt+<hash>``). Two different names
  never share a component, and no component is ``.``, ``..``, or holds a path separator.
* **Paths** (:meth:`RunFolder.path`): every path of the run is resolved and must lie inside the folder.
* **One lock** (:meth:`RunFolder.lock`): ``.lock`` for a run (rank 0 of a sharded run), ``.lock.<rank>`` for
  the other ranks of a sharded run, whatever the command. The lock file holds ``host:pid:command``. A run
  refuses to start while a live process holds the folder's lock, or while a live process of another command
  (or of any other run, for an unsharded run) holds one of the rank locks. A lock left by a process that no
  longer runs is taken over.
* **The stored configuration** (:meth:`RunFolder.record`, :meth:`RunFolder.refuse_foreign`,
  :func:`conflict_message`): ``config.json`` names the command and the fingerprint (:func:`fingerprint`) of
  the configuration that produced the folder. A run of another command is refused (``--fresh`` does not
  discard another command's results); a run of another configuration is refused with a message naming the
  differing keys.
* **Atomic writes** (:meth:`RunFolder.write`, and :func:`sinkhorn_attacks._util.atomic_write` underneath):
  a temporary file in the same folder, ``fsync``, then a rename; a reader sees the old or the complete new
  file.
* **Unit checks** (:func:`check_examples`): a finished unit must hold exactly the examples it claims.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._util import UserError, atomic_write

__all__ = [
    "LOCK_NAME",
    "RECORD_NAME",
    "FolderLock",
    "LockHolder",
    "RunFolder",
    "check_examples",
    "conflict_message",
    "differing_keys",
    "fingerprint",
    "key_part",
    "legacy_slug",
    "pid_alive",
    "read_lock",
]

LOCK_NAME = ".lock"
RECORD_NAME = "config.json"

#: Keys of the bare ``config.json`` that ``train`` wrote before it recorded its command and fingerprint.
_LEGACY_TRAIN = frozenset({"arch", "dataset", "epochs", "optimizer", "seed"})
_PLAIN = re.compile(r"[a-z0-9.-]+(?:_[a-z0-9.-]+)*")
_PLAIN_MAX = 64
_SLUG_MAX = 40


# ------------------------------------------------------------------------------------------------ unit keys
def key_part(name: str) -> str:
    """A file-name component that identifies ``name`` exactly (see the module docstring)."""
    name = str(name)
    if len(name) <= _PLAIN_MAX and name not in (".", "..") and _PLAIN.fullmatch(name):
        return name
    slug = re.sub(r"[^a-z0-9.-]+", "_", name.lower()).strip("_.")[-_SLUG_MAX:].strip("_.")
    return f"{slug}+{hashlib.sha256(name.encode('utf-8')).hexdigest()[:12]}"


def legacy_slug(name: str, *, path_stem: bool = False) -> str:
    """The lossy slug of earlier versions (characters outside ``[A-Za-z0-9_.-]`` replaced by ``_``; with
    ``path_stem``, a name holding a path separator reduced to its file stem). Used only to find the units of
    folders written by those versions."""
    if path_stem and ("/" in name or "\\" in name):
        name = Path(name).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ------------------------------------------------------------------------------------------------ fingerprints
def fingerprint(identity: Any) -> str:
    """16 hex digits of the SHA-256 of ``identity`` as canonical JSON (sorted keys; other objects as ``str``)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _canonical(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level keys whose values differ between two configurations (a key missing on one side differs)."""
    a, b = _canonical(old), _canonical(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def _short(v: Any) -> str | None:
    s = json.dumps(_canonical(v))
    return s if len(s) <= 24 else None


def conflict_message(folder: Path, command: str, old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One line: ``folder`` holds a ``command`` run of another configuration; names the differing keys (with
    their old and new values when short) and the remedy."""
    if old is None:
        what = "its stored configuration cannot be read"
    else:
        parts = []
        for k in differing_keys(old, new):
            a, b = _short(old.get(k)), _short(new.get(k))
            parts.append(f"{k} {a} -> {b}" if a is not None and b is not None else k)
        what = "differing keys: " + ", ".join(parts) if parts else "its fingerprint differs"
    return (
        f"{folder} holds a {command} run of another configuration ({what}); use another --out, or --fresh to discard it"
    )


# ------------------------------------------------------------------------------------------------ locks
def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockHolder:
    """The content of a lock file: ``host:pid`` or ``host:pid:command`` (``text`` is the raw content)."""

    text: str
    host: str
    pid: int | None
    command: str

    @classmethod
    def parse(cls, text: str) -> LockHolder:
        text = text.strip()
        host, _, rest = text.partition(":")
        pid, _, command = rest.partition(":")
        return cls(text, host, int(pid) if pid.isdigit() else None, command)

    @property
    def alive(self) -> bool:
        """Held by a live process of this host (a lock of another host, or of a dead process, is stale)."""
        return self.host == socket.gethostname() and self.pid is not None and pid_alive(self.pid)


def read_lock(path: str | os.PathLike[str]) -> LockHolder | None:
    """The holder of the lock file ``path``, or ``None`` when there is none."""
    try:
        return LockHolder.parse(Path(path).read_text(errors="replace"))
    except (FileNotFoundError, IsADirectoryError):
        return None


class FolderLock:
    """``FOLDER/NAME`` created exclusively (``O_EXCL``) holding ``host:pid[:command]``: a second writer refuses.

    ``with FolderLock(out, what="evaluate run", command="evaluate"):`` raises :class:`UserError` ("another
    evaluate run (pid N) is writing to FOLDER; wait for it or use another --out", naming the holder's command
    when its lock records one) while a live process on this host holds the lock. A lock whose process no
    longer runs (``kill -9``, a crash), or written on another host, is stale: it is moved aside atomically (so
    that two starters cannot both remove it) and taken. The lock file is removed on exit if it is still this
    process's.
    """

    def __init__(
        self, folder: str | os.PathLike[str], name: str = LOCK_NAME, *, what: str = "run", command: str = ""
    ) -> None:
        self.path = Path(folder) / name
        self.what = what
        self.command = command
        self._owner = ""

    def refusal(self, holder: LockHolder | None) -> UserError:
        """The one-line error for a lock held by ``holder``."""
        what = f"{holder.command} run" if holder is not None and holder.command else self.what
        pid = holder.pid if holder is not None and holder.pid is not None else "?"
        return UserError(
            f"another {what} (pid {pid}) is writing to {self.path.parent}; wait for it or use another --out"
        )

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._owner)
        return True

    def _holder_settled(self) -> LockHolder | None:
        """The holder; an empty lock (being written by its creator right now) is read again once."""
        holder = read_lock(self.path)
        if holder is not None and not holder.text:
            time.sleep(0.05)
            holder = read_lock(self.path)
            if holder is not None and not holder.text:
                raise self.refusal(None)
        return holder

    def _take_stale(self, holder: LockHolder) -> None:
        """Move a stale lock aside (atomic: exactly one starter succeeds) and check it was the stale one."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        taken = LockHolder.parse(aside.read_text(errors="replace"))
        if taken.text != holder.text:  # another starter's fresh lock: put it back and refuse
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            raise self.refusal(taken)
        aside.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = f"{socket.gethostname()}:{os.getpid()}" + (f":{self.command}" if self.command else "")
        for _ in range(20):
            if self._create():
                return self
            holder = self._holder_settled()
            if holder is None:
                continue  # released meanwhile: try again
            if holder.alive:
                raise self.refusal(holder)
            self._take_stale(holder)
        raise self.refusal(None)

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text(errors="replace").strip() == self._owner:
                self.path.unlink()


# ------------------------------------------------------------------------------------------------ the folder
class RunFolder:
    """The output folder of one run of ``command`` (rank ``rank`` of ``world`` processes).

    ``root`` is resolved once; :meth:`path` joins parts below it and refuses any path that resolves outside
    it. :meth:`lock` takes the folder's lock (see the module docstring), :meth:`record` /
    :meth:`write_record` read and write ``config.json``, :meth:`refuse_foreign` refuses a folder that holds
    another command's run.
    """

    def __init__(self, root: str | os.PathLike[str], command: str, *, rank: int = 0, world: int = 1) -> None:
        self.root = Path(root).expanduser().resolve()
        self.command = command
        self.rank = rank
        self.world = world

    def path(self, *parts: str | os.PathLike[str]) -> Path:
        """``root / parts``, resolved; a :class:`UserError` if it lies outside ``root``."""
        p = self.root.joinpath(*parts).resolve()
        if p != self.root and self.root not in p.parents:
            rel = "/".join(str(x) for x in parts)
            raise UserError(f"{rel!r} would be written outside the output folder {self.root}; use other labels")
        return p

    def write(self, path: str | os.PathLike[str], data: bytes | str) -> Path:
        """Write ``data`` atomically to ``path`` (relative to the folder, or absolute inside it)."""
        return atomic_write(self.path(path), data)

    # -------------------------------------------------------------------------------------- lock
    @property
    def lock_name(self) -> str:
        return LOCK_NAME if self.rank == 0 else f"{LOCK_NAME}.{self.rank}"

    def _lock_files(self) -> Iterable[Path]:
        yield self.root / LOCK_NAME
        for p in sorted(self.root.glob(f"{LOCK_NAME}.*")):
            if p.name.partition(".lock.")[2].isdigit():
                yield p

    @contextlib.contextmanager
    def lock(self) -> Iterator[FolderLock]:
        """Hold this process's lock of the folder; refuse while another run writes to it."""
        lock = FolderLock(self.root, self.lock_name, what=f"{self.command} run", command=self.command)
        with lock:
            for other in self._lock_files():
                if other.name == self.lock_name:
                    continue
                holder = read_lock(other)
                if holder is not None and holder.alive and (self.world == 1 or holder.command != self.command):
                    raise lock.refusal(holder)
            yield lock

    def rank_alive(self, rank: int) -> bool:
        """Whether a live process holds the lock of ``rank`` (another rank of a sharded run)."""
        holder = read_lock(self.root / (LOCK_NAME if rank == 0 else f"{LOCK_NAME}.{rank}"))
        return holder is not None and holder.alive

    # -------------------------------------------------------------------------------------- stored config
    def record(self) -> dict[str, Any] | None:
        """``config.json`` as ``{"command", "fingerprint", "config"}``, or ``None`` when the folder has none.

        Folders of earlier versions are recognised (an evaluate record holds ``fingerprint``, a leaderboard
        record ``digest``, a train record the bare training configuration, ``fingerprint`` ``None``); a file of
        any other form gives ``command`` ``None``. ``config`` is the stored
        configuration without the bookkeeping keys.
        """
        path = self.root / RECORD_NAME
        if not path.exists():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            d = None
        if not isinstance(d, dict):
            return {"command": None, "fingerprint": None, "config": None}
        command = d.get("command")
        if command is None:
            command = "leaderboard" if "digest" in d else "evaluate" if "fingerprint" in d else None
        if command is None and _LEGACY_TRAIN <= d.keys():
            command = "train"  # a train folder of earlier versions: the bare configuration, no fingerprint
        fp = d.get("fingerprint", d.get("digest"))
        config = {k: v for k, v in d.items() if k not in ("command", "fingerprint", "digest")}
        return {"command": command, "fingerprint": fp, "config": config}

    def refuse_foreign(self) -> dict[str, Any] | None:
        """The folder's record; a :class:`UserError` when it holds a run of another command (or another
        program's ``config.json``), whatever ``--fresh`` says."""
        rec = self.record()
        if rec is not None and rec["command"] != self.command:
            what = f"a {rec['command']} run" if rec["command"] else f"a {RECORD_NAME} of another program"
            raise UserError(f"{self.root} holds {what}; use another --out for this {self.command} run")
        return rec

    def write_record(self, fp: str, body: dict[str, Any], dumps: Callable[[Any], str] | None = None) -> None:
        """Write ``config.json`` atomically: the command, the fingerprint ``fp``, then ``body`` (as JSON text
        by ``dumps``; default: indented JSON, other objects as ``str``)."""
        doc = {"command": self.command, "fingerprint": fp, **body}
        text = dumps(doc) if dumps is not None else json.dumps(doc, indent=2, default=str) + "\n"
        self.write(RECORD_NAME, text)


# ------------------------------------------------------------------------------------------------ unit checks
def _span(ix: Sequence[int]) -> str:
    if not ix:
        return "no examples"
    if list(ix) == list(range(ix[0], ix[0] + len(ix))):
        return f"examples {ix[0]}..{ix[-1]}"
    return f"{len(ix)} examples from {min(ix)} to {max(ix)}"


def check_examples(path: Path, what: str, claimed: Sequence[int], expected: Sequence[int], remedy: str) -> None:
    """A :class:`UserError` unless the unit file ``path`` (of unit ``what``) holds exactly the examples
    ``expected``, in order."""
    claimed, expected = [int(i) for i in claimed], [int(i) for i in expected]
    if claimed != expected:
        raise UserError(
            f"{path} holds {_span(claimed)} but unit {what} covers {_span(expected)} (edited, or from another "
            f"run); {remedy}"
        )
