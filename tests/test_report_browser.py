"""report.html in headless Chromium: screenshot not blank, nothing fetched from the network.

Runs the checks of scripts/check_report_browser.py.

Skipped when no Chromium binary is on PATH (Debian: ``apt-get install chromium``; or set ``$CHROMIUM``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report_browser.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_report_browser", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


crb = _load_script()


def test_self_contained_check_flags_external_resources() -> None:
    ok_html = '<img src="data:image/png;base64,iVBORw0KGgo="/><p>see https://example.com in text</p>'
    assert crb.check_self_contained(ok_html) == ([], 1)
    for bad in (
        '<img src="https://example.com/a.png">',
        "<script src=//cdn.example.com/x.js></script>",
        '<link rel="stylesheet" href="http://example.com/s.css">',
        "<style>body{background:url('https://example.com/b.png')}</style>",
        '<style>@import "https://example.com/s.css";</style>',
    ):
        problems, _ = crb.check_self_contained(bad)
        assert problems and "external resource" in problems[0], bad
    problems, n = crb.check_self_contained('<img src="data:image/png;base64,AAAA">')
    assert n == 1 and "not a valid base64 PNG" in problems[0]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = crb.find_chromium()
    if path is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium, or set $CHROMIUM)")
    return path


def test_tiny_report_renders_in_chromium(tmp_path: Path, chromium: str) -> None:
    html = crb.build_tiny_report(tmp_path)
    res = crb.check_report(html, chromium=chromium, png=tmp_path / "shot.png", timeout=60)
    assert res.ok, res.verdict()
    assert res.stats["images"] == 5  # three curve figures + one example grid per attack
    assert (res.stats["width"], res.stats["height"]) == crb.WINDOW
    assert res.stats["std"] > 5.0 and res.stats["colors"] >= 16
    # the embedded plots are drawn (blue lines / red-blue perturbations), not just text and broken-image icons
    assert res.stats["coloured_frac"] > 1e-3
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_blank_page_with_console_error_fails(tmp_path: Path, chromium: str) -> None:
    html = tmp_path / "blank.html"
    html.write_text("<!DOCTYPE html><html><body><script>console.error('boom')</script></body></html>")
    res = crb.check_report(html, chromium=chromium, timeout=60)
    assert not res.ok and any("blank" in p for p in res.problems), res.verdict()
    assert any("console" in p and "boom" in p for p in res.problems), res.verdict()
    assert res.verdict().startswith("report-browser-check: FAIL")
