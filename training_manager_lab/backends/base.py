"""The interface every execution backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Launched:
    """What a backend reports about a job it has started.

    Attributes:
        backend_id: the backend's own id of the job (a pid for local jobs, a SLURM job id).
        pid: the local supervisor process id, when there is one on this machine.
        create_time: that process's start time (psutil), to tell it from a reused pid.
    """

    backend_id: str
    pid: int | None = None
    create_time: float | None = None


class Backend(Protocol):
    """Starts, follows and stops the supervisor of a job.

    The job manager owns the job store; a backend only talks to the thing that runs the job
    (local processes, a cluster scheduler) and reports what it sees.
    """

    name: str

    def start(self, record: dict[str, Any], job_dir: Path, env: dict[str, str]) -> Launched:
        """Start the job's supervisor. ``env`` is the complete environment for it."""
        ...

    def poll(self, record: dict[str, Any]) -> tuple[str, str | None] | None:
        """Return ``(status, reason)`` once the job has ended, ``None`` while it still runs.

        ``status`` is one of ``succeeded``, ``failed``, ``cancelled``; the reason says why
        (for example "lost while the server was down" or SLURM's reason).
        """
        ...

    def cancel(self, record: dict[str, Any]) -> None:
        """Stop every process of the job. Returns once the request is delivered."""
        ...

    def describe(self, record: dict[str, Any]) -> dict[str, Any]:
        """Backend-specific live details for the record (queue reason, nodes, ...)."""
        ...
