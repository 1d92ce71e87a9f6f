"""The package's layers import only downward (every import statement, at module level or inside functions):
``ot`` <- ``projections`` <- ``attacks`` <- ``eval`` / ``train`` / ``retrieval`` <- ``report`` <- ``cli``;
``data``, ``zoo`` and the private helpers are leaves that any layer may use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sinkhorn_attacks"
LEAVES = {"_util", "_runfolder", "data", "zoo"}
RANK = {"ot": 1, "projections": 2, "attacks": 3, "eval": 4, "train": 4, "retrieval": 4, "report": 5, "cli": 6}
TOP = {"__init__", "__main__"}  # the package's entry points may import anything


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first component under the package) of every import of the package in ``path``."""
    pkg = list(path.relative_to(PACKAGE).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            if isinstance(node, ast.Import):
                found += [
                    (node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("sinkhorn_attacks.")
                ]
            continue
        if node.level:
            base = pkg[: len(pkg) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
        elif node.module and node.module.split(".")[0] == "sinkhorn_attacks":
            target = node.module.split(".")[1:] or [a.name for a in node.names][:1]
        else:
            continue
        if target != ["__version__"]:  # the package's version string is no layer
            found.append((node.lineno, target[0].removesuffix(".py")))
    return found


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_the_checker_sees_relative_and_absolute_imports(tmp_path: Path) -> None:
    src = PACKAGE / "ot" / "kernel.py"
    assert {t for _, t in _imports(src)} <= {"ot", "_util"}
    assert any(t == "ot" for _, t in _imports(PACKAGE / "projections" / "uot.py"))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path: Path) -> None:
    me = _layer(path)
    if me in TOP:
        return
    for line, target in _imports(path):
        if target == me or target in LEAVES:
            continue
        assert me not in LEAVES, f"{path.name}:{line}: the leaf {me!r} imports the layer {target!r}"
        assert target in RANK, f"{path.name}:{line}: unknown part of the package {target!r}"
        assert RANK[target] < RANK[me], f"{path.name}:{line}: {me!r} imports {target!r}, a layer above it"
