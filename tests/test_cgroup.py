"""cgroup v1 and v2 limits read from prepared file trees, and the inventory that applies them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from training_manager_lab.devices.cgroup import CgroupLimits, CgroupReader, read_limits
from training_manager_lab.devices.inventory import InventoryReader
from training_manager_lab.devices.nvml import RecordedProbe, set_probe

TREES = Path(__file__).parent / "data" / "cgroup"
GiB = 1024**3


@pytest.fixture(autouse=True)
def _recorded_gpus() -> Iterator[None]:
    set_probe(RecordedProbe(data={"gpus": []}))
    yield
    set_probe(None)


def _reader(name: str, root: Path = TREES) -> CgroupReader:
    return CgroupReader(root / name / "fs", root / name / "proc_self_cgroup")


def test_v2_takes_the_lowest_limit_of_the_cgroup_and_its_parents() -> None:
    limits = read_limits(TREES / "v2" / "fs", TREES / "v2" / "proc_self_cgroup")

    assert limits == CgroupLimits(
        version=2,
        cpu_quota=1.5,
        memory_limit=4 * GiB,
        memory_usage=GiB - 256 * 1024**2,
        cpu_seconds=5.0,
    )


def test_v2_without_limits_reports_none() -> None:
    limits = _reader("v2_unlimited").limits()

    assert (limits.version, limits.cpu_quota, limits.memory_limit) == (2, None, None)
    assert limits.memory_usage == 100 * 1024**2


def test_v1_reads_quota_memory_limit_and_usage_of_the_process_cgroup() -> None:
    limits = _reader("v1").limits()

    assert limits == CgroupLimits(
        version=1,
        cpu_quota=0.5,
        memory_limit=2 * GiB,
        memory_usage=900_000_000,
        cpu_seconds=2.5,
    )


def test_v1_with_a_host_path_falls_back_to_the_mounted_cgroup() -> None:
    limits = _reader("v1_host_path").limits()

    assert (limits.version, limits.cpu_quota, limits.memory_limit) == (1, 2.0, GiB)
    assert limits.memory_usage == 50 * 1024**2
    assert limits.cpu_seconds == 1.0


def test_no_cgroup_files_means_no_limits(tmp_path: Path) -> None:
    limits = CgroupReader(tmp_path, tmp_path / "missing").limits()

    assert limits == CgroupLimits()


def test_this_machine_cgroup_is_readable() -> None:
    limits = read_limits()

    assert limits.version in (1, 2, None)
    assert limits.memory_limit is None or limits.memory_limit > 0
    assert limits.cpu_quota is None or limits.cpu_quota > 0


def test_inventory_reports_the_container_limits_not_the_host() -> None:
    inventory = InventoryReader(cgroup=_reader("v1")).read(env={})

    assert inventory["cpu"]["count"] == 0.5
    assert inventory["memory"]["total"] == 2 * GiB
    assert inventory["memory"]["used"] == 900_000_000
    assert inventory["memory"]["available"] == 2 * GiB - 900_000_000
    assert inventory["cgroup"] == {"version": 1, "cpu_quota": 0.5, "memory_limit": 2 * GiB}


def test_cpu_percent_is_the_share_of_the_quota_the_cgroup_used(tmp_path: Path) -> None:
    shutil.copytree(TREES / "v2", tmp_path / "v2")
    reader = InventoryReader(cgroup=_reader("v2", tmp_path))
    cpu_stat = tmp_path / "v2" / "fs" / "user.slice" / "job.scope" / "cpu.stat"
    reader.read(env={})

    idle = reader.read(env={})["cpu"]
    cpu_stat.write_text("usage_usec 900000000000\n")
    saturated = reader.read(env={})["cpu"]

    assert idle["count"] == 1.5
    assert idle["percent"] == 0.0
    assert saturated["percent"] == 100.0
