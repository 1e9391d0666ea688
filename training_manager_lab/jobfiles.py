"""Reads a job's files for users: rank logs and the event stream, never outside the job's folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import JobSpecError
from .events import EVENTS_FILE, read_events

_RANK_LOG = re.compile(r"^rank-(\d+)\.log$")
MAX_TAIL = 100_000


def rank_logs(job_dir: Path) -> list[int]:
    """The ranks that have a log file, in order."""
    if not job_dir.is_dir():
        return []
    ranks = []
    for entry in os.scandir(job_dir):
        match = _RANK_LOG.match(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            ranks.append(int(match[1]))
    return sorted(ranks)


def _log_path(job_dir: Path, rank: Any) -> Path:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < 100_000:
        raise JobSpecError(f"rank must be a whole number from 0, got {rank!r}")
    path = job_dir / f"rank-{rank}.log"
    # The name is built from a number, so it cannot climb out of the folder; a symbolic link
    # planted in the folder could, so links are never followed.
    if path.is_symlink():
        raise JobSpecError(f"the log of rank {rank} is not a regular file")
    return path


def read_log(
    job_dir: Path, rank: int, *, tail: int | None = None, offset: int | None = None
) -> dict[str, Any]:
    """Read one rank's output: its last ``tail`` lines, or the bytes after ``offset``.

    Returns ``{"rank", "text", "offset"}`` where ``offset`` is where a follower continues.
    """
    path = _log_path(job_dir, rank)
    if tail is not None and not 0 <= tail <= MAX_TAIL:
        raise JobSpecError(f"tail must lie between 0 and {MAX_TAIL}, got {tail}")
    if offset is not None and offset < 0:
        raise JobSpecError(f"offset must be 0 or more, got {offset}")
    try:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        return {"rank": rank, "text": "", "offset": 0}
    except OSError as exc:
        raise JobSpecError(f"the log of rank {rank} cannot be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if offset is not None:
            stream.seek(min(offset, size))
            data = stream.read(4 * 1024 * 1024)
            return {"rank": rank, "text": data.decode(errors="replace"), "offset": stream.tell()}
        data = stream.read()
    text = data.decode(errors="replace")
    if tail is not None:
        lines = text.splitlines()
        text = "\n".join(lines[-tail:]) + ("\n" if lines and tail else "") if tail else ""
    return {"rank": rank, "text": text, "offset": size}


def job_events(job_dir: Path, cursor: int) -> tuple[list[dict[str, Any]], int]:
    return read_events(job_dir / EVENTS_FILE, cursor)
