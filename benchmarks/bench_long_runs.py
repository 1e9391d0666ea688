"""B3: one refresh of a 1,000,000-point curve, our JobView against a FigureWidget given every point.

Both hold a series of a million points and then, refresh after refresh, take in 100 new points
and redraw. Per refresh we count the bytes the figure sends to the frontend (its messages,
JSON text plus binary buffers, measured with ``PayloadMeter``) and the kernel's CPU time of
the refresh (``time.thread_time``: reading the new points, downsampling, building and
serialising the update). Ours is a ``JobView`` (``max_points=2000``, the default) fed by an
in-memory job; the baseline hands plotly's ``FigureWidget`` the whole arrays in one batched
update, which is what a notebook does without downsampling.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import Context, Row, median, say

TARGET_KB = 256.0
TARGET_MS = 50.0
NEW_POINTS = 100
PAGE = 100_000


class MemoryJob:
    """A running job whose event stream is one metric in memory: the ``JobSource`` the view reads.

    Args:
        values: the points already logged, one per step.
    """

    job_id = "b3b3b3b3b3b3"

    def __init__(self, values: np.ndarray) -> None:
        self.values = [float(v) for v in values]
        self.status = {"id": self.job_id, "name": "long-run", "status": "running", "world_size": 1}

    def append(self, values: np.ndarray) -> None:
        self.values.extend(float(v) for v in values)

    def record(self) -> dict[str, Any]:
        return self.status

    def read_events(self, cursor: int, wait: float = 0.0) -> tuple[list[dict[str, Any]], int]:
        end = min(cursor + PAGE, len(self.values))
        now = time.time()
        events = [
            {"type": "metric", "t": now, "step": step, "key": "train_loss", "value": value}
            for step, value in zip(range(cursor, end), self.values[cursor:end], strict=True)
        ]
        return events, end

    def logs(self, tail: int = 100) -> str:
        return ""


def curve(start: int, count: int, seed: int) -> np.ndarray:
    """A falling, noisy loss curve."""
    steps = np.arange(start, start + count, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 0.05, count)
    return np.exp(-steps / 200_000.0) + noise


def run(ctx: Context) -> list[Row]:
    import plotly.graph_objects as go

    from training_manager_lab.widgets.job_view import JobView
    from training_manager_lab.widgets.series import PayloadMeter

    points = ctx.size(1_000_000, 200_000)
    refreshes = ctx.size(10, 3)
    history = curve(0, points, seed=0)
    increments = [curve(points + i * NEW_POINTS, NEW_POINTS, seed=i + 1) for i in range(refreshes)]

    say(f"B3 JobView over {points:,} points")
    job = MemoryJob(history)
    started = time.perf_counter()
    view = JobView(job, follow=False)
    replay = time.perf_counter() - started
    ours_bytes, ours_cpu = [], []
    for values in increments:
        job.append(values)
        cpu = time.thread_time()
        if not view.refresh():
            raise RuntimeError("the JobView did not redraw after new points")
        ours_cpu.append(time.thread_time() - cpu)
        ours_bytes.append(view.last_refresh_bytes)
    drawn = len(view.trace("train_loss").x)
    view.close()

    say(f"B3 FigureWidget handed all {points:,} points")
    fig = go.FigureWidget()
    fig.add_scatter(x=np.empty(0), y=np.empty(0), mode="lines")
    xs = np.arange(points, dtype=np.float64)
    ys = history.copy()
    with fig.batch_update():
        fig.data[0].x, fig.data[0].y = xs, ys
    plain_bytes, plain_cpu = [], []
    with PayloadMeter(fig) as meter:
        for values in increments:
            cpu = time.thread_time()
            xs = np.concatenate((xs, np.arange(xs.size, xs.size + values.size, dtype=np.float64)))
            ys = np.concatenate((ys, values))
            with fig.batch_update():
                fig.data[0].x, fig.data[0].y = xs, ys
            plain_cpu.append(time.thread_time() - cpu)
            plain_bytes.append(meter.reset())
    fig.close()

    detail = {
        "points": points,
        "new_points_per_refresh": NEW_POINTS,
        "refreshes": refreshes,
        "points_drawn_by_ours": drawn,
        "ours_first_draw_seconds": replay,
        "ours_bytes": ours_bytes,
        "plain_bytes": plain_bytes,
        "ours_cpu_ms": [x * 1000 for x in ours_cpu],
        "plain_cpu_ms": [x * 1000 for x in plain_cpu],
    }
    label = f"{points:,}-point series"
    return [
        Row(
            "B3",
            "B3.bytes",
            f"{label}: bytes sent per refresh (JobView)",
            median(ours_bytes) / 1024,
            "KB",
            baseline=median(plain_bytes) / 1024,
            baseline_name="FigureWidget with every point",
            target=f"<= {TARGET_KB:.0f} KB",
            target_limit=TARGET_KB,
            detail=detail,
        ),
        Row(
            "B3",
            "B3.cpu",
            f"{label}: kernel CPU per refresh (JobView)",
            median(ours_cpu) * 1000,
            "ms",
            baseline=median(plain_cpu) * 1000,
            baseline_name="FigureWidget with every point",
            target=f"<= {TARGET_MS:.0f} ms",
            target_limit=TARGET_MS,
            detail=detail,
        ),
    ]
