"""Runs a job supervisor's metric bridge alone, in a process of its own, over a job folder.

B1 starts this beside an in-process fit to measure the full path of our monitoring: rank zero
appends to the event stream, and the supervisor process forwards the metrics to MLflow in
batches. Only the bridge runs here (no ranks): the supervisor's own code, its own intervals.

    python -m benchmarks.bridge --job-dir FOLDER

The folder holds ``launch.json`` and the job is in the store. The process writes
``bridge.ready`` once its MLflow run exists, bridges until ``bridge.stop`` appears, forwards
what is left, ends the run and prints a JSON line: seconds to catch up after the stop, and
the metric events forwarded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from training_manager_lab.runtime import supervisor as supervisor_module
from training_manager_lab.runtime.supervisor import Supervisor

logger = logging.getLogger(__name__)

READY_FILE = "bridge.ready"
STOP_FILE = "bridge.stop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a supervisor's metric bridge alone.")
    parser.add_argument("--job-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    job_dir: Path = args.job_dir

    bridge = Supervisor(job_dir)
    bridge._start_tracking()
    forwarded = 0
    send = bridge._tracker.log_metric_events

    def counting(run_id: str, events: list[dict[str, object]]) -> None:
        nonlocal forwarded
        forwarded += len(events)
        send(run_id, events)

    bridge._tracker.log_metric_events = counting
    (job_dir / READY_FILE).touch()

    stop = job_dir / STOP_FILE
    while not stop.exists():
        bridge._bridge()
        time.sleep(supervisor_module.POLL_INTERVAL)
    started = time.perf_counter()
    bridge._bridge(force=True)
    bridge._tracker.end_run(bridge.run_id, "succeeded")
    lag = time.perf_counter() - started
    print(json.dumps({"catch_up_seconds": lag, "forwarded": forwarded}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
