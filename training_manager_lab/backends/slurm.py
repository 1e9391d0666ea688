"""SLURM backend: a job's supervisor is the main step of a batch job submitted with ``sbatch``."""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import training_manager_lab
from training_manager_lab.devices.slurm_nodes import (
    MIB,
    SlurmCli,
    SlurmUnavailable,
    cluster_inventory,
    exit_code,
    job_state,
    number,
    parse_gres,
    slurm_message,
    submission_environment,
)
from training_manager_lab.errors import BackendError, JobSpecError, ResourceUnavailable

from .base import Launched

log = logging.getLogger(__name__)

SCRIPT_FILE = "submit.sh"
SUPERVISOR_LOG = "supervisor.log"

#: SLURM states in which the job is still waiting, running or about to run again.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)

#: How each final SLURM state reads in our words; all but two are failures.
_FINAL_STATES = {
    "COMPLETED": ("succeeded", None),
    "CANCELLED": ("cancelled", "cancelled in SLURM"),
    "FAILED": ("failed", "the SLURM job failed"),
    "TIMEOUT": ("failed", "SLURM stopped the job at its time limit"),
    "NODE_FAIL": ("failed", "a node of the job's allocation failed"),
    "PREEMPTED": ("failed", "SLURM preempted the job"),
    "BOOT_FAIL": ("failed", "a node of the job's allocation failed to boot"),
    "DEADLINE": ("failed", "the job missed its SLURM deadline"),
    "OUT_OF_MEMORY": ("failed", "the job ran out of memory"),
}

#: Options accepted in ``cluster_options`` and what each one becomes.
ACCEPTED_OPTIONS = (
    "partition",
    "account",
    "qos",
    "time",
    "nodes",
    "cpus_per_task",
    "mem_per_cpu",
    "mem",
    "gpu_type",
    "constraint",
    "reservation",
    "nodelist",
    "exclude",
    "exclusive",
    "requeue",
    "sbatch_args",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_NAMES_RE = re.compile(
    r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}(,[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})*$"
)
_HOSTLIST_RE = re.compile(r"^[A-Za-z0-9_.\-\[\],]{1,1024}$")
_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.,&|\[\]*:()!\-]{1,512}$")
_MEMORY_RE = re.compile(r"^[1-9][0-9]{0,9}[KMGT]?$")
_TIME_RE = re.compile(
    r"^(?:\d{1,6}"  # minutes
    r"|\d{1,6}:\d{1,2}(?::\d{1,2})?"  # minutes:seconds, hours:minutes:seconds
    r"|\d{1,4}-\d{1,2}(?::\d{1,2}(?::\d{1,2})?)?"  # days-hours[:minutes[:seconds]]
    r"|UNLIMITED|INFINITE)$"
)
_ARG_RE = re.compile(r"^--(?P<name>[a-z][a-z0-9-]{0,63})(?:=(?P<value>[^\s\"'\\`$;]{1,512}))?$")

#: sbatch options that the backend sets itself or that would break the job's contract.
_MANAGED_ARGS = {
    "job-name": "the backend names the job tml-<job id>",
    "output": "rank logs and supervisor.log live in the job folder",
    "error": "rank logs and supervisor.log live in the job folder",
    "input": "a job reads no standard input",
    "chdir": "the job runs in its folder",
    "export": "the job's environment is built by the backend",
    "export-file": "the job's environment is built by the backend",
    "wrap": "the backend writes the submission script",
    "parsable": "the backend reads the job id itself",
    "test-only": "validation runs sbatch --test-only itself",
    "array": "one job is one training run",
    "het-job": "one job is one training run",
    "wait": "launch() returns at once; follow the job with its handle",
    "nodes": "use cluster_options={'nodes': n}",
    "ntasks": "the number of tasks is devices per node times nodes",
    "ntasks-per-node": "the tasks per node follow devices=",
    "gpus": "the GPUs per node follow devices= with accelerator='gpu'",
    "gpus-per-node": "the GPUs per node follow devices= with accelerator='gpu'",
    "gres": "the GPUs per node follow devices= with accelerator='gpu'",
    "partition": "use cluster_options={'partition': ...}",
    "account": "use cluster_options={'account': ...}",
    "qos": "use cluster_options={'qos': ...}",
    "time": "use cluster_options={'time': ...}",
    "cpus-per-task": "use cluster_options={'cpus_per_task': ...}",
    "mem": "use cluster_options={'mem': ...}",
    "mem-per-cpu": "use cluster_options={'mem_per_cpu': ...}",
    "requeue": "use cluster_options={'requeue': True}",
    "no-requeue": "jobs are not requeued unless cluster_options={'requeue': True}",
}


