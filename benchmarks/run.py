"""Runs every benchmark, prints one table of figures against their baselines, writes the JSON.

    python -m benchmarks [--smoke] [--json PATH] [--only B1,B3] [--keep]

``--smoke`` runs tiny sizes (for CI: the figures only show that each benchmark works). The
table goes to stdout (Markdown), progress to stderr. The exit status is 1 when a benchmark
failed to run (a missed target is not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as ``python benchmarks/run.py``: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, Context, Row, machine, quiet_libraries, say, skipped_row

logger = logging.getLogger(__name__)

#: Benchmark id, module and title, in the order they run. The launch benchmark goes before the
#: latency one so that its first, cold launch is the one that creates the job manager.
BENCHMARKS = (
    ("B1", "benchmarks.bench_overhead", "training overhead of live monitoring"),
    ("B4", "benchmarks.bench_launch", "launch"),
    ("B2", "benchmarks.bench_latency", "live latency"),
    ("B3", "benchmarks.bench_long_runs", "long runs"),
    ("B5", "benchmarks.bench_server", "server"),
    ("B6", "benchmarks.bench_growth", "growth"),
    ("S", "benchmarks.sidebar", "sidebar"),
)
DEFAULT_JSON = REPO / "benchmarks" / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the training-manager-lab benchmarks.")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the figures ({DEFAULT_JSON})",
    )
    parser.add_argument("--only", default="", help="comma-separated ids to run, e.g. B1,B3")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    wanted = {name.strip().upper() for name in args.only.split(",") if name.strip()}
    unknown = wanted - {bench for bench, _, _ in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark ids {sorted(unknown)}; choose from B1-B6 and S")

    workdir = Path(tempfile.mkdtemp(prefix="tml-bench-"))
    ctx = Context(smoke=args.smoke, workdir=workdir)
    about = machine()
    started = time.time()
    rows: list[Row] = []
    failed = []
    try:
        for bench, module, title in BENCHMARKS:
            if wanted and bench not in wanted:
                continue
            say(f"{bench} {title}")
            begun = time.perf_counter()
            try:
                rows.extend(_load(module)(ctx))
            except Exception as exc:
                traceback.print_exc()
                failed.append(bench)
                rows.append(
                    skipped_row(bench, f"{bench}.failed", title, "", f"failed: {exc}"[:300])
                )
            say(f"{bench} done in {time.perf_counter() - begun:.1f} s")
    finally:
        for cleanup in reversed(ctx.cleanups):
            try:
                cleanup()
            except Exception:
                traceback.print_exc()
        if args.keep:
            say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    duration = time.time() - started
    about["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    table = render_table(rows)
    print(table)
    print()
    print(describe_machine(about, duration, args.smoke))
    report = {
        "command": "python -m benchmarks" + (" --smoke" if args.smoke else ""),
        "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_seconds": round(duration, 1),
        "machine": about,
        "rows": [row.to_json() for row in rows],
        "failed": failed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=_json_default, allow_nan=False))
    say(f"figures written to {args.json}")
    return 1 if failed else 0


def _load(module: str) -> Callable[[Context], list[Row]]:
    return importlib.import_module(module).run  # type: ignore[no-any-return]


def render_table(rows: list[Row]) -> str:
    """One Markdown table: every figure, its baseline, the ratio, the target and the verdict."""
    header = ("id", "measure", "value", "baseline", "ratio", "target", "met")
    lines = [header]
    for row in rows:
        if row.skipped:
            lines.append((row.key, row.measure, row.skipped, "", "", row.target or "", ""))
            continue
        baseline = ""
        if row.baseline is not None:
            baseline = f"{fmt(row.baseline)} {row.unit}"
            if row.baseline_name:
                baseline += f" ({row.baseline_name})"
        ratio = "" if row.ratio is None else fmt_ratio(row.ratio)
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        lines.append(
            (
                row.key,
                row.measure,
                f"{fmt(row.value)} {row.unit}",
                baseline,
                ratio,
                row.target or "",
                met,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(out)


def describe_machine(about: dict[str, Any], duration: float, smoke: bool) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in about["versions"].items() if v)
    load = "/".join(str(x) for x in about["load_average"])
    after = "/".join(str(x) for x in about.get("load_average_after", []))
    return (
        f"Machine: {about['nproc']} usable cores ({about['cpu_model']}), "
        f"{about['memory_gib']} GiB memory, Python {about['python']}; {versions}. "
        f"Load average {load} before, {after} after. "
        f"{'Smoke' if smoke else 'Full'} run, {duration:.0f} s."
    )


def fmt(value: float | None) -> str:
    """A figure with as many digits as it deserves."""
    if value is None or not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or magnitude == 0:
        return f"{value:.3g}" if magnitude < 1 else f"{value:.2f}"
    return f"{value:.2e}"


def fmt_ratio(ratio: float) -> str:
    """A ratio with two decimals, or two significant digits when it is far below one."""
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    if ratio >= 0.1:
        return f"{ratio:.2f}x"
    return f"{ratio:.2g}x"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
