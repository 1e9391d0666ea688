"""B6: how a monitored fit and its event stream grow from 1,000 to 100,000 steps.

Each size runs in a fresh process (so that its memory figures are its own; a 50-step fit
first, so that one-time costs are not counted as growth; torch on one thread): the digits MLP
fitted for exactly N steps in one long epoch, with our ``StreamLogger`` and
``ProgressCallback`` writing the event stream and every step logged. It measures the wall time
per step, the stream's bytes per step and the growth of the process's resident memory over the
fit; then it replays the whole stream into a ``JobView`` (as displaying a finished job does)
and measures the time per event and the memory that took. Every figure of the largest size is
compared with the smallest: linear growth gives a ratio near 1 per step, quadratic growth a
ratio near the size ratio (100).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Context, Row, say

TARGET_RATIO = 1.5
FULL_SIZES = [1_000, 10_000, 100_000]
SMOKE_SIZES = [100, 300, 1_000]


class FileJob:
    """A finished job read from its event stream on disk: the ``JobSource`` a view replays."""

    job_id = "b6b6b6b6b6b6"

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self) -> dict[str, Any]:
        return {"id": self.job_id, "name": "growth", "status": "succeeded", "world_size": 1}

    def read_events(self, cursor: int, wait: float = 0.0) -> tuple[list[dict[str, Any]], int]:
        from training_manager_lab.events import read_events

        return read_events(self.path, cursor)

    def logs(self, tail: int = 100) -> str:
        return ""


def measure(steps: int, folder: Path) -> dict[str, float]:
    """Fit ``steps`` monitored steps and replay the stream; return the figures (in process)."""
    import lightning.pytorch as pl
    import psutil

    from benchmarks.models import LongDigitsData
    from training_manager_lab.events import EventWriter
    from training_manager_lab.examples.digits import DigitsMLP
    from training_manager_lab.runtime.callbacks import ProgressCallback, StreamLogger
    from training_manager_lab.widgets.job_view import JobView

    class Tenths(pl.Callback):
        """Clock readings (wall, CPU) at every tenth of the fit."""

        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step % max(steps // 10, 1) == 0:
                self.marks.append((time.perf_counter(), time.process_time()))

    process = psutil.Process()
    folder.mkdir(parents=True, exist_ok=True)
    tenths = Tenths()
    events = folder / "events.jsonl"
    pl.seed_everything(0, verbose=False)
    writer = EventWriter(events)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=StreamLogger(writer, str(folder)),
        callbacks=[ProgressCallback(writer), tenths],
        default_root_dir=str(folder),
    )
    gc.collect()
    rss_before = process.memory_info().rss
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.fit(DigitsMLP(), datamodule=LongDigitsData(steps))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    gc.collect()
    rss_fit = process.memory_info().rss
    writer.close()
    if trainer.global_step != steps:
        raise RuntimeError(f"the fit ran {trainer.global_step} steps, not {steps}")

    started = time.perf_counter()
    view = JobView(FileJob(events), follow=False)
    replay = time.perf_counter() - started
    count = len(view.store["train_loss"]) if "train_loss" in view.store else 0
    gc.collect()
    rss_view = process.memory_info().rss
    view.close()
    if count != steps:
        raise RuntimeError(f"the replay found {count} train_loss points, not {steps}")
    marks = tenths.marks
    tenth = max(steps // 10, 1)
    return {
        "steps": steps,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        # The second tenth (the first holds the fit's start-up) and the last one.
        "early_tenth_wall": (marks[1][0] - marks[0][0]) / tenth,
        "late_tenth_wall": (marks[-1][0] - marks[-2][0]) / tenth,
        "early_tenth_cpu": (marks[1][1] - marks[0][1]) / tenth,
        "late_tenth_cpu": (marks[-1][1] - marks[-2][1]) / tenth,
        "events_bytes": events.stat().st_size,
        "rss_before": rss_before,
        "fit_rss_growth": rss_fit - rss_before,
        "replay_seconds": replay,
        "replay_events": sum(1 for _ in events.open("rb")),
        "view_rss_growth": rss_view - rss_fit,
    }


def measure_in_child(sizes: list[int], folder: Path) -> list[dict[str, float]]:
    command = [sys.executable, "-m", "benchmarks.bench_growth", "--folder", str(folder)]
    command += ["--steps", ",".join(str(size) for size in sizes)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"the growth process failed:\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def run(ctx: Context) -> list[Row]:
    sizes = SMOKE_SIZES if ctx.smoke else FULL_SIZES
    folder = ctx.folder("b6")
    results: list[dict[str, float]] = []
    if ctx.smoke:
        say(f"B6 sizes {sizes} in one process")
        results = measure_in_child(sizes, folder)
    else:
        for size in sizes:
            say(f"B6 {size:,} steps in a fresh process")
            results.extend(measure_in_child([size], folder / str(size)))
    small, large = results[0], results[-1]

    def per_step(result: dict[str, float], key: str) -> float:
        return result[key] / result["steps"]

    def per_event(result: dict[str, float], key: str) -> float:
        return result[key] / result["replay_events"]

    sizes_detail = {"results": results}
    rows = []
    for result in results:
        largest = result is large
        rows.append(
            Row(
                "B6",
                f"B6.wall_per_step.{int(result['steps'])}",
                f"monitored digits fit, {int(result['steps']):,} steps: wall time per step",
                per_step(result, "wall_seconds") * 1000,
                "ms/step",
                baseline=per_step(small, "wall_seconds") * 1000,
                baseline_name=f"{int(small['steps']):,} steps",
                target=f"<= {TARGET_RATIO}x" if largest else None,
                target_on="ratio",
                target_limit=TARGET_RATIO if largest else None,
            )
        )
    label = f"{int(large['steps']):,} steps"
    base = f"{int(small['steps']):,} steps"
    rows += [
        Row(
            "B6",
            "B6.cpu_per_step",
            f"monitored digits fit, {label}: CPU time per step",
            per_step(large, "cpu_seconds") * 1000,
            "ms/step",
            baseline=per_step(small, "cpu_seconds") * 1000,
            baseline_name=base,
            target=f"<= {TARGET_RATIO}x",
            target_on="ratio",
            target_limit=TARGET_RATIO,
        ),
        Row(
            "B6",
            "B6.late_vs_early_tenth",
            f"monitored digits fit, {label}: wall time per step in the last tenth",
            large["late_tenth_wall"] * 1000,
            "ms/step",
            baseline=large["early_tenth_wall"] * 1000,
            baseline_name="its second tenth",
            target=f"<= {TARGET_RATIO}x",
            target_on="ratio",
            target_limit=TARGET_RATIO,
            detail={
                "cpu_ms_per_step_late": large["late_tenth_cpu"] * 1000,
                "cpu_ms_per_step_early": large["early_tenth_cpu"] * 1000,
            },
        ),
        Row(
            "B6",
            "B6.events_bytes_per_step",
            f"event stream bytes per step at {label}",
            per_step(large, "events_bytes"),
            "B/step",
            baseline=per_step(small, "events_bytes"),
            baseline_name=base,
            target=f"<= {TARGET_RATIO}x",
            target_on="ratio",
            target_limit=TARGET_RATIO,
            detail=sizes_detail,
        ),
        Row(
            "B6",
            "B6.fit_memory_per_step",
            f"training process memory growth per step at {label}",
            max(per_step(large, "fit_rss_growth"), 0.0),
            "B/step",
            baseline=max(per_step(small, "fit_rss_growth"), 0.0),
            baseline_name=base,
            target=f"<= {TARGET_RATIO}x",
            target_on="ratio",
            target_limit=TARGET_RATIO,
            detail={"fit_rss_growth_mb": [r["fit_rss_growth"] / 2**20 for r in results]},
        ),
        Row(
            "B6",
            "B6.replay_per_event",
            f"replay of the stream into a JobView at {label}: time per event",
            per_event(large, "replay_seconds") * 1e6,
            "us/event",
            baseline=per_event(small, "replay_seconds") * 1e6,
            baseline_name=base,
            target=f"<= {TARGET_RATIO}x",
            target_on="ratio",
            target_limit=TARGET_RATIO,
        ),
        Row(
            "B6",
            "B6.view_memory_per_event",
            f"JobView memory after replaying the stream at {label}, per event",
            max(per_event(large, "view_rss_growth"), 0.0),
            "B/event",
            baseline=max(per_event(small, "view_rss_growth"), 0.0),
            baseline_name=base,
            detail={"view_rss_growth_mb": [r["view_rss_growth"] / 2**20 for r in results]},
        ),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure monitored fits of given sizes.")
    parser.add_argument("--steps", required=True, help="comma-separated step counts")
    parser.add_argument("--folder", required=True, type=Path)
    args = parser.parse_args(argv)

    from benchmarks.common import one_thread, quiet_libraries

    quiet_libraries()
    one_thread()
    # One-time costs (first allocations of a fit, plotly's first figure) are not growth.
    measure(50, args.folder / "warm-up")
    for size in (int(part) for part in args.steps.split(",")):
        print(json.dumps(measure(size, args.folder / f"steps-{size}")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
