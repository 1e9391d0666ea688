"""Reliability fixtures: a real Jupyter server, fault-injecting models, process and store checks.

Test modules import these with ``from tests.conftest_faults import *``. Trial counts come
from the environment so that ``scripts/soak.sh`` can run the same tests for longer:
``TML_TRIALS`` (fault and crash trials), ``TML_LOAD_SEQUENCE`` and ``TML_LOAD_PARALLEL``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from training_manager_lab.store import ALLOWED, STATUSES, TERMINAL, JobStore

REPO_ROOT = Path(__file__).resolve().parents[1]
API = "training-manager/api"
SERVER_START_TIMEOUT = 180.0
#: How long every process of a job may take to disappear after the job has ended.
ORPHAN_WINDOW = 10.0

DIGITS_MODEL = "training_manager_lab.examples.digits:DigitsMLP"
DIGITS_DATA = "training_manager_lab.examples.digits:DigitsData"
#: Trainer arguments of a fit that runs until something stops it.
ENDLESS = {"max_epochs": 100_000, "limit_val_batches": 0, "enable_checkpointing": False}
#: Trainer arguments of the shortest fit that still logs metrics and a model.
SHORT = {"max_steps": 3, "limit_val_batches": 0, "enable_checkpointing": False}

# A model defined the way a notebook cell defines it, so that it reaches the ranks by value.
# It can sleep in every step, stop before step 10 until a ``gate`` file exists, or log odd
# metrics (DigitsMLP itself can fail or hang a rank).
FAULT_CELL = """
import os
import time

import torch

from training_manager_lab.examples.digits import DigitsMLP


class FaultMLP(DigitsMLP):
    def __init__(self, step_sleep=0.0, odd_metrics=False, vector_log=False, gate=None):
        super().__init__()
        self.step_sleep = step_sleep
        self.odd_metrics = odd_metrics
        self.vector_log = vector_log
        self.gate = gate

    def training_step(self, batch, batch_idx):
        while self.gate and self.global_step == 10 and not os.path.exists(self.gate):
            time.sleep(0.05)
        if self.step_sleep:
            time.sleep(self.step_sleep)
        if self.odd_metrics:
            self.log("odd/inf", float("inf"))
            self.log("odd/neg_inf", float("-inf"))
            self.logger.log_metrics({"odd/vector": torch.ones(3)}, step=self.global_step)
        if self.vector_log:
            self.log("odd/vector", torch.ones(3))
        return super().training_step(batch, batch_idx)
