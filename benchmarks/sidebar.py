"""S: the sidebar's figures, from ``benchmarks/bench_sidebar.py`` when it and its tools are here.

The compressed size of the built extension needs only the build; the time from JupyterLab
ready to the panel's first render needs Chromium and Playwright and is left to the full run.
Whatever is missing turns a row into "skipped: <reason>" instead of failing the run.
"""

from __future__ import annotations

import importlib
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Context, Row, say, skipped_row

TARGET_GZIP_KB = 500.0
TARGET_RENDER_MS = 2000.0
SIZE = ("S.gzip_total", "built extension, all files, gzip -9", "KB")
RENDER = ("S.panel_render", "JupyterLab ready -> panel's first render, median", "ms")
DATA = ("S.panel_data", "JupyterLab ready -> panel shows the job list, median", "ms")


def run(ctx: Context) -> list[Row]:
    if not (REPO / "benchmarks" / "bench_sidebar.py").exists():
        reason = "skipped: benchmarks/bench_sidebar.py is not in this checkout"
        return [skipped_row("S", *names, reason) for names in (SIZE, RENDER, DATA)]
    sidebar = importlib.import_module("benchmarks.bench_sidebar")
    return [size_row(sidebar), *render_rows(ctx, sidebar)]


def size_row(sidebar: Any) -> Row:
    try:
        files = sidebar.compressed_sizes()
    except SystemExit as exc:
        return skipped_row("S", *SIZE, f"skipped: {exc}")
    total = sum(packed for _, _, packed in files)
    return Row(
        "S",
        SIZE[0],
        SIZE[1],
        total / 1024,
        SIZE[2],
        target=f"<= {TARGET_GZIP_KB:.0f} KB",
        target_limit=TARGET_GZIP_KB,
        detail={"files": [{"file": n, "bytes": raw, "gzip": packed} for n, raw, packed in files]},
    )


def render_rows(ctx: Context, sidebar: Any) -> list[Row]:
    reason = missing_tools(ctx)
    if reason:
        return [skipped_row("S", *names, f"skipped: {reason}") for names in (RENDER, DATA)]
    say("S loading JupyterLab in headless Chromium to time the panel")
    loads = sidebar.render_times(3)
    render = statistics.median(m["first-render"] - m["lab-ready"] for m in loads)
    data = statistics.median(m["first-data"] - m["lab-ready"] for m in loads)
    detail = {"loads": loads}
    return [
        Row(
            "S",
            RENDER[0],
            RENDER[1],
            render,
            RENDER[2],
            target=f"<= {TARGET_RENDER_MS:.0f} ms",
            target_limit=TARGET_RENDER_MS,
            detail=detail,
        ),
        Row("S", DATA[0], DATA[1], data, DATA[2], detail=detail),
    ]


def missing_tools(ctx: Context) -> str | None:
    """Why the panel cannot be timed here, or None when it can."""
    if ctx.smoke:
        return "smoke mode (the full run times the panel)"
    try:
        importlib.import_module("playwright.sync_api")
        browser = importlib.import_module("tests.browser.conftest")
    except ImportError as exc:
        return f"needs the test tools ({exc.name}); install them with scripts/setup.sh test"
    chromium = Path(browser.CHROMIUM)
    if not chromium.exists():
        return (
            f"no Chromium at {chromium}; apt-get install -y --no-install-recommends chromium, "
            "or set TML_CHROMIUM"
        )
    return None
