"""The per-job event stream: append-only JSON lines, read from a byte cursor."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"

#: Upper bound on what one read returns, so that a reader catching up on a long run gets the
#: history in pages instead of one huge answer.
DEFAULT_READ_LIMIT = 4 * 1024 * 1024


def encode_value(value: float) -> dict[str, Any]:
    """Return the JSON fields for a metric value; non-finite values become a marker."""
    if math.isnan(value):
        return {"value": None, "nonfinite": "nan"}
    if math.isinf(value):
        return {"value": None, "nonfinite": "inf" if value > 0 else "-inf"}
    return {"value": value}


def decode_value(event: dict[str, Any]) -> float:
    """Return a metric event's value as a float, NaN and infinities included."""
    marker = event.get("nonfinite")
    if marker is not None:
        return float(marker)
    return float(event["value"])


class EventWriter:
    """Appends events to a job's stream.

    Each call to :meth:`write` is one ``write`` system call on a file opened with ``O_APPEND``,
    so a reader never sees half a batch from a single writer, and a crash loses at most the
    batch being written.

    Args:
        path: the ``events.jsonl`` file; created if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        # A crash (or a full disk) can leave the last line cut short; end it, so that the
        # first event written now is not glued to the fragment and lost to every reader.
        if _ends_mid_line(self.path):
            os.write(self._fd, b"\n")

    def write(self, *events: dict[str, Any]) -> None:
        """Append events; each gets a timestamp ``t`` unless it has one."""
        if not events:
            return
        now = time.time()
        lines = []
        for event in events:
            event.setdefault("t", now)
            lines.append(json.dumps(event, separators=(",", ":"), allow_nan=False))
        data = ("\n".join(lines) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"event stream {self.path} is closed")
            os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as stream:
        if stream.seek(0, os.SEEK_END) == 0:
            return False
        stream.seek(-1, os.SEEK_END)
        return stream.read(1) != b"\n"


def read_events(
    path: str | os.PathLike[str], cursor: int = 0, limit: int = DEFAULT_READ_LIMIT
) -> tuple[list[dict[str, Any]], int]:
    """Read the complete events after byte offset ``cursor``.

    Returns the events and the cursor to continue from. A line still being written (no
    trailing newline yet) is left for the next read. A missing file reads as empty.

    Raises:
        ValueError: if ``cursor`` is negative.
    """
    if cursor < 0:
        raise ValueError(f"cursor must be a byte offset of 0 or more, got {cursor}")
    try:
        # Never through a symbolic link: a stream is a plain file in its job's folder.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return [], cursor
    with os.fdopen(fd, "rb") as stream:
        stream.seek(cursor)
        data = stream.read(limit)
    end = data.rfind(b"\n")
    if end < 0:
        return [], cursor
    events = []
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            # A torn line can only come from a crash in the middle of a write; skip it
            # rather than stop every reader of the stream at that point.
            continue
    return events, cursor + end + 1


def stream_size(path: str | os.PathLike[str]) -> int:
    """The current size of the stream in bytes (0 when it does not exist yet)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
