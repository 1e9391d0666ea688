"""The job manager: launch, schedule, supervise, cancel, adopt and delete jobs."""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .backends.local import LocalBackend
from .config import job_dir as job_folder
from .config import state_dir as resolve_state_dir
from .errors import JobConflict, JobSpecError
from .runtime.environment import clean_environment
from .scheduler import Capacity, check_feasible, plan
from .spec import JobSpec
from .store import TERMINAL, JobStore

log = logging.getLogger(__name__)

#: A running job whose supervisor is not recorded yet is still being started by whoever
#: moved it to "running"; other managers leave it alone for this long.
STARTING_GRACE = 60.0
LOST_REASON = "lost while the server was down"
LOCAL_BACKEND_ENV = "TML_LOCAL_BACKEND"
#: The reason a running job carries between a cancel request and its end.
CANCEL_REQUESTED = "cancel requested"
#: Seconds a cluster that could not be read is not asked again: a controller that does not
#: answer makes every SLURM command wait for its timeout, and the resources route is polled.
CLUSTER_RETRY = 30.0
#: A job folder no record names is the leftover of a launch whose process stopped between
#: writing the folder and recording the job (the user never got an id); it is removed once
#: it is this many seconds old, far longer than any launch takes to record its job.
UNRECORDED_GRACE = 300.0
#: What a launch writes into a job's folder before it records the job.
LAUNCH_FILES = frozenset({"spec.json", "entry.pkl"})


#: Job records, as lists of plain dicts.
Records = list[dict[str, Any]]


