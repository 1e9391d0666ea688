"""GPU allocation and the queue over a recorded node of four GPUs, with real scheduling passes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training_manager_lab.devices import nvml
from training_manager_lab.errors import ResourceUnavailable
from training_manager_lab.manager import JobManager
from training_manager_lab.runtime.environment import clean_environment
from training_manager_lab.store import ALLOWED, TERMINAL

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def spec(devices: int, priority: int = 0, steps: int = 20, name: str = "tiny") -> dict[str, Any]:
    return {
        "name": name,
        "experiment": "scheduling",
        "entry": {"kind": "import", "model": "training_manager_lab.examples.digits:DigitsMLP"},
        "trainer": {"max_steps": steps},
        "devices": devices,
        "accelerator": "gpu",
        "priority": priority,
    }


def gpu_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: str, threshold: int = 2 << 30
) -> JobManager:
    """A manager over a recorded node; GPU 3 of the recordings holds 1.5 GiB of others'."""
    monkeypatch.setenv(nvml.RECORDING_ENV, str(DATA / recording))
    monkeypatch.setenv("TML_LOCAL_BACKEND", "tests.tiny_jobs:TinyBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_CONF", raising=False)  # this node only, not a cluster beside it
    nvml.set_probe(nvml.RecordedProbe(str(DATA / recording)))
    return JobManager(
        tmp_path / "state",
        tracking_uri=f"sqlite:///{tmp_path}/unused.db",
        gpu_busy_threshold=threshold,
    )


@pytest.fixture
def four_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobManager]:
    manager = gpu_node(tmp_path, monkeypatch, "four_gpus.json")
    yield manager
    nvml.set_probe(None)


def run_until_done(manager: JobManager, count: int, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Run scheduling passes, as the server does, until ``count`` jobs are terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.supervise()
        manager.tick()
        records, total = manager.list(limit=1000)
        if total >= count and all(r["status"] in TERMINAL for r in records):
            return records
        time.sleep(0.1)
    raise AssertionError(f"jobs still active after {timeout} s: {manager.store.active()}")


def running_intervals(manager: JobManager) -> dict[str, tuple[float, float]]:
    intervals: dict[str, list[float]] = {}
    for row in manager.store.transitions():
        if row["to_status"] == "running":
            intervals[row["job_id"]] = [row["at"], float("inf")]
        elif row["from_status"] == "running":
            intervals[row["job_id"]][1] = row["at"]
    return {job: (start, end) for job, (start, end) in intervals.items()}


def test_forty_concurrent_jobs_never_share_a_gpu(four_gpus: JobManager) -> None:
    sizes = [1, 2, 1, 3, 4, 1, 2, 1]
    threads = [
        threading.Thread(
            target=lambda k=k: [four_gpus.launch(spec(sizes[(k + i) % 8])) for i in range(6)]
        )
        for k in range(4)
    ]
    script = (
        "import sys\n"
        "from training_manager_lab.manager import JobManager\n"
        "from tests.test_scheduling import spec\n"
        "manager = JobManager(sys.argv[1], tracking_uri=sys.argv[2])\n"
        "for i in range(8):\n"
        "    manager.launch(spec([1, 2, 4, 1][i % 4]))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(four_gpus.state_dir), four_gpus.tracking_uri],
            cwd=ROOT,
        )
        for _ in range(2)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [process.wait(120) for process in processes] == [0, 0]
    records = run_until_done(four_gpus, 40)

    assert len(records) == 40
    assert {r["status"] for r in records} == {"succeeded"}
    intervals = running_intervals(four_gpus)
    gpus = {r["id"]: r["allocation"]["gpus"] for r in records}
    for record in records:
        assert len(set(gpus[record["id"]])) == record["request"]["devices"]
        assert set(gpus[record["id"]]) <= {0, 1, 2, 3}
    for first, second in itertools.combinations(records, 2):
        shared = set(gpus[first["id"]]) & set(gpus[second["id"]])
        if not shared:
            continue
        (a_start, a_end), (b_start, b_end) = intervals[first["id"]], intervals[second["id"]]
        assert a_end <= b_start or b_end <= a_start, f"GPU {shared} held twice"
    for row in four_gpus.store.transitions():
        if row["from_status"] is not None:
            assert row["to_status"] in ALLOWED[row["from_status"]]


def test_higher_priority_starts_first_then_arrival_order(four_gpus: JobManager) -> None:
    # Six seconds: time enough to queue five jobs behind it on a slow machine.
    blocker = four_gpus.launch(spec(4, steps=600, name="blocker"))
    assert blocker["status"] == "running"
    names = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]
    for name, priority in names:
        four_gpus.launch(spec(4, priority=priority, name=name))

    queued = {r["name"]: r for r in four_gpus.list(status="queued")[0]}
    records = run_until_done(four_gpus, 6)

    assert queued["b"]["queue_position"] == 1
    assert queued["b"]["reason"] == "waiting for 4 GPUs, 0 free"
    assert queued["a"]["queue_position"] == 3
    assert queued["a"]["reason"].startswith("behind job")
    started = sorted(records, key=lambda r: r["started_at"])
    assert [r["name"] for r in started] == ["blocker", "b", "d", "a", "c", "e"]


