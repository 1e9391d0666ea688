"""Jobs outlive kernels and the Jupyter server: a real `jupyter server`, real kernels, real jobs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from tests import pausing_model
from tests.conftest_server import group_processes
from tests.conftest_server import server_state_dir as server_state_dir
from training_manager_lab.manager import LOST_REASON

REPO = Path(__file__).resolve().parents[1]
API = "training-manager/api"
TERMINAL = ("succeeded", "failed", "cancelled")
DIGITS = (
    '"training_manager_lab.examples.digits:DigitsMLP", '
    'datamodule="training_manager_lab.examples.digits:DigitsData"'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout} s")


class JupyterServer:
    """A `jupyter server` process on 127.0.0.1 with the extension, restartable on one state."""

    def __init__(self, workdir: Path, state_dir: Path) -> None:
        self.root = workdir / "root"
        self.runtime = workdir / "runtime"
        self.config = workdir / "config"
        for folder in (self.root, self.runtime, self.config):
            folder.mkdir(exist_ok=True)
        self.state_dir = state_dir
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            TML_STATE_DIR=str(self.state_dir),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTER_CONFIG_DIR=str(self.config),
            MLFLOW_DISABLE_TELEMETRY="true",
        )
        env.pop("TML_SERVER_URL", None)
        env.pop("TML_SERVER_TOKEN", None)
        command = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--allow-root",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.jpserver_extensions={'training_manager_lab': True}",
        ]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.root, stdout=output, stderr=subprocess.STDOUT
            )
        wait_until(self._ready, 90, "the Jupyter server answering")

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        try:
            return self.http.get(self.url + API + "/config", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        """SIGTERM, as a service manager would; then wait for the process to end."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self.url + path, timeout=60, **kwargs)
        assert response.status_code < 400, (response.status_code, response.text)
        return response.json() if response.content else None

    def job(self, job_id: str) -> dict[str, Any]:
        return self.api("GET", f"{API}/jobs/{job_id}")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        cursor = 0
        while True:
            page = self.api("GET", f"{API}/jobs/{job_id}/events", params={"cursor": cursor})
            if not page["events"]:
                return events
            events += page["events"]
            cursor = page["cursor"]

    def stream(self, job_id: str) -> list[dict[str, Any]]:
        """Every message of a job's websocket event stream, until the server closes it."""
        url = f"ws://127.0.0.1:{self.port}/{API}/jobs/{job_id}/stream?cursor=0"
        ws = websocket.create_connection(
            url, header=[f"Authorization: token {self.token}"], timeout=60
        )
        messages = []
        try:
            while message := ws.recv():
                messages.append(json.loads(message))
        except websocket.WebSocketConnectionClosedException:
            pass
        ws.close()
        return messages

    def wait_job(
        self,
        job_id: str,
        condition: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 240,
    ) -> dict[str, Any]:
        return wait_until(
            lambda: (lambda r: r if condition(r) else None)(self.job(job_id)),
            timeout,
            f"job {job_id} {what}",
        )


class Kernel:
    """A kernel of the server, driven over its websocket channels like a notebook does."""

    def __init__(self, server: JupyterServer) -> None:
        self.server = server
        self.id = server.api("POST", "api/kernels", json={"name": "python3"})["id"]
        self.session = uuid.uuid4().hex
        self.ws = self._connect()

    def _connect(self) -> websocket.WebSocket:
        url = f"ws://127.0.0.1:{self.server.port}/api/kernels/{self.id}/channels"
        return websocket.create_connection(
            url, header=[f"Authorization: token {self.server.token}"], timeout=240
        )

    def send(self, code: str) -> str:
        """Start executing ``code``; return the request's message id."""
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "session": self.session,
                        "username": "test",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        return msg_id

    def collect(self, msg_id: str) -> str:
        """Wait for the request to finish; return its stdout, fail with its traceback."""
        out, error, idle, replied = [], None, False, False
        while not (idle and replied):
            message = json.loads(self.ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream" and content["name"] == "stdout":
                out.append(content["text"])
            elif kind == "error":
                error = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        assert error is None, f"the kernel raised:\n{error}\nstdout:\n{''.join(out)}"
        return "".join(out)

    def run(self, code: str) -> str:
        return self.collect(self.send(code))

    def restart(self) -> None:
        self.server.api("POST", f"api/kernels/{self.id}/restart")
        self.ws.close()
        self.ws = self._connect()
        wait_until(lambda: self._answers(), 60, "the restarted kernel answering")

    def _answers(self) -> bool:
        try:
            return self.run("print('ready')").strip() == "ready"
        except websocket.WebSocketException:
            self.ws = self._connect()
            return False

    def pid(self) -> int:
        return int(self.run("import os; print(os.getpid())"))

    def shutdown(self) -> None:
        self.ws.close()
        self.server.http.delete(self.server.url + f"api/kernels/{self.id}", timeout=30)


@pytest.fixture(scope="module")
def decoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is no ancestor of any kernel, advertised as a Jupyter server."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    server_state_dir: Path,  # noqa: F811
    decoy: Any,
) -> Iterator[JupyterServer]:
    jupyter = JupyterServer(tmp_path_factory.mktemp("jupyter"), server_state_dir)
    # A kernel must pick the server that started it, not any server it can find.
    decoy_info = {
        "url": f"http://127.0.0.1:{free_port()}/",
        "hostname": "127.0.0.1",
        "port": 1,
        "base_url": "/",
        "token": "decoy",
        "pid": decoy.pid,
        "root_dir": str(jupyter.root),
        "secure": False,
        "password": False,
        "sock": "",
        "version": "2.21.1",
    }
    (jupyter.runtime / f"jpserver-{decoy.pid}.json").write_text(json.dumps(decoy_info))
    jupyter.start()
    yield jupyter
    if jupyter.process is not None and jupyter.process.poll() is None:
        active = jupyter.api("GET", f"{API}/jobs", params={"limit": 1000})["jobs"]
        for record in active:
            if record["status"] not in TERMINAL:
                jupyter.http.post(jupyter.url + f"{API}/jobs/{record['id']}/cancel", timeout=60)
    jupyter.stop()