"""


def trials(default: int = 1, variable: str = "TML_TRIALS") -> int:
    """How many times a reliability test repeats its fault (from the environment)."""
    return max(int(os.environ.get(variable, default)), 1)


def fault_module() -> types.ModuleType:
    """A fresh module holding ``FaultMLP``, as if a notebook cell had defined it."""
    module = types.ModuleType("__fault_cell__")
    exec(textwrap.dedent(FAULT_CELL), module.__dict__)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 180.0, what: str = "it") -> Any:
    """Poll ``condition`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


class JupyterServer:
    """A real ``jupyter server`` process with the extension on, bound to 127.0.0.1.

    It runs in a session of its own, so that killing it with SIGKILL hits only it, as a
    crash would. ``start`` after ``kill`` brings up a new server on the same port, token
    and state directory, as a user restarting JupyterLab would.

    Args:
        state_dir: the extension's state directory.
        workdir: where the server's log and Jupyter runtime files go.
        cpu_slots: CPU processes the job manager may run at once.
        tracking_uri: MLflow tracking URI; default: the state directory's store.
        config: more ``TrainingManagerApp`` settings.
        env: more environment variables of the server process.
    """

    def __init__(
        self,
        state_dir: Path,
        workdir: Path,
        cpu_slots: int = 4,
        tracking_uri: str = "",
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.workdir = workdir
        self.cpu_slots = cpu_slots
        self.tracking_uri = tracking_uri
        self.extra_config = dict(config or {})
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        config = {
            "ServerApp": {
                "jpserver_extensions": {
                    "training_manager_lab": True,
                    "jupyter_server_terminals": False,
                },
                "allow_unauthenticated_access": False,
            },
            "TrainingManagerApp": {
                "state_dir": str(self.state_dir),
                "cpu_slots": self.cpu_slots,
                "tracking_uri": self.tracking_uri,
                **self.extra_config,
            },
        }
        config_file = self.workdir / "jupyter_server_config.json"
        config_file.write_text(json.dumps(config))
        env = dict(os.environ)
        env.update(
            JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.workdir / "config"),
            MLFLOW_DISABLE_TELEMETRY="true",
        )
        env.pop("TML_STATE_DIR", None)
        env.update(self.extra_env)
        command = [
            sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={REPO_ROOT}", f"--config={config_file}",
        ]  # fmt: skip
        self.starts += 1
        with open(self.workdir / f"server-{self.starts}.log", "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter server exited early:\n{self.log_tail()}")
            try:
                if self.get("config").status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter server did not answer in time:\n{self.log_tail()}")
            time.sleep(0.25)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or an out-of-memory kill would."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, size: int = 4000) -> str:
        path = self.workdir / f"server-{self.starts}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{self.url}{API}/{path}", **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=body, **kwargs)

    def record(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def launch(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.launch_with(spec, None)

    def launch_with(self, spec: dict[str, Any], entry: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"spec": spec}
        if entry is not None:
            body["entry"] = entry
        response = self.post("jobs", body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def wait_terminal(self, job_id: str, timeout: float = 240.0) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (r := self.record(job_id))["status"] in TERMINAL and r,
                timeout,
                f"job {job_id} ending",
            )
        )

    def wait_step(self, job_id: str, step: int, timeout: float = 240.0) -> dict[str, Any]:
        """Wait until the job runs and its recorded progress has reached ``step``."""

        def reached() -> dict[str, Any] | None:
            record = self.record(job_id)
            assert record["status"] in ("queued", "running"), record
            progress = record.get("progress") or {}
            return record if (progress.get("step") or 0) >= step else None

        return dict(wait_until(reached, timeout, f"job {job_id} reaching step {step}"))

    def client(self) -> Any:
        from training_manager_lab.client import ServerClient

        return ServerClient(self.url, self.token)


def import_spec(name: str, trainer: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A REST job spec that trains the digits example, imported by module name."""
    spec = {
        "name": name,
        "experiment": "reliability",
        "entry": {"kind": "import", "model": DIGITS_MODEL, "datamodule": DIGITS_DATA},
        "trainer": trainer,
        "devices": 1,
        "accelerator": "cpu",
    }
    spec.update(fields)
    return spec


def rest_pickled(
    server: JupyterServer, name: str, model: Any, trainer: dict[str, Any]
) -> dict[str, Any]:
    """POST a job whose model (and the digits data) travel by value, as the Python client does."""
    import base64

    import cloudpickle

    from training_manager_lab.examples.digits import DigitsData

    payload = cloudpickle.dumps({"model": model, "datamodule": DigitsData})
    data = import_spec(name, trainer, entry={"kind": "pickle"})
    return server.launch_with(data, base64.b64encode(payload).decode())


@pytest.fixture(scope="session")
def tml_server(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterServer]:
    """A Jupyter server process over the session's state directory, with four CPU slots.

    It shares the state directory (and so the MLflow store) with the session's embedded job
    manager: several managers over one store is a supported set-up, and the MLflow store's
    schema is created once per session.
    """
    server = JupyterServer(state_dir, tmp_path_factory.mktemp("jupyter-server"), cpu_slots=4)
    server.start()
    yield server
    for record in JobStore(state_dir / "jobs.db").active():
        server.post(f"jobs/{record['id']}/cancel")
    server.stop()


@pytest.fixture(scope="module")
def server_client(tml_server: JupyterServer) -> Iterator[Any]:
    """The public API (``tml.launch`` ...) talking to ``tml_server`` for one test module."""
    from training_manager_lab import client as client_module

    previous = client_module._client
    client_module.set_client(tml_server.client())
    yield client_module.get_client()
    client_module.set_client(previous)


# -- processes ----------------------------------------------------------------------------


def job_processes(record: dict[str, Any], job_dir: Path) -> list[psutil.Process]:
    """Live processes of a job: its supervisor's process group, and anything running in its folder.

    The second test catches a rank that left the group; zombies hold nothing and are left out.
    """
    group = record.get("pid")
    marker = f"--job-dir {job_dir}"
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            in_group = bool(group) and os.getpgid(process.pid) == group
            in_folder = marker in " ".join(process.info["cmdline"] or [])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
        if in_group or in_folder:
            found.append(process)
    return found


def orphans_after(record: dict[str, Any], job_dir: Path, window: float = ORPHAN_WINDOW) -> int:
    """How many processes of an ended job are still alive ``window`` seconds from now."""
    deadline = time.monotonic() + window
    while True:
        left = job_processes(record, job_dir)
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(0.2)


def rank_pids(record: dict[str, Any], job_dir: Path) -> dict[int, int]:
    """Rank number -> pid of a running job's ranks (read from their environment)."""
    ranks = {}
    for process in job_processes(record, job_dir):
        try:
            if "training_manager_lab.runtime.worker" not in " ".join(process.cmdline()):
                continue
            ranks[int(process.environ().get("RANK", "0"))] = process.pid
        except psutil.Error:
            continue
    return ranks


def record_figures(test: str, **figures: Any) -> None:
    """Append measured figures to the JSON-lines file named by ``TML_FIGURES``, if set."""
    path = os.environ.get("TML_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"test": test, **figures}) + "\n")


def server_usage(pid: int) -> dict[str, float]:
    """Open file descriptors, threads and resident memory (MiB) of a process."""
    process = psutil.Process(pid)
    return {
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "rss_mib": process.memory_info().rss / 2**20,
    }


# -- the job store ------------------------------------------------------------------------


def store_problems(state_dir: Path) -> list[str]:
    """Everything wrong with a job store: integrity, unknown states, disallowed transitions.

    Each job's transitions must start at ``queued``, follow ``store.ALLOWED`` one step at a
    time and end at the job's recorded status.
    """
    import sqlite3

    problems = []
    with sqlite3.connect(state_dir / "jobs.db", timeout=30) as db:
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
    store = JobStore(state_dir / "jobs.db")
    try:
        steps: dict[str, list[dict[str, Any]]] = {}
        for row in store.transitions():
            steps.setdefault(row["job_id"], []).append(row)
        records, _ = store.list(limit=1000)
        offset = 1000
        while len(records) == offset:
            more, _ = store.list(limit=1000, offset=offset)
            records += more
            offset += 1000
        for record in records:
            chain = steps.get(record["id"], [])
            if record["status"] not in STATUSES:
                problems.append(f"{record['id']}: unknown status {record['status']!r}")
            if (
                not chain
                or chain[0]["from_status"] is not None
                or chain[0]["to_status"] != "queued"
            ):
                problems.append(f"{record['id']}: transitions do not start at queued: {chain}")
                continue
            for before, after in zip(chain, chain[1:], strict=False):
                if after["from_status"] != before["to_status"] or after["to_status"] not in (
                    ALLOWED.get(after["from_status"], ())
                ):
                    problems.append(f"{record['id']}: disallowed step {before} -> {after}")
            if chain[-1]["to_status"] != record["status"]:
                problems.append(
                    f"{record['id']}: status {record['status']} but last transition {chain[-1]}"
                )
            if record["status"] in TERMINAL and not record.get("ended_at"):
                problems.append(f"{record['id']}: {record['status']} without ended_at")
    finally:
        store.close()
    return problems


# -- event streams and MLflow -------------------------------------------------------------


def stream_metrics(job_dir: Path, key: str = "train_loss") -> list[dict[str, Any]]:
    """The metric events of ``key`` in a job's event stream, every line parsed."""
    from training_manager_lab.events import EVENTS_FILE

    events = []
    with open(job_dir / EVENTS_FILE, "rb") as stream:
        for line in stream:
            event = json.loads(line)
            if event.get("type") == "metric" and event.get("key") == key:
                events.append(event)
    return events


def mlflow_steps(tracking_uri: str, run_id: str, key: str = "train_loss") -> list[int]:
    from mlflow import MlflowClient

    return sorted(
        point.step for point in MlflowClient(tracking_uri).get_metric_history(run_id, key)
    )
