"""The output folder of ``sinkhorn-attacks train`` on the run-folder engine (:mod:`sinkhorn_attacks._runfolder`).

* ``OUT/config.json`` records the command ``train``, the fingerprint of the run's identity (every field that
  determines the result except ``epochs``: a larger ``--epochs`` extends a run) and the whole configuration.
* A run of another configuration is refused, naming the differing keys (``--fresh`` discards the folder's run
  and starts over); a folder of another command is refused whatever ``--fresh`` says.
* A folder of earlier versions (its ``config.json`` is the bare configuration, no fingerprint) is accepted and
  its record rewritten; its checkpoint is still checked against the configuration the checkpoint stores.
* One lock, ``OUT/.lock``, the same for every command, held by the main process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._runfolder import RunFolder, conflict_message, fingerprint
from .config import ConfigMismatchError, TrainConfig

__all__ = ["COMMAND", "FILES", "check_checkpoint_config", "check_record", "discard", "run_identity", "write_record"]

COMMAND = "train"
#: The files a training run writes besides ``config.json`` (``--fresh`` removes them).
FILES = ("checkpoint.pt", "model.pt", "history.csv", "history.json", "history.png")


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The fields a stored run must share with ``cfg`` to be continued: :meth:`TrainConfig.identity` less
    ``epochs``."""
    return {k: v for k, v in cfg.identity().items() if k != "epochs"}


def _stored_identity(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run identity of a stored configuration (missing fields take today's defaults), or ``None``."""
    try:
        return run_identity(TrainConfig.from_dict(dict(config or {})))
    except (TypeError, ValueError):
        return None


def check_record(folder: RunFolder, cfg: TrainConfig, fresh: bool) -> None:
    """Refuse a folder that holds another command's run, or (unless ``fresh``) a train run of another
    configuration (:class:`ConfigMismatchError` naming the differing keys). A record without a fingerprint
    (earlier versions) is accepted."""
    rec = folder.refuse_foreign()
    if rec is None or rec["fingerprint"] is None or fresh:
        return
    new = run_identity(cfg)
    if rec["fingerprint"] == fingerprint(new):
        return
    old = _stored_identity(rec["config"])
    if old != new:  # equal when only a field added since differs, at its default
        raise ConfigMismatchError(conflict_message(folder.root, COMMAND, old, new))


def check_checkpoint_config(cfg: TrainConfig, written: TrainConfig, root: Path) -> None:
    """Refuse to continue a checkpoint written by ``written`` unless it matches ``cfg`` (a larger
    ``cfg.epochs`` extends the run), naming the differing keys."""
    old, new = written.identity(), cfg.identity()
    if cfg.epochs > written.epochs:
        old["epochs"] = cfg.epochs
    if old != new:
        raise ConfigMismatchError(conflict_message(root, COMMAND, old, new))


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def write_record(folder: RunFolder, cfg: TrainConfig) -> None:
    """Write ``config.json`` atomically: the command, the fingerprint and every field of ``cfg``."""
    folder.write_record(fingerprint(run_identity(cfg)), cfg.to_dict(), dumps=_dumps)


def discard(folder: RunFolder) -> None:
    """Remove the files of the folder's run (``--fresh``); ``config.json`` is rewritten by the new run."""
    for name in FILES:
        folder.path(name).unlink(missing_ok=True)
