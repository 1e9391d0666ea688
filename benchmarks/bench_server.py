"""B5: the server with 10,000 jobs in its store: listing, streaming events, sampling resources.

- Listing: 10,000 finished jobs go into a fresh job store (``JobStore.insert``, then their
  transitions), and the first page of 50 is asked for many times, in process
  (``JobManager.list``) and over REST from a real Jupyter server with the extension on
  127.0.0.1 (``GET jobs``; also the last page). The REST baseline is the server's own
  ``GET /api/status``, the cheapest authenticated route, timed the same way.
- Streaming: a pre-written ``events.jsonl`` of a finished job is replayed over the websocket
  (``WS jobs/<id>/stream``) until the server closes it; the baseline reads the same file with
  ``read_events`` in process.
- Sampling: the CPU time of one resource sample (``devices.history.sample_cost``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, percentile, say

TARGET_P99_MS = 50.0
PAGE = 50


def fill_store(state: Path, count: int) -> list[str]:
    """Put ``count`` finished jobs, of realistic size, in the job store of ``state``."""
    from training_manager_lab.store import JobStore

    store = JobStore(state / "jobs.db")
    rng = random.Random(0)
    now = time.time() - count * 60
    ids = []
    for index in range(count):
        job_id = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
        spec = {
            "name": f"digits-{index}",
            "experiment": "digits",
            "entry": {"kind": "pickle"},
            "trainer": {"max_epochs": 5, "log_every_n_steps": 1},
            "devices": 2,
            "accelerator": "cpu",
            "strategy": "ddp",
            "cwd": "/home/user/project",
        }
        store.insert(
            {
                "id": job_id,
                "name": spec["name"],
                "experiment": spec["experiment"],
                "request": {
                    "devices": 2,
                    "accelerator": "cpu",
                    "strategy": "ddp",
                    "memory": None,
                    "priority": 0,
                    "cluster": "local",
                },
                "spec": spec,
                "created_at": now + index * 60,
                "tracking_uri": "sqlite:///mlflow.db",
            }
        )
        ids.append(job_id)
    with store.transaction() as db:
        for index, job_id in enumerate(ids):
            store.transition(
                job_id,
                "running",
                None,
                db=db,
                allocation={"node": "localhost", "gpus": [], "cpu_slots": 2},
                world_size=2,
                run_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                backend_id=str(10_000 + index),
            )
            outcome = ("succeeded",) * 8 + ("failed", "cancelled")
            status = outcome[index % len(outcome)]
            fields: dict[str, Any] = {
                "progress": {
                    "step": 170,
                    "total_steps": 170,
                    "epoch": 4,
                    "max_epochs": 5,
                    "samples_per_sec": 1234.5,
                    "eta": 0.0,
                    "fraction": 1.0,
                },
                "last_metrics": {"train_loss": 0.12, "val_loss": 0.15, "val_acc": 0.96},
            }
            if status == "failed":
                fields["error"] = {
                    "rank": 1,
                    "message": "rank 1 failed: RuntimeError: boom",
                    "traceback": "Traceback (most recent call last):\n" * 20,
                }
            else:
                fields["model_uri"] = f"models:/m-{job_id}"
            store.transition(job_id, status, None, db=db, **fields)
    store.close()
    return ids


def write_events(path: Path, count: int) -> int:
    """A finished job's stream: ``count`` metric and progress events, then its status."""
    lines = []
    t = time.time() - count * 0.01
    for step in range(count - 1):
        if step % 10 == 9:
            event = {
                "type": "progress",
                "t": t,
                "step": step,
                "total_steps": count,
                "epoch": 0,
                "max_epochs": 1,
                "samples_per_sec": 900.0,
                "elapsed": step * 0.01,
                "eta": (count - step) * 0.01,
            }
        else:
            event = {
                "type": "metric",
                "t": t,
                "step": step,
                "epoch": 0,
                "key": "train_loss",
                "value": 1.0 / (step + 1),
            }
        lines.append(json.dumps(event, separators=(",", ":")))
        t += 0.01
    lines.append(json.dumps({"type": "status", "t": t, "status": "succeeded", "reason": None}))
    path.write_text("\n".join(lines) + "\n")
    return count


