"""Inventory over the NVML seam: recorded GPUs, NVML missing, unsupported fields, visible GPUs."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from training_manager_lab.devices import nvml
from training_manager_lab.devices.cgroup import CgroupReader
from training_manager_lab.devices.history import Sampler, sample_cost
from training_manager_lab.devices.inventory import (
    InventoryReader,
    allocatable_gpus,
    local_inventory,
    visible_gpu_indices,
)
from training_manager_lab.devices.nvml import (
    GpuReader,
    NvmlProbe,
    RecordedProbe,
    get_probe,
    set_probe,
)

DATA = Path(__file__).parent / "data"
FOUR_GPUS = DATA / "four_gpus.json"
REPO = Path(__file__).parent.parent
MiB = 1024**2


@pytest.fixture(autouse=True)
def _default_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(nvml.RECORDING_ENV, raising=False)
    set_probe(None)
    yield
    set_probe(None)


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def _no_cgroup() -> CgroupReader:
    return CgroupReader(DATA / "cgroup" / "absent", DATA / "cgroup" / "absent" / "proc")


def test_recorded_four_gpus_fill_the_inventory() -> None:
    set_probe(RecordedProbe(FOUR_GPUS))

    inventory = InventoryReader(cgroup=_no_cgroup()).read(env={})

    assert inventory["gpu_error"] is None
    assert [g["index"] for g in inventory["gpus"]] == [0, 1, 2, 3]
    assert {g["name"] for g in inventory["gpus"]} == {"NVIDIA A100-SXM4-80GB"}
    first = inventory["gpus"][0]
    assert first["memory_total"] == 81920 * MiB
    assert first["uuid"] == "GPU-5d3c0a7e-01b2-4c3d-9e8f-0a1b2c3d4e50"
    assert (first["utilization"], first["temperature"], first["power"]) == (0, 31, 58.2)
    assert inventory["gpus"][1]["processes"] == [{"pid": 4190001, "used_memory": 512 * MiB}]
    assert [p["pid"] for p in inventory["gpus"][3]["processes"]] == [4190002, 4190003]
    assert all(g["visible"] for g in inventory["gpus"])
    assert inventory["gpu_visible"] == [0, 1, 2, 3]


def test_inventory_reports_this_machines_cpu_and_memory() -> None:
    set_probe(RecordedProbe(FOUR_GPUS))

    inventory = local_inventory()

    assert inventory["node"]
    assert 0 < inventory["cpu"]["count"] <= (os.cpu_count() or 1)
    assert 0.0 <= inventory["cpu"]["percent"] <= 100.0
    assert len(inventory["cpu"]["load"]) == 3
    memory = inventory["memory"]
    assert memory["total"] > 0
    assert memory["used"] + memory["available"] == memory["total"]
    assert len(inventory["gpus"]) == 4


def test_real_nvml_without_driver_gives_cpu_and_memory_with_the_reason() -> None:
    if _nvml_library_present():
        pytest.skip("this machine has the NVML library; the test is for machines without one")
    set_probe(NvmlProbe())

    inventory = InventoryReader(cgroup=_no_cgroup()).read(env={})

    assert inventory["gpus"] == []
    assert inventory["gpu_error"].startswith("NVML library not found")
    assert "install the NVIDIA driver" in inventory["gpu_error"]
    assert inventory["cpu"]["count"] >= 1
    assert inventory["memory"]["total"] > 0


def test_default_probe_is_real_nvml_unless_a_recording_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(get_probe(), NvmlProbe)

    set_probe(None)
    monkeypatch.setenv(nvml.RECORDING_ENV, str(FOUR_GPUS))

    assert isinstance(get_probe(), RecordedProbe)
    assert len(nvml.get_reader().read()[0]) == 4


def test_missing_nvidia_ml_py_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    set_probe(NvmlProbe())

    gpus, error = nvml.get_reader().read()

    assert gpus == []
    assert error is not None and error.startswith("nvidia-ml-py is not installed")
    assert "pip install nvidia-ml-py" in error


def test_a_server_in_a_subprocess_reads_the_recording_named_by_the_environment() -> None:
    code = (
        "import json; from training_manager_lab.devices import local_inventory; "
        "inv = local_inventory(); print(json.dumps([len(inv['gpus']), inv['gpu_error']]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(nvml.RECORDING_ENV, None)

    with_recording = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, nvml.RECORDING_ENV: str(FOUR_GPUS)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    without = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )

    assert json.loads(with_recording.stdout) == [4, None]
    count, error = json.loads(without.stdout)
    if not _nvml_library_present():
        assert count == 0 and error.startswith("NVML library not found")


def _probe_with_unsupported_temperature() -> RecordedProbe:
    data = json.loads(FOUR_GPUS.read_text())
    data["gpus"][1]["unsupported"] = ["temperature"]
    return RecordedProbe(data=data)


def test_unsupported_field_is_none_and_never_asked_again() -> None:
    probe = _probe_with_unsupported_temperature()
    reader = GpuReader(probe)

    first, _ = reader.read()
    second, error = reader.read()

    assert error is None
    assert first[1]["temperature"] is None and second[1]["temperature"] is None
    assert second[1]["utilization"] == 37 and second[1]["power"] == 121.7
    assert second[0]["temperature"] == 31
    assert probe.calls[(1, "temperature")] == 1
    assert probe.calls[(1, "utilization")] == 2
    assert probe.calls[(0, "temperature")] == 2
    assert reader.unsupported() == {(1, "temperature")}


def test_unsupported_field_through_the_shared_reader_of_the_inventory() -> None:
    probe = _probe_with_unsupported_temperature()
    set_probe(probe)
    reader = InventoryReader(cgroup=_no_cgroup())

    reader.read(env={})
    inventory = reader.read(env={})

    assert inventory["gpus"][1]["temperature"] is None
    assert inventory["gpus"][1]["memory_used"] == int(0.9 * 1024**3)
    assert probe.calls[(1, "temperature")] == 1


class _FakeNvml:
    """Stands in for the pynvml module at the seam, with pynvml's own exception classes."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, init_error: int | None = None) -> None:
        self.init_error = init_error
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlInit(self) -> None:
        self._count("init")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-fake-{handle}"

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA T4"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=16 * 1024**3, used=(handle + 1) * 1024**3)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=10 * handle, memory=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 40 + handle

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._count(f"power{handle}")
        if handle == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 70500

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [SimpleNamespace(pid=100 + handle, usedGpuMemory=256 * MiB)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        return [
            SimpleNamespace(pid=100 + handle, usedGpuMemory=None),
            SimpleNamespace(pid=200, usedGpuMemory=None),
        ]


def test_nvml_probe_turns_not_supported_into_none_and_stops_asking() -> None:
    fake = _FakeNvml()
    reader = GpuReader(NvmlProbe(module=fake))

    reader.read()
    gpus, error = reader.read()

    assert error is None
    assert gpus[0]["power"] == 70.5 and gpus[1]["power"] is None
    assert gpus[1]["name"] == "NVIDIA T4" and gpus[1]["uuid"] == "GPU-fake-1"
    assert (gpus[1]["memory_total"], gpus[1]["memory_used"]) == (16 * 1024**3, 2 * 1024**3)
    assert gpus[1]["temperature"] == 41 and gpus[1]["utilization"] == 10
    assert gpus[1]["processes"] == [
        {"pid": 101, "used_memory": 256 * MiB},
        {"pid": 200, "used_memory": None},
    ]
    assert fake.calls == {"init": 1, "power0": 2, "power1": 1}


def test_nvml_probe_reports_an_unloaded_driver_once() -> None:
    fake = _FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    reader = GpuReader(NvmlProbe(module=fake))

    first = reader.read()
    second = reader.read()

    assert first[0] == [] and second[0] == []
    assert first[1] is not None and first[1].startswith("NVIDIA driver not loaded")
    assert second[1] == first[1]
    assert fake.calls["init"] == 1


def test_recording_with_an_error_gives_no_gpus_and_the_recorded_reason() -> None:
    set_probe(RecordedProbe(data={"gpus": [], "error": "NVML library not found: recorded"}))

    inventory = InventoryReader(cgroup=_no_cgroup()).read(env={})

    assert inventory["gpus"] == [] and inventory["gpu_error"] == "NVML library not found: recorded"


def test_recording_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    data = json.loads(FOUR_GPUS.read_text())
    path.write_text(json.dumps(data))
    probe = RecordedProbe(path)
    reader = GpuReader(probe)
    before = reader.read()[0][2]

    data["gpus"][2]["processes"] = [{"pid": 4190009, "used_memory": 8 * 1024**3}]
    path.write_text(json.dumps(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = reader.read()[0][2]

    assert before["processes"] == []
    assert after["processes"] == [{"pid": 4190009, "used_memory": 8 * 1024**3}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("2,0", [2, 0]),
        (" 3, 1 ", [3, 1]),
        ("", []),
        ("-1", []),
        ("1,7,2", [1]),
        ("0,0,1", [0]),
        ("GPU-5d3c0a7e-21b2", [2]),
        ("GPU-5d3c0a7e-31b2-4c3d-9e8f-0a1b2c3d4e53,0", [3, 0]),
        ("GPU-5d3c0a7e", []),
        ("MIG-0c7a", []),
    ],
)
def test_cuda_visible_devices_limits_the_gpus(value: str | None, expected: list[int]) -> None:
    gpus = json.loads(FOUR_GPUS.read_text())["gpus"]
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}

    assert visible_gpu_indices(env, gpus) == expected


def test_inventory_marks_gpus_hidden_by_cuda_visible_devices() -> None:
    set_probe(RecordedProbe(FOUR_GPUS))

    inventory = InventoryReader(cgroup=_no_cgroup()).read(env={"CUDA_VISIBLE_DEVICES": "3,1"})

    assert [g["visible"] for g in inventory["gpus"]] == [False, True, False, True]
    assert inventory["gpu_visible"] == [3, 1]
    assert [g["index"] for g in allocatable_gpus(inventory)] == [3, 1]
    assert visible_gpu_indices({"CUDA_VISIBLE_DEVICES": "2"}) == [2]


def test_sampler_keeps_only_its_window_and_aligns_series() -> None:
    probe = RecordedProbe(data=json.loads(FOUR_GPUS.read_text()))
    set_probe(probe)
    sampler = Sampler(interval=1.0, window=3.0, reader=InventoryReader(cgroup=_no_cgroup()))

    for utilization in (10, 20, 0, 50, 100):
        probe.set_gpu(2, utilization=utilization)
        sampler.sample()
    history = sampler.history()

    assert len(sampler.samples()) == 4
    assert len(history["t"]) == 4 and history["t"] == sorted(history["t"])
    gpu2 = history["gpus"]["GPU-5d3c0a7e-21b2-4c3d-9e8f-0a1b2c3d4e52"]
    assert gpu2["index"] == 2
    assert gpu2["utilization"] == [20, 0, 50, 100]
    assert len(history["cpu_percent"]) == len(history["memory_used"]) == 4
    assert len(sampler.samples(0)) == 1
    assert sampler.latest()["gpus"][2]["utilization"] == 100


def test_sampler_thread_samples_until_stopped() -> None:
    set_probe(RecordedProbe(FOUR_GPUS))
    failures = []

    class FlakyReader(InventoryReader):
        def read(self, env=None):  # type: ignore[no-untyped-def]
            if not failures:
                failures.append(1)
                raise RuntimeError("first sample fails")
            return super().read(env)

    sampler = Sampler(interval=0.02, window=10.0, reader=FlakyReader(cgroup=_no_cgroup()))
    with sampler:
        deadline = time.monotonic() + 30
        while len(sampler.samples()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    kept = len(sampler.samples())
    time.sleep(0.1)

    assert failures == [1]
    assert kept >= 3
    assert not sampler.running
    assert len(sampler.samples()) == kept


def test_sample_cost_reports_the_cpu_time_of_one_sample() -> None:
    set_probe(RecordedProbe(FOUR_GPUS))

    cost = sample_cost(samples=5, trees=lambda: {"me": os.getpid()})

    assert cost["samples"] == 5
    assert cost["cpu_seconds_per_sample"] >= 0.0
    assert cost["core_percent_at_1hz"] == pytest.approx(100.0 * cost["cpu_seconds_per_sample"])
    with pytest.raises(ValueError, match="samples >= 1"):
        sample_cost(samples=0)
