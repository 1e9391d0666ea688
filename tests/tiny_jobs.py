"""A local backend whose jobs are tiny processes: for scheduling tests over recorded GPUs.

Only what runs inside a job is replaced (no GPU exists here to train on); the job store,
the scheduler, the manager's scheduling passes and the process supervision are the real
ones. A tiny job sleeps ``trainer["max_steps"]`` hundredths of a second, records itself
succeeded, and runs a scheduling pass, as a real supervisor does when it finishes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from training_manager_lab.backends.base import Launched
from training_manager_lab.backends.local import LocalBackend, _create_time


class TinyBackend(LocalBackend):
    def start(self, record: dict[str, Any], job_dir: Path, env: dict[str, str]) -> Launched:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.tiny_jobs", str(job_dir)],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self._lock:
            self._children[process.pid] = process
        return Launched(str(process.pid), process.pid, _create_time(process.pid))


def main(job_dir: str) -> None:
    from training_manager_lab.manager import JobManager
    from training_manager_lab.store import JobStore

    launch = json.loads((Path(job_dir) / "launch.json").read_text())
    time.sleep(launch["spec"]["trainer"].get("max_steps", 20) / 100)
    store = JobStore(Path(launch["state_dir"]) / "jobs.db")
    store.transition(launch["job_id"], "succeeded", None)
    JobManager(launch["state_dir"], tracking_uri=launch["tracking_uri"]).tick()


if __name__ == "__main__":
    main(sys.argv[1])
