"""The documented commands are found, and every document's commands run in one test module.

The commands themselves run in tests/test_doc_<group>.py (one module per group of documents, so that
pytest-xdist spreads them over its workers while one document's commands stay in order on one worker).
"""

from __future__ import annotations

import re

from documented import CASES, GROUPS, ROOT, documents, group_of


def test_commands_found() -> None:
    """The extraction sees the documented commands (guards against a silently empty parametrisation)."""
    cmds = [c.values[2] for c in CASES]
    marked = {c.values[2] for c in CASES if c.values[3]}
    assert any(c.startswith("sinkhorn-attacks evaluate --config") for c in marked)
    assert any(c.startswith("sinkhorn-attacks demo") for c in cmds)
    assert any(c.startswith("sinkhorn-attacks evaluate --config") for c in cmds)
    assert any(c.startswith("python -m benchmarks") for c in cmds)
    assert any("retrieval attack" in c for c in cmds)


def test_every_document_has_its_test_module() -> None:
    """Each group of documents (and ``other``) has a module that runs exactly that group's commands."""
    groups = {group_of(d) for d in documents()}
    assert groups == {*GROUPS, "other"}, groups
    for g in groups:
        text = (ROOT / "tests" / f"test_doc_{g}.py").read_text(encoding="utf-8")
        assert re.search(rf"cases_of\(\"{g}\"\)", text), g
    assert sum(group_of(c.values[0]) == "retrieval" for c in CASES) >= 8
