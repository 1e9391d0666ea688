"""The job process: starts the ranks, owns the MLflow run, bridges metrics, records the outcome."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ..events import EVENTS_FILE, EventWriter, read_events, stream_size
from ..store import TERMINAL, JobStore
from .environment import free_port, rank_environment
from .worker import MODEL_FILE, RUN_FILE, error_file

log = logging.getLogger("training_manager_lab.supervisor")

POLL_INTERVAL = 0.25
BRIDGE_INTERVAL = 1.0
#: How long ranks get to stop after SIGTERM before they are killed.
GRACE_PERIOD = 5.0
#: Seconds a job may take to start training (its first progress event), on top of its stall
#: timeout.
STARTUP_ALLOWANCE = 300.0


class Supervisor:
    """Runs one job to its end.

    The supervisor is the only process of a job that writes its state to the job store,
    and the only one besides rank zero that writes to its MLflow run: it creates the run,
    and forwards the metrics rank zero appends to the event stream, in batches, so that
    the training loop never waits for the tracking store.

    Args:
        job_dir: the job's folder, holding ``launch.json``.
        launcher: ``"local"`` starts the ranks here; ``"srun"`` starts them with SLURM.
    """

    def __init__(self, job_dir: Path, launcher: str = "local") -> None:
        # First of all: a cancel may arrive while the supervisor is still starting.
        self.stop_requested = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.job_dir = job_dir
        self.launcher = launcher
        self.launch = json.loads((job_dir / "launch.json").read_text())
        self.job_id: str = self.launch["job_id"]
        self.store = JobStore(Path(self.launch["state_dir"]) / "jobs.db")
        self.events = EventWriter(job_dir / EVENTS_FILE)
        self.ranks: list[subprocess.Popen[bytes]] = []
        self.run_id: str | None = None
        self._tracker: Any = None
        self._lineage: dict[str, Any] | None = None
        self._cursor = 0
        self._pending_metrics: list[dict[str, Any]] = []
        self._last_metrics: dict[str, float | None] = {}
        self._progress: dict[str, Any] | None = None
        self._last_bridge = 0.0
        self._last_event = time.monotonic()
        self._training_started = False
        self._stall_timeout = self.launch["spec"].get("stall_timeout")

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        log.info("job %s: supervisor %d starting %s ranks", self.job_id, os.getpid(), self.launcher)
        # A SLURM job is still "queued" in the store until its allocation starts this.
        self.store.transition(self.job_id, "running", None)

        status, reason, error = "failed", None, None
        try:
            self._start_ranks()
            self._start_tracking()
            status, reason, error = self._follow()
        except Exception as exc:
            log.exception("job %s: supervisor failed", self.job_id)
            reason = f"the job's supervisor failed: {exc}"
            error = {"rank": None, "message": reason, "traceback": _format_exc()}
        finally:
            self._stop_ranks()
        self._finish(status, reason, error)
        return 0 if status == "succeeded" else 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _start_ranks(self) -> None:
        world_size = int(self.launch["world_size"])
        base = dict(os.environ)
        base["TML_SUPERVISOR_PID"] = str(os.getpid())
        base["PYTHONUNBUFFERED"] = "1"
        gpus = self.launch.get("allocation", {}).get("gpus") or []
        if gpus:
            # Allocations hold NVML indices, which follow the PCI bus order.
            base["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            base["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
        command = [sys.executable, "-m", "training_manager_lab.runtime.worker"]
        command += ["--job-dir", str(self.job_dir)]
        cwd = self.launch["spec"].get("cwd") or None
        if cwd and not os.path.isdir(cwd):
            cwd = None

        if self.launcher == "srun":
            base["TML_LAUNCHER"] = "srun"
            base["TML_MASTER_ADDR"] = _first_slurm_node()
            base["TML_MASTER_PORT"] = str(free_port())
            srun = ["srun", "--kill-on-bad-exit=1", f"--output={self.job_dir}/rank-%t.log"]
            srun += [f"--ntasks={world_size}"]
            self.ranks.append(subprocess.Popen(srun + command, env=base, cwd=cwd))
            return

        port = free_port()
        for rank in range(world_size):
            env = (
                base
                if world_size == 1
                else rank_environment(base, rank=rank, world_size=world_size, master_port=port)
            )
            with open(self.job_dir / f"rank-{rank}.log", "ab") as output:
                self.ranks.append(
                    subprocess.Popen(
                        command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT
                    )
                )
        self.store.update(self.job_id, world_size=world_size)

    def _start_tracking(self) -> None:
        from ..tracking import Tracker

        spec = self.launch["spec"]
        self._tracker = Tracker(self.launch["tracking_uri"])
        tags = {"tml.job_id": self.job_id, "tml.job_name": spec["name"]}
        self.run_id = self._tracker.start_run(spec["experiment"], spec["name"], tags)
        (self.job_dir / RUN_FILE).write_text(json.dumps({"run_id": self.run_id}))
        self.store.update(self.job_id, run_id=self.run_id)
        params = {f"trainer.{key}": value for key, value in (spec.get("trainer") or {}).items()}
        params.update(
            {
                "devices": spec["devices"],
                "strategy": spec["strategy"],
                "accelerator": self.launch["accelerator"],
                "world_size": self.launch["world_size"],
            }
        )
        self._tracker.log_params(self.run_id, params)
        lineage = dict(spec.get("lineage") or {})
        lineage["job"] = {
            "id": self.job_id,
            "name": spec["name"],
            "spec": {k: v for k, v in spec.items() if k != "lineage"},
            "allocation": self.launch.get("allocation"),
            "world_size": self.launch["world_size"],
        }
        self._tracker.log_lineage(self.run_id, lineage)
        self._lineage = lineage
        log.info("job %s: MLflow run %s", self.job_id, self.run_id)

    def _follow(self) -> tuple[str, str | None, dict[str, Any] | None]:
        while True:
            self._bridge()
            if self.stop_requested:
                return self._why_stopped()
            codes = [rank.poll() for rank in self.ranks]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                return "failed", None, self._first_error(failed)
            if all(code == 0 for code in codes):
                if not (self.job_dir / MODEL_FILE).exists():
                    return "failed", "rank 0 finished without logging the model", None
                return "succeeded", None, None
            stalled = time.monotonic() - self._last_event
            # Start-up (imports, data set-up, waiting for every rank to join the process
            # group) gets extra time until the first progress event, written once training
            # starts; the events rank 0 writes before that (world, params) do not end it.
            allowance = 0 if self._training_started else STARTUP_ALLOWANCE
            limit = (self._stall_timeout or 0) + allowance
            if self._stall_timeout and stalled > limit and not any(code == 0 for code in codes):
                return "failed", None, self._stall_error(stalled)
            time.sleep(POLL_INTERVAL)

    def _why_stopped(self) -> tuple[str, str | None, dict[str, Any] | None]:
        # SLURM sends the same SIGTERM for scancel, a time limit, a node failure and a
        # preemption; ask it which one this is.
        if self.launcher == "srun":
            from ..backends.slurm import ending_reason

            known = ending_reason()
            if known is not None and known[0] != "cancelled":
                status, reason = known
                return status, reason, {"rank": None, "message": reason, "traceback": None}
        return "cancelled", "cancelled by the user", None

    def _stall_error(self, stalled: float) -> dict[str, Any]:
        tails = [
            f"--- rank {rank} ---\n{_tail(self.job_dir / f'rank-{rank}.log', 1500)}"
            for rank in range(int(self.launch["world_size"]))
        ]
        return {
            "rank": None,
            "message": (
                f"no progress for {stalled:.0f} s (stall_timeout={self._stall_timeout:g}); a "
                "rank may hang, for example in a collective, so the job was stopped"
            ),
            "traceback": "\n".join(tails),
        }

    def _first_error(self, failed: list[int]) -> dict[str, Any]:
        killed = self._killed_rank(failed)
        if killed is not None:
            return killed
        errors = []
        for index in failed if self.launcher == "local" else range(int(self.launch["world_size"])):
            path = error_file(self.job_dir, index)
            if path.exists():
                errors.append(json.loads(path.read_text()))
        # Give ranks that failed at the same moment a chance to write their tracebacks.
        if not errors:
            time.sleep(0.5)
            for path in sorted(self.job_dir.glob("error-rank*.json")):
                errors.append(json.loads(path.read_text()))
        if errors:
            first = min(errors, key=lambda error: error.get("time", 0))
            first["message"] = f"rank {first['rank']} failed: {first['message']}"
            return first
        rank = failed[0]
        code = self.ranks[rank].returncode if self.launcher == "local" else None
        tail = _tail(self.job_dir / f"rank-{rank}.log")
        return {
            "rank": rank,
            "message": f"rank {rank} exited with code {code} without a Python traceback",
            "traceback": tail,
        }

    def _killed_rank(self, failed: list[int]) -> dict[str, Any] | None:
        """A rank that a signal ended (SIGKILL by the OOM killer or by hand) without a traceback.

        Its peers then fail in their next collective ("Connection reset by peer") and write
        tracebacks of their own; the job's reason must name the rank that was killed instead.
        """
        if self.launcher != "local":
            return None
        for rank in failed:
            code = self.ranks[rank].returncode
            if code is not None and code < 0 and not error_file(self.job_dir, rank).exists():
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                return {
                    "rank": rank,
                    "message": f"rank {rank} was killed by {name} (exit code {code})",
                    "traceback": _tail(self.job_dir / f"rank-{rank}.log"),
                }
        return None

    def _stop_ranks(self) -> None:
        me = psutil.Process()
        try:
            children = me.children(recursive=True)
        except psutil.Error:
            children = []
        # Local ranks hold nothing that needs a clean exit (the supervisor records the
        # outcome), and Lightning's SIGTERM handler talks to the other ranks, which can hang
        # a rank whose peers are already gone: kill them at once. srun needs SIGTERM to pass
        # the signal on to its tasks.
        for child in children:
            try:
                child.kill() if self.launcher == "local" else child.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(children, timeout=GRACE_PERIOD)
        for child in alive:
            try:
                child.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=GRACE_PERIOD)

    def _finish(self, status: str, reason: str | None, error: dict[str, Any] | None) -> None:
        self._bridge(force=True)
        model = _logged_model(self.job_dir / MODEL_FILE)
        if model and model.get("checkpoint") and self._lineage is not None and self.run_id:
            # The lineage gains the checkpoint rank zero saved last.
            self._lineage["checkpoint"] = model["checkpoint"]
            self._safely(self._tracker.log_lineage, self.run_id, self._lineage)
        if self._tracker is not None and self.run_id is not None:
            try:
                self._tracker.end_run(self.run_id, status)
            except Exception:
                log.exception("job %s: could not close MLflow run %s", self.job_id, self.run_id)
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = error
            (self.job_dir / "error.json").write_text(json.dumps(error))
        if model:
            fields["model_uri"] = model["model_uri"]
        if self._progress is not None:
            fields["progress"] = self._progress
        fields["last_metrics"] = self._last_metrics
        reason = reason or _reason(error)
        # The closing event goes first, so that whoever sees the record ended (job.wait())
        # finds it in the stream too.
        self.events.write({"type": "status", "status": status, "reason": reason})
        recorded = self.store.transition(self.job_id, status, reason, **fields)
        if not recorded:
            current = self.store.get(self.job_id)
            log.info(
                "job %s: already %s; outcome %s not recorded",
                self.job_id,
                current["status"],
                status,
            )
            # Whoever ended the job first wins; the stream ends with what the store holds.
            ending = {"status": current["status"], "reason": current["reason"]}
            self.events.write({"type": "status", **ending})
            status = current["status"]
        self.events.close()
        log.info("job %s: %s", self.job_id, status)
        self._start_queued_jobs()

    def _start_queued_jobs(self) -> None:
        # The supervisor of a finishing job frees its devices, so it also starts whoever
        # waits for them: the queue moves on even when no server or kernel is running.
        try:
            from ..manager import JobManager

            JobManager(self.launch["state_dir"], tracking_uri=self.launch["tracking_uri"]).tick()
        except Exception:
            log.exception("job %s: could not start queued jobs", self.job_id)

    # -- metric bridge --------------------------------------------------------------------

    def _bridge(self, force: bool = False) -> None:
        # A size check first: most passes find nothing new, and a stat costs far less than
        # opening and reading the stream while a rank trains beside this process.
        pending = stream_size(self.job_dir / EVENTS_FILE) > self._cursor
        while pending:
            events, self._cursor = read_events(self.job_dir / EVENTS_FILE, self._cursor)
            if not events:
                break
            self._last_event = time.monotonic()
            for event in events:
                kind = event.get("type")
                if kind == "metric":
                    self._pending_metrics.append(event)
                    self._last_metrics[event["key"]] = event.get("value")
                elif kind == "progress":
                    self._progress = _progress_record(event)
                    self._training_started = True
                elif kind == "params" and self._tracker is not None and self.run_id:
                    self._safely(self._tracker.log_params, self.run_id, event["params"])
                elif kind == "world":
                    self.store.update(self.job_id, world_size=event["world_size"])
        now = time.monotonic()
        if not force and now - self._last_bridge < BRIDGE_INTERVAL:
            return
        self._last_bridge = now
        if self._pending_metrics and self._tracker is not None and self.run_id:
            batch, self._pending_metrics = self._pending_metrics, []
            self._safely(self._tracker.log_metric_events, self.run_id, batch)
        if self._progress is not None:
            self.store.update(self.job_id, progress=self._progress, last_metrics=self._last_metrics)

    def _safely(self, function: Any, *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            log.exception("job %s: MLflow refused an update", self.job_id)


def _logged_model(path: Path) -> dict[str, Any] | None:
    """What rank zero wrote after logging the model, or None when it wrote nothing usable."""
    try:
        logged = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.exception("could not read %s", path)
        return None
    return logged if isinstance(logged, dict) and logged.get("model_uri") else None


def _progress_record(event: dict[str, Any]) -> dict[str, Any]:
    record = {
        key: event.get(key)
        for key in (
            "step",
            "total_steps",
            "epoch",
            "max_epochs",
            "samples_per_sec",
            "elapsed",
            "eta",
        )
    }
    total = event.get("total_steps")
    record["fraction"] = min(event["step"] / total, 1.0) if total else None
    return record


def _reason(error: dict[str, Any] | None) -> str | None:
    return None if error is None else error.get("message")


def _tail(path: Path, size: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode(errors="replace")


def _format_exc() -> str:
    import traceback

    return traceback.format_exc()


def _first_slurm_node() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "localhost")
    result = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
    )
    names = result.stdout.split()
    return names[0] if names else "localhost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Supervise one training-manager job.")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--launcher", choices=("local", "srun"), default="local")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    supervisor = Supervisor(args.job_dir, args.launcher)
    record = supervisor.store.get(supervisor.job_id)
    if record.get("reason") == "cancel requested":
        supervisor.store.transition(supervisor.job_id, "cancelled", "cancelled by the user")
    if record["status"] in TERMINAL or record.get("reason") == "cancel requested":
        log.info("job %s is already %s; nothing to run", supervisor.job_id, record["status"])
        return 0
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
