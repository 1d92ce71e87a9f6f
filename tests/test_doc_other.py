"""Every shell command of the other documents under docs/ runs (smoke runs: tests/documented.py)."""

from __future__ import annotations

import pytest
from documented import cases_of, run_documented


@pytest.mark.parametrize(("doc", "index", "cmd", "needs"), cases_of("other"))
def test_documented_command(
    doc: str, index: int, cmd: str, needs: frozenset[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_documented(doc, index, cmd, needs, tmp_path_factory)
