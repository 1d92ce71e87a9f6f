"""Checked downloads: stream to a temporary file next to the target, verify, then rename atomically.

Only the Python standard library is used (``urllib``). ``file://`` URLs work too, which the tests use.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .._util import atomic_open

USER_AGENT = "sinkhorn-attacks (+https://pypi.org/project/sinkhorn-attacks/)"
_CHUNK = 1 << 20


class DownloadError(OSError):
    """Every URL failed (offline, HTTP error, or the content did not match its checksum)."""


class ChecksumError(ValueError):
    """A file's content does not match its pinned checksum."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """Git's object id of a file (``sha1(b"blob <size>\\0" + content)``), as ``git hash-object`` prints it."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike[str], sha256: str | None = None, git_sha1: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches every checksum given (``None`` = not checked)."""
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256.lower():
            raise ChecksumError(f"{path}: sha256 mismatch: expected {sha256}, got {got}")
    if git_sha1 is not None:
        got = git_blob_sha1(path)
        if got != git_sha1.lower():
            raise ChecksumError(f"{path}: git blob sha1 mismatch: expected {git_sha1}, got {got}")


def download(
    url: str | Sequence[str],
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    git_sha1: str | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download ``url`` (or the first working URL of a list) to ``dest``; return ``dest``.

    The content goes to a temporary file in ``dest``'s folder, is checked against ``sha256`` /
    ``git_sha1`` when given, and only then renamed onto ``dest`` (``os.replace``, atomic on one file
    system), so ``dest`` is never left half-written. A checksum mismatch is treated like a failed URL
    and the next URL is tried. Raises :class:`DownloadError` listing every URL's failure.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no URL given")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for u in urls:
        try:
            with atomic_open(dest, "wb", check=lambda tmp: verify_file(tmp, sha256=sha256, git_sha1=git_sha1)) as out:
                _fetch(u, out, timeout=timeout, progress=progress)
            return dest
        except (OSError, ValueError) as err:  # URLError is an OSError; ChecksumError a ValueError
            failures.append(f"  {u}: {type(err).__name__}: {err}")
    raise DownloadError(f"could not download {dest.name}:\n" + "\n".join(failures))


def _fetch(url: str, out, *, timeout: float, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1])
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()


__all__ = ["ChecksumError", "DownloadError", "download", "git_blob_sha1", "sha256_file", "verify_file"]