def test_a_request_larger_than_the_node_is_refused(four_gpus: JobManager) -> None:
    with pytest.raises(ResourceUnavailable, match="asks for 8 GPUs but this node has 4"):
        four_gpus.launch(spec(8))
    with pytest.raises(ResourceUnavailable, match="GiB of memory but this node has"):
        four_gpus.launch({**spec(1), "memory": 1 << 60})

    assert four_gpus.list()[1] == 0


def test_a_gpu_busy_with_foreign_processes_is_not_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = gpu_node(tmp_path, monkeypatch, "four_gpus_busy.json")
    try:
        record = manager.launch(spec(4, name="needs-all"))
        small = manager.launch(spec(3, name="fits"))
    finally:
        nvml.set_probe(None)

    assert record["status"] == "queued"
    assert record["reason"] == "waiting for 4 GPUs, 3 free"
    assert small["status"] == "queued"
    assert sorted(manager.capacity().busy_gpus) == [2]
    manager.cancel(record["id"])
    manager.cancel(small["id"])


def test_the_busy_threshold_is_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = gpu_node(tmp_path, monkeypatch, "four_gpus.json", threshold=1 << 30)
    try:
        busy = strict.capacity().busy_gpus
    finally:
        nvml.set_probe(None)

    assert sorted(busy) == [3]


def test_cpu_jobs_queue_for_cpu_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TML_LOCAL_BACKEND", "tests.tiny_jobs:TinyBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    manager = JobManager(tmp_path / "state", tracking_uri="sqlite:///unused.db", cpu_slots=2)
    cpu = {**spec(2, steps=100), "accelerator": "cpu"}

    first = manager.launch(cpu)
    second = manager.launch(cpu)
    records = run_until_done(manager, 2)

    assert first["status"] == "running"
    assert second["status"] == "queued"
    assert second["reason"] == "waiting for 2 CPU slots, 0 free"
    assert {r["status"] for r in records} == {"succeeded"}
    with pytest.raises(ResourceUnavailable, match="runs at most 2 at once"):
        manager.launch({**cpu, "devices": 3})


def test_local_jobs_do_not_inherit_an_enclosing_job() -> None:
    inherited = {
        "SLURM_JOB_ID": "42",
        "SLURM_PROCID": "3",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "TORCHELASTIC_RUN_ID": "x",
        "RANK": "5",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "10.0.0.1",
        "PATH": "/usr/bin",
    }

    env = clean_environment(inherited)

    assert env == {"SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/usr/bin"}


def test_resources_show_holders_and_the_queue(four_gpus: JobManager) -> None:
    running = four_gpus.launch(spec(3, steps=6000, name="holder"))
    waiting = four_gpus.launch(spec(2, name="waiter"))

    view = four_gpus.resources()

    assert [node["node"] for node in view["nodes"]] == [view["nodes"][0]["node"]]
    assert len(view["nodes"][0]["gpus"]) == 4
    held = {key: [h["job_id"] for h in found] for key, found in view["holders"].items()}
    assert sorted(held) == [str(gpu) for gpu in running["allocation"]["gpus"]]
    assert all(ids == [running["id"]] for ids in held.values())
    assert view["queue"] == [
        {
            "id": waiting["id"],
            "name": "waiter",
            "position": 1,
            "reason": "waiting for 2 GPUs, 1 free",
            "priority": 0,
        }
    ]
    assert view["capacity"]["gpus"] == [0, 1, 2, 3]
    four_gpus.cancel(waiting["id"])
    four_gpus.cancel(running["id"])
