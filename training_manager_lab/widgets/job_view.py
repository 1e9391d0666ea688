"""The live job widget: header, progress bar, metric curves, warnings, error and log tail."""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import ipywidgets
import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..events import decode_value
from .jobs_table import (
    TERMINAL_STATUSES,
    format_duration,
    format_number,
    progress_fraction,
    status_badge,
)
from .series import PayloadMeter, SeriesStore

logger = logging.getLogger(__name__)

#: How often a following view asks for the job record (status, error) in seconds.
RECORD_INTERVAL = 1.0

#: The most NaN/inf markers drawn per metric.
MAX_MARKERS = 200

_STATUS_ORDER = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "cancelled": 2}
_SEPARATORS = ("/", "_", "-", ".")
_DEFAULT_GROUP = "metrics"
_PANEL_HEIGHT = 260
#: Plotly's "D3" qualitative colours, one per trace in turn.
_PALETTE = tuple(qualitative.D3)


class JobSource(Protocol):
    """What the view reads a job from: the job handle, or anything with these members."""

    @property
    def job_id(self) -> str:
        """The job's id."""
        ...

    def record(self) -> dict[str, Any]:
        """The job record (status, progress, error, world size, ...)."""
        ...

    def read_events(self, cursor: int, wait: float = 0.0) -> tuple[list[dict[str, Any]], int]:
        """Events after byte offset ``cursor`` and the next cursor; may wait up to ``wait``."""
        ...

    def logs(self, tail: int = 100) -> str:
        """The last ``tail`` lines of the job's output."""
        ...


def metric_group(key: str) -> str:
    """The panel a metric is drawn in: the part of its name before the first separator.

    ``train_loss`` and ``train/acc`` go to ``train``, ``val_acc`` to ``val``; a name without
    a separator (``loss``) goes to the shared ``metrics`` panel.
    """
    for separator in _SEPARATORS:
        head, found, tail = key.partition(separator)
        if found and head and tail:
            return head
    return _DEFAULT_GROUP


