"""The live resources widget: per node CPU, memory and GPUs with their holders, the queue, orphans.

The view draws whatever its provider returns. The provider is a callable without arguments
returning this dict (the REST API ``GET resources`` serves the same shape)::

    {
      "nodes": [inventory, ...],            # local_inventory() of each node
      "holders": {key: holder | [holder, ...]},
      "queue": [{"id": str, "name": str | None, "position": int, "reason": str | None}],
      "orphans": [orphan, ...],             # find_orphans() entries
      "kernels": {kernel_id: {"pid", "gpu_memory", "gpus"}},  # attribute()["kernels"]
      "history": {node name: series},       # Sampler.history() of each node
      "error": str | None,                  # shown above everything when set
    }

Every key but ``nodes`` may be left out. A holder key is the GPU's UUID, ``"<node>:<index>"``
or the index (as int or text); holders found under several keys of one GPU are merged, one
per job, kernel or pid. A holder is ``{"job_id": str, "name": str | None}`` for a job,
``{"kernel_id": str, "name": str | None}`` for a kernel of this server, or ``{"pid": int,
"name": str | None}`` for anything else, each optionally with ``"used_memory"`` (bytes on that
GPU); ``devices.attribution.attribute()`` computes them from the GPU processes. A ``series`` is
``{"t": [...], "cpu_percent": [...], "memory_percent": [...], "gpus": {uuid or index as text:
{"index": i, "utilization": [...], "memory_used": [...]}}}``. An inventory GPU value that is
None is shown as "n/a".
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets

logger = logging.getLogger(__name__)

#: What the view calls to get its data; see the module docstring for the shape.
Provider = Callable[[], Mapping[str, Any]]

_BLOCKS = "▁▂▃▄▅▆▇█"
_SPARK_POINTS = 60
_CELL = "padding:2px 8px;white-space:nowrap"


class ResourcesView(ipywidgets.VBox):
    """Shows nodes, GPUs and their holders, the queue and orphan GPU processes, refreshed live.

    A daemon thread calls the provider every ``refresh_interval`` seconds and redraws only the
    parts whose content changed. Errors of the provider are shown in the view and the thread
    keeps going.

    Args:
        provider: Returns the data to show (shape in the module docstring).
        refresh_interval: Seconds between refreshes; 0 refreshes only on :meth:`refresh`.
        end_process: Called with a pid when the user confirms ending an orphan; ``None`` shows
            orphans without an end button. It returns a short outcome text or raises.
        autostart: Start the refresh thread at once (when ``refresh_interval`` > 0).

    Example:
        >>> view = ResourcesView(lambda: {"nodes": [local_inventory()]})
        >>> view  # in a notebook
        >>> view.stop()
    """

    def __init__(
        self,
        provider: Provider,
        refresh_interval: float = 1.0,
        *,
        end_process: Callable[[int], Any] | None = None,
        autostart: bool = True,
    ) -> None:
        self._provider = provider
        self.refresh_interval = refresh_interval
        self._end_process = end_process
        self._status = ipywidgets.HTML()
        self._nodes = ipywidgets.HTML()
        self._queue = ipywidgets.HTML()
        self._orphans = ipywidgets.VBox()
        self._orphan_rows: dict[int, ipywidgets.HBox] = {}
        self._orphan_keys: tuple[Any, ...] = ()
        self._message = ""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.data: Mapping[str, Any] = {}
        super().__init__([self._status, self._nodes, self._queue, self._orphans])
        self.add_class("tml-resources")
        self.refresh()
        if autostart and refresh_interval > 0:
            self.start()

    def refresh(self) -> bool:
        """Ask the provider once and redraw; returns False when the provider failed."""
        with self._lock:
            try:
                data = self._provider()
            except Exception as err:
                logger.debug("resources provider failed", exc_info=True)
                self._set(self._status, _error_html(f"could not read resources: {err}"))
                return False
            self.data = data
            self._draw(data)
            return True

    def start(self) -> None:
        """Start the refresh thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tml-resources-view", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refresh thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop refreshing and close the widget and its children."""
        self.stop()
        for child in (self._status, self._nodes, self._queue, *self._orphan_rows.values()):
            child.close()
        self._orphans.close()
        super().close()

    @property
    def following(self) -> bool:
        """Whether the refresh thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def html(self) -> str:
        """The text of every drawn part, for tests and for exporting."""
        rows = [_row_text(row) for row in self._orphan_rows.values()]
        return "\n".join([self._status.value, self._nodes.value, self._queue.value, *rows])

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    def _draw(self, data: Mapping[str, Any]) -> None:
        status = _error_html(data["error"]) if data.get("error") else ""
        if self._message:
            status += f"<div class='tml-message'>{html.escape(self._message)}</div>"
        self._set(self._status, status)
        history = data.get("history") or {}
        holders = data.get("holders") or {}
        nodes = [
            _node_html(node, holders, history.get(node.get("node")) or {})
            for node in data.get("nodes") or []
        ]
        self._set(self._nodes, "".join(nodes) or "<p>No node reported any resources.</p>")
        queue = _queue_html(data.get("queue") or [])
        self._set(self._queue, _kernels_html(data.get("kernels")) + queue)
        self._draw_orphans(data.get("orphans") or [])

    @staticmethod
    def _set(widget: ipywidgets.HTML, value: str) -> None:
        # One comm message per changed part; unchanged parts send nothing.
        if widget.value != value:
            widget.value = value

    def _draw_orphans(self, orphans: Sequence[Mapping[str, Any]]) -> None:
        keys = tuple((o["pid"], o.get("gpu_index"), o.get("used_memory")) for o in orphans)
        if keys == self._orphan_keys:
            return
        self._orphan_keys = keys
        for row in self._orphan_rows.values():
            row.close()
        self._orphan_rows = {}
        for orphan in orphans:
            self._orphan_rows[int(orphan["pid"])] = self._orphan_row(orphan)
        header = []
        if orphans:
            title = "GPU processes of no job and no kernel"
            header = [ipywidgets.HTML(f"<b>{title}</b>")]
        self._orphans.children = [*header, *self._orphan_rows.values()]

    def _orphan_row(self, orphan: Mapping[str, Any]) -> ipywidgets.HBox:
        pid = int(orphan["pid"])
        label = ipywidgets.HTML(_orphan_label(orphan))
        row = ipywidgets.HBox([label])
        if self._end_process is None:
            return row
        end = ipywidgets.Button(description="End…", button_style="warning")
        confirm = ipywidgets.Button(description=f"Yes, end {pid}", button_style="danger")
        cancel = ipywidgets.Button(description="Cancel")
        end.on_click(lambda _: setattr(row, "children", [label, confirm, cancel]))
        cancel.on_click(lambda _: setattr(row, "children", [label, end]))
        confirm.on_click(lambda _: self._confirm_end(pid))
        row.children = [label, end]
        return row

    def _confirm_end(self, pid: int) -> None:
        assert self._end_process is not None
        try:
            outcome = self._end_process(pid)
            self._message = f"process {pid}: {outcome or 'ended'}"
        except Exception as err:
            self._message = f"process {pid} was not ended: {err}"
        self.refresh()


def _node_html(node: Mapping[str, Any], holders: Mapping[Any, Any], series: Mapping) -> str:
    name = html.escape(str(node.get("node", "?")))
    cpu, memory = node.get("cpu") or {}, node.get("memory") or {}
    load = ", ".join(_number(v, 2) for v in cpu.get("load") or [])
    cpu_text = f"{_number(cpu.get('percent'), 1)} % of {_number(cpu.get('count'), 1)} cores"
    if load:
        cpu_text += f", load {load}"
    memory_text = f"{_bytes(memory.get('used'))} of {_bytes(memory.get('total'))}"
    parts = [
        f"<div class='tml-node'><h4 style='margin:4px 0'>{name}</h4>",
        "<table style='border-collapse:collapse'>",
        _bar_row("CPU", cpu.get("percent"), cpu_text, _spark(series.get("cpu_percent"), 100)),
        _bar_row(
            "Memory",
            memory.get("percent"),
            memory_text,
            _spark(series.get("memory_percent"), 100),
        ),
        "</table>",
    ]
    gpus = node.get("gpus") or []
    if node.get("gpu_error"):
        parts.append(f"<p class='tml-gpu-error'>No GPUs: {html.escape(node['gpu_error'])}</p>")
    elif not gpus:
        parts.append("<p class='tml-gpu-error'>No GPUs on this node.</p>")
    if gpus:
        parts.append(_gpu_table(node, gpus, holders, series.get("gpus") or {}))
    parts.append("</div>")
    return "".join(parts)


def _gpu_table(
    node: Mapping[str, Any],
    gpus: Sequence[Mapping[str, Any]],
    holders: Mapping[Any, Any],
    series: Mapping[str, Any],
) -> str:
    head = "".join(
        f"<th style='text-align:left;padding:2px 8px'>{h}</th>"
        for h in ("GPU", "name", "utilisation", "memory", "temp", "power", "recent", "held by")
    )
    rows = [f"<table class='tml-gpus' style='border-collapse:collapse'><tr>{head}</tr>"]
    for gpu in gpus:
        key = str(gpu.get("uuid") or gpu["index"])
        used, total = gpu.get("memory_used"), gpu.get("memory_total")
        memory_percent = 100.0 * used / total if used is not None and total else None
        hidden = "" if gpu.get("visible", True) else " (not visible to this server)"
        cells = [
            f"{gpu['index']}{html.escape(hidden)}",
            html.escape(str(gpu.get("name") or "n/a")),
            _bar(gpu.get("utilization"), f"{_number(gpu.get('utilization'), 0)} %"),
            _bar(memory_percent, f"{_bytes(used)} / {_bytes(total)}"),
            _unit(gpu.get("temperature"), "°C", 0),
            _unit(gpu.get("power"), "W", 0),
            _spark((series.get(key) or {}).get("utilization"), 100),
            _holder_html(_holders_of(node, gpu, holders), gpu),
        ]
        rows.append("<tr>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "".join(rows)


def _holders_of(
    node: Mapping[str, Any], gpu: Mapping[str, Any], holders: Mapping[Any, Any]
) -> list[dict[str, Any]]:
    # Holders may come keyed by UUID (from attribution) and by index (from allocations): merge
    # them, one entry per job, kernel or process, adding up the memory they report.
    index = gpu["index"]
    merged: dict[tuple[str, Any], dict[str, Any]] = {}
    for key in (gpu.get("uuid"), f"{node.get('node')}:{index}", index, str(index)):
        if key is None or key not in holders:
            continue
        found = holders[key]
        for holder in found if isinstance(found, (list, tuple)) else [found]:
            identity = _identity(holder)
            if identity not in merged:
                merged[identity] = dict(holder)
                continue
            entry = merged[identity]
            entry["name"] = entry.get("name") or holder.get("name")
            if holder.get("used_memory") is not None:
                entry["used_memory"] = (entry.get("used_memory") or 0) + holder["used_memory"]
    return list(merged.values())


def _identity(holder: Mapping[str, Any]) -> tuple[str, Any]:
    for kind in ("job_id", "kernel_id", "pid"):
        if holder.get(kind) is not None:
            return kind, holder[kind]
    return "other", id(holder)


def _holder_html(holders: Sequence[Mapping[str, Any]], gpu: Mapping[str, Any]) -> str:
    if not holders:
        procs = gpu.get("processes") or []
        if not procs:
            return "free"
        used = sum(p.get("used_memory") or 0 for p in procs)
        return f"{len(procs)} other process{'es' if len(procs) > 1 else ''} ({_bytes(used)})"
    texts = []
    for holder in holders:
        name = holder.get("name")
        if holder.get("job_id"):
            text = f"job {holder['job_id']}"
        elif holder.get("kernel_id"):
            text = f"kernel {holder['kernel_id']}"
        elif holder.get("pid") is not None:
            text = f"pid {holder['pid']}"
        else:
            text = "?"
        if name:
            text += f" ({name})"
        if holder.get("used_memory") is not None:
            text += f", {_bytes(holder['used_memory'])}"
        texts.append(html.escape(text))
    return "<br>".join(texts)


def _queue_html(queue: Sequence[Mapping[str, Any]]) -> str:
    if not queue:
        return "<p class='tml-queue'>Queue: empty.</p>"
    head = "".join(
        f"<th style='text-align:left;padding:2px 8px'>{h}</th>"
        for h in ("#", "job", "name", "waiting for")
    )
    rows = [f"<b>Queue</b><table class='tml-queue' style='border-collapse:collapse'><tr>{head}"]
    rows.append("</tr>")
    for entry in sorted(queue, key=lambda e: (e.get("position") is None, e.get("position") or 0)):
        cells = [
            entry.get("position"),
            entry.get("id"),
            entry.get("name") or "",
            entry.get("reason") or "",
        ]
        rows.append(
            "<tr>"
            + "".join(
                f"<td style='{_CELL}'>{html.escape(str(c if c is not None else ''))}</td>"
                for c in cells
            )
            + "</tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _kernels_html(kernels: Any) -> str:
    entries = list(kernels.items()) if isinstance(kernels, Mapping) else []
    if isinstance(kernels, (list, tuple)):
        entries = [(k.get("kernel_id"), k) for k in kernels if isinstance(k, Mapping)]
    lines = []
    for kernel_id, usage in entries:
        if not usage.get("gpu_memory"):
            continue
        gpus = ", ".join(str(g) for g in usage.get("gpus") or [])
        where = f" on GPU {gpus}" if gpus else ""
        text = f"kernel {kernel_id}: {_bytes(usage['gpu_memory'])}{where}"
        lines.append(f"<div>{html.escape(text)}</div>")
    if not lines:
        return ""
    return "<div class='tml-kernels'><b>Kernels on GPUs</b>" + "".join(lines) + "</div>"


def _orphan_label(orphan: Mapping[str, Any]) -> str:
    what = orphan.get("cmdline") or orphan.get("name") or "unknown process"
    if len(what) > 80:
        what = what[:77] + "..."
    gpu = orphan.get("gpu_index")
    where = f" on GPU {gpu}" if gpu is not None else ""
    node = f" ({orphan['node']})" if orphan.get("node") else ""
    user = f", user {orphan['username']}" if orphan.get("username") else ""
    text = f"pid {orphan['pid']}{node}: {what}{where}, {_bytes(orphan.get('used_memory'))}{user}"
    return html.escape(text)


def _bar_row(label: str, percent: float | None, text: str, spark: str) -> str:
    return (
        f"<tr><td style='{_CELL}'>{label}</td>"
        f"<td style='{_CELL}'>{_bar(percent, text)}</td>"
        f"<td style='{_CELL}'>{spark}</td></tr>"
    )


def _bar(percent: float | None, text: str, width: int = 140) -> str:
    if percent is None:
        return f"<span title='not supported'>{html.escape(text)}</span>"
    fill = min(max(float(percent), 0.0), 100.0)
    color = "#2e7d32" if fill < 70 else "#ef6c00" if fill < 90 else "#c62828"
    return (
        f"<div style='display:inline-block;width:{width}px;height:10px;background:#e0e0e0;"
        f"vertical-align:middle'><div class='tml-bar' style='width:{fill:.0f}%;height:100%;"
        f"background:{color}'></div></div> <span>{html.escape(text)}</span>"
    )


def sparkline(values: Sequence[float | None] | None, top: float | None = None) -> str:
    """Draw values as a line of Unicode blocks (a gap for a missing value).

    Args:
        values: The series; only the last 60 points are drawn.
        top: The value drawn as a full block; ``None`` uses the largest value.
    """
    points = list(values or [])[-_SPARK_POINTS:]
    present = [float(v) for v in points if v is not None]
    if not present:
        return ""
    high = top if top is not None else max(present)
    if high <= 0:
        high = 1.0
    chars = []
    for value in points:
        if value is None:
            chars.append(" ")
            continue
        level = int(round(min(max(float(value) / high, 0.0), 1.0) * (len(_BLOCKS) - 1)))
        chars.append(_BLOCKS[level])
    return "".join(chars)


def _spark(values: Sequence[float | None] | None, top: float | None) -> str:
    line = sparkline(values, top)
    if not line:
        return ""
    style = "font-family:monospace;font-size:9px;line-height:1"
    return f"<span class='tml-spark' style='{style}'>{line}</span>"


def _error_html(message: str) -> str:
    return f"<div class='tml-error' style='color:#c62828'>{html.escape(str(message))}</div>"


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _unit(value: Any, unit: str, digits: int) -> str:
    return "n/a" if value is None else f"{_number(value, digits)} {unit}"


def _bytes(value: Any) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _row_text(row: ipywidgets.HBox) -> str:
    parts = []
    for child in row.children:
        if isinstance(child, ipywidgets.HTML):
            parts.append(child.value)
        elif isinstance(child, ipywidgets.Button):
            parts.append(f"[{child.description}]")
    return " ".join(parts)
