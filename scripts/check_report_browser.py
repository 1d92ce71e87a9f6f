#!/usr/bin/env python
"""Open ``report.html`` in headless Chromium, take a screenshot and check that the page really renders.

Checks (each failure is listed in the verdict):

* the HTML is self-contained: no ``src``/``srcset``/``poster``/``data``/``<link href>``/CSS ``url()``/``@import``
  reference to an http(s) or protocol-relative (``//host``) address, and every ``data:image/png;base64`` image
  decodes to a PNG;
* Chromium exits 0 within the timeout and writes the screenshot (network lookups are mapped to NOTFOUND, so
  the check never goes online);
* the PNG decodes, has the requested window size, and is not blank: pixel standard deviation (0-255 scale)
  above ``--min-std`` and at least ``--min-colors`` distinct colours;
* Chromium logged no JavaScript console message (the report has no scripts, so any message is a problem).

Without ``--html`` a tiny report is built first with the project's own ``write_report`` from a throw-away
evaluation (random linear model on random 1x8x8 images, two cheap attacks; no datasets, no checkpoints).

Exit code 0 when every check passes, 1 otherwise (2 for bad arguments, or when no Chromium binary is found);
one line ``report-browser-check: OK|FAIL ...`` is printed.

    python scripts/check_report_browser.py                       # tiny synthetic report
    python scripts/check_report_browser.py --html runs/evaluate/report/report.html --keep shot.png
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WINDOW = (1280, 2000)

# resource references that make the browser fetch something (plain text mentioning a URL is fine)
_EXTERNAL = [
    re.compile(r"""\b(?:src|srcset|poster|data|background)\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""url\(\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""@import\s+(?:url\()?\s*["']?\s*(?:https?:)?//""", re.I),
]
_DATA_PNG = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
_CONSOLE = re.compile(r":CONSOLE[:(]\S*\]?\s*(.*)")


@dataclass
class CheckResult:
    ok: bool
    problems: list[str] = field(default_factory=list)
    stats: dict[str, float | int | str] = field(default_factory=dict)

    def verdict(self) -> str:
        s = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.stats.items())
        if self.ok:
            return f"report-browser-check: OK ({s})"
        return f"report-browser-check: FAIL: {'; '.join(self.problems)} ({s})"


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: ``$CHROMIUM`` if set, else the first of the usual names on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def build_tiny_report(out_dir: str | os.PathLike[str]) -> Path:
    """Write a small evaluation (random model, random data) under ``out_dir`` and its report; returns the HTML."""
    import torch
    from torch import nn

    from sinkhorn_attacks.eval import AttackSpec, EvalConfig, run_evaluation
    from sinkhorn_attacks.report import write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
        x = torch.rand(6, 1, 8, 8, generator=g) * 0.5 + 0.25
        y = torch.randint(0, 3, (6,), generator=g)
        cfg = EvalConfig(
            models=["net"],
            attacks=[
                AttackSpec("linf-pgd", params={"steps": 3, "radius": 0.1, "step_size": 0.05}),
                AttackSpec("fgsm"),
            ],
            dataset="synthetic",
            limit=6,
            batch_size=3,
            out=str(Path(out_dir) / "run"),
            grid_examples=3,
        )
        run_evaluation(cfg, models={"net": net}, data=(x, y), progress=False)
        return write_report(cfg.out)
    finally:
        torch.set_num_threads(threads)


def check_self_contained(text: str) -> tuple[list[str], int]:
    """Problems with the HTML as a single offline file, and the number of embedded PNG images."""
    problems = []
    for pat in _EXTERNAL:
        for m in pat.finditer(text):
            problems.append(f"external resource reference {m.group(0).strip()!r}")
    n_img = 0
    for m in _DATA_PNG.finditer(text):
        n_img += 1
        try:
            ok = base64.b64decode(m.group(1), validate=True)[:8] == b"\x89PNG\r\n\x1a\n"
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"embedded image #{n_img} is not a valid base64 PNG")
    return problems, n_img


def screenshot(
    html: Path, png: Path, chromium: str, *, window: tuple[int, int] = WINDOW, timeout: float = 60.0
) -> tuple[int, str]:
    """Run headless Chromium on ``html`` writing ``png``; returns (exit code, stderr+stdout log)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-extensions",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # never go online while checking
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={window[0]},{window[1]}",
            html.resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
        except OSError as e:  # binary missing or not executable
            return 127, f"cannot run {chromium}: {e}"
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            return 124, out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        return proc.returncode, proc.stdout + proc.stderr


def image_stats(png: Path) -> dict[str, float | int]:
    """Width, height, pixel standard deviation (0-255) and number of distinct RGB colours of a PNG."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png)  # float in [0, 1] for PNG
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    rgb = np.round(np.asarray(img[..., :3], dtype=np.float64) * 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    flat = rgb.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.uint32) << 16) | (flat[:, 1].astype(np.uint32) << 8) | flat[:, 2]
    chroma = flat.max(axis=1).astype(np.int16) - flat.min(axis=1)
    return {
        "width": int(w),
        "height": int(h),
        "std": float(rgb.std()),
        "colors": int(np.unique(packed).size),
        "coloured_frac": float((chroma > 40).mean()),  # pixels clearly not grey: plot lines/markers
    }