def launch_code(name: str, trainer: dict[str, Any]) -> str:
    return (
        "import training_manager_lab as tml\n"
        f"job = tml.launch({DIGITS}, trainer={trainer!r}, name={name!r}, "
        "experiment='lifetimes', accelerator='cpu')\n"
        "print(job.id)\n"
    )


def test_a_kernel_launches_through_its_server_and_reattaches_after_a_restart(
    server: JupyterServer,
) -> None:
    kernel = Kernel(server)
    client = kernel.run(
        "from training_manager_lab.client import get_client\n"
        "c = get_client()\n"
        "print(type(c).__name__, c.base)\n"
    )
    job_id = kernel.run(
        launch_code("from-kernel", {"max_epochs": 2, "limit_train_batches": 3})
    ).strip()
    first_pid = kernel.pid()

    kernel.restart()
    after = kernel.run(
        "import training_manager_lab as tml\n"
        f"job = tml.job({job_id!r})\n"
        "job.wait(240)\n"
        "metrics = job.metrics()\n"
        "print(job.status, len(metrics), metrics['key'].nunique())\n"
    ).split()
    second_pid = kernel.pid()
    kernel.shutdown()
    events = server.events(job_id)
    metric_events = [e for e in events if e["type"] == "metric"]

    assert client.split() == ["ServerClient", f"{server.url}{API}"]
    assert first_pid != second_pid
    assert server.job(job_id)["status"] == "succeeded"
    assert after[0] == "succeeded"
    assert int(after[1]) == len(metric_events) > 0
    assert int(after[2]) == len({e["key"] for e in metric_events})
    assert events[-1] == {**events[-1], "type": "status", "status": "succeeded"}


def test_server_restart_readopts_a_running_job_and_records_a_lost_one(
    server: JupyterServer,
) -> None:
    # Both jobs stop before step 2 until the test says go, so both are mid-run at the restart.
    entry = pausing_model.place(server.root, 2)
    spec = {
        "experiment": "lifetimes",
        "entry": {
            "kind": "file",
            "model": entry,
            "datamodule": "training_manager_lab.examples.digits:DigitsData",
        },
        "accelerator": "cpu",
        "trainer": {"max_epochs": 1, "limit_train_batches": 4, "limit_val_batches": 1},
    }
    survivor = server.api("POST", f"{API}/jobs", json={"spec": {**spec, "name": "survivor"}})
    lost = server.api("POST", f"{API}/jobs", json={"spec": {**spec, "name": "lost"}})

    def training(record: dict[str, Any]) -> bool:
        return record["status"] == "running" and record.get("progress") is not None

    survivor_pid = server.wait_job(survivor["id"], training, "training")["pid"]
    lost_pid = server.wait_job(lost["id"], training, "training")["pid"]
    before = len(server.events(survivor["id"]))

    server.stop()
    survivor_alive = bool(group_processes(survivor_pid))
    os.killpg(lost_pid, signal.SIGKILL)
    wait_until(lambda: not group_processes(lost_pid), 30, "the lost job's processes gone")
    server.start()
    after_restart = server.job(survivor["id"])
    lost_after = server.job(lost["id"])
    lost_stream = [event for message in server.stream(lost["id"]) for event in message["events"]]
    (server.root / "go-2").touch()
    ended = server.wait_job(survivor["id"], lambda r: r["status"] in TERMINAL, "ending")
    events = server.events(survivor["id"])

    assert survivor_alive
    assert after_restart["status"] == "running" and after_restart["pid"] == survivor_pid
    assert f"re-adopted running jobs: {survivor['id']}" in server.log.read_text()
    assert lost_after["status"] == "failed"
    assert lost_after["reason"] == LOST_REASON
    # No process of the lost job is left to write its end; the stream still ends with it.
    assert lost_stream[-1] == {
        **lost_stream[-1],
        "type": "status",
        "status": "failed",
        "reason": LOST_REASON,
    }
    assert ended["status"] == "succeeded"
    assert len(events) > before
    assert events[-1]["type"] == "status" and events[-1]["status"] == "succeeded"
    assert max(e["step"] for e in events if e["type"] == "progress") == 4


def test_two_kernels_launching_at_once_both_see_both_jobs(server: JupyterServer) -> None:
    kernels = [Kernel(server), Kernel(server)]
    for kernel in kernels:
        kernel.run("import training_manager_lab as tml, lightning")
    trainer = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}

    requests_sent = [
        kernel.send(launch_code(f"twin-{i}", trainer)) for i, kernel in enumerate(kernels)
    ]
    ids = [kernel.collect(msg).strip() for kernel, msg in zip(kernels, requests_sent, strict=True)]
    seen = [
        set(kernel.run("print(' '.join(j.id for j in tml.jobs(limit=1000)))").split())
        for kernel in kernels
    ]
    for kernel in kernels:
        kernel.shutdown()
    for job_id in ids:
        server.api("POST", f"{API}/jobs/{job_id}/cancel")
    records = [server.job(job_id) for job_id in ids]

    assert len(set(ids)) == 2
    assert all(set(ids) <= found for found in seen)
    assert {r["name"] for r in records} == {"twin-0", "twin-1"}
    assert all(r["status"] in TERMINAL for r in records)
