"""Local backend: each job's supervisor is a detached process on this machine."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .base import Launched

log = logging.getLogger(__name__)

#: Seconds a supervisor gets to stop its ranks and record "cancelled" before it and its
#: whole process group are killed.
CANCEL_GRACE = 8.0


#: Seconds two readings of one process's start time may differ by. psutil adds the process's
#: age to the kernel's boot time, which is whole seconds and shifts by one when the clock is
#: adjusted, so the same live supervisor can read a second apart (a 500-job load run saw it
#: declared dead three times with a tighter bound). A pid reused by another process within two
#: seconds of the supervisor's start would need the pid space to wrap in that time.
START_TIME_TOLERANCE = 2.0


class LocalBackend:
    """Starts supervisors in sessions of their own, so they outlive the kernel and the server.

    A supervisor leads its own process group, which holds every rank and their workers;
    cancelling sends it SIGTERM and, after a grace period, kills the whole group.
    """

    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def start(self, record: dict[str, Any], job_dir: Path, env: dict[str, str]) -> Launched:
        command = [sys.executable, "-m", "training_manager_lab.runtime.supervisor"]
        command += ["--job-dir", str(job_dir), "--launcher", "local"]
        with open(job_dir / "supervisor.log", "ab") as output:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        with self._lock:
            self._children[process.pid] = process
        created = _create_time(process.pid)
        log.info("job %s: supervisor pid %d, folder %s", record["id"], process.pid, job_dir)
        return Launched(backend_id=str(process.pid), pid=process.pid, create_time=created)

    def alive(self, record: dict[str, Any]) -> bool:
        """Whether the job's supervisor still runs (the same process, not a reused pid)."""
        pid = record.get("pid")
        if not pid:
            return False
        with self._lock:
            child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            with self._lock:
                self._children.pop(pid, None)
            return False
        created = _create_time(pid)
        if created is None:
            return False
        expected = record.get("pid_create_time")
        if expected is not None and abs(created - expected) > START_TIME_TOLERANCE:
            return False
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def poll(self, record: dict[str, Any]) -> tuple[str, str | None] | None:
        if self.alive(record):
            return None
        return "failed", "the job's supervisor ended without recording an outcome"

    def cancel(self, record: dict[str, Any]) -> None:
        if not self.alive(record):
            return
        pid = record["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        threading.Thread(target=self._kill_after_grace, args=(dict(record),), daemon=True).start()

    def _kill_after_grace(self, record: dict[str, Any]) -> None:
        deadline = time.monotonic() + CANCEL_GRACE
        while time.monotonic() < deadline:
            if not self.alive(record):
                return
            time.sleep(0.1)
        self.kill(record)

    def kill(self, record: dict[str, Any]) -> None:
        """Kill the job's whole process group at once."""
        if not self.alive(record):
            return
        log.warning("job %s: supervisor did not stop in time; killing its group", record["id"])
        try:
            os.killpg(record["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def describe(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"pid": record.get("pid"), "alive": self.alive(record)}

    def reap(self) -> None:
        """Collect exit statuses of supervisors this process started."""
        with self._lock:
            for pid, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[pid]


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def job_processes(record: dict[str, Any]) -> list[psutil.Process]:
    """Every live process of a local job: its supervisor's group."""
    pid = record.get("pid")
    if not pid:
        return []
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pid:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found
