"""B2: time from a metric being logged in a running job to its value being in the widget's figure.

A real job (the digits MLP, at full speed, every step logged) is launched with ``tml.launch``
through the run's embedded job manager, and a ``JobView`` follows it in this process, as in a
notebook kernel. After every redraw a refresh callback notes which new points reached the
kernel-side figure data (the trace's ``x``), and when. Each point's latency is that moment
minus the ``t`` that rank zero wrote into the event. The baseline is the event stream alone: a
thread that re-reads the file every 5 ms notes when each event became readable.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.bench_launch import launch_digits
from benchmarks.common import Context, Row, job_client, percentile, say

TARGET_P95_MS = 200.0
TAIL_INTERVAL = 0.005


class Tail(threading.Thread):
    """Re-reads a job's event stream every few milliseconds; notes when each event appeared."""

    def __init__(self, job: Any) -> None:
        super().__init__(name="bench-tail", daemon=True)
        self.job = job
        self.seen: dict[tuple[str, float], float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        cursor = 0
        while not self.stop.wait(TAIL_INTERVAL):
            events, cursor = self.job.read_events(cursor)
            now = time.time()
            for event in events:
                if event.get("type") == "metric" and event.get("step") is not None:
                    self.seen.setdefault((event["key"], float(event["step"])), now)


class TraceWatch:
    """A refresh callback noting when each new point shows up in the figure's traces."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, float], float] = {}
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, view: Any) -> None:
        now = time.time()
        with self.lock:
            for key, index in list(view.trace_index.items()):
                xs = view.figure.data[index].x
                if xs is None:
                    continue
                count = self.counts.get(key, 0)
                for step in list(xs[count:]):
                    self.seen.setdefault((key, float(step)), now)
                self.counts[key] = len(xs)


def latencies(events: list[dict[str, Any]], seen: dict[tuple[str, float], float], since: float):
    """Milliseconds from each live metric event's ``t`` to when it was seen; and misses."""
    found: list[float] = []
    missing = 0
    for event in events:
        if event.get("type") != "metric" or event.get("step") is None or event["t"] < since:
            continue
        at = seen.get((event["key"], float(event["step"])))
        if at is None:
            missing += 1
        else:
            found.append((at - event["t"]) * 1000)
    return found, missing


def run(ctx: Context) -> list[Row]:
    from training_manager_lab.widgets.job_view import JobView

    job_client(ctx)
    epochs = ctx.size(25, 3)
    say(f"B2 launching a {epochs}-epoch digits job and following it with a JobView")
    job = launch_digits("bench-latency", {"max_epochs": epochs, "enable_checkpointing": False})

    since = time.time()
    watch = TraceWatch()
    # Every point is kept (no downsampling), so that each one can be found in the trace.
    view = JobView(job, max_points=100_000)
    view.add_refresh_callback(watch)
    watch(view)
    tail = Tail(job)
    tail.start()

    job.wait(timeout=900)
    deadline = time.monotonic() + 60
    while view.following and time.monotonic() < deadline:
        time.sleep(0.1)
    tail.stop.set()
    tail.join(5)
    view.close()
    if job.status != "succeeded":
        raise RuntimeError(f"benchmark job {job.id} {job.status}: {job.record().get('error')}")

    events = job.events()
    widget, missing = latencies(events, watch.seen, since)
    stream, _ = latencies(events, tail.seen, since)
    if not widget or not stream:
        raise RuntimeError(f"no live metric reached the widget of job {job.id}")
    detail = {
        "samples": len(widget),
        "missing_from_figure": missing,
        "p99_ms": percentile(widget, 99),
        "max_ms": max(widget),
        "refreshes": view.refresh_count,
        "refresh_interval_s": view.refresh_interval,
    }
    return [
        Row(
            "B2",
            "B2.p50",
            f"metric logged -> in the widget's figure data, p50 of {len(widget)}",
            percentile(widget, 50),
            "ms",
            baseline=percentile(stream, 50),
            baseline_name="readable in the event stream",
            detail=detail,
        ),
        Row(
            "B2",
            "B2.p95",
            f"metric logged -> in the widget's figure data, p95 of {len(widget)}",
            percentile(widget, 95),
            "ms",
            baseline=percentile(stream, 95),
            baseline_name="readable in the event stream",
            target=f"<= {TARGET_P95_MS:.0f} ms",
            target_limit=TARGET_P95_MS,
            detail=detail,
        ),
    ]