class Server:
    """A Jupyter server with the training-manager extension, on 127.0.0.1, for one benchmark."""

    def __init__(self, folder: Path, state: Path) -> None:
        self.token = secrets.token_hex(16)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        root = folder / "root"
        root.mkdir(exist_ok=True)
        config = folder / "jupyter_server_config.json"
        config.write_text(
            json.dumps(
                {
                    "ServerApp": {
                        "jpserver_extensions": {"training_manager_lab": True},
                        "allow_unauthenticated_access": False,
                    },
                    "TrainingManagerApp": {"state_dir": str(state)},
                }
            )
        )
        env = dict(os.environ)
        env["TML_STATE_DIR"] = str(state)
        env["JUPYTER_RUNTIME_DIR"] = str(folder / "runtime")
        self.log_path = folder / "server.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
                f"--config={config}",
            ],
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"token {self.token}"}

    def wait_ready(self, timeout: float = 120.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Jupyter server exited; see {self.log_path}")
            try:
                answer = requests.get(
                    f"{self.url}/training-manager/api/config", headers=self.headers, timeout=2
                )
                if answer.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the Jupyter server did not answer in {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def timed_gets(session: Any, url: str, headers: dict[str, str], count: int) -> list[float]:
    """Milliseconds of ``count`` GET requests, after two untimed ones; each must succeed."""
    times = []
    for index in range(count + 2):
        started = time.perf_counter()
        answer = session.get(url, headers=headers, timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"GET {url} answered {answer.status_code}: {answer.text[:300]}")
        if index >= 2:
            times.append(elapsed)
    return times


async def stream_all(url: str, token: str) -> tuple[int, float]:
    """Read a job's websocket stream until the server closes it; return events and seconds."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
    started = time.perf_counter()
    connection = await websocket_connect(request, max_message_size=256 * 1024 * 1024)
    count = 0
    while True:
        message = await connection.read_message()
        if message is None:
            break
        count += len(json.loads(message)["events"])
    return count, time.perf_counter() - started


def run(ctx: Context) -> list[Row]:
    import requests

    from training_manager_lab.devices.history import sample_cost
    from training_manager_lab.events import read_events
    from training_manager_lab.manager import JobManager

    folder = ctx.folder("b5")
    state = folder / "state"
    (state / "jobs").mkdir(parents=True)
    ctx.mlflow_store(state / "mlflow.db")
    jobs = ctx.size(10_000, 1_000)
    say(f"B5 filling a job store with {jobs:,} jobs")
    started = time.perf_counter()
    ids = fill_store(state, jobs)
    fill_seconds = time.perf_counter() - started

    events = ctx.size(200_000, 20_000)
    stream_job = ids[-1]
    (state / "jobs" / stream_job).mkdir()
    events_file = state / "jobs" / stream_job / "events.jsonl"
    write_events(events_file, events)

    requests_count = ctx.size(500, 40)
    manager = JobManager(state)
    say(f"B5 JobManager.list x{requests_count}")
    in_process = []
    for _ in range(requests_count + 2):
        begun = time.perf_counter()
        page, total = manager.list(limit=PAGE)
        in_process.append((time.perf_counter() - begun) * 1000)
        if total != jobs or len(page) != PAGE:
            raise RuntimeError(
                f"JobManager.list gave {len(page)} of {total} jobs, not {PAGE} of {jobs}"
            )
    in_process = in_process[2:]
    manager.store.close()

    say("B5 starting a Jupyter server with the extension on 127.0.0.1")
    server = Server(folder, state)
    try:
        server.wait_ready()
        session = requests.Session()
        api = f"{server.url}/training-manager/api"
        say(f"B5 GET jobs x{requests_count} (first page, last page) and GET /api/status")
        status_route = timed_gets(
            session, f"{server.url}/api/status", server.headers, requests_count
        )
        first_page = timed_gets(session, f"{api}/jobs?limit={PAGE}", server.headers, requests_count)
        last_page = timed_gets(
            session, f"{api}/jobs?limit={PAGE}&offset={jobs - PAGE}", server.headers, requests_count
        )
        session.close()

        say(f"B5 websocket replay of {events:,} events")
        ws_url = (
            f"ws://127.0.0.1:{server.port}/training-manager/api/jobs/{stream_job}/stream?cursor=0"
        )
        streamed, ws_seconds = asyncio.run(stream_all(ws_url, server.token))
        if streamed != events:
            raise RuntimeError(f"the websocket delivered {streamed} of {events} events")
    finally:
        server.stop()

    begun = time.perf_counter()
    cursor, read = 0, 0
    while True:
        batch, cursor = read_events(events_file, cursor)
        if not batch:
            break
        read += len(batch)
    file_seconds = time.perf_counter() - begun

    say("B5 resource sample cost")
    cost = sample_cost(samples=ctx.size(20, 5))

    listing = {"jobs": jobs, "fill_store_seconds": fill_seconds, "requests": requests_count}
    rows = [
        Row(
            "B5",
            "B5.list_in_process_p99",
            f"JobManager.list, page of {PAGE} of {jobs:,} jobs, p99",
            percentile(in_process, 99),
            "ms",
            target=f"<= {TARGET_P99_MS:.0f} ms",
            target_limit=TARGET_P99_MS,
            detail={**listing, "p50_ms": percentile(in_process, 50)},
        ),
        Row(
            "B5",
            "B5.rest_list_p50",
            f"GET jobs over REST, first page of {PAGE} of {jobs:,} jobs, p50",
            percentile(first_page, 50),
            "ms",
            baseline=percentile(status_route, 50),
            baseline_name="GET /api/status",
            detail=listing,
        ),
        Row(
            "B5",
            "B5.rest_list_p99",
            f"GET jobs over REST, first page of {PAGE} of {jobs:,} jobs, p99",
            percentile(first_page, 99),
            "ms",
            baseline=percentile(status_route, 99),
            baseline_name="GET /api/status",
            target=f"<= {TARGET_P99_MS:.0f} ms",
            target_limit=TARGET_P99_MS,
            detail=listing,
        ),
        Row(
            "B5",
            "B5.rest_last_page_p99",
            f"GET jobs over REST, last page (offset {jobs - PAGE:,}), p99",
            percentile(last_page, 99),
            "ms",
            baseline=percentile(status_route, 99),
            baseline_name="GET /api/status",
            target=f"<= {TARGET_P99_MS:.0f} ms",
            target_limit=TARGET_P99_MS,
            detail={**listing, "p50_ms": percentile(last_page, 50)},
        ),
        Row(
            "B5",
            "B5.ws_events_per_s",
            f"websocket replay of a {events:,}-event stream",
            streamed / ws_seconds,
            "events/s",
            baseline=read / file_seconds,
            baseline_name="read_events in process",
            detail={"events": events, "seconds": ws_seconds, "bytes": events_file.stat().st_size},
        ),
        Row(
            "B5",
            "B5.sample_cpu",
            "CPU time of one resource sample (sample_cost)",
            cost["cpu_seconds_per_sample"] * 1000,
            "ms",
            detail=cost,
        ),
    ]
    return rows
