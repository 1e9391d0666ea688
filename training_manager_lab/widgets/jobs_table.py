"""The table of jobs that ``tml.jobs()`` returns: a list of job records that displays as a table."""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

#: Badge colours per job status (background, text).
STATUS_COLORS: dict[str, tuple[str, str]] = {
    "queued": ("#e0e0e0", "#333333"),
    "running": ("#1e88e5", "#ffffff"),
    "succeeded": ("#2e7d32", "#ffffff"),
    "failed": ("#c62828", "#ffffff"),
    "cancelled": ("#ef6c00", "#ffffff"),
}

# Metric names tried in this order when picking the one metric a table row shows.
_MAIN_METRIC_PREFERENCE = (
    "val_acc",
    "val/acc",
    "val_accuracy",
    "val/accuracy",
    "val_loss",
    "val/loss",
    "train_loss",
    "train/loss",
    "loss",
)

_COLUMNS = ("id", "name", "status", "progress", "ETA", "metric", "world size", "created")


class JobsTable(list):  # type: ignore[type-arg]
    """Job records that display as a table in a notebook and behave as a plain list.

    Each item is a job record dict as the job store returns it (see the architecture document).
    In a notebook the object shows as an HTML table with the id, name, status, progress, ETA,
    the latest value of the main metric, the world size and the creation time of each job.

    Example:
        >>> table = JobsTable(records)
        >>> table[0]["status"]
        'running'
        >>> table  # shows the table in a notebook

    Args:
        records: job records, newest first as the store lists them.
    """

    def __init__(self, records: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(records)

    def rows(self) -> list[dict[str, str]]:
        """The table's cells as text, one dict per job keyed by column name."""
        return [table_row(record) for record in self]

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in _COLUMNS)
        if not self:
            body = f"<tr><td colspan='{len(_COLUMNS)}'><i>no jobs yet</i></td></tr>"
        else:
            body = "".join(_html_row(record) for record in self)
        return (
            "<table class='tml-jobs-table'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def __repr__(self) -> str:
        if not self:
            return "JobsTable([]) (no jobs yet)"
        rows = [dict(zip(_COLUMNS, _COLUMNS, strict=True))] + self.rows()
        widths = {c: max(len(row[c]) for row in rows) for c in _COLUMNS}
        lines = ["  ".join(row[c].ljust(widths[c]) for c in _COLUMNS).rstrip() for row in rows]
        return "\n".join(lines)

    def to_widget(self) -> Any:
        """The table as an ``ipywidgets.HTML`` widget, for use inside other widgets."""
        import ipywidgets

        return ipywidgets.HTML(value=self._repr_html_())

    def to_dataframe(self) -> Any:
        """The table as a pandas DataFrame with one row per job and the table's columns."""
        import pandas

        return pandas.DataFrame(self.rows(), columns=list(_COLUMNS))


def table_row(record: dict[str, Any]) -> dict[str, str]:
    """The table cells of one job record as text."""
    progress = record.get("progress") or {}
    metric = main_metric(record.get("last_metrics") or {})
    status = str(record.get("status") or "unknown")
    eta = progress.get("eta") if status == "running" else None
    return {
        "id": str(record.get("id", "")),
        "name": str(record.get("name") or ""),
        "status": status,
        "progress": format_percent(progress_fraction(record)),
        "ETA": format_duration(eta),
        "metric": "" if metric is None else f"{metric[0]} = {format_number(metric[1])}",
        "world size": "" if record.get("world_size") is None else str(record["world_size"]),
        "created": format_time(record.get("created_at")),
    }


def progress_fraction(record: dict[str, Any]) -> float | None:
    """How far a job has come, from 0 to 1, or None when nothing says so yet."""
    progress = record.get("progress") or {}
    fraction = progress.get("fraction")
    if fraction is None:
        step, total = progress.get("step"), progress.get("total_steps")
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
            fraction = step / total
    if fraction is None and record.get("status") == "succeeded":
        fraction = 1.0
    if fraction is None:
        return None
    return min(max(float(fraction), 0.0), 1.0)


def main_metric(last_metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The metric a summary shows for a job: validation accuracy or loss first, then losses."""
    if not last_metrics:
        return None
    for key in _MAIN_METRIC_PREFERENCE:
        if key in last_metrics and last_metrics[key] is not None:
            return key, float(last_metrics[key])
    for key in sorted(last_metrics):
        if ("val" in key or "loss" in key) and last_metrics[key] is not None:
            return key, float(last_metrics[key])
    present = [k for k in sorted(last_metrics) if last_metrics[k] is not None]
    return (present[0], float(last_metrics[present[0]])) if present else None


def status_badge(status: str) -> str:
    """An HTML badge for a job status, coloured by status."""
    background, color = STATUS_COLORS.get(status, ("#9e9e9e", "#ffffff"))
    return (
        f"<span class='tml-status tml-status-{html.escape(status)}' style='background:"
        f"{background};color:{color};padding:1px 8px;border-radius:8px;font-size:0.9em'>"
        f"{html.escape(status)}</span>"
    )


def format_duration(seconds: float | None) -> str:
    """Seconds as ``"42 s"``, ``"3 min 4 s"`` or ``"2 h 5 min"``; empty when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {(whole % 3600) // 60} min"


def format_percent(fraction: float | None) -> str:
    """A fraction as a percentage with one decimal; empty when unknown."""
    return "" if fraction is None else f"{100 * fraction:.1f}%"


def format_number(value: float | None) -> str:
    """A metric value with four significant digits; ``nan`` and ``inf`` as such."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def format_time(timestamp: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``; empty when unknown."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(timestamp)))


def _html_row(record: dict[str, Any]) -> str:
    row = table_row(record)
    cells = []
    for column in _COLUMNS:
        if column == "status":
            cells.append(f"<td>{status_badge(row['status'])}</td>")
        elif column == "id":
            cells.append(f"<td><code>{html.escape(row['id'])}</code></td>")
        else:
            cells.append(f"<td>{html.escape(row[column])}</td>")
    return f"<tr>{''.join(cells)}</tr>"
