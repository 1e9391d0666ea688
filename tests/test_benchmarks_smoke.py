"""The benchmark suite runs end to end in smoke mode and reports every figure (never timings)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_growth import SMOKE_SIZES
from benchmarks.common import Row
from benchmarks.run import render_table

REPO = Path(__file__).resolve().parents[1]

MEASURED = {
    "B1.digits.off",
    "B1.digits.null",
    "B1.digits.ours",
    "B1.digits.ours+bridge",
    "B1.digits.mlflow",
    "B1.digits.mlflow-async",
    "B1.ours_direct",
    "B1.wide.off",
    "B1.wide.null",
    "B1.wide.ours",
    "B1.wide.ours+bridge",
    "B1.wide.mlflow",
    "B1.wide.mlflow-async",
    "B2.p50",
    "B2.p95",
    "B3.bytes",
    "B3.cpu",
    "B4.launch_return",
    "B4.first_step",
    "B4.first_step_python",
    "B4.ready",
    "B5.list_in_process_p99",
    "B5.rest_list_p50",
    "B5.rest_list_p99",
    "B5.rest_last_page_p99",
    "B5.ws_events_per_s",
    "B5.sample_cpu",
    *(f"B6.wall_per_step.{size}" for size in SMOKE_SIZES),
    "B6.cpu_per_step",
    "B6.late_vs_early_tenth",
    "B6.events_bytes_per_step",
    "B6.fit_memory_per_step",
    "B6.replay_per_event",
    "B6.view_memory_per_event",
}
#: Rows that may be skipped, with a reason, where the sidebar's build or tools are missing.
OPTIONAL = {"S.gzip_total", "S.panel_render", "S.panel_data"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One smoke run of the whole suite: its JSON report and its printed table."""
    report = tmp_path_factory.mktemp("bench") / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(report.read_text()), result.stdout


@pytest.mark.timeout(960)
def test_smoke_run_reports_every_row_with_numbers(smoke_run: tuple[dict[str, Any], str]) -> None:
    report, _ = smoke_run

    rows = {row["key"]: row for row in report["rows"]}

    assert report["mode"] == "smoke"
    assert report["failed"] == []
    assert set(rows) == MEASURED | OPTIONAL
    for key in MEASURED:
        row = rows[key]
        assert row["skipped"] is None, (key, row["skipped"])
        assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]), key
        if row["baseline"] is not None:
            assert isinstance(row["ratio"], (int, float)) and math.isfinite(row["ratio"]), key
        if row["target"] is not None:
            assert isinstance(row["met"], bool) or row["ratio"] is None, key


@pytest.mark.timeout(960)
def test_smoke_run_skips_sidebar_rows_only_with_a_reason(
    smoke_run: tuple[dict[str, Any], str],
) -> None:
    report, _ = smoke_run

    rows = {row["key"]: row for row in report["rows"]}

    for key in OPTIONAL:
        row = rows[key]
        if row["value"] is None:
            assert row["skipped"].startswith("skipped: ") and len(row["skipped"]) > 12, key
        else:
            assert math.isfinite(row["value"]) and row["skipped"] is None, key


@pytest.mark.timeout(960)
def test_smoke_run_prints_one_table_and_the_machine(smoke_run: tuple[dict[str, Any], str]) -> None:
    report, printed = smoke_run

    table = [line for line in printed.splitlines() if line.startswith("|")]

    assert len(table) == len(report["rows"]) + 2
    for key in MEASURED | OPTIONAL:
        assert sum(line.startswith(f"| {key} ") for line in table) == 1, key
    assert report["machine"]["nproc"] >= 1
    assert report["machine"]["cpu_model"]
    assert report["machine"]["memory_gib"] > 0
    assert "Machine:" in printed


def test_a_ratio_target_is_judged_on_the_ratio_and_a_value_target_on_the_value() -> None:
    slow = Row(
        "B1", "x.slow", "slow", 2.2, "ms", baseline=2.0, target_on="ratio", target_limit=1.05
    )
    fast = Row(
        "B1", "x.fast", "fast", 2.05, "ms", baseline=2.0, target_on="ratio", target_limit=1.05
    )
    late = Row("B2", "x.late", "late", 250.0, "ms", baseline=1.0, target_limit=200.0)
    quick = Row("B5", "x.quick", "quick", 9e5, "events/s", target_limit=1e5, higher_is_better=True)

    assert slow.ratio == pytest.approx(1.1)
    assert (slow.met, fast.met, late.met, quick.met) == (False, True, False, True)


def test_a_row_without_figure_shows_its_reason_and_no_verdict() -> None:
    row = Row(
        "S",
        "S.panel_render",
        "panel render",
        None,
        "ms",
        target="<= 2000 ms",
        target_limit=2000.0,
        skipped="skipped: no Chromium at /usr/bin/chromium",
    )

    table = render_table([row])

    assert row.met is None and row.ratio is None
    assert "skipped: no Chromium at /usr/bin/chromium" in table.splitlines()[2]
