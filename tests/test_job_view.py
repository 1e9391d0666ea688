"""Tests of the live job widget over a real event stream written with EventWriter."""

from __future__ import annotations

import copy
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training_manager_lab.events import EventWriter, encode_value, read_events
from training_manager_lab.widgets.job_view import JobView, metric_group

JOB_ID = "3f9a1c2b7d10"
DEADLINE = 30.0


class FolderSource:
    """A job source over a job folder: ``events.jsonl``, ``rank-0.log`` and a record in memory.

    The stand-in for the job handle, reading the same files the supervisor writes.
    """

    def __init__(self, folder: Path, page_bytes: int = 4 * 1024 * 1024, **record: Any) -> None:
        self.job_id = JOB_ID
        self.folder = folder
        self.events_path = folder / "events.jsonl"
        self.page_bytes = page_bytes
        self.reads = 0
        self._lock = threading.Lock()
        self._record: dict[str, Any] = {
            "id": JOB_ID,
            "name": "digits-mlp",
            "status": "running",
            "world_size": 2,
            "created_at": time.time(),
            "progress": None,
            "error": None,
        }
        self._record.update(record)

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._record.update(changes)

    def record(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._record)

    def read_events(self, cursor: int, wait: float = 0.0) -> tuple[list[dict[str, Any]], int]:
        deadline = time.monotonic() + wait
        while True:
            self.reads += 1
            events, next_cursor = read_events(self.events_path, cursor, limit=self.page_bytes)
            if events or next_cursor != cursor or time.monotonic() >= deadline:
                return events, next_cursor
            time.sleep(0.01)

    def logs(self, tail: int = 100) -> str:
        path = self.folder / "rank-0.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text().splitlines()[-tail:])


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def metric(step: int, key: str, value: float, epoch: int = 0) -> dict[str, Any]:
    return {"type": "metric", "step": step, "epoch": epoch, "key": key, **encode_value(value)}


