"""What a SLURM cluster has and runs: nodes (sinfo), partitions and the queue (squeue)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from training_manager_lab.errors import BackendError, ResourceUnavailable

logger = logging.getLogger(__name__)

MIB = 1 << 20

#: Variables of an enclosing SLURM job or step (and the input variables of sbatch, salloc and
#: srun) that must not leak into a new submission.
_JOB_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SLURMD_", "PMI_", "PMIX_")
#: Kept: they say where the cluster is, not which job we are in.
_KEPT = ("SLURM_CONF", "SLURM_CLUSTERS", "SLURM_TIME_FORMAT")


class SlurmUnavailable(ResourceUnavailable, BackendError):
    """SLURM's commands are missing here, or its controller does not answer."""


class SlurmCli:
    """Runs SLURM's command-line tools and reads their JSON, with a short cache of the queue.

    Args:
        path: Where to look for the commands (a ``PATH`` string); ``None`` uses ``PATH``.
        env: Environment for the commands; ``None`` uses this process's, without the
            variables of an enclosing job (``SLURM_CONF`` is kept).
        timeout: Seconds a command may take before it counts as failed.
        cache_seconds: How long one ``squeue`` answer serves every job that asks.
    """

    def __init__(
        self,
        path: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        cache_seconds: float = 1.0,
    ) -> None:
        self.path = path
        self.env = submission_environment(os.environ if env is None else env)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._jobs_time = float("-inf")

    def which(self, name: str) -> str:
        """Return the full path of a SLURM command, or raise :class:`SlurmUnavailable`."""
        search = self.path if self.path is not None else self.env.get("PATH", os.defpath)
        found = shutil.which(name, path=search)
        if found is None:
            raise SlurmUnavailable(
                f"the SLURM command {name!r} was not found on this machine (searched "
                f"PATH={search!r}); install SLURM's client tools and set SLURM_CONF, or "
                "launch with cluster='local'"
            )
        return found

    def available(self) -> bool:
        """Whether ``sbatch``, ``squeue``, ``scancel`` and ``sinfo`` are all present."""
        try:
            for name in ("sbatch", "squeue", "scancel", "sinfo"):
                self.which(name)
        except SlurmUnavailable:
            return False
        return True

    def run(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run one SLURM command with an argument list (never through a shell).

        Raises:
            SlurmUnavailable: the command is missing or did not answer in time.
            BackendError: ``check`` is set and the command failed; carries SLURM's message.
        """
        command = [self.which(name), *args]
        logger.debug("running %s", command)
        try:
            result = subprocess.run(
                command,
                env=dict(self.env if env is None else env),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnavailable(
                f"{name} did not answer within {self.timeout:.0f} s; is slurmctld running "
                f"and SLURM_CONF ({self.env.get('SLURM_CONF', 'unset')}) right?"
            ) from exc
        if check and result.returncode != 0:
            raise BackendError(f"{name} failed: {slurm_message(result)}")
        return result

    def json(self, name: str, args: Sequence[str]) -> dict[str, Any]:
        """Run a command with ``--json`` and return its document."""
        result = self.run(name, [*args, "--json"], check=False)
        if result.returncode != 0:
            message = slurm_message(result)
            if _unreachable(message):
                raise SlurmUnavailable(f"SLURM's controller does not answer: {message}")
            raise BackendError(f"{name} failed: {message}")
        try:
            document = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise BackendError(f"{name} --json printed no JSON: {result.stdout[:200]!r}") from exc
        if not isinstance(document, dict):
            raise BackendError(f"{name} --json printed {type(document).__name__}, not an object")
        return document

    def jobs(self, max_age: float | None = None) -> dict[str, dict[str, Any]]:
        """Every job ``squeue`` knows (finished ones until ``MinJobAge``), by job id."""
        limit = self.cache_seconds if max_age is None else max_age
        with self._lock:
            if time.monotonic() - self._jobs_time <= limit:
                return self._jobs
        # squeue of Slurm 22.05 ignores filters with --json; newer versions honour them.
        document = self.json("squeue", ["--states=all"])
        jobs = {str(job.get("job_id")): job for job in document.get("jobs") or []}
        with self._lock:
            self._jobs, self._jobs_time = jobs, time.monotonic()
        return jobs

    def forget_jobs(self) -> None:
        """Drop the cached queue, so that the next question asks SLURM again."""
        with self._lock:
            self._jobs_time = float("-inf")

    def nodes(self) -> list[dict[str, Any]]:
        """The raw node entries of ``sinfo --json``."""
        return list(self.json("sinfo", []).get("nodes") or [])

    def partitions(self) -> list[dict[str, str]]:
        """Every partition as the key/value pairs of ``scontrol show partition``."""
        result = self.run("scontrol", ["show", "partition", "--oneliner"], check=False)
        if result.returncode != 0:
            message = slurm_message(result)
            if _unreachable(message):
                raise SlurmUnavailable(f"SLURM's controller does not answer: {message}")
            raise BackendError(f"scontrol show partition failed: {message}")
        return [parse_key_values(line) for line in result.stdout.splitlines() if line.strip()]

    def hostnames(self, nodelist: str) -> list[str]:
        """Expand a SLURM host list (``node[01-03]``) into names."""
        if not nodelist or nodelist in ("(null)", "None"):
            return []
        if not re.search(r"[\[\],]", nodelist):
            return [nodelist]
        result = self.run("scontrol", ["show", "hostnames", nodelist], check=False)
        if result.returncode != 0:
            return [nodelist]
        return result.stdout.split()


def submission_environment(base: Mapping[str, str]) -> dict[str, str]:
    """Copy ``base`` without the variables of an enclosing SLURM job; keep ``SLURM_CONF``.

    A Jupyter server that itself runs inside an allocation would otherwise hand its job id,
    node list and task layout to ``sbatch``, and the new job's ``srun`` would read them.
    """
    env = dict(base)
    for key in list(env):
        if key in _KEPT:
            continue
        if key.startswith(_JOB_PREFIXES):
            del env[key]
    return env


def slurm_message(result: subprocess.CompletedProcess[str]) -> str:
    """SLURM's own words from a failed command (stderr, else stdout), on one line."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    if not text:
        return f"exit status {result.returncode} without a message"
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def _unreachable(message: str) -> bool:
    lowered = message.lower()
    return any(
        phrase in lowered
        for phrase in (
            "unable to contact slurm controller",
            "connection refused",
            "could not establish a configuration source",
            "unable to establish",
            "socket timed out",
        )
    )


def parse_key_values(line: str) -> dict[str, str]:
    """Split ``Key=Value Key2=Value two`` (the ``scontrol --oneliner`` format) into a dict."""
    pairs: dict[str, str] = {}
    for match in re.finditer(r"(\w+)=(.*?)(?=\s+\w+=|$)", line.strip()):
        pairs[match.group(1)] = match.group(2).strip()
    return pairs


def job_state(job: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The base state of a job and its flags: a string in Slurm 22.05, a list later."""
    value = job.get("job_state")
    if isinstance(value, str):
        parts = [part for part in re.split(r"[+,\s]+", value) if part]
    elif isinstance(value, list):
        parts = [str(part) for part in value]
    else:
        parts = []
    if not parts:
        return "UNKNOWN", []
    return parts[0].upper(), [part.upper() for part in parts[1:]]


def number(value: Any) -> int | float | None:
    """A number from SLURM's JSON: plain, or ``{"set": true, "number": n}`` in newer versions."""
    if isinstance(value, dict):
        if value.get("infinite"):
            return None
        if value.get("set") is False:
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def exit_code(job: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(return code, signal)`` of a job's batch script."""
    value = job.get("exit_code")
    if isinstance(value, dict):
        code = number(value.get("return_code"))
        signal_value = value.get("signal")
        signal_number = number(signal_value.get("id")) if isinstance(signal_value, dict) else None
        return (
            int(code) if code is not None else None,
            int(signal_number) if signal_number else None,
        )
    raw = number(value)
    if raw is None:
        return None, None
    raw = int(raw)
    # Slurm 22.05 reports the raw wait status of the batch script.
    if raw & 0x7F:
        return None, raw & 0x7F
    return raw >> 8, None


def parse_gres(gres: str) -> list[dict[str, Any]]:
    """GPUs of a ``gres`` string: ``gpu:a100:4(S:0-1),gpu:t4:1`` gives five entries."""
    entries: list[dict[str, Any]] = []
    for item in _split_gres(gres):
        fields = item.split("(")[0].split(":")
        if fields[0] != "gpu":
            continue
        if len(fields) >= 3:
            kind, count = fields[1], fields[2]
        elif len(fields) == 2:
            kind, count = None, fields[1]
        else:
            kind, count = None, "1"
        try:
            amount = int(count)
        except ValueError:
            continue
        entries.extend({"type": kind} for _ in range(amount))
    for index, entry in enumerate(entries):
        entry["index"] = index
    return entries


def used_gpu_indices(gres_used: str) -> set[int]:
    """Indices of allocated GPUs from ``gres_used`` (``gpu:a100:2(IDX:0,2-3)``)."""
    used: set[int] = set()
    for item in _split_gres(gres_used):
        if not item.startswith("gpu"):
            continue
        match = re.search(r"\(IDX:([^)]*)\)", item)
        if match is None:
            continue
        for part in match.group(1).split(","):
            if part in ("", "N/A"):
                continue
            low, _, high = part.partition("-")
            if low.isdigit() and (not high or high.isdigit()):
                used.update(range(int(low), int(high or low) + 1))
    return used


def _split_gres(gres: str) -> list[str]:
    # Commas separate entries, except inside the parentheses of an index list.
    items, depth, current = [], 0, ""
    for char in gres or "":
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip() and item.strip() != "(null)"]


def node_inventory(node: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """One ``sinfo --json`` node, shaped like the local inventory (see ``local_inventory``).

    The figures are SLURM's: ``memory.used`` is what jobs were allocated, ``available`` what
    is left to allocate; ``cpu.allocated``/``cpu.free`` count CPUs handed out and left.
    The node's SLURM state, partitions and drain reason come under ``slurm``.
    """
    cpus = int(number(node.get("cpus")) or 0)
    allocated_cpus = int(number(node.get("alloc_cpus")) or 0)
    idle_cpus = number(node.get("idle_cpus"))
    free_cpus = int(idle_cpus) if idle_cpus is not None else max(cpus - allocated_cpus, 0)
    total = int(number(node.get("real_memory")) or 0) * MIB
    allocated = int(number(node.get("alloc_memory")) or 0) * MIB
    free_os = number(node.get("free_memory"))
    load = number(node.get("cpu_load"))

    used_indices = used_gpu_indices(str(node.get("gres_used") or ""))
    gpus = []
    for entry in parse_gres(str(node.get("gres") or "")):
        gpus.append(
            {
                "index": entry["index"],
                "uuid": None,
                "name": entry["type"] or "gpu",
                "memory_total": None,
                "memory_used": None,
                "utilization": None,
                "temperature": None,
                "power": None,
                "processes": [],
                "visible": True,
                "allocated": entry["index"] in used_indices,
            }
        )

    state, flags = _node_state(node)
    return {
        "node": str(node.get("name") or node.get("hostname") or "?"),
        "time": time.time() if now is None else now,
        "cpu": {
            "count": cpus,
            "logical": cpus,
            "percent": round(min(allocated_cpus / cpus, 1.0) * 100.0, 1) if cpus else 0.0,
            "load": [load / 100.0 if load is not None else None, None, None],
            "allocated": allocated_cpus,
            "free": free_cpus,
        },
        "memory": {
            "total": total,
            "used": min(allocated, total) if total else allocated,
            "available": max(total - allocated, 0),
            "percent": round(100.0 * allocated / total, 1) if total else 0.0,
            "free_os": int(free_os) * MIB if free_os is not None else None,
        },
        "gpus": gpus,
        "gpu_error": None if gpus else "no GPUs in this node's gres",
        "gpu_visible": [gpu["index"] for gpu in gpus],
        "cgroup": None,
        "slurm": {
            "state": state,
            "state_flags": flags,
            "partitions": list(node.get("partitions") or []),
            "reason": node.get("reason") or None,
            "address": node.get("address"),
            "features": node.get("active_features") or node.get("features") or "",
            "gres": node.get("gres") or "",
        },
    }


def _node_state(node: Mapping[str, Any]) -> tuple[str, list[str]]:
    value = node.get("state")
    flags = [str(flag).upper() for flag in node.get("state_flags") or []]
    if isinstance(value, list):
        parts = [str(part).upper() for part in value]
        return (parts[0] if parts else "UNKNOWN"), parts[1:] + flags
    text = str(value or "unknown").upper()
    base, *rest = [part for part in re.split(r"[+\s]+", text) if part] or ["UNKNOWN"]
    return base, rest + flags


def queue_entry(job: Mapping[str, Any]) -> dict[str, Any]:
    """One ``squeue --json`` job, reduced to what the sidebar shows."""
    state, flags = job_state(job)
    name = str(job.get("name") or "")
    match = re.fullmatch(r"tml-([0-9a-f]{12})", name)
    return {
        "job_id": str(job.get("job_id")),
        "name": name,
        "tml_job_id": match.group(1) if match else None,
        "user": job.get("user_name"),
        "state": state,
        "state_flags": flags,
        "reason": job.get("state_reason") if job.get("state_reason") != "None" else None,
        "partition": job.get("partition"),
        "nodes": job.get("nodes") or None,
        "node_count": number(job.get("node_count")),
        "cpus": number(job.get("cpus")),
        "tasks": number(job.get("tasks")),
        "gres": job.get("tres_per_node") or job.get("tres_per_job") or None,
        "submit_time": number(job.get("submit_time")),
        "start_time": number(job.get("start_time")),
        "time_limit": number(job.get("time_limit")),
        "restarts": number(job.get("restart_cnt")) or 0,
    }


#: Queue states that are over; the resources view shows only the others.
FINISHED_STATES = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)


def cluster_inventory(cli: SlurmCli | None = None, max_jobs: int = 500) -> dict[str, Any]:
    """Every node of the cluster and its queue, for the resources API.

    Returns:
        ``{"cluster": "slurm", "time", "nodes": [node_inventory(...) ...],
        "partitions": [{"name", "default", "state", "nodes", "total_cpus", "max_time"}],
        "queue": [queue_entry(...) ...] (pending and running jobs, at most ``max_jobs``),
        "error": None or why the cluster could not be read}``.
    """
    cli = cli or SlurmCli()
    result: dict[str, Any] = {
        "cluster": "slurm",
        "time": time.time(),
        "nodes": [],
        "partitions": [],
        "queue": [],
        "error": None,
    }
    try:
        now = time.time()
        result["nodes"] = [node_inventory(node, now) for node in cli.nodes()]
        result["partitions"] = [
            {
                "name": part.get("PartitionName"),
                "default": part.get("Default") == "YES",
                "state": part.get("State"),
                "nodes": part.get("Nodes"),
                "total_cpus": _int_or_none(part.get("TotalCPUs")),
                "max_time": part.get("MaxTime"),
            }
            for part in cli.partitions()
        ]
        jobs = [queue_entry(job) for job in cli.jobs().values()]
        active = [job for job in jobs if job["state"] not in FINISHED_STATES]
        active.sort(key=lambda job: (job["state"] != "RUNNING", job["submit_time"] or 0))
        result["queue"] = active[:max_jobs]
    except (BackendError, SlurmUnavailable) as exc:
        result["error"] = str(exc)
    return result


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
