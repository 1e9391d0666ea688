"""Attribution on real processes: tree usage, orphan GPU processes, ending one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from training_manager_lab.devices.attribution import (
    ProcessRefused,
    attribute,
    end_process,
    find_orphans,
    gpu_processes,
    tree_usage,
)
from training_manager_lab.devices.history import Sampler
from training_manager_lab.devices.nvml import RecordedProbe, set_probe

MiB = 1024**2
GiB = 1024**3

# A child that makes 50 MiB resident (bytes it writes, not zero pages) and waits.
HOLDER = (
    "import sys, time; block = b'\\x01' * (50 * 1024 * 1024); "
    "print('ready', flush=True); time.sleep(120)"
)
# A parent that starts two holders, then prints their pids.
PARENT = (
    "import subprocess, sys, time\n"
    f"kids = [subprocess.Popen([sys.executable, '-c', {HOLDER!r}], stdout=subprocess.PIPE,"
    " text=True) for _ in range(2)]\n"
    "for kid in kids: kid.stdout.readline()\n"
    "print(' '.join(str(kid.pid) for kid in kids), flush=True)\n"
    "time.sleep(120)\n"
)
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(120)"
)
SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"
BUSY = "print('ready', flush=True)\nwhile True: pass"


@pytest.fixture
def spawn() -> Iterator:
    started: list[subprocess.Popen] = []

    def start(code: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in started:
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
        except psutil.NoSuchProcess:
            family = []
        for member in family:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(10)


@pytest.fixture(autouse=True)
def _restore_probe() -> Iterator[None]:
    yield
    set_probe(None)


def test_tree_usage_sums_a_real_process_tree(spawn) -> None:
    parent, line = spawn(PARENT)
    kids = [int(pid) for pid in line.split()]
    gpu_procs = [
        {"pid": kids[0], "used_memory": 2 * GiB, "gpu_index": 0},
        {"pid": kids[1], "used_memory": 1 * GiB, "gpu_index": 2},
        {"pid": 4190001, "used_memory": 5 * GiB, "gpu_index": 1},
    ]

    usage = tree_usage(parent.pid, gpu_procs)

    assert usage["alive"] is True
    assert usage["num_procs"] == 3
    assert sorted(usage["pids"]) == sorted([parent.pid, *kids])
    assert usage["rss"] >= 2 * 50 * MiB
    assert usage["rss"] == pytest.approx(
        sum(psutil.Process(p).memory_info().rss for p in usage["pids"]), rel=0.2
    )
    assert usage["gpu_memory"] == 3 * GiB
    assert usage["gpus"] == [0, 2]


def test_tree_usage_reads_gpu_processes_from_the_probe(spawn) -> None:
    parent, line = spawn(PARENT)
    kid = int(line.split()[0])
    probe = RecordedProbe(data={"gpus": [{"index": 0, "uuid": "GPU-a", "name": "T4"}]})
    probe.set_gpu(0, memory_total=16 * GiB, memory_used=GiB, utilization=5, temperature=40)
    probe.set_gpu(0, power=30.0, processes=[{"pid": kid, "used_memory": 768 * MiB}])
    set_probe(probe)

    usage = tree_usage(parent.pid)

    assert usage["gpu_memory"] == 768 * MiB
    assert usage["gpus"] == [0]


def test_tree_usage_sees_a_busy_process_use_cpu(spawn) -> None:
    busy, _ = spawn(BUSY)

    first = tree_usage(busy.pid, [])
    time.sleep(0.3)
    second = tree_usage(busy.pid, [])

    assert first["cpu_percent"] >= 0.0
    assert second["cpu_percent"] > 0.0
    assert second["gpu_memory"] == 0


def test_tree_usage_of_an_ended_process_is_empty(spawn) -> None:
    proc, _ = spawn(SLEEPER)
    proc.kill()
    proc.wait(10)

    usage = tree_usage(proc.pid, [])

    assert usage["alive"] is False
    assert (usage["num_procs"], usage["rss"], usage["gpu_memory"]) == (0, 0, 0)


def test_sampler_follows_job_trees_over_time(spawn) -> None:
    parent, line = spawn(PARENT)
    kid = int(line.split()[0])
    probe = RecordedProbe(data={"gpus": [{"index": 0, "uuid": "GPU-a", "name": "T4"}]})
    probe.set_gpu(0, memory_total=16 * GiB, memory_used=GiB, utilization=5, temperature=40)
    probe.set_gpu(0, power=30.0, processes=[{"pid": kid, "used_memory": GiB}])
    set_probe(probe)
    followed = {"job:3f9a1c2b7d10": parent.pid, "job:000000000001": os.getpid()}
    sampler = Sampler(trees=lambda: dict(followed))

    for _ in range(2):
        sampler.sample()
    del followed["job:000000000001"]  # that job ended
    sampler.sample()
    history = sampler.history()

    job = history["trees"]["job:3f9a1c2b7d10"]
    assert job["gpu_memory"] == [GiB, GiB, GiB]
    assert all(rss >= 100 * MiB for rss in job["rss"])
    assert sampler.latest()["trees"]["job:3f9a1c2b7d10"]["num_procs"] == 3
    ended = history["trees"]["job:000000000001"]
    assert ended["rss"][0] > 0 and ended["rss"][1] > 0 and ended["rss"][2] is None
    # Asked for the trees followed now, the ended job's series are left out.
    current = sampler.history(trees=sampler.latest()["trees"])
    assert set(current["trees"]) == {"job:3f9a1c2b7d10"}
    assert current["trees"]["job:3f9a1c2b7d10"] == job
    assert current["t"] == history["t"]


def test_orphans_are_gpu_processes_of_no_job_and_no_kernel(spawn) -> None:
    job, line = spawn(PARENT)
    rank = int(line.split()[0])
    kernel, _ = spawn(SLEEPER)
    stray, _ = spawn(SLEEPER)
    gpus = [
        {"index": 0, "uuid": "GPU-a", "processes": [{"pid": rank, "used_memory": GiB}]},
        {"index": 1, "uuid": "GPU-b", "processes": [{"pid": kernel.pid, "used_memory": GiB}]},
        {"index": 2, "uuid": "GPU-c", "processes": [{"pid": stray.pid, "used_memory": 3 * GiB}]},
        {"index": 3, "uuid": "GPU-d", "processes": [{"pid": 4190001, "used_memory": GiB}]},
        {"index": 3, "uuid": "GPU-d", "processes": [{"pid": os.getpid(), "used_memory": GiB}]},
    ]

    orphans = find_orphans(gpu_processes(gpus, "node-a"), {job.pid, kernel.pid})

    assert [o["pid"] for o in orphans] == [stray.pid, 4190001]
    first = orphans[0]
    assert (first["gpu_index"], first["gpu_uuid"], first["node"]) == (2, "GPU-c", "node-a")
    assert first["used_memory"] == 3 * GiB
    assert first["name"].startswith("python")
    assert "time.sleep(120)" in first["cmdline"]
    assert first["create_time"] == pytest.approx(psutil.Process(stray.pid).create_time())
    assert orphans[1]["name"] is None


def test_end_process_terminates_an_orphan(spawn) -> None:
    stray, _ = spawn(SLEEPER)

    outcome = end_process(stray.pid, allowed={stray.pid})

    assert outcome == "terminated"
    assert not psutil.pid_exists(stray.pid)


def test_end_process_kills_one_that_ignores_sigterm(spawn) -> None:
    stubborn, _ = spawn(STUBBORN)

    outcome = end_process(stubborn.pid, allowed={stubborn.pid}, timeout=0.5)

    assert outcome == "killed"
    assert not psutil.pid_exists(stubborn.pid)


def test_end_process_refuses_a_process_not_in_the_orphan_list(spawn) -> None:
    other, _ = spawn(SLEEPER)

    with pytest.raises(ProcessRefused, match="not in the list of orphan GPU processes"):
        end_process(other.pid, allowed={other.pid + 100000})

    assert other.poll() is None


def test_end_process_refuses_this_server_even_when_listed() -> None:
    me = os.getpid()

    with pytest.raises(ProcessRefused, match="this server"):
        end_process(me, allowed={me})
    with pytest.raises(ProcessRefused):
        end_process(os.getppid(), allowed={os.getppid()})


def test_end_process_without_a_list_ends_only_what_the_probe_shows(spawn) -> None:
    stray, _ = spawn(SLEEPER)
    other, _ = spawn(SLEEPER)
    probe = RecordedProbe(data={"gpus": [{"index": 0, "uuid": "GPU-a", "name": "T4"}]})
    probe.set_gpu(0, memory_total=16 * GiB, memory_used=GiB, utilization=5, temperature=40)
    probe.set_gpu(0, power=30.0, processes=[{"pid": stray.pid, "used_memory": GiB}])
    set_probe(probe)

    with pytest.raises(ProcessRefused):
        end_process(other.pid)
    outcome = end_process(stray.pid)

    assert outcome == "terminated"
    assert other.poll() is None


def test_end_process_of_a_process_already_gone(spawn) -> None:
    proc, _ = spawn(SLEEPER)
    proc.kill()
    proc.wait(10)

    assert end_process(proc.pid, allowed={proc.pid}) == "gone"


def test_attribute_names_the_job_or_kernel_behind_each_gpu_process(spawn) -> None:
    job, line = spawn(PARENT)
    rank = int(line.split()[0])
    kernel, _ = spawn(SLEEPER)
    stray, _ = spawn(SLEEPER)
    inventory = {
        "node": "node-a",
        "gpus": [
            {"index": 0, "uuid": "GPU-a", "processes": [{"pid": rank, "used_memory": GiB}]},
            {"index": 1, "uuid": "GPU-b", "processes": [{"pid": kernel.pid, "used_memory": GiB}]},
            {"index": 2, "uuid": None, "processes": [{"pid": kernel.pid, "used_memory": 2 * GiB}]},
            {"index": 3, "uuid": "GPU-d", "processes": [{"pid": stray.pid, "used_memory": GiB}]},
        ],
    }

    found = attribute(
        inventory,
        jobs={"3f9a1c2b7d10": {"name": "digits", "pids": [job.pid]}},
        kernels={"k-1": kernel.pid, "k-2": None},
    )

    assert found["holders"]["GPU-a"] == [
        {"job_id": "3f9a1c2b7d10", "name": "digits", "pid": rank, "used_memory": GiB}
    ]
    assert found["holders"]["GPU-b"] == [
        {"kernel_id": "k-1", "pid": kernel.pid, "used_memory": GiB}
    ]
    assert found["holders"]["2"][0]["kernel_id"] == "k-1"
    assert "GPU-d" not in found["holders"]
    assert found["kernels"] == {"k-1": {"pid": kernel.pid, "gpu_memory": 3 * GiB, "gpus": [1, 2]}}
    assert [o["pid"] for o in found["orphans"]] == [stray.pid]
    assert found["orphans"][0]["gpu_uuid"] == "GPU-d"