def progress(step: int, total: int) -> dict[str, Any]:
    return {
        "type": "progress",
        "step": step,
        "total_steps": total,
        "epoch": step * 2 // total,
        "max_epochs": 2,
        "samples_per_sec": 800.0,
        "elapsed": step * 0.01,
        "eta": (total - step) * 0.01,
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    job = tmp_path / "jobs" / JOB_ID
    job.mkdir(parents=True)
    return job


@pytest.fixture
def views() -> Any:
    made: list[JobView] = []
    yield made
    for view in made:
        view.close()


def test_view_follows_a_running_job_until_it_ends(folder: Path, views: list) -> None:
    source = FolderSource(folder)
    writer = EventWriter(source.events_path)
    half_seen = threading.Event()
    seen: list[tuple[int, float, str]] = []

    def train() -> None:
        for step in range(1, 201):
            value = math.nan if step == 50 else 1.0 / step
            writer.write(metric(step, "train_loss", value), progress(step, 200))
            if step % 20 == 0:
                writer.write(metric(step, "val_acc", step / 200))
            if step == 50:
                writer.write({"type": "warning", "message": "train_loss is NaN at step 50"})
            if step == 100:
                half_seen.wait(DEADLINE)
            time.sleep(0.002)
        writer.write({"type": "status", "status": "succeeded", "reason": None})
        source.update(status="succeeded", last_metrics={"train_loss": 1 / 200, "val_acc": 1.0})

    view = JobView(source, refresh_interval=0.05)
    views.append(view)
    view.add_refresh_callback(
        lambda v: seen.append(
            (
                len(v.trace("train_loss").x) if "train_loss" in v.trace_index else 0,
                v.progress_bar.value,
                v.status,
            )
        )
    )
    trainer = threading.Thread(target=train)
    trainer.start()

    # One redraw sets the figure, then the text; wait for the redraw of step 100 to be whole.
    wait_for(
        lambda: (
            "train_loss" in view.trace_index
            and len(view.trace("train_loss").x) == 100
            and view.progress_bar.value == pytest.approx(0.5)
        ),
        "the first 100 steps in the figure and the progress bar",
    )
    mid_header = view.header.value
    mid_value = view.progress_bar.value
    half_seen.set()
    trainer.join(DEADLINE)
    wait_for(lambda: not view.following, "the view to stop following")

    assert "running" in mid_header
    assert mid_value == pytest.approx(0.5)
    loss = view.trace("train_loss")
    assert len(loss.x) == 200
    assert list(loss.x[:3]) == [1, 2, 3]
    assert np.isnan(loss.y[49])
    assert len(view.trace("val_acc").x) == 10
    lengths = [n for n, _, _ in seen]
    assert lengths == sorted(lengths) and len(set(lengths)) >= 2
    values = [v for _, v, _ in seen]
    assert values == sorted(values)
    assert seen[-1][2] == "succeeded"
    assert "succeeded" in view.header.value and "running" not in view.header.value
    assert view.progress_bar.value == 1.0
    assert view.progress_bar.bar_style == "success"
    assert "1 NaN/inf" in view.header.value
    markers = view.figure.data[view.marker_index["train_loss"]]
    assert list(markers.x) == [50]
    assert markers.y[0] == pytest.approx(1 / 49)
    assert "train_loss is NaN at step 50" in view.warnings_box.value
    assert view.cursor == source.events_path.stat().st_size
    assert f"tml.job(&quot;{JOB_ID}&quot;)" in view.header.value
    writer.close()


def test_new_view_replays_the_whole_history_in_pages(folder: Path, views: list) -> None:
    with EventWriter(folder / "events.jsonl") as writer:
        for step in range(3000):
            writer.write(metric(step, "train/loss", 2.0 - step / 3000))
            if step % 100 == 99:
                writer.write(metric(step, "val/acc", step / 3000), progress(step + 1, 3000))
        writer.write({"type": "status", "status": "succeeded", "reason": None})
    source = FolderSource(folder, page_bytes=16 * 1024, status="succeeded")

    view = JobView(source, max_points=4000)
    views.append(view)

    assert source.reads > 10
    assert view.cursor == source.events_path.stat().st_size
    assert not view.following
    assert len(view.store["train/loss"]) == 3000
    assert len(view.trace("train/loss").x) == 3000
    assert len(view.trace("val/acc").x) == 30
    assert view.trace("train/loss").xaxis == "x" and view.trace("val/acc").xaxis == "x2"
    assert "step 3000 / 3000" in view.progress_text.value
    assert view.refresh_count == 1


def test_history_beyond_the_replay_budget_is_finished_by_the_thread(
    folder: Path, views: list
) -> None:
    with EventWriter(folder / "events.jsonl") as writer:
        writer.write(*[metric(step, "train_loss", 1.0 / (step + 1)) for step in range(5000)])
        writer.write({"type": "status", "status": "succeeded", "reason": None})
    source = FolderSource(folder, page_bytes=16 * 1024, status="succeeded")

    view = JobView(source, max_points=8000, refresh_interval=0.05, replay_budget=0.0)
    views.append(view)
    shown_at_first = len(view.trace("train_loss").x)
    wait_for(lambda: not view.following, "the thread to finish the replay")

    assert 0 < shown_at_first < 5000
    assert len(view.trace("train_loss").x) == 5000
    assert view.cursor == source.events_path.stat().st_size
    assert view.status == "succeeded"


def test_second_view_of_a_running_job_starts_from_the_history(folder: Path, views: list) -> None:
    source = FolderSource(folder)
    writer = EventWriter(source.events_path)
    for step in range(500):
        writer.write(metric(step, "train_loss", 1.0))
    first = JobView(source, refresh_interval=0.05)
    views.append(first)

    for step in range(500, 800):
        writer.write(metric(step, "train_loss", 0.5))
    wait_for(lambda: len(first.trace("train_loss").x) == 800, "the first view to catch up")
    second = JobView(source, refresh_interval=0.05)
    views.append(second)

    assert len(second.trace("train_loss").x) == 800
    np.testing.assert_array_equal(second.trace("train_loss").x, first.trace("train_loss").x)
    writer.close()


def test_long_history_is_drawn_downsampled_within_a_bounded_payload(
    folder: Path, views: list
) -> None:
    with EventWriter(folder / "events.jsonl") as writer:
        batch = []
        for step in range(60_000):
            batch.append(metric(step, "train_loss", math.sin(step / 500) + (step == 33_333) * 9))
            if len(batch) == 1000:
                writer.write(*batch)
                batch = []
        writer.write({"type": "status", "status": "succeeded", "reason": None})
    source = FolderSource(folder, status="succeeded")

    # Without follow the whole history is read before the constructor returns, on any machine.
    view = JobView(source, max_points=500, follow=False)
    views.append(view)

    trace = view.trace("train_loss")
    assert len(view.store["train_loss"]) == 60_000
    assert len(trace.x) <= 500
    assert trace.x[0] == 0 and trace.x[-1] == 59_999
    assert 33_333 in trace.x
    assert 0 < view.last_refresh_bytes <= 256 * 1024


def test_failed_job_shows_the_rank_and_traceback_and_the_log_tail(
    folder: Path, views: list
) -> None:
    with EventWriter(folder / "events.jsonl") as writer:
        writer.write(metric(1, "train_loss", 1.0), metric(2, "train_loss", 0.9))
        writer.write({"type": "status", "status": "failed", "reason": "rank 1 exited with 1"})
    (folder / "rank-0.log").write_text("[rank 1] RuntimeError: boom at step 5\n")
    error = {
        "rank": 1,
        "message": "RuntimeError: boom at step 5",
        "traceback": 'Traceback (most recent call last):\n  File "model.py", line 9\n'
        "RuntimeError: boom at step 5 <x>",
    }
    source = FolderSource(folder, status="failed", error=error, reason="rank 1 exited with 1")

    view = JobView(source)
    views.append(view)

    assert "failed" in view.header.value
    assert "rank 1" in view.error_box.value
    assert "Traceback (most recent call last)" in view.error_box.value
    assert "&lt;x&gt;" in view.error_box.value
    assert view.progress_bar.bar_style == "danger"
    assert "boom at step 5" in view.log_text.value
    assert not view.following


def test_status_from_the_record_ends_following_without_a_status_event(
    folder: Path, views: list
) -> None:
    source = FolderSource(folder, status="queued")
    with EventWriter(source.events_path) as writer:
        writer.write(metric(1, "train_loss", 1.0))
    view = JobView(source, refresh_interval=0.05)
    views.append(view)
    assert "queued" in view.header.value

    source.update(status="running")
    wait_for(lambda: view.status == "running", "the running status")
    source.update(status="cancelled", reason="cancelled by the user")
    wait_for(lambda: not view.following, "the view to stop following")

    assert "cancelled" in view.header.value
    assert "cancelled by the user" in view.header.value
    assert view.progress_bar.bar_style == "warning"


def test_close_stops_the_follower_of_a_quiet_job(folder: Path) -> None:
    source = FolderSource(folder)
    view = JobView(source, refresh_interval=0.05)
    assert view.following

    view.close()

    assert not view.following
    assert view.comm is None


def test_a_failing_source_is_shown_in_the_widget_and_recovers(folder: Path, views: list) -> None:
    source = FolderSource(folder)
    source.events_path.mkdir()

    view = JobView(source, refresh_interval=0.05)
    views.append(view)
    wait_for(lambda: "IsADirectoryError" in view.notice.value, "the problem in the widget")

    shutil.rmtree(source.events_path)
    with EventWriter(source.events_path) as writer:
        writer.write(metric(1, "train_loss", 0.5))
    wait_for(lambda: "train_loss" in view.trace_index, "the curve after recovery")
    wait_for(lambda: view.notice.value == "", "the problem to clear")

    assert view.following
    assert list(view.trace("train_loss").y) == [0.5]


def test_views_redraw_only_when_something_changed(folder: Path, views: list) -> None:
    source = FolderSource(folder)
    with EventWriter(source.events_path) as writer:
        writer.write(metric(1, "train_loss", 1.0))
        view = JobView(source, refresh_interval=0.05, follow=False)
        views.append(view)
        drawn = view.refresh_count

        unchanged = view.refresh()
        writer.write(metric(2, "train_loss", 0.5))
        changed = view.refresh()

    assert drawn == 1
    assert unchanged is False
    assert changed is True
    assert view.refresh_count == 2
    assert list(view.trace("train_loss").x) == [1, 2]


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("train_loss", "train"),
        ("train_acc", "train"),
        ("val_acc", "val"),
        ("val/acc", "val"),
        ("loss/train", "loss"),
        ("lr-Adam", "lr"),
        ("loss", "metrics"),
        ("_private", "metrics"),
        ("val/acc_top5", "val"),
    ],
)
def test_metric_groups(key: str, group: str) -> None:
    assert metric_group(key) == group


def test_bad_arguments_are_refused_with_the_accepted_range(folder: Path) -> None:
    source = FolderSource(folder)

    with pytest.raises(ValueError, match="max_points must be at least 8"):
        JobView(source, max_points=2)
    with pytest.raises(ValueError, match="refresh_interval must be above 0"):
        JobView(source, refresh_interval=0)
