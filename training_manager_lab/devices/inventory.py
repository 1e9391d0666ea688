"""What this node has and uses now: CPU, memory (within cgroup limits) and GPUs."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from training_manager_lab.devices.cgroup import CgroupLimits, CgroupReader
from training_manager_lab.devices.nvml import GpuReader, get_reader

logger = logging.getLogger(__name__)


class InventoryReader:
    """Samples the local node; keeps the previous CPU counters to turn them into percents.

    Args:
        gpu_reader: Where GPUs are read; ``None`` uses the shared reader of the current probe.
        cgroup: The cgroup to apply; ``None`` reads this process's own cgroup.
    """

    def __init__(self, gpu_reader: GpuReader | None = None, cgroup: CgroupReader | None = None):
        self._gpu_reader = gpu_reader
        self._cgroup = cgroup if cgroup is not None else CgroupReader()
        self._lock = threading.Lock()
        self._node = socket.gethostname()
        self._logical = psutil.cpu_count() or 1
        self._host_times = _busy_and_total(psutil.cpu_times())
        self._host_percent = 0.0
        self._cgroup_times: tuple[float, float] | None = None

    def read(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Return one inventory of this node (see :func:`local_inventory` for the shape)."""
        limits = self._cgroup.limits()
        reader = self._gpu_reader if self._gpu_reader is not None else get_reader()
        gpus, gpu_error = reader.read()
        visible = visible_gpu_indices(os.environ if env is None else env, gpus)
        for gpu in gpus:
            gpu["visible"] = gpu["index"] in visible

        return {
            "node": self._node,
            "time": time.time(),
            "cpu": self._cpu(limits),
            "memory": _memory(limits),
            "gpus": gpus,
            "gpu_error": gpu_error,
            "gpu_visible": visible,
            "cgroup": {
                "version": limits.version,
                "cpu_quota": limits.cpu_quota,
                "memory_limit": limits.memory_limit,
            },
        }

    def _cpu(self, limits: CgroupLimits) -> dict[str, Any]:
        count: float = _affinity_count(self._logical)
        if limits.cpu_quota is not None and limits.cpu_quota < count:
            count = limits.cpu_quota
        if float(count).is_integer():
            count = int(count)

        with self._lock:
            busy, total = _busy_and_total(psutil.cpu_times())
            last_busy, last_total = self._host_times
            percent = self._host_percent
            # Calls closer together than a few clock ticks would give noise; keep the last value.
            if total - last_total >= 0.05 * self._logical:
                percent = _ratio(busy - last_busy, total - last_total)
                self._host_times = (busy, total)
                self._host_percent = percent
            if limits.cpu_quota is not None and limits.cpu_seconds is not None:
                # Within a quota, the share of the usable cores that the cgroup used.
                now = (time.monotonic(), limits.cpu_seconds)
                if self._cgroup_times is not None:
                    wall = (now[0] - self._cgroup_times[0]) * float(count)
                    percent = _ratio(now[1] - self._cgroup_times[1], wall)
                self._cgroup_times = now

        load: list[float | None]
        try:
            load = list(os.getloadavg())
        except OSError:
            load = [None, None, None]
        return {
            "count": count,
            "logical": self._logical,
            "percent": percent,
            "load": load,
        }


def _busy_and_total(times: Any) -> tuple[float, float]:
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _ratio(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return round(min(max(part / whole, 0.0), 1.0) * 100.0, 1)


def _affinity_count(default: int) -> int:
    try:
        return len(os.sched_getaffinity(0)) or default
    except (AttributeError, OSError):
        return default


def _memory(limits: CgroupLimits) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    used = total - available
    if limits.memory_limit is not None and limits.memory_limit < total:
        total = limits.memory_limit
        if limits.memory_usage is not None:
            used = min(limits.memory_usage, total)
        available = max(min(total - used, available), 0)
        used = total - available
    return {
        "total": total,
        "used": used,
        "available": available,
        "percent": round(100.0 * used / total, 1) if total else 0.0,
    }


_default_lock = threading.Lock()
_default_reader: InventoryReader | None = None


def local_inventory(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Sample this node now.

    Args:
        env: Environment whose ``CUDA_VISIBLE_DEVICES`` limits the GPUs that may be handed
            out; ``None`` is the server's own environment.

    Returns:
        ``{"node": hostname, "time": epoch seconds,
        "cpu": {"count": usable cores (cgroup quota and affinity applied, may be 1.5),
        "logical": cores of the machine, "percent": busy share of the usable cores,
        "load": [1, 5, 15 minute load]},
        "memory": {"total", "used", "available": bytes (the cgroup limit if lower),
        "percent"},
        "gpus": [{"index", "uuid", "name", "memory_total", "memory_used", "utilization",
        "temperature", "power", "processes": [{"pid", "used_memory"}], "visible"}],
        "gpu_error": None or the reason there are no GPUs,
        "gpu_visible": indices that CUDA_VISIBLE_DEVICES allows, in its order,
        "cgroup": {"version", "cpu_quota", "memory_limit"}}``.
        A GPU value is None when the GPU does not support the query ("n/a").
    """
    global _default_reader
    with _default_lock:
        if _default_reader is None:
            _default_reader = InventoryReader()
        reader = _default_reader
    return reader.read(env)


def visible_gpu_indices(
    env: Mapping[str, str] = os.environ, gpus: Sequence[Mapping[str, Any]] | None = None
) -> list[int]:
    """Return the NVML indices of the GPUs that ``CUDA_VISIBLE_DEVICES`` allows, in its order.

    Entries are indices or GPU UUIDs (a unique prefix such as ``GPU-8f1e`` is enough). As in
    CUDA, the list ends at the first entry that names no GPU, a repeated GPU, or ``-1``; an
    empty value allows none. Unset allows every GPU. Indices are taken in NVML (PCI bus)
    order, so ranks should be started with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or with UUIDs.

    Args:
        env: The environment to read.
        gpus: GPU entries with ``index`` and ``uuid``; ``None`` reads them from the probe.
    """
    if gpus is None:
        gpus = get_reader().read()[0]
    indices = [int(g["index"]) for g in gpus]
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return indices

    chosen: list[int] = []
    for token in (t.strip() for t in value.split(",")):
        index = _resolve_device(token, gpus, indices)
        if index is None or index in chosen:
            if token:
                logger.debug("CUDA_VISIBLE_DEVICES stops at %r", token)
            break
        chosen.append(index)
    return chosen


def _resolve_device(
    token: str, gpus: Sequence[Mapping[str, Any]], indices: list[int]
) -> int | None:
    if token.lstrip("+").isdigit():
        index = int(token)
        return index if index in indices else None
    if token.startswith("GPU-"):
        matches = [int(g["index"]) for g in gpus if str(g.get("uuid") or "").startswith(token)]
        return matches[0] if len(matches) == 1 else None
    return None


def allocatable_gpus(inventory: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the GPUs of an inventory that this server may hand out, in visible order."""
    by_index = {g["index"]: g for g in inventory.get("gpus", [])}
    return [by_index[i] for i in inventory.get("gpu_visible", []) if i in by_index]