class JobManager:
    """The authority over the jobs of one state directory.

    Several managers may share a state directory (the server's, a script's, a finishing
    job's supervisor): every decision is taken inside a store transaction, so a device is
    never handed out twice.

    Args:
        state_dir: where jobs, the job store and the default MLflow store live.
        tracking_uri: MLflow tracking URI; default: ``MLFLOW_TRACKING_URI`` or a SQLite
            file in the state directory.
        cpu_slots: CPU processes that may run at once; default: the usable CPU cores.
        max_queued: jobs the queue may hold before launches are refused.
        backends: execution backends by name; ``local`` is always present.
        capacity: fixed capacity (tests, benchmarks); default: read from the inventory.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        tracking_uri: str | None = None,
        cpu_slots: int | None = None,
        max_queued: int = 1000,
        backends: dict[str, Any] | None = None,
        capacity: Capacity | None = None,
        gpu_busy_threshold: int = 1 << 30,
    ) -> None:
        from .tracking import default_tracking_uri

        self.state_dir = resolve_state_dir(state_dir)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.state_dir)
        self.store = JobStore(self.state_dir / "jobs.db")
        self.cpu_slots = cpu_slots
        self.max_queued = max_queued
        self.gpu_busy_threshold = gpu_busy_threshold
        self._fixed_capacity = capacity
        self.backends: dict[str, Any] = {"local": _local_backend()}
        self.backends.update(backends or {})
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._tick_lock = threading.Lock()
        # Set once the MLflow store exists; start() prepares it before any job starts, so
        # that several supervisors never run the store's schema migrations at once.
        self._tracking_ready = threading.Event()
        self._tracking_ready.set()
        self._sampler: Any = None
        self._cluster_failure: tuple[float, dict[str, Any]] | None = None

    # -- public operations ----------------------------------------------------------------

    def launch(self, spec: JobSpec | dict[str, Any], entry: bytes | None = None) -> dict[str, Any]:
        """Record a job, start it if devices are free, and return its record at once."""
        if not isinstance(spec, JobSpec):
            spec = JobSpec.from_dict(spec)
        else:
            spec.validate()
        if spec.entry["kind"] == "pickle" and not entry:
            raise JobSpecError("a job whose entry kind is 'pickle' needs the pickled entry point")
        request = {
            "devices": spec.devices,
            "accelerator": spec.accelerator,
            "strategy": spec.strategy,
            "memory": spec.memory,
            "priority": spec.priority,
            "cluster": spec.cluster,
            "cluster_options": spec.cluster_options,
        }
        backend = self._backend(spec.cluster)
        if spec.cluster == "local":
            check_feasible(request, self.capacity())
        else:
            backend.validate(request)

        job_id = uuid.uuid4().hex[:12]
        folder = job_folder(self.state_dir, job_id)
        folder.mkdir(parents=True)
        (folder / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
        if entry:
            (folder / "entry.pkl").write_bytes(entry)
        record = {
            "id": job_id,
            "name": spec.name,
            "experiment": spec.experiment,
            "priority": spec.priority,
            "request": request,
            "spec": spec.to_dict(),
            "tracking_uri": self.tracking_uri,
            "backend": spec.cluster,
        }
        try:
            self.store.insert(record, max_queued=self.max_queued)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        log.info("job %s (%s) queued; folder %s", job_id, spec.name, folder)

        if spec.cluster == "local":
            self.tick()
        else:
            self._submit(self.store.get(job_id))
        return self.store.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        return self.store.get(_checked_id(job_id))

    def list(
        self, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[Records, int]:
        if status is not None and status not in ("queued", "running", *TERMINAL):
            raise JobSpecError(
                f"status filter must be one of queued, running, succeeded, failed, "
                f"cancelled; got {status!r}"
            )
        if not 1 <= limit <= 1000 or offset < 0:
            raise JobSpecError("limit must lie between 1 and 1000 and offset must be 0 or more")
        return self.store.list(status, limit, offset)

    def cancel(self, job_id: str, wait: bool = True, timeout: float = 15.0) -> dict[str, Any]:
        """Cancel a queued or running job; with ``wait``, return once it is terminal."""
        record = self.get(job_id)
        if record["status"] in TERMINAL:
            return record
        if record["status"] == "queued" and record["backend"] == "local":
            if self.store.transition(job_id, "cancelled", "cancelled by the user"):
                log.info("job %s cancelled while queued", job_id)
                self._end_stream(job_id, "cancelled", "cancelled by the user")
                return self.store.get(job_id)
            record = self.get(job_id)
        backend = self._backend(record["backend"])
        # Recorded first: a supervisor killed by the signal before it can handle it leaves no
        # outcome, and whoever notices must know the job was cancelled, not lost.
        self.store.update(job_id, reason=CANCEL_REQUESTED)
        backend.cancel(record)
        log.info("job %s: cancel requested", job_id)
        if not wait:
            return self.get(job_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.get(job_id)
            if record["status"] in TERMINAL:
                return record
            if record["backend"] == "local" and record.get("pid") and not backend.alive(record):
                if self.store.transition(job_id, "cancelled", "cancelled by the user"):
                    self._end_stream(job_id, "cancelled", "cancelled by the user")
                return self.get(job_id)
            time.sleep(0.1)
        if record["backend"] == "local":
            backend.kill(record)
            reason = "cancelled by the user (killed)"
            if self.store.transition(job_id, "cancelled", reason):
                self._end_stream(job_id, "cancelled", reason)
        return self.get(job_id)

    def _end_stream(self, job_id: str, status: str, reason: str | None) -> None:
        """Close a job's event stream with its final status, as its supervisor would."""
        from .events import EVENTS_FILE, EventWriter

        folder = job_folder(self.state_dir, job_id)
        if not folder.is_dir() or folder.is_symlink():
            return
        try:
            with EventWriter(folder / EVENTS_FILE) as writer:
                writer.write({"type": "status", "status": status, "reason": reason})
        except OSError:
            log.exception("job %s: could not close its event stream", job_id)

    def delete(self, job_id: str) -> None:
        """Delete a finished job's record and folder."""
        record = self.get(job_id)
        if record["status"] not in TERMINAL:
            raise JobConflict(f"job {job_id} is {record['status']}; cancel it before deleting it")
        folder = job_folder(self.state_dir, job_id)
        if folder.is_symlink():
            folder.unlink()
        else:
            shutil.rmtree(folder, ignore_errors=True)
        self.store.delete(job_id)
        log.info("job %s deleted", job_id)

    def job_dir(self, job_id: str) -> Path:
        return job_folder(self.state_dir, _checked_id(job_id))

    def sweep_unrecorded(self, older_than: float = UNRECORDED_GRACE) -> builtins.list[str]:
        """Remove what launches cut short left: folders no record names, holding only the
        files a launch writes before it records the job, untouched for ``older_than`` s.

        A folder with anything else in it (a stream, logs, a checkpoint) belonged to a job that
        ran, so it stays even without a record (a lost or replaced ``jobs.db``). Only folders
        named like a job id are considered. Returns the ids whose folders were removed.
        """
        root = self.state_dir / "jobs"
        try:
            entries = builtins.list(os.scandir(root))
        except OSError:
            return []
        recorded = self.store.ids()
        cutoff = time.time() - older_than
        removed = []
        for entry in entries:
            if entry.name in recorded or not _is_job_id(entry.name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or not _left_by_launch(
                    Path(entry.path), cutoff
                ):
                    continue
                # Read the ids again: another manager may have recorded it meanwhile.
                if entry.name in self.store.ids():
                    continue
                shutil.rmtree(entry.path)
            except OSError as err:
                log.warning("could not remove the unrecorded job folder %s: %s", entry.path, err)
                continue
            removed.append(entry.name)
        if removed:
            log.info(
                "removed %d job folder(s) of launches that were never recorded "
                "(the process launching them stopped first): %s",
                len(removed), ", ".join(sorted(removed)),
            )  # fmt: skip
        return removed

    # -- resources ------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        """What local jobs may use now: visible GPUs, CPU slots, memory."""
        if self._fixed_capacity is not None:
            return self._fixed_capacity
        from .devices.inventory import local_inventory

        inventory = local_inventory()
        visible = inventory.get("gpu_visible", [])
        gpus = tuple(gpu["index"] for gpu in inventory["gpus"] if gpu["index"] in visible)
        owned = self._owned_pids() if gpus else set()
        busy = frozenset(
            gpu["index"]
            for gpu in inventory["gpus"]
            if sum(
                p.get("used_memory") or 0
                for p in gpu.get("processes", [])
                if p.get("pid") not in owned
            )
            > self.gpu_busy_threshold
        )
        slots = self.cpu_slots or max(int(inventory["cpu"]["count"]), 1)
        return Capacity(
            gpus=gpus, busy_gpus=busy, cpu_slots=slots, memory=inventory["memory"]["total"]
        )

    def resources(self, kernels: dict[str, int | None] | None = None) -> dict[str, Any]:
        """Nodes, who holds which device, orphans, and the queue (what ResourcesView shows).

        Args:
            kernels: ``{kernel_id: pid}`` of the server's kernels, so that GPU memory they
                hold is attributed to them rather than reported as orphaned.
        """
        from .backends.local import job_processes
        from .devices.attribution import attribute
        from .devices.inventory import local_inventory

        inventory = self._sampler.latest() if self._sampler is not None else local_inventory()
        holders: dict[str, list[dict[str, Any]]] = {}
        queue = []
        allocations = []
        jobs: dict[str, dict[str, Any]] = {}
        for record in self.store.active():
            allocation = record.get("allocation") or {}
            if record["status"] == "running":
                holder = {"job_id": record["id"], "name": record["name"]}
                for gpu in allocation.get("gpus", []):
                    holders.setdefault(str(gpu), []).append(holder)
                allocations.append({**holder, "allocation": allocation})
                if inventory.get("gpus") and record["backend"] == "local":
                    pids = [process.pid for process in job_processes(record)]
                    jobs[record["id"]] = {"name": record["name"], "pids": pids}
            else:
                queue.append(
                    {
                        "id": record["id"],
                        "name": record["name"],
                        "position": record.get("queue_position"),
                        "reason": record.get("reason"),
                        "priority": record.get("priority", 0),
                    }
                )
        attributed = attribute(inventory, jobs, kernels)
        for key, found in attributed["holders"].items():
            holders.setdefault(key, []).extend(found)
        capacity = self.capacity()
        nodes = [inventory]
        cluster = self._cluster_resources()
        if cluster is not None:
            nodes.extend(cluster.get("nodes", []))
            queue.extend(cluster.get("queue", []))
        return {
            "nodes": nodes,
            "cluster": cluster,
            "holders": holders,
            "kernels": attributed["kernels"],
            "orphans": attributed["orphans"],
            # Tree series of the jobs running now only: those of every job of the last ten
            # minutes would make each answer grow with the number of jobs that ran.
            "history": (
                {inventory["node"]: self._sampler.history(trees=inventory.get("trees") or ())}
                if self._sampler is not None
                else {}
            ),
            "queue": queue,
            "allocations": allocations,
            "usage": {
                key.split(":", 1)[1]: usage
                for key, usage in (inventory.get("trees") or {}).items()
                if key.startswith("job:")
            },
            "capacity": {
                "gpus": list(capacity.gpus),
                "busy_gpus": sorted(capacity.busy_gpus),
                "cpu_slots": capacity.cpu_slots,
                "cpu_slots_used": sum((a["allocation"].get("cpu_slots") or 0) for a in allocations),
            },
        }

    def _job_trees(self) -> dict[str, int]:
        """The process trees the sampler measures: each running local job's supervisor."""
        return {
            f"job:{record['id']}": int(record["pid"])
            for record in self.store.active()
            if record["status"] == "running" and record["backend"] == "local" and record["pid"]
        }

    def _cluster_resources(self) -> dict[str, Any] | None:
        """The SLURM cluster's nodes and queue, when this manager submits to one.

        A cluster that could not be read answers with the same error for ``CLUSTER_RETRY``
        seconds before it is asked again.
        """
        if "slurm" not in self.backends and not os.environ.get("SLURM_CONF"):
            return None
        failure = self._cluster_failure
        if failure is not None and time.monotonic() - failure[0] < CLUSTER_RETRY:
            return failure[1]
        try:
            cluster = dict(self._backend("slurm").resources())
        except Exception as exc:
            cluster = {"nodes": [], "queue": [], "error": str(exc)}
        if cluster.get("error"):
            if failure is None:
                log.warning("cannot read the SLURM cluster: %s", cluster["error"])
            self._cluster_failure = (time.monotonic(), cluster)
        else:
            if failure is not None:
                log.info("the SLURM cluster answers again")
            self._cluster_failure = None
        return cluster

    def _owned_pids(self) -> set[int]:
        from .backends.local import job_processes

        owned: set[int] = set()
        for record in self.store.active():
            owned.update(process.pid for process in job_processes(record))
        return owned

    # -- scheduling and supervision --------------------------------------------------------

    def tick(self) -> builtins.list[str]:
        """Start the queued local jobs that fit now; return their ids."""
        if not self._tracking_ready.is_set():
            return []
        with self._tick_lock:
            capacity = self.capacity()
            started: list[tuple[dict[str, Any], dict[str, Any]]] = []
            with self.store.transaction() as db:
                active = [job for job in self.store.active(db) if job["backend"] == "local"]
                decision = plan(active, capacity)
                for job, allocation in decision.starts:
                    if self.store.transition(
                        job["id"],
                        "running",
                        None,
                        db=db,
                        allocation=allocation,
                        queue_position=None,
                    ):
                        started.append((job, allocation))
                for job_id, (position, reason) in decision.waiting.items():
                    self.store._update(db, job_id, {"queue_position": position, "reason": reason})
            for job, allocation in started:
                self._start(job, allocation)
            return [job["id"] for job, _ in started]

    def _start(self, job: dict[str, Any], allocation: dict[str, Any]) -> None:
        folder = job_folder(self.state_dir, job["id"])
        request = job["request"]
        accelerator = "gpu" if allocation["gpus"] else "cpu"
        world_size = len(allocation["gpus"]) or allocation["cpu_slots"]
        launch = {
            "job_id": job["id"],
            "state_dir": str(self.state_dir),
            "tracking_uri": job.get("tracking_uri") or self.tracking_uri,
            "spec": job["spec"],
            "allocation": allocation,
            "accelerator": accelerator,
            "world_size": world_size,
            "nodes": 1,
            "request": request,
        }
        (folder / "launch.json").write_text(json.dumps(launch, indent=2))
        env = clean_environment()
        env["TML_STATE_DIR"] = str(self.state_dir)
        try:
            launched = self.backends["local"].start(job, folder, env)
        except Exception as exc:
            log.exception("job %s: could not start", job["id"])
            self.store.transition(job["id"], "failed", f"the job could not be started: {exc}")
            return
        self.store.update(
            job["id"],
            pid=launched.pid,
            pid_create_time=launched.create_time,
            backend_id=launched.backend_id,
            world_size=world_size,
        )

    def _submit(self, record: dict[str, Any]) -> None:
        folder = job_folder(self.state_dir, record["id"])
        request = record["request"]
        options = request.get("cluster_options") or {}
        nodes = int(options.get("nodes", 1))
        launch = {
            "job_id": record["id"],
            "state_dir": str(self.state_dir),
            "tracking_uri": record.get("tracking_uri") or self.tracking_uri,
            "spec": record["spec"],
            "allocation": {"node": "slurm", "gpus": [], "cpu_slots": request["devices"]},
            "accelerator": "gpu" if request["accelerator"] in ("gpu", "cuda") else "cpu",
            "world_size": request["devices"] * nodes,
            "nodes": nodes,
            "request": request,
        }
        (folder / "launch.json").write_text(json.dumps(launch, indent=2))
        env = clean_environment()
        env["TML_STATE_DIR"] = str(self.state_dir)
        backend = self._backend(record["backend"])
        try:
            launched = backend.start(record, folder, env)
        except Exception as exc:
            self.store.transition(record["id"], "failed", f"submission failed: {exc}")
            raise
        self.store.update(record["id"], backend_id=launched.backend_id)

    def supervise(self, reason: str | None = None) -> None:
        """Record jobs whose processes ended without saying how, as failed."""
        for record in self.store.active():
            backend = self.backends.get(record["backend"])
            if backend is None:
                continue
            if record["status"] == "queued" and record["backend"] == "local":
                continue
            if record["backend"] == "local" and not record.get("pid"):
                started = record.get("started_at") or record["created_at"]
                if time.time() - started < STARTING_GRACE:
                    continue
            outcome = backend.poll(record)
            if outcome is None:
                if record["status"] == "queued" and record["backend"] != "local":
                    self._copy_cluster_reason(backend, record)
                continue
            status, why = outcome
            fresh = self.store.get(record["id"])
            if fresh["status"] in TERMINAL:
                continue
            if fresh.get("reason") == CANCEL_REQUESTED and status != "cancelled":
                # The supervisor died of the cancel itself (before it could handle it).
                status, why = "cancelled", "cancelled by the user"
            why = reason or why
            error = None
            if status == "failed":
                error = fresh.get("error") or {"rank": None, "message": why, "traceback": None}
            # Close the run and the stream first, so that whoever sees the job ended finds
            # its MLflow run ended too.
            self._close_out(fresh, status, why)
            if self.store.transition(record["id"], status, why, error=error):
                log.warning("job %s: %s (%s)", record["id"], status, why)

    def _close_out(self, record: dict[str, Any], status: str, reason: str | None) -> None:
        """Finish what a job's dead supervisor could not: its MLflow run and its event stream.

        The supervisor forwards metrics to MLflow once a second, so up to a second of them
        had not reached the run; MLflow skips metrics it already holds, so the whole stream
        is forwarded again. The stream then ends with a status event, as a supervisor ends it,
        so that every reader following it stops.
        """
        from .events import EVENTS_FILE, read_events

        path = job_folder(self.state_dir, record["id"]) / EVENTS_FILE
        try:
            if record.get("run_id"):
                from .tracking import Tracker

                metrics: list[dict[str, Any]] = []
                cursor = 0
                while True:
                    events, cursor = read_events(path, cursor)
                    if not events:
                        break
                    metrics.extend(e for e in events if e.get("type") == "metric")
                tracker = Tracker(record.get("tracking_uri") or self.tracking_uri)
                tracker.log_metric_events(record["run_id"], metrics)
                tracker.end_run(record["run_id"], status)
            self._end_stream(record["id"], status, reason)
        except Exception:
            log.exception("job %s: could not close out its MLflow run and stream", record["id"])

    def _copy_cluster_reason(self, backend: Any, record: dict[str, Any]) -> None:
        try:
            reason = backend.describe(record).get("reason")
        except Exception as exc:
            log.debug("job %s: no cluster details: %s", record["id"], exc)
            return
        if reason and reason != record.get("reason"):
            self.store.update(record["id"], reason=f"SLURM: {reason}")

    def adopt(self) -> None:
        """At start-up: keep following live jobs; record those that died meanwhile as lost."""
        self.supervise(reason=LOST_REASON)
        try:
            self.sweep_unrecorded()
        except Exception:
            # Housekeeping: a store or folder that cannot be read must not stop the start.
            log.exception("could not look for job folders of launches never recorded")
        alive = [r["id"] for r in self.store.active() if r["status"] == "running"]
        if alive:
            log.info("re-adopted running jobs: %s", ", ".join(alive))

    def start(self, interval: float = 0.5) -> None:
        """Run scheduling and supervision in a background thread."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._tracking_ready.clear()
        threading.Thread(target=self._prepare_tracking, name="tml-tracking", daemon=True).start()
        from .devices.history import Sampler

        self._sampler = Sampler(interval=1.0, window=600.0, trees=self._job_trees).start()
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="tml-manager", daemon=True
        )
        self._thread.start()

    def _prepare_tracking(self) -> None:
        from .tracking import Tracker

        try:
            Tracker(self.tracking_uri).ensure_store()
        except Exception:
            log.exception("the MLflow store at %s is not usable; jobs will fail", self.tracking_uri)
        finally:
            self._tracking_ready.set()
        self.tick()

    def stop(self) -> None:
        self._stopping.set()
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self, interval: float) -> None:
        next_sweep = time.monotonic() + UNRECORDED_GRACE
        while not self._stopping.wait(interval):
            try:
                self.supervise()
                self.tick()
                self.backends["local"].reap()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + UNRECORDED_GRACE
                    self.sweep_unrecorded()
            except Exception:
                log.exception("job manager pass failed")

    def _backend(self, name: str) -> Any:
        if name not in self.backends and name == "slurm":
            from .backends.slurm import SlurmBackend

            self.backends["slurm"] = SlurmBackend()
        try:
            return self.backends[name]
        except KeyError:
            raise JobSpecError(
                f"unknown cluster {name!r}; available: {sorted(self.backends)}"
            ) from None


def _left_by_launch(folder: Path, cutoff: float) -> bool:
    """Whether ``folder`` holds only launch files, none of them (nor it) changed after cutoff."""
    times = [folder.stat().st_mtime]
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name not in LAUNCH_FILES or not entry.is_file(follow_symlinks=False):
                return False
            times.append(entry.stat(follow_symlinks=False).st_mtime)
    return max(times) <= cutoff


def _is_job_id(name: Any) -> bool:
    return isinstance(name, str) and len(name) == 12 and all(c in "0123456789abcdef" for c in name)


def _checked_id(job_id: Any) -> str:
    if not _is_job_id(job_id):
        from .errors import JobNotFound

        raise JobNotFound(str(job_id)[:64])
    return job_id


def _local_backend() -> Any:
    """The backend of local jobs: ``TML_LOCAL_BACKEND`` ("module:Class") or processes here.

    The variable reaches every process that runs a scheduling pass (the server, scripts,
    finishing supervisors), so they all start local jobs the same way.
    """
    reference = os.environ.get(LOCAL_BACKEND_ENV)
    if not reference:
        return LocalBackend()
    from .spec import resolve_reference

    return resolve_reference(reference)()