class JobView(ipywidgets.VBox):
    """A live view of one job, for display in a notebook.

    On creation the view replays the job's event stream from the start (within
    ``replay_budget``; the thread replays the rest), then, while the job has not ended and
    ``follow`` is set, a daemon thread follows the stream and redraws at most once per
    ``refresh_interval`` and only when something changed. Each redraw of the curves is a single
    batched figure update that sends at most ``max_points`` points per curve, however long the
    run; the complete series stay in :attr:`store`. The thread stops after a final read once the
    job has ended, or on :meth:`close`. Problems while reading are shown in the widget and
    retried, never raised into the kernel.

    Example:
        >>> view = JobView(job)  # ``job`` implements :class:`JobSource`
        >>> view  # displays the widget; it keeps updating while other cells run

    Args:
        source: where the job's record, events and logs come from.
        max_points: the most points drawn per curve; at least 8.
        refresh_interval: the shortest time between two redraws, in seconds.
        follow: whether to keep reading new events in a background thread.
        replay_budget: with ``follow``, the most seconds the constructor spends replaying the
            history; a longer history is drawn as far as it got and the thread replays the
            rest, so that displaying a very long run does not hold up the notebook. Without
            ``follow`` the whole history is always read before the constructor returns.
    """

    def __init__(
        self,
        source: JobSource,
        *,
        max_points: int = 2000,
        refresh_interval: float = 0.15,
        follow: bool = True,
        replay_budget: float = 2.0,
    ) -> None:
        if max_points < 8:
            raise ValueError(f"max_points must be at least 8, got {max_points}")
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be above 0 seconds, got {refresh_interval}")
        self.source = source
        self.job_id = str(getattr(source, "job_id", ""))
        self.max_points = max_points
        self.refresh_interval = float(refresh_interval)

        self.store = SeriesStore()
        self.cursor = 0
        self.refresh_count = 0
        self.last_refresh_bytes = 0
        self.status = "queued"
        self.record: dict[str, Any] = {}
        self.progress: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.warnings: deque[str] = deque(maxlen=20)
        self.warning_count = 0
        self.nonfinite_count = 0
        self.problem: str | None = None
        self.trace_index: dict[str, int] = {}
        self.marker_index: dict[str, int] = {}

        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._caught_up = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callbacks: list[Callable[[JobView], None]] = []
        self._dirty_keys: set[str] = set()
        self._dirty_text = True
        self._groups: list[str] = []
        self._layout_groups = 0
        self._first_nonfinite: dict[str, float] = {}
        self._status_changed = False
        self._logs_wanted = False

        self.header = ipywidgets.HTML()
        self.progress_bar = ipywidgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, layout=ipywidgets.Layout(width="40%")
        )
        self.progress_text = ipywidgets.HTML()
        self.figure = go.FigureWidget(layout=_base_layout())
        self.notice = ipywidgets.HTML()
        self.warnings_box = ipywidgets.HTML()
        self.error_box = ipywidgets.HTML()
        self.log_text = ipywidgets.HTML(value="<pre></pre>")
        self.log_panel = ipywidgets.Accordion(children=[self.log_text], selected_index=None)
        self.log_panel.set_title(0, "Log tail")
        self.log_panel.observe(self._on_log_panel, names="selected_index")
        self._meter = PayloadMeter(self.figure).attach()
        super().__init__(
            children=[
                self.header,
                ipywidgets.HBox([self.progress_bar, self.progress_text]),
                self.figure,
                self.notice,
                self.warnings_box,
                self.error_box,
                self.log_panel,
            ]
        )

        self._replay(replay_budget if follow else None)
        if follow and not (self.is_terminal and self._caught_up):
            self._thread = threading.Thread(
                target=self._follow, name=f"tml-job-view-{self.job_id}", daemon=True
            )
            self._thread.start()

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def following(self) -> bool:
        """Whether the background thread is still following the job."""
        return self._thread is not None and self._thread.is_alive()

    def trace(self, key: str) -> Any:
        """The figure trace that draws metric ``key``."""
        return self.figure.data[self.trace_index[key]]

    def add_refresh_callback(self, callback: Callable[[JobView], None]) -> None:
        """Call ``callback(view)`` after every redraw (from the thread that redraws)."""
        self._callbacks.append(callback)

    def refresh(self) -> bool:
        """Read what is new and redraw now; returns whether anything changed.

        For views made with ``follow=False``; a following view refreshes by itself.
        """
        try:
            if not self.following:
                self._caught_up = self._read_available(wait=0.0, deadline=None)[1]
                self._poll_record()
            return self._render()
        except Exception as exc:
            self._show_problem(exc)
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following the job; the widget keeps showing what it has."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop following and close the widget and its parts."""
        if not hasattr(self, "_meter"):
            # The constructor refused its arguments; ipywidgets still closes on disposal.
            super().close()
            return
        self.stop()
        self._meter.detach()
        for widget in (
            self.header,
            self.progress_bar,
            self.progress_text,
            self.figure,
            self.notice,
            self.warnings_box,
            self.error_box,
            self.log_text,
            self.log_panel,
        ):
            widget.close()
        for child in self.children:
            child.close()
        super().close()

    # Reading

    def _replay(self, budget: float | None) -> None:
        try:
            self._poll_record()
            deadline = None if budget is None else time.monotonic() + budget
            self._caught_up = self._read_available(wait=0.0, deadline=deadline)[1]
            if self.is_terminal and self._caught_up:
                self._poll_record()
                self._fetch_logs()
            self._render()
        except Exception as exc:
            self._show_problem(exc)

    def _follow(self) -> None:
        backoff = self.refresh_interval
        next_record = time.monotonic() + RECORD_INTERVAL
        last_render = time.monotonic()
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                wait = self.refresh_interval if self._caught_up else 0.0
                got, self._caught_up = self._read_available(
                    wait=wait, deadline=started + self.refresh_interval
                )
                if not got:
                    # A source that ignores ``wait`` must not turn this loop into a busy one.
                    rest = self.refresh_interval - (time.monotonic() - started)
                    if rest > 0 and self._stop.wait(rest):
                        break

                now = time.monotonic()
                if now >= next_record or self._status_changed:
                    self._poll_record()
                    if self._logs_wanted:
                        self._fetch_logs()
                    next_record = now + RECORD_INTERVAL

                if self.is_terminal and self._caught_up:
                    self._finish()
                    return

                if self._has_changes():
                    delay = last_render + self.refresh_interval - time.monotonic()
                    if delay > 0:
                        if self._stop.wait(delay):
                            break
                        self._caught_up = self._read_available(
                            wait=0.0, deadline=time.monotonic() + self.refresh_interval
                        )[1]
                    self._render()
                    last_render = time.monotonic()
                if self.problem is not None:
                    self.problem = None
                    self._dirty_text = True
                backoff = self.refresh_interval
            except Exception as exc:
                self._show_problem(exc)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 5.0)

    def _finish(self) -> None:
        """The job has ended: read what is left, take the final record and logs, draw."""
        self._read_available(wait=0.0, deadline=None)
        self._poll_record()
        self._fetch_logs()
        self._render()
        logger.debug("job view %s stopped following: job %s", self.job_id, self.status)

    def _read_available(self, wait: float, deadline: float | None) -> tuple[bool, bool]:
        """Read pages of events until none is left or ``deadline`` passes.

        Returns whether any event came, and whether the view has caught up with the stream.
        """
        got = False
        first = True
        with self._read_lock:
            while True:
                events, cursor = self.source.read_events(self.cursor, wait=wait if first else 0.0)
                first = False
                with self._lock:
                    moved = cursor != self.cursor
                    self._ingest(events)
                    self.cursor = cursor
                got = got or bool(events)
                if not events and not moved:
                    return got, True
                if self._stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    return got, False

    def _ingest(self, events: list[dict[str, Any]]) -> None:
        steps: dict[str, list[float]] = {}
        values: dict[str, list[float]] = {}
        for event in events:
            kind = event.get("type")
            if kind == "metric":
                key = event.get("key")
                if not isinstance(key, str) or not key:
                    continue
                try:
                    value = decode_value(event)
                except (KeyError, TypeError, ValueError):
                    logger.debug("skipped a metric event without a usable value: %r", event)
                    continue
                step = event.get("step")
                key_steps = steps.setdefault(key, [])
                if not isinstance(step, (int, float)):
                    # Without a step, number the points of this metric in arrival order.
                    known = len(self.store[key]) if key in self.store else 0
                    step = known + len(key_steps)
                key_steps.append(float(step))
                values.setdefault(key, []).append(value)
            elif kind == "progress":
                self.progress = event
                self._dirty_text = True
            elif kind == "status":
                self._set_status(event.get("status"))
            elif kind == "warning":
                self.warnings.append(str(event.get("message", "")))
                self.warning_count += 1
                self._dirty_text = True
            elif kind == "params" and isinstance(event.get("params"), dict):
                self.params.update(event["params"])

        for key, key_steps in steps.items():
            series = self.store.series(key)
            before = series.nonfinite_count
            xs = np.asarray(key_steps, dtype=np.float64)
            ys = np.asarray(values[key], dtype=np.float64)
            series.extend(xs, ys)
            self._dirty_keys.add(key)
            added = series.nonfinite_count - before
            if added:
                self.nonfinite_count += added
                if key not in self._first_nonfinite:
                    self._first_nonfinite[key] = float(xs[np.flatnonzero(~np.isfinite(ys))[0]])
                self._dirty_text = True

    def _set_status(self, status: Any) -> None:
        if not isinstance(status, str) or status == self.status:
            return
        # Statuses only move forward; an older record must not undo a newer event.
        if _STATUS_ORDER.get(status, 0) < _STATUS_ORDER.get(self.status, 0):
            return
        self.status = status
        self._status_changed = True
        self._dirty_text = True

    def _poll_record(self) -> None:
        record = self.source.record()
        with self._lock:
            self._status_changed = False
            if record != self.record:
                self.record = dict(record)
                self._dirty_text = True
            self._set_status(record.get("status"))
            self._status_changed = False

    def _fetch_logs(self) -> None:
        text = self.source.logs(tail=100)
        value = f"<pre style='max-height:20em;overflow:auto'>{html.escape(text)}</pre>"
        self.log_text.value = value

    def _on_log_panel(self, change: dict[str, Any]) -> None:
        self._logs_wanted = change.get("new") is not None
        if self._logs_wanted and not self.following:
            try:
                self._fetch_logs()
            except Exception as exc:
                self._show_problem(exc)

    # Drawing

    def _has_changes(self) -> bool:
        return bool(self._dirty_keys) or self._dirty_text

    def _render(self) -> bool:
        with self._lock:
            if not self._has_changes():
                return False
            self._meter.reset()
            drew = self._draw_figure()
            wrote = self._draw_text()
            if not (drew or wrote):
                return False
            self.refresh_count += 1
            self.last_refresh_bytes = self._meter.reset()
        for callback in list(self._callbacks):
            try:
                callback(self)
            except Exception:
                logger.exception("a refresh callback of job view %s failed", self.job_id)
        return True

    def _draw_figure(self) -> bool:
        """Send the changed curves in one batched update; returns whether any changed."""
        dirty = [key for key in self.store if key in self._dirty_keys]
        self._dirty_keys.clear()
        if not dirty:
            return False

        new_traces = []
        for key in dirty:
            if key not in self.trace_index:
                new_traces.append(self._line_trace(key))
            if self.store[key].nonfinite_count and key not in self.marker_index:
                new_traces.append(self._marker_trace(key))
        if new_traces:
            start = len(self.figure.data)
            # One message for every new curve; their points follow in the batched update.
            self.figure.add_traces([trace for _, trace in new_traces])
            for offset, (name, _) in enumerate(new_traces):
                kind, key = name
                index = self.trace_index if kind == "line" else self.marker_index
                index[key] = start + offset

        with self.figure.batch_update():
            if len(self._groups) != self._layout_groups:
                self.figure.layout.update(_grid_layout(self._groups))
                self._layout_groups = len(self._groups)
            for key in dirty:
                series = self.store[key]
                xs, ys = series.downsample(self.max_points)
                line = self.figure.data[self.trace_index[key]]
                line.x, line.y = xs, ys
                if key in self.marker_index:
                    mx, my, kinds = series.nonfinite_points(MAX_MARKERS)
                    marker = self.figure.data[self.marker_index[key]]
                    marker.x, marker.y = mx.astype(np.float64), my
                    marker.hovertext = [
                        f"{key} is {k} at step {s:g}" for k, s in zip(kinds, mx, strict=True)
                    ]
        return True

    def _axis_number(self, key: str) -> int:
        group = metric_group(key)
        if group not in self._groups:
            self._groups.append(group)
        return self._groups.index(group) + 1

    def _line_trace(self, key: str) -> tuple[tuple[str, str], go.Scatter]:
        number = self._axis_number(key)
        color = _PALETTE[len(self.trace_index) % len(_PALETTE)]
        trace = go.Scatter(
            x=np.empty(0, dtype=np.int32),
            y=np.empty(0, dtype=np.float32),
            name=key,
            mode="lines",
            line={"color": color, "width": 1.5},
            connectgaps=False,
            xaxis=_axis_ref("x", number),
            yaxis=_axis_ref("y", number),
        )
        return ("line", key), trace

    def _marker_trace(self, key: str) -> tuple[tuple[str, str], go.Scatter]:
        number = self._axis_number(key)
        trace = go.Scatter(
            x=np.empty(0),
            y=np.empty(0),
            name=f"{key} NaN/inf",
            mode="markers",
            marker={"symbol": "x", "size": 9, "color": "#c62828"},
            hoverinfo="text",
            xaxis=_axis_ref("x", number),
            yaxis=_axis_ref("y", number),
        )
        return ("marker", key), trace

    def _draw_text(self) -> bool:
        """Update the text parts that changed; returns whether any did."""
        if not self._dirty_text:
            return False
        self._dirty_text = False
        fraction = self._fraction()
        notice = (
            ""
            if self.problem is None
            else f"<div style='color:#c62828'>{html.escape(self.problem)}</div>"
        )
        wanted: list[tuple[Any, str, Any]] = [
            (self.header, "value", self._header_html()),
            (self.progress_bar, "value", 0.0 if fraction is None else fraction),
            (self.progress_bar, "bar_style", _BAR_STYLES.get(self.status, "")),
            (self.progress_text, "value", self._progress_html(fraction)),
            (self.notice, "value", notice),
            (self.warnings_box, "value", self._warnings_html()),
            (self.error_box, "value", self._error_html()),
        ]
        changed = False
        for widget, name, value in wanted:
            if getattr(widget, name) != value:
                setattr(widget, name, value)
                changed = True
        return changed

    def _fraction(self) -> float | None:
        if self.status == "succeeded":
            return 1.0
        merged = dict(self.record)
        if self.progress:
            merged["progress"] = self.progress
        return progress_fraction(merged)

    def _header_html(self) -> str:
        record = self.record
        name = html.escape(str(record.get("name") or "job"))
        job_id = html.escape(self.job_id or str(record.get("id", "")))
        parts = [f"<b>{name}</b>", f"<code>{job_id}</code>", status_badge(self.status)]
        world = record.get("world_size")
        if world:
            parts.append(f"{int(world)} rank{'s' if int(world) != 1 else ''}")
        if record.get("reason"):
            parts.append(html.escape(str(record["reason"])))
        if self.nonfinite_count:
            parts.append(
                "<span class='tml-nonfinite' style='color:#c62828'>"
                f"&#9888; {self.nonfinite_count} NaN/inf</span>"
            )
        parts.append(f"<code>tml.job(&quot;{job_id}&quot;)</code>")
        return "<div class='tml-job-header'>" + " &middot; ".join(parts) + "</div>"

    def _progress_html(self, fraction: float | None) -> str:
        progress = self.progress or self.record.get("progress") or {}
        parts = []
        if fraction is not None:
            parts.append(f"{100 * fraction:.1f}%")
        step, total = progress.get("step"), progress.get("total_steps")
        if step is not None:
            parts.append(f"step {step}" + (f" / {total}" if total else ""))
        epoch, max_epochs = progress.get("epoch"), progress.get("max_epochs")
        if isinstance(epoch, (int, float)):
            shown = int(epoch) + 1
            if isinstance(max_epochs, (int, float)) and max_epochs > 0:
                parts.append(f"epoch {min(shown, int(max_epochs))} / {int(max_epochs)}")
            else:
                parts.append(f"epoch {shown}")
        eta = progress.get("eta")
        if self.status == "running" and isinstance(eta, (int, float)):
            parts.append(f"ETA {format_duration(eta)}")
        speed = progress.get("samples_per_sec")
        if isinstance(speed, (int, float)) and math.isfinite(speed):
            parts.append(f"{speed:,.0f} samples/s")
        return "<span class='tml-progress'>" + " &middot; ".join(parts) + "</span>"

    def _warnings_html(self) -> str:
        items = [
            f"<li>{html.escape(key)}: {self.store[key].nonfinite_count} NaN/inf value(s), "
            f"first at step {step:g}</li>"
            for key, step in self._first_nonfinite.items()
        ]
        items += [f"<li>{html.escape(message)}</li>" for message in self.warnings]
        if not items:
            return ""
        more = self.warning_count - len(self.warnings)
        if more > 0:
            items.append(f"<li><i>{more} earlier warning(s) not shown</i></li>")
        return (
            "<div class='tml-warnings' style='color:#8a6d3b'><b>Warnings</b><ul>"
            + "".join(items)
            + "</ul></div>"
        )

    def _error_html(self) -> str:
        error = self.record.get("error")
        if not error or self.status != "failed":
            return ""
        rank = error.get("rank")
        where = f"rank {rank}" if rank is not None else "the job"
        message = html.escape(str(error.get("message") or ""))
        trace = html.escape(str(error.get("traceback") or ""))
        return (
            "<div class='tml-error' style='color:#c62828'>"
            f"<b>Failed in {where}:</b> {message}"
            f"<pre style='max-height:20em;overflow:auto'>{trace}</pre></div>"
        )

    def _show_problem(self, exc: BaseException) -> None:
        logger.warning("job view %s could not update: %s", self.job_id, exc, exc_info=True)
        with self._lock:
            self.problem = (
                f"Live updates of job {self.job_id} hit a problem and will retry: "
                f"{type(exc).__name__}: {exc}"
            )
            self._dirty_text = True
            try:
                self._draw_text()
            except Exception:
                logger.exception("job view %s could not show the problem", self.job_id)

    def latest(self, key: str) -> float | None:
        """The latest value of metric ``key`` (NaN included), or None when it has none."""
        if key not in self.store:
            return None
        last = self.store[key].last()
        return None if last is None else last[1]

    def summary(self) -> str:
        """One line of text: status, progress and the latest value of each metric."""
        fraction = self._fraction()
        metrics = ", ".join(f"{key}={format_number(self.latest(key))}" for key in self.store)
        done = "" if fraction is None else f" {100 * fraction:.1f}%"
        return f"job {self.job_id} {self.status}{done} {metrics}".strip()


