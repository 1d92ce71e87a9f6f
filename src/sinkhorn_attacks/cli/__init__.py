"""Command line: ``sinkhorn-attacks <command> ...``.

Each command lives in its own module ``sinkhorn_attacks.cli.<name>`` exposing
``add_parser(subparsers, help_text)`` (registers the sub-parser and sets ``func``); adding a command is one
line in :data:`COMMANDS`. ``main`` applies the shared options (``--threads``, see :mod:`._common`) and turns
user errors (:class:`~sinkhorn_attacks._util.UserError`, missing or unwritable files) into one line on stderr
with exit code 2; any other exception is a bug and keeps its traceback. On Ctrl-C a command that can resume
prints how (``args.resume_hint``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from .._util import Registry, UserError

# name -> one-line help; the module sinkhorn_attacks.cli.<name> provides add_parser(subparsers, help_text)
COMMANDS: Registry[str] = Registry(
    "command",
    [
        ("demo", "offline demo on scikit-learn digits: UOT attack vs l_inf PGD, table + plot + grid"),
        ("attack", "attack a model (zoo name or checkpoint) on a dataset slice with one preset"),
        ("evaluate", "models x attacks x data: per-example results, curves, worst case, report"),
        ("leaderboard", "every attack on every model in minimal-radius mode, one yardstick: JSON + HTML board"),
        ("benchmark", "one model, a fixed attack cascade, per-example yardstick radii: robust accuracy in one call"),
        ("train", "(adversarial) training, single process or torchrun"),
        ("retrieval", "image-text retrieval: train heads, evaluate and attack R@K"),
        ("zoo", "list / download / verify the published checkpoints"),
    ],
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sinkhorn-attacks",
        description="Wasserstein / unbalanced-OT adversarial attacks with an exact OT budget meter. "
        "Images are (B, C, H, W) in [0, 1]; radii are in the units of the ground cost d^p on images "
        "normalised to total mass 1 (p=1: W1, p=2: W2^2), pixel units, k x k window; every returned image is also "
        "measured on the library's one yardstick (sinkhorn_attacks.ot.measure: W1-TV, 5x5, per unit clean mass).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"sinkhorn_attacks.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("sinkhorn_attacks.cli"):
                continue  # command not built yet
            raise
        module.add_parser(sub, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._common import setup_threads

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv
    if getattr(args, "help_if_bare", False) and argv == [args.command]:
        args.parser.print_help()  # a command that would start a long run with every default shows its help
        return 0
    prog = f"sinkhorn-attacks {args.command}"
    try:
        setup_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print(f"\ninterrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if not isinstance(err, _USER_OSERRORS) and err.errno not in _USER_ERRNOS:
            raise
        # a path the user gave (input missing, output not writable or full)
        print(f"{prog}: error: {_path_flag(err, args)}{err}", file=sys.stderr)
        return 2


# missing input, unwritable / read-only / full output, a file where a folder is expected (and the reverse)
_USER_OSERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_USER_ERRNOS = {
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
    errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
}  # fmt: skip


def _path_flag(err: OSError, args: argparse.Namespace) -> str:
    """``"--out DIR: "`` when the failing path lies under a path flag of the command, else ``""``."""
    if not err.filename:
        return ""
    failing = Path(os.fspath(err.filename)).expanduser().absolute()
    for dest in ("out", "save_adv", "data_dir", "models_dir", "cache_dir", "config"):
        given = getattr(args, dest, None)
        if isinstance(given, str) and given:
            root = Path(given).expanduser().absolute()
            if failing == root or root in failing.parents:
                return f"--{dest.replace('_', '-')} {given}: "
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