def check_report(
    html: str | os.PathLike[str],
    *,
    chromium: str | None = None,
    png: str | os.PathLike[str] | None = None,
    window: tuple[int, int] = WINDOW,
    timeout: float = 60.0,
    min_std: float = 5.0,
    min_colors: int = 16,
) -> CheckResult:
    """Run every check on ``html``; the screenshot goes to ``png`` (a temporary file when None)."""
    html = Path(html)
    problems: list[str] = []
    stats: dict[str, float | int | str] = {}
    if not html.is_file():
        return CheckResult(False, [f"no such file {html}"])
    text = html.read_text(encoding="utf-8", errors="replace")
    p, n_img = check_self_contained(text)
    problems += p
    stats["images"] = n_img
    chromium = chromium or find_chromium()
    if chromium is None:
        return CheckResult(False, problems + ["no chromium binary found (set $CHROMIUM or install chromium)"], stats)

    with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
        shot = Path(png) if png else Path(tmp) / "report.png"
        shot.unlink(missing_ok=True)
        rc, log = screenshot(html, shot, chromium, window=window, timeout=timeout)
        if rc != 0:
            tail = " | ".join(log.strip().splitlines()[-3:])
            problems.append(f"chromium exited {rc}" + (" (timeout)" if rc == 124 else "") + f": {tail}")
        console = [m.group(1).strip() for m in map(_CONSOLE.search, log.splitlines()) if m]
        if console:
            problems.append(f"{len(console)} JavaScript console message(s), first: {console[0][:200]}")
        if not shot.is_file() or shot.stat().st_size == 0:
            problems.append("no screenshot written")
            return CheckResult(False, problems, stats)
        stats["png_bytes"] = shot.stat().st_size
        try:
            st = image_stats(shot)
        except Exception as e:  # any decode failure is a verdict, not a crash
            problems.append(f"screenshot does not decode: {type(e).__name__}: {e}")
            return CheckResult(False, problems, stats)
    stats.update(st)
    if (st["width"], st["height"]) != tuple(window):
        problems.append(f"screenshot is {st['width']}x{st['height']}, expected {window[0]}x{window[1]}")
    if st["std"] <= min_std:
        problems.append(f"screenshot looks blank: pixel std {st['std']:.2f} <= {min_std}")
    if st["colors"] < min_colors:
        problems.append(f"screenshot looks blank: {st['colors']} distinct colours < {min_colors}")
    return CheckResult(not problems, problems, stats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Render report.html in headless Chromium and check the screenshot (not blank, right size), "
        "that the HTML loads nothing from the network (images embedded as data: URIs) and that no JavaScript "
        "console message was logged. Without --html a tiny synthetic report is built with the project's "
        "write_report (no datasets, no checkpoints). Exit 0 = OK, 1 = a check failed, 2 = usage error or no "
        "Chromium found.",
    )
    ap.add_argument("--html", help="existing report.html to check (default: build a tiny synthetic one)")
    ap.add_argument("--keep", metavar="PNG", help="also save the screenshot here")
    ap.add_argument("--chromium", help="browser binary (default: $CHROMIUM, else chromium / chromium-browser on PATH)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds Chromium may take (default 60)")
    ap.add_argument("--window", default=f"{WINDOW[0]},{WINDOW[1]}", help="window size W,H (default 1280,2000)")
    ap.add_argument("--min-std", type=float, default=5.0, help="pixel std (0-255) a non-blank page exceeds")
    ap.add_argument("--min-colors", type=int, default=16, help="distinct colours a non-blank page has at least")
    args = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in args.window.split(","))
    except ValueError:
        ap.error(f"--window must be W,H, got {args.window!r}")
    chromium = shutil.which(args.chromium) if args.chromium else find_chromium()
    if chromium is None:
        what = f"--chromium {args.chromium!r} not found" if args.chromium else "no chromium binary found"
        print(f"report-browser-check: SKIP: {what} (apt-get install chromium, or set $CHROMIUM)")
        return 2
    with tempfile.TemporaryDirectory(prefix="report-browser-") as tmp:
        html = Path(args.html) if args.html else build_tiny_report(tmp)
        res = check_report(
            html,
            chromium=chromium,
            png=args.keep,
            window=(w, h),
            timeout=args.timeout,
            min_std=args.min_std,
            min_colors=args.min_colors,
        )
    print(res.verdict())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