_BAR_STYLES = {
    "running": "info",
    "succeeded": "success",
    "failed": "danger",
    "cancelled": "warning",
}


def _axis_ref(letter: str, number: int) -> str:
    return letter if number == 1 else f"{letter}{number}"


def _base_layout() -> dict[str, Any]:
    return {
        "height": _PANEL_HEIGHT + 60,
        "margin": {"l": 50, "r": 20, "t": 30, "b": 40},
        "template": "plotly_white",
        "legend": {"orientation": "h", "y": -0.15},
        "uirevision": "tml",
    }


def _grid_layout(groups: list[str]) -> dict[str, Any]:
    """Axes domains and panel titles for one panel per group, two panels a row."""
    count = max(len(groups), 1)
    cols = 1 if count == 1 else 2
    rows = -(-count // cols)
    gap_x, gap_y = 0.08, 0.12 / rows
    layout: dict[str, Any] = {"height": _PANEL_HEIGHT * rows + 60, "annotations": []}
    for i, group in enumerate(groups):
        number = i + 1
        row, col = divmod(i, cols)
        x0 = col / cols + (gap_x / 2 if col else 0)
        x1 = (col + 1) / cols - (gap_x / 2 if col < cols - 1 else 0)
        top = 1 - row / rows
        bottom = 1 - (row + 1) / rows
        y0 = bottom + (gap_y if row < rows - 1 else 0)
        y1 = top - gap_y
        suffix = "" if number == 1 else str(number)
        layout[f"xaxis{suffix}"] = {"domain": [x0, x1], "anchor": _axis_ref("y", number)}
        layout[f"yaxis{suffix}"] = {"domain": [y0, y1], "anchor": _axis_ref("x", number)}
        layout["annotations"].append(
            {
                "text": f"<b>{html.escape(group)}</b>",
                "xref": f"{_axis_ref('x', number)} domain",
                "yref": f"{_axis_ref('y', number)} domain",
                "x": 0.5,
                "y": 1.0,
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
            }
        )
    return layout