class SlurmBackend:
    """Submits each job as one batch job whose main step is the job's supervisor.

    The supervisor starts the ranks with ``srun`` (one task per GPU, or per CPU process),
    owns the MLflow run and records the outcome in the job store, as it does for local jobs.
    This backend writes the submission script, submits it, and maps what ``squeue`` says
    onto the job's status when the supervisor could not record it (a job cancelled while
    pending, a node failure, a time limit).

    Args:
        defaults: ``cluster_options`` applied to every job unless the job sets them (for
            example a site's partition and account from the Jupyter config).
        python: The interpreter that runs the supervisor on the compute nodes; default: this
            one (the cluster must see the same path, as on a shared file system).
        prologue: Shell lines run in the batch script before the supervisor (``module load
            ...``). Operator configuration, never user input.
        path: Where SLURM's commands are looked up; default: ``PATH``.
        cli: The command runner, shared with the resources view.

    Example:
        >>> backend = SlurmBackend(defaults={"partition": "gpu", "time": "04:00:00"})
        >>> backend.validate({"devices": 2, "accelerator": "gpu", "cluster_options": {}})
    """

    name = "slurm"

    #: A record without a SLURM job id is still being submitted for this long.
    SUBMIT_GRACE = 60.0

    def __init__(
        self,
        defaults: Mapping[str, Any] | None = None,
        *,
        python: str | None = None,
        prologue: Sequence[str] = (),
        path: str | None = None,
        cli: SlurmCli | None = None,
    ) -> None:
        self.defaults = dict(defaults or {})
        check_options(self.defaults)
        self.python = python or sys.executable
        self.prologue = list(prologue)
        self.cli = cli or SlurmCli(path=path)

    # -- launch -----------------------------------------------------------------------------

    def validate(self, request: Mapping[str, Any]) -> None:
        """Check at launch that SLURM is here and could ever run the request.

        Raises:
            SlurmUnavailable: SLURM's commands are missing or its controller does not answer.
            JobSpecError: an option is malformed.
            ResourceUnavailable: the partition is unknown or no node can hold the request;
                the message includes SLURM's own verdict.
        """
        options = self.options(request)
        for command in ("sbatch", "squeue", "scancel", "sinfo", "scontrol"):
            self.cli.which(command)

        partitions = self.cli.partitions()
        names = [part.get("PartitionName", "") for part in partitions]
        partition = options.get("partition")
        if partition is None:
            defaults = [p.get("PartitionName", "") for p in partitions if p.get("Default") == "YES"]
            partition = defaults[0] if defaults else None
        else:
            unknown = [name for name in str(partition).split(",") if name not in names]
            if unknown:
                verdict = self._test_only(request, options)
                raise ResourceUnavailable(
                    f"unknown SLURM partition {unknown[0]!r}; this cluster has "
                    f"{sorted(names)}. SLURM says: {verdict or 'nothing'}"
                )

        problem = self._fits(request, options, partition)
        verdict = self._test_only(request, options)
        if verdict is not None:
            detail = f"{problem}. " if problem else ""
            raise ResourceUnavailable(
                f"SLURM refuses this request: {detail}SLURM says: {verdict}. Ask for fewer "
                "devices, nodes, CPUs or memory, or another partition (cluster_options)"
            )
        if problem:
            # SLURM accepts it (a node may be configured larger than it reports now).
            log.info("sbatch --test-only accepts a request that looks too large: %s", problem)

    def options(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The job's ``cluster_options`` over the backend's defaults, checked."""
        given = request.get("cluster_options") or {}
        if not isinstance(given, Mapping):
            raise JobSpecError("cluster_options must be a dict of scheduler options")
        options = {**self.defaults, **given}
        check_options(options)
        return options

    def start(self, record: dict[str, Any], job_dir: Path, env: dict[str, str]) -> Launched:
        """Write ``submit.sh`` into the job folder and submit it with ``sbatch --parsable``."""
        options = self.options(record["request"])
        job_dir = Path(job_dir).resolve()
        script = submission_script(
            record["id"],
            job_dir,
            sbatch_options(record["request"], options),
            python=self.python,
            prologue=self.prologue,
        )
        path = job_dir / SCRIPT_FILE
        path.write_text(script)
        path.chmod(0o700)

        job_env = job_environment(env, self.cli.env)
        args = ["--parsable", *submission_arguments(record["id"], job_dir), str(path)]
        result = self.cli.run("sbatch", args, env=job_env, check=False)
        if result.returncode != 0:
            raise BackendError(
                f"sbatch refused job {record['id']}: {slurm_message(result)} (script: {path})"
            )
        slurm_id = result.stdout.strip().split(";")[0]
        if not slurm_id.isdigit():
            raise BackendError(f"sbatch printed no job id: {result.stdout.strip()!r}")
        self.cli.forget_jobs()
        log.info("job %s: SLURM job %s, folder %s", record["id"], slurm_id, job_dir)
        return Launched(backend_id=slurm_id)

    # -- following --------------------------------------------------------------------------

    def poll(self, record: dict[str, Any]) -> tuple[str, str | None] | None:
        """Return ``(status, reason)`` once SLURM says the job is over, ``None`` before."""
        slurm_id = record.get("backend_id")
        if not slurm_id:
            started = record.get("created_at") or 0.0
            if time.time() - started < self.SUBMIT_GRACE:
                return None
            return "failed", "the job was never submitted to SLURM"
        try:
            job = self._job(str(slurm_id))
        except (BackendError, SlurmUnavailable) as exc:
            # The controller may be restarting; the job is not lost because we cannot see it.
            log.warning("job %s: cannot read SLURM job %s: %s", record.get("id"), slurm_id, exc)
            return None
        if job is None:
            return self._vanished(record, str(slurm_id))
        return outcome(job, was_running=record.get("status") == "running")

    def describe(self, record: dict[str, Any]) -> dict[str, Any]:
        """SLURM's view of the job: state, pending reason, nodes, restarts, limits."""
        slurm_id = record.get("backend_id")
        details: dict[str, Any] = {"backend": "slurm", "job_id": slurm_id}
        if not slurm_id:
            details.update(state=None, reason="not submitted yet")
            return details
        try:
            job = self._job(str(slurm_id))
        except (BackendError, SlurmUnavailable) as exc:
            details.update(state=None, reason=None, error=str(exc))
            return details
        if job is None:
            details.update(state=None, reason=f"SLURM no longer knows job {slurm_id}")
            return details

        state, flags = job_state(job)
        reason = job.get("state_reason")
        code, signal_number = exit_code(job)
        node_list = str(job.get("nodes") or "")
        details.update(
            state=state,
            flags=flags,
            reason=None if reason in (None, "", "None") else str(reason),
            description=job.get("state_description") or None,
            partition=job.get("partition"),
            node_list=node_list or None,
            nodes=self.cli.hostnames(node_list) if node_list else [],
            node_count=number(job.get("node_count")),
            tasks=number(job.get("tasks")),
            cpus=number(job.get("cpus")),
            restarts=int(number(job.get("restart_cnt")) or 0),
            requeue=bool(job.get("requeue")),
            time_limit_minutes=number(job.get("time_limit")),
            submit_time=number(job.get("submit_time")),
            start_time=number(job.get("start_time")) or None,
            exit_code=code,
            signal=signal_number,
        )
        return details

    def cancel(self, record: dict[str, Any]) -> None:
        """Ask SLURM to end the job; its supervisor gets SIGTERM and records ``cancelled``."""
        slurm_id = record.get("backend_id")
        if not slurm_id:
            log.info("job %s has no SLURM job id yet; nothing to cancel", record.get("id"))
            return
        result = self.cli.run("scancel", [str(slurm_id)], check=False)
        message = slurm_message(result)
        if result.returncode != 0 and not re.search(
            r"already completing or completed|invalid job id", message, re.IGNORECASE
        ):
            raise BackendError(f"scancel {slurm_id} failed: {message}")
        self.cli.forget_jobs()
        log.info("job %s: scancel %s sent", record.get("id"), slurm_id)

    def resources(self) -> dict[str, Any]:
        """Nodes, partitions and queue of the cluster (see ``cluster_inventory``)."""
        return cluster_inventory(self.cli)

    # -- helpers ----------------------------------------------------------------------------

    def _job(self, slurm_id: str) -> dict[str, Any] | None:
        job = self.cli.jobs().get(slurm_id)
        if job is None:
            # The cached answer may predate the submission.
            job = self.cli.jobs(max_age=0.0).get(slurm_id)
        return job

    def _vanished(self, record: dict[str, Any], slurm_id: str) -> tuple[str, str | None]:
        accounted = self._from_accounting(slurm_id)
        if accounted is not None:
            return accounted
        return (
            "failed",
            f"SLURM no longer knows job {slurm_id} and its supervisor recorded no outcome; "
            f"see {SUPERVISOR_LOG} in the job folder",
        )

    def _from_accounting(self, slurm_id: str) -> tuple[str, str | None] | None:
        try:
            self.cli.which("sacct")
        except SlurmUnavailable:
            return None
        args = ["-j", slurm_id, "-X", "-n", "-P", "-o", "State,ExitCode,Reason"]
        result = self.cli.run("sacct", args, check=False)
        if result.returncode != 0 or not result.stdout.strip():
            return None
        state, _, rest = result.stdout.strip().splitlines()[0].partition("|")
        code, _, reason = rest.partition("|")
        if not re.match(r"^[A-Z_]+", state):
            return None
        job: dict[str, Any] = {"job_state": state.split()[0], "state_reason": reason or None}
        returned, _, signal_text = code.partition(":")
        if returned.isdigit():
            job["exit_code"] = (int(returned) << 8) | (int(signal_text or 0) & 0x7F)
        return outcome(job, was_running=True)

    def _fits(
        self, request: Mapping[str, Any], options: Mapping[str, Any], partition: str | None
    ) -> str | None:
        """Why no node of the partition can hold one node's share of the job, or None."""
        tasks, cpus_per_task, gpus, memory = per_node_request(request, options)
        nodes = [
            node
            for node in self.cli.nodes()
            if partition is None
            or set(str(partition).split(",")) & set(node.get("partitions") or [])
        ]
        if not nodes:
            return f"partition {partition!r} has no nodes"
        wanted = int(options.get("nodes", 1))
        fitting = []
        for node in nodes:
            cpus = int(number(node.get("cpus")) or 0)
            node_memory = int(number(node.get("real_memory")) or 0) * MIB
            node_gpus = len(parse_gres(str(node.get("gres") or "")))
            if cpus < tasks * cpus_per_task:
                continue
            if memory is not None and node_memory and node_memory < memory:
                continue
            if gpus and node_gpus < gpus:
                continue
            fitting.append(node)
        if len(fitting) >= wanted:
            return None

        largest = max(nodes, key=lambda node: int(number(node.get("cpus")) or 0))
        ask = f"{tasks} task(s) x {cpus_per_task} CPU(s)"
        if gpus:
            ask += f", {gpus} GPU(s)"
        if memory is not None:
            ask += f", {memory / MIB:.0f} MB"
        where = f"partition {partition!r}" if partition else "the cluster"
        return (
            f"the job needs {wanted} node(s) with {ask} each, but {len(fitting)} of the "
            f"{len(nodes)} node(s) of {where} can hold that (the largest has "
            f"{number(largest.get('cpus'))} CPUs, {number(largest.get('real_memory'))} MB, "
            f"{len(parse_gres(str(largest.get('gres') or '')))} GPUs)"
        )

    def _test_only(self, request: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        """SLURM's own verdict on the request (``sbatch --test-only``): None when accepted."""
        args = ["--test-only", *sbatch_options(request, options), "--wrap", "true"]
        result = self.cli.run("sbatch", args, check=False)
        if result.returncode == 0:
            return None
        return slurm_message(result)


def outcome(job: Mapping[str, Any], *, was_running: bool = True) -> tuple[str, str | None] | None:
    """Map one ``squeue`` job onto ``(status, reason)``; ``None`` while it is not over."""
    state, _ = job_state(job)
    if state in ACTIVE_STATES:
        return None
    status, text = _FINAL_STATES.get(state, ("failed", f"SLURM reports state {state}"))
    if status == "succeeded":
        return status, None

    slurm_reason = job.get("state_reason")
    parts = [f"{text} ({state}"]
    if slurm_reason not in (None, "", "None"):
        parts.append(f", reason {slurm_reason}")
    code, signal_number = exit_code(job)
    if state == "FAILED" and code:
        parts.append(f", exit code {code}")
    if state == "FAILED" and signal_number:
        parts.append(f", signal {signal_number}")
    reason = "".join(parts) + ")"
    if status == "cancelled" and not was_running:
        reason = "cancelled in SLURM before the job started"
    elif status == "failed":
        reason += f"; see {SUPERVISOR_LOG} in the job folder"
    return status, reason


def ending_reason(
    slurm_id: str | None = None, cli: SlurmCli | None = None
) -> tuple[str, str] | None:
    """Inside a batch job that got SIGTERM: why SLURM is ending it, as ``(status, reason)``.

    SLURM sends the same SIGTERM for ``scancel``, a time limit, a node failure and a
    preemption; the supervisor calls this to record the right one. ``None`` when SLURM
    cannot be asked.

    Args:
        slurm_id: The job's id; default: ``SLURM_JOB_ID`` of this process.
        cli: The command runner; default: one on this process's environment.
    """
    slurm_id = slurm_id or os.environ.get("SLURM_JOB_ID")
    if not slurm_id:
        return None
    cli = cli or SlurmCli(env={**os.environ}, cache_seconds=0.0)
    try:
        job = cli.jobs(max_age=0.0).get(str(slurm_id))
    except (BackendError, SlurmUnavailable) as exc:
        log.warning("cannot ask SLURM why job %s ends: %s", slurm_id, exc)
        return None
    return None if job is None else ending_outcome(job)


def ending_outcome(job: Mapping[str, Any]) -> tuple[str, str]:
    """``(status, reason)`` of a job that SLURM is ending now (state and reason of squeue)."""
    state, _ = job_state(job)
    reason = str(job.get("state_reason") or "None")
    if reason == "TimeLimit" or state == "TIMEOUT":
        return "failed", "SLURM stopped the job at its time limit (TimeLimit)"
    if state == "NODE_FAIL" or reason in ("NodeDown", "NodeFail", "NodeNotResponding"):
        return "failed", f"a node of the job's allocation failed ({state}, reason {reason})"
    if state == "PREEMPTED" or reason.startswith("Preempt"):
        return "failed", f"SLURM preempted the job ({state}, reason {reason})"
    if state in ("OUT_OF_MEMORY",) or reason == "OutOfMemory":
        return "failed", "the job ran out of memory (OUT_OF_MEMORY)"
    return "cancelled", "cancelled by the user"


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse unknown ``cluster_options`` and values that SLURM or a script could misread."""
    unknown = sorted(set(options) - set(ACCEPTED_OPTIONS))
    if unknown:
        raise JobSpecError(
            f"unknown cluster option(s) {unknown}; accepted are {list(ACCEPTED_OPTIONS)}"
        )
    for key in ("account", "qos", "gpu_type", "reservation"):
        _check_pattern(options, key, _NAME_RE, "letters, digits, '_', '.', '-'")
    _check_pattern(options, "partition", _NAMES_RE, "partition names separated by commas")
    for key in ("nodelist", "exclude"):
        _check_pattern(options, key, _HOSTLIST_RE, "a host list such as node[01-04],gpu7")
    _check_pattern(options, "constraint", _CONSTRAINT_RE, "a feature expression such as a100&ib")
    for key in ("nodes", "cpus_per_task"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100000
        ):
            raise JobSpecError(
                f"cluster option {key!r} must be a whole number from 1, got {value!r}"
            )
    for key in ("mem", "mem_per_cpu"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise JobSpecError(f"cluster option {key!r} must be megabytes or a size like '4G'")
        if not _MEMORY_RE.match(str(value)):
            raise JobSpecError(
                f"cluster option {key!r} must be megabytes (4096) or a size with a unit "
                f"K, M, G or T ('16G'), got {value!r}"
            )
    if options.get("mem") is not None and options.get("mem_per_cpu") is not None:
        raise JobSpecError("cluster options 'mem' and 'mem_per_cpu' exclude each other; pick one")
    time_limit = options.get("time")
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, str)):
            raise JobSpecError("cluster option 'time' must be minutes or a SLURM time string")
        if isinstance(time_limit, int) and time_limit < 1 or not _TIME_RE.match(str(time_limit)):
            raise JobSpecError(
                "cluster option 'time' must be minutes (90) or 'MM:SS', 'HH:MM:SS', "
                f"'D-HH[:MM[:SS]]', got {time_limit!r}"
            )
    for key in ("exclusive", "requeue"):
        value = options.get(key)
        if value is not None and not isinstance(value, bool):
            raise JobSpecError(f"cluster option {key!r} must be True or False, got {value!r}")
    extra = options.get("sbatch_args")
    if extra is not None:
        if isinstance(extra, str) or not isinstance(extra, Sequence):
            raise JobSpecError(
                "cluster option 'sbatch_args' must be a list of long options such as "
                f"['--constraint=a100', '--signal=USR1@60'], got {extra!r}"
            )
        for arg in extra:
            match = _ARG_RE.match(arg) if isinstance(arg, str) else None
            if match is None:
                raise JobSpecError(
                    "each of sbatch_args must be '--name' or '--name=value' with no spaces, "
                    f"quotes or shell characters, got {arg!r}"
                )
            if match["name"] in _MANAGED_ARGS:
                raise JobSpecError(
                    f"sbatch option --{match['name']} cannot be given in sbatch_args: "
                    f"{_MANAGED_ARGS[match['name']]}"
                )


def _check_pattern(
    options: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str
) -> None:
    value = options.get(key)
    if value is None:
        return
    if not isinstance(value, str) or not pattern.match(value):
        raise JobSpecError(f"cluster option {key!r} must be {what}, got {value!r}")


def per_node_request(
    request: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[int, int, int, int | None]:
    """``(tasks, cpus per task, gpus, memory in bytes or None)`` that each node must hold."""
    tasks = int(request.get("devices") or 1)
    cpus_per_task = int(options.get("cpus_per_task") or 1)
    gpus = tasks if uses_gpus(request) else 0
    nodes = int(options.get("nodes") or 1)
    memory: int | None = None
    if options.get("mem") is not None:
        memory = _megabytes(options["mem"]) * MIB
    elif options.get("mem_per_cpu") is not None:
        memory = _megabytes(options["mem_per_cpu"]) * MIB * tasks * cpus_per_task
    elif request.get("memory"):
        memory = math.ceil(int(request["memory"]) / nodes / MIB) * MIB
    return tasks, cpus_per_task, gpus, memory


def uses_gpus(request: Mapping[str, Any]) -> bool:
    """Whether the job asks for one GPU per task (``accelerator`` 'gpu' or 'cuda')."""
    return request.get("accelerator") in ("gpu", "cuda")


def _megabytes(value: int | str) -> int:
    text = str(value)
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    if text[-1] in scale:
        return max(math.ceil(int(text[:-1]) * scale[text[-1]]), 1)
    return int(text)


def sbatch_options(request: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    """The resource options of a job as ``sbatch`` arguments (already validated values)."""
    tasks, cpus_per_task, gpus, memory = per_node_request(request, options)
    args = [f"--nodes={int(options.get('nodes') or 1)}", f"--ntasks-per-node={tasks}"]
    args.append(f"--cpus-per-task={cpus_per_task}")
    if gpus:
        kind = options.get("gpu_type")
        args.append(f"--gpus-per-node={kind}:{gpus}" if kind else f"--gpus-per-node={gpus}")
    if options.get("mem_per_cpu") is not None:
        args.append(f"--mem-per-cpu={options['mem_per_cpu']}")
    elif memory is not None:
        args.append(f"--mem={memory // MIB}M")
    for key, flag in (
        ("partition", "--partition"),
        ("account", "--account"),
        ("qos", "--qos"),
        ("time", "--time"),
        ("constraint", "--constraint"),
        ("reservation", "--reservation"),
        ("nodelist", "--nodelist"),
        ("exclude", "--exclude"),
    ):
        if options.get(key) is not None:
            args.append(f"{flag}={options[key]}")
    if options.get("exclusive"):
        args.append("--exclusive")
    args.append("--requeue" if options.get("requeue") else "--no-requeue")
    args.extend(options.get("sbatch_args") or [])
    return args


def submission_arguments(job_id: str, job_dir: Path) -> list[str]:
    """Options that name and place the job; given on the command line, never in the script."""
    return [
        f"--job-name=tml-{job_id}",
        f"--output={job_dir / SUPERVISOR_LOG}",
        "--open-mode=append",
        f"--chdir={job_dir}",
        "--export=ALL",
    ]


def submission_script(
    job_id: str,
    job_dir: Path,
    options: Sequence[str],
    *,
    python: str,
    prologue: Sequence[str] = (),
) -> str:
    """The batch script: ``#SBATCH`` resource lines, then the supervisor in ``srun`` mode."""
    lines = [
        "#!/bin/bash",
        f"# training-manager-lab job {job_id}: its supervisor starts the ranks with srun.",
    ]
    lines += [f"#SBATCH {option}" for option in options]
    lines += ["", "set -e"]
    lines += list(prologue)
    command = [python, "-m", "training_manager_lab.runtime.supervisor"]
    command += ["--job-dir", str(job_dir), "--launcher", "srun"]
    lines.append("exec " + " ".join(shlex.quote(part) for part in command))
    return "\n".join(lines) + "\n"


def job_environment(env: Mapping[str, str], cluster_env: Mapping[str, str]) -> dict[str, str]:
    """The environment handed to ``sbatch``: the job's, without any enclosing SLURM job.

    ``SLURM_CONF`` is kept (or taken from the backend's own environment), and the folder
    holding this package goes first on ``PYTHONPATH`` so that the supervisor imports the
    same code on the compute node.
    """
    job_env = submission_environment(env)
    if "SLURM_CONF" not in job_env and cluster_env.get("SLURM_CONF"):
        job_env["SLURM_CONF"] = cluster_env["SLURM_CONF"]
    package_root = str(Path(training_manager_lab.__file__).resolve().parent.parent)
    paths = [p for p in job_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        job_env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    return job_env
