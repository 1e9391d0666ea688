"""How the local backend tells a job's live supervisor from a dead one or a reused pid."""

from __future__ import annotations

import subprocess
import sys

import psutil

from training_manager_lab.backends.local import START_TIME_TOLERANCE, LocalBackend


def test_a_clock_adjustment_does_not_make_a_live_supervisor_look_dead() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(process.pid).create_time()
        backend = LocalBackend()

        def alive(recorded_start: float) -> bool:
            return backend.alive({"pid": process.pid, "pid_create_time": recorded_start})

        assert alive(started)
        # psutil's start time follows the kernel's boot time, which moves by whole seconds
        # when the clock is adjusted: the same process, read a second apart.
        assert alive(started + 1.0) and alive(started - 1.0)
        # A start time far from the recorded one is another process that got the same pid.
        assert not alive(started + START_TIME_TOLERANCE + 1.0)
        assert not alive(started - 60.0)
    finally:
        process.kill()
        process.wait()
    assert not backend.alive({"pid": process.pid, "pid_create_time": started})
