"""Who uses what: CPU, memory and GPU memory of process trees, orphans on GPUs, ending one."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import psutil

from training_manager_lab.devices.nvml import get_reader
from training_manager_lab.errors import JobConflict

logger = logging.getLogger(__name__)


class ProcessRefused(JobConflict):
    """A request to end a process that is not an orphan on a GPU (HTTP 409)."""

    def __init__(self, pid: int, why: str) -> None:
        super().__init__(
            f"refusing to end process {pid}: {why}; only GPU processes that belong to no job "
            "and no live kernel (the orphans listed by the resources view) can be ended"
        )
        self.pid = pid


def gpu_processes(gpus: Iterable[Mapping[str, Any]], node: str | None = None) -> list[dict]:
    """Flatten the processes of GPU entries (an inventory's ``gpus``) into one list.

    Returns:
        ``[{"pid", "used_memory", "gpu_index", "gpu_uuid", "node"}]``, one per process and GPU.
    """
    found = []
    for gpu in gpus:
        for proc in gpu.get("processes") or []:
            found.append(
                {
                    "pid": int(proc["pid"]),
                    "used_memory": proc.get("used_memory"),
                    "gpu_index": gpu.get("index"),
                    "gpu_uuid": gpu.get("uuid"),
                    "node": node,
                }
            )
    return found


def current_gpu_processes() -> list[dict]:
    """Read the GPU processes from the probe now (see :func:`gpu_processes`)."""
    return gpu_processes(get_reader().read()[0])


class TreeMeter:
    """Measures process trees; keeps each process's last CPU reading to give a CPU percent.

    One call scans the process table once, whatever the number of trees, and reuses the
    psutil objects of processes it has seen before. The first time a process is seen its
    percent is its average since it started; after that, it is the share of one core used
    since the previous call (so 200 means two busy cores).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[tuple[int, float], psutil.Process] = {}
        self._last: dict[tuple[int, float], tuple[float, float]] = {}

    def usage(self, pid: int, gpu_procs: Iterable[Mapping[str, Any]] | None = None) -> dict:
        """Return the usage of the tree rooted at ``pid`` (see :func:`tree_usage`)."""
        return self.usage_many({"tree": pid}, gpu_procs)["tree"]

    def usage_many(
        self, roots: Mapping[str, int], gpu_procs: Iterable[Mapping[str, Any]] | None = None
    ) -> dict[str, dict]:
        """Return ``{key: usage}`` for the trees rooted at the pids of ``roots``."""
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        gpu_list = list(current_gpu_processes() if gpu_procs is None else gpu_procs)

        now = time.monotonic()
        with self._lock:
            found = {
                key: self._measure(int(pid), table, children, gpu_list, now)
                for key, pid in roots.items()
            }
            alive = {(pid, start) for pid, (_, start) in table.items()}
            for cache in (self._procs, self._last):
                for ident in [i for i in cache if i not in alive]:
                    del cache[ident]
        return found

    def _measure(
        self,
        pid: int,
        table: Mapping[int, tuple[int, float]],
        children: Mapping[int, list[int]],
        gpu_list: list[Mapping[str, Any]],
        now: float,
    ) -> dict:
        pids, rss, cpu = [], 0, 0.0
        todo = [pid] if pid in table else []
        while todo:
            member = todo.pop()
            todo.extend(children.get(member, ()))
            try:
                proc = self._process(member, table[member][1])
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    cpu += self._cpu_percent(proc, table[member][1], now)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pids.append(member)

        in_tree = set(pids)
        gpu_memory, gpus = 0, set()
        for entry in gpu_list:
            if int(entry["pid"]) in in_tree:
                gpu_memory += entry.get("used_memory") or 0
                if entry.get("gpu_index") is not None:
                    gpus.add(entry["gpu_index"])
        return {
            "pid": pid,
            "alive": pid in in_tree,
            "num_procs": len(pids),
            "pids": pids,
            "cpu_percent": round(cpu, 1),
            "rss": rss,
            "gpu_memory": gpu_memory,
            "gpus": sorted(gpus),
        }

    def _process(self, pid: int, start: float) -> psutil.Process:
        proc = self._procs.get((pid, start))
        if proc is None:
            proc = psutil.Process(pid)
            self._procs[(pid, start)] = proc
        return proc

    def _cpu_percent(self, proc: psutil.Process, start: float, now: float) -> float:
        times = proc.cpu_times()
        used = times.user + times.system
        last = self._last.get((proc.pid, start))
        self._last[(proc.pid, start)] = (now, used)
        if last is None:
            age = max(time.time() - proc.create_time(), 1e-3)
            return 100.0 * used / age
        elapsed = now - last[0]
        return 100.0 * max(used - last[1], 0.0) / elapsed if elapsed > 0 else 0.0


def _process_table() -> dict[int, tuple[int, float]]:
    """Map every pid to ``(parent pid, start time)``, reading ``/proc`` once where it exists."""
    table: dict[int, tuple[int, float]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; the fields follow the last ")".
        fields = data[data.rfind(b")") + 2 :].split()
        table[int(name)] = (int(fields[1]), float(fields[19]))
    if table:
        return table
    for proc in psutil.process_iter(["ppid", "create_time"]):
        table[proc.pid] = (proc.info["ppid"] or 0, proc.info["create_time"] or 0.0)
    return table


_meter = TreeMeter()


def tree_usage(pid: int, gpu_procs: Iterable[Mapping[str, Any]] | None = None) -> dict:
    """Measure the process tree rooted at ``pid`` (the process and all its descendants).

    Args:
        pid: The root, e.g. a job's supervisor or a kernel.
        gpu_procs: GPU processes as :func:`gpu_processes` returns them; ``None`` reads the
            probe now. Pass them when measuring many trees from one sample.

    Returns:
        ``{"pid", "alive", "num_procs", "pids", "cpu_percent" (100 = one core), "rss" (bytes,
        summed), "gpu_memory" (bytes on GPUs held by processes of the tree), "gpus" (indices)}``.
        A tree whose root is gone has ``alive`` False and zeros.
    """
    return _meter.usage(pid, gpu_procs)


def _own_lineage() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def find_orphans(gpu_procs: Iterable[Mapping[str, Any]], owned_pids: set[int]) -> list[dict]:
    """Return the GPU processes that belong to no job and no live kernel.

    A process is owned when it, or one of its ancestors, is in ``owned_pids``. The server
    itself and its ancestors are never orphans; its other descendants (a terminal's
    ``python train.py``) are, unless they belong to a job or kernel.

    Args:
        gpu_procs: GPU processes as :func:`gpu_processes` returns them.
        owned_pids: Root pids of running jobs (supervisors, ranks) and of live kernels.

    Returns:
        The orphans, each the GPU process entry plus ``"name"``, ``"cmdline"``,
        ``"username"`` and ``"create_time"`` (None for a process this server cannot see,
        such as one in another container).
    """
    owned = set(owned_pids)
    server = _own_lineage()
    orphans = []
    for entry in gpu_procs:
        pid = int(entry["pid"])
        info: dict[str, Any] = {"name": None, "cmdline": None, "username": None}
        info["create_time"] = None
        try:
            proc = psutil.Process(pid)
            lineage = {pid, *(p.pid for p in proc.parents())}
            info.update(proc.as_dict(["name", "cmdline", "username", "create_time"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            lineage = {pid}
        if pid in server or lineage & owned:
            continue
        cmdline = info.get("cmdline")
        info["cmdline"] = " ".join(cmdline) if isinstance(cmdline, list) else cmdline
        orphans.append({**entry, "pid": pid, **info})
    return orphans


def end_process(pid: int, *, allowed: set[int] | None = None, timeout: float = 5.0) -> str:
    """End one orphan: SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds.

    Args:
        pid: The process to end.
        allowed: The pids that may be ended, normally the pids of :func:`find_orphans`.
            ``None`` allows any process that the GPU probe lists right now.
        timeout: Seconds to wait after each signal.

    Returns:
        ``"terminated"``, ``"killed"`` or ``"gone"`` (it had already exited).

    Raises:
        ProcessRefused: ``pid`` is not allowed, is this server or one of its ancestors, or
            does not end even after SIGKILL.
    """
    if pid <= 1 or pid in _own_lineage():
        raise ProcessRefused(pid, "it is this server, one of its parents or the init process")
    if allowed is None:
        allowed = {p["pid"] for p in current_gpu_processes()}
    if pid not in allowed:
        raise ProcessRefused(pid, "it is not in the list of orphan GPU processes")

    try:
        proc = psutil.Process(pid)
        logger.info("ending orphan GPU process %d (%s)", pid, proc.name())
        proc.terminate()
        if _ended(proc, timeout):
            return "terminated"
        logger.info("process %d ignored SIGTERM for %.0f s; killing it", pid, timeout)
        proc.kill()
        if _ended(proc, timeout):
            return "killed"
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.AccessDenied as err:
        raise ProcessRefused(pid, f"this server may not signal it ({err})") from err
    raise ProcessRefused(pid, f"it is still running {timeout:.0f} s after SIGKILL")


def _ended(proc: psutil.Process, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except psutil.TimeoutExpired:
        # A process that is not our child stays a zombie until its own parent reaps it.
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True


def attribute(
    inventory: Mapping[str, Any],
    jobs: Mapping[str, Mapping[str, Any]] | None = None,
    kernels: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """Say which job or kernel holds each GPU process of one inventory, and which are orphans.

    A GPU process belongs to the nearest of its ancestors (or itself) that is a job root or a
    kernel. The result plugs into the resources view and the REST API as they are.

    Args:
        inventory: One node's inventory (``local_inventory()``).
        jobs: ``{job_id: {"name": str | None, "pids": [root pids: supervisor, ranks]}}``.
        kernels: ``{kernel_id: kernel pid}``; a None pid is skipped.

    Returns:
        ``{"holders": {gpu uuid (or index as text): [{"job_id", "name", "pid",
        "used_memory"} | {"kernel_id", "pid", "used_memory"}]}, "kernels": {kernel_id:
        {"pid", "gpu_memory", "gpus"}}, "orphans": find_orphans() entries}``.
    """
    roots: dict[int, dict[str, Any]] = {}
    for job_id, job in (jobs or {}).items():
        for pid in job.get("pids") or []:
            roots[int(pid)] = {"job_id": job_id, "name": job.get("name")}
    kernel_usage: dict[str, dict[str, Any]] = {}
    for kernel_id, pid in (kernels or {}).items():
        if pid is not None:
            roots[int(pid)] = {"kernel_id": kernel_id}
            kernel_usage[kernel_id] = {"pid": int(pid), "gpu_memory": 0, "gpus": []}

    holders: dict[str, list[dict[str, Any]]] = {}
    unowned = []
    for proc in gpu_processes(inventory.get("gpus") or [], inventory.get("node")):
        owner = _nearest_owner(proc["pid"], roots)
        if owner is None:
            unowned.append(proc)
            continue
        key = str(proc["gpu_uuid"] or proc["gpu_index"])
        holders.setdefault(key, []).append(
            {**owner, "pid": proc["pid"], "used_memory": proc["used_memory"]}
        )
        if "kernel_id" in owner:
            usage = kernel_usage[owner["kernel_id"]]
            usage["gpu_memory"] += proc["used_memory"] or 0
            if proc["gpu_index"] not in usage["gpus"]:
                usage["gpus"].append(proc["gpu_index"])

    return {
        "holders": holders,
        "kernels": kernel_usage,
        "orphans": find_orphans(unowned, set(roots)),
    }


def _nearest_owner(pid: int, roots: Mapping[int, dict[str, Any]]) -> dict[str, Any] | None:
    if pid in roots:
        return roots[pid]
    try:
        ancestors = psutil.Process(pid).parents()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for ancestor in ancestors:
        if ancestor.pid in roots:
            return roots[ancestor.pid]
    return None
