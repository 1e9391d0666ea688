"""Benchmark of the sidebar: compressed size of the built extension, time to the panel's render.

Run from the repository root after building the extension (``pip install -e .`` or
``jlpm build:prod`` in ``labextension/``) and with Debian's Chromium installed::

    python benchmarks/bench_sidebar.py [--loads 3]

It prints two small tables and asserts nothing. The targets from the design are at most
500 KB compressed and at most 2 s from JupyterLab ready to the panel's first render.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import statistics
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "training_manager_lab" / "labextension" / "static"
MARKS = ("lab-ready", "first-render", "first-data")


def compressed_sizes(static: Path = STATIC) -> list[tuple[str, int, int]]:
    """Return ``(file name, bytes, gzip -9 bytes)`` for every file of the built extension."""
    if not static.is_dir():
        raise SystemExit(
            f"no built extension at {static}; build it with `jlpm build:prod` in labextension/"
        )
    rows = []
    for path in sorted(static.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            rows.append((str(path.relative_to(static)), len(data), len(gzip.compress(data, 9))))
    return rows


def render_times(loads: int) -> list[dict[str, float]]:
    """Load JupyterLab ``loads`` times with the panel open; return the marks in ms.

    Each entry holds the page's performance marks: ``lab-ready`` (JupyterLab restored its
    layout), ``first-render`` (the panel's first render) and ``first-data`` (its first render
    with the job list loaded), measured from navigation start.
    """
    sys.path.insert(0, str(REPO))
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS, open_panel, start_lab

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_lab(Path(tmp))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
                )
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                # The first load opens the panel, so that the layout restores it open.
                open_panel(page, server)
                page.locator(".tml-JobsSection .tml-SectionTitle").wait_for()
                page.wait_for_timeout(1500)
                for _ in range(loads):
                    page.reload()
                    page.wait_for_function(
                        "performance.getEntriesByName('training-manager-lab:first-data')"
                        ".length > 0 && performance.getEntriesByName("
                        "'training-manager-lab:lab-ready').length > 0",
                        timeout=60_000,
                    )
                    results.append(
                        page.evaluate(
                            "names => Object.fromEntries(names.map(n => [n, "
                            "performance.getEntriesByName('training-manager-lab:' + n)[0]"
                            ".startTime]))",
                            list(MARKS),
                        )
                    )
                browser.close()
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=3, help="page loads to time")
    args = parser.parse_args()

    rows = compressed_sizes()
    width = max(len(name) for name, _, _ in rows)
    print(f"{'file':<{width}}  {'bytes':>9}  {'gzip -9':>9}")
    for name, raw, packed in rows:
        print(f"{name:<{width}}  {raw:>9,}  {packed:>9,}")
    total_raw = sum(raw for _, raw, _ in rows)
    total_packed = sum(packed for _, _, packed in rows)
    print(f"{'total':<{width}}  {total_raw:>9,}  {total_packed:>9,}  (target <= 500 KB)")
    print()

    times = render_times(args.loads)
    print(f"{'page load':<10} {'lab ready':>10} {'panel render':>13} {'panel data':>11}   (ms)")
    for index, marks in enumerate(times, 1):
        ready = marks["lab-ready"]
        print(
            f"{index:<10} {ready:>10.0f} {marks['first-render'] - ready:>+13.0f} "
            f"{marks['first-data'] - ready:>+11.0f}"
        )
    render = statistics.median(m["first-render"] - m["lab-ready"] for m in times)
    data = statistics.median(m["first-data"] - m["lab-ready"] for m in times)
    print(f"{'median':<10} {'':>10} {render:>+13.0f} {data:>+11.0f}   (target <= 2000)")
    print(
        "lab ready: ms from navigation start until JupyterLab restored its layout; panel "
        "render / data: ms after that until the panel first rendered / first showed jobs "
        "(negative: before JupyterLab was ready)"
    )


if __name__ == "__main__":
    main()
