"""Finds this process's job manager: the Jupyter server that started the kernel, or its own."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Protocol
from urllib.parse import quote

from .errors import JobConflict, JobNotFound, JobSpecError, ServerError, TrainingManagerError
from .events import EVENTS_FILE, read_events, stream_size
from .jobfiles import read_log

log = logging.getLogger(__name__)

API_PREFIX = "training-manager/api"


#: Job records, as lists of plain dicts.
Records = list[dict[str, Any]]


class Client(Protocol):
    """What the public API needs from a job manager, wherever it runs."""

    def launch(self, spec: dict[str, Any], entry: bytes | None) -> dict[str, Any]: ...
    def get(self, job_id: str) -> dict[str, Any]: ...
    def list(
        self, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[Records, int]: ...
    def cancel(self, job_id: str) -> dict[str, Any]: ...
    def delete(self, job_id: str) -> None: ...
    def logs(
        self, job_id: str, rank: int, tail: int | None = None, offset: int | None = None
    ) -> dict[str, Any]: ...
    def events(self, job_id: str, cursor: int = 0, wait: float = 0.0) -> tuple[Records, int]: ...
    def resources(self) -> dict[str, Any]: ...
    def end_process(self, pid: int) -> dict[str, Any]: ...
    def config(self) -> dict[str, Any]: ...


class EmbeddedClient:
    """Runs a :class:`~training_manager_lab.manager.JobManager` in this process.

    Used outside Jupyter (scripts, tests). Jobs still run in processes of their own and
    outlive this process; the manager here only schedules and follows them.
    """

    def __init__(self, state_dir: str | None = None, **options: Any) -> None:
        from .manager import JobManager

        self.manager = JobManager(state_dir, **options)
        self.manager.adopt()
        self.manager.start()

    def launch(self, spec: dict[str, Any], entry: bytes | None) -> dict[str, Any]:
        return self.manager.launch(spec, entry)

    def get(self, job_id: str) -> dict[str, Any]:
        return self.manager.get(job_id)

    def list(
        self, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[Records, int]:
        return self.manager.list(status, limit, offset)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.manager.cancel(job_id)

    def delete(self, job_id: str) -> None:
        self.manager.delete(job_id)

    def logs(
        self, job_id: str, rank: int, tail: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return read_log(self.manager.job_dir(job_id), rank, tail=tail, offset=offset)

    def events(self, job_id: str, cursor: int = 0, wait: float = 0.0) -> tuple[Records, int]:
        path = self.manager.job_dir(job_id) / EVENTS_FILE
        deadline = time.monotonic() + wait
        while True:
            events, next_cursor = read_events(path, cursor)
            if events or time.monotonic() >= deadline:
                return events, next_cursor
            time.sleep(0.02 if stream_size(path) > cursor else 0.05)

    def resources(self) -> dict[str, Any]:
        return self.manager.resources()

    def end_process(self, pid: int) -> dict[str, Any]:
        """End a GPU process that belongs to no job and no kernel (an orphan)."""
        from .devices.attribution import end_process

        orphans = self.manager.resources()["orphans"]
        outcome = end_process(int(pid), allowed={int(o["pid"]) for o in orphans})
        return {"pid": int(pid), "outcome": outcome}

    def config(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.manager.state_dir),
            "tracking_uri": self.manager.tracking_uri,
            "mode": "embedded",
        }


class ServerClient:
    """Talks to the server extension over REST, with the server's own credentials.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8888/``.
        token: the server's token.
    """

    def __init__(self, url: str, token: str | None) -> None:
        import requests

        self.base = url.rstrip("/") + "/" + API_PREFIX
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        kwargs.setdefault("timeout", 60)
        try:
            response = self.session.request(method, f"{self.base}/{path}", **kwargs)
        except requests.RequestException as exc:
            raise TrainingManagerError(
                f"the Jupyter server at {self.base} cannot be reached: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:500] or response.reason}
            error, detail = body.get("error", response.reason), body.get("detail")
            message = error if not detail else f"{error}: {detail}"
            if response.status_code == 400:
                raise JobSpecError(message)
            if response.status_code == 404:
                raise JobNotFound(path.split("/")[1] if path.startswith("jobs/") else path)
            if response.status_code == 409:
                raise JobConflict(message)
            raise ServerError(response.status_code, error, detail)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def launch(self, spec: dict[str, Any], entry: bytes | None) -> dict[str, Any]:
        import base64

        body: dict[str, Any] = {"spec": spec}
        if entry is not None:
            body["entry"] = base64.b64encode(entry).decode()
        return self._call("POST", "jobs", json=body)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"jobs/{quote(job_id, safe='')}")

    def list(
        self, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[Records, int]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        body = self._call("GET", "jobs", params=params)
        return body["jobs"], body["total"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"jobs/{quote(job_id, safe='')}/cancel")

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"jobs/{quote(job_id, safe='')}")

    def logs(
        self, job_id: str, rank: int, tail: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"rank": rank}
        if tail is not None:
            params["tail"] = tail
        if offset is not None:
            params["offset"] = offset
        return self._call("GET", f"jobs/{quote(job_id, safe='')}/logs", params=params)

    def events(self, job_id: str, cursor: int = 0, wait: float = 0.0) -> tuple[Records, int]:
        body = self._call(
            "GET",
            f"jobs/{quote(job_id, safe='')}/events",
            params={"cursor": cursor, "wait": wait},
            timeout=wait + 60,
        )
        return body["events"], body["cursor"]

    def resources(self) -> dict[str, Any]:
        return self._call("GET", "resources")

    def end_process(self, pid: int) -> dict[str, Any]:
        return self._call("DELETE", f"resources/processes/{int(pid)}")

    def config(self) -> dict[str, Any]:
        return self._call("GET", "config")


_client: Client | None = None
_client_lock = threading.Lock()


def get_client() -> Client:
    """The client for this process, found once: server first, embedded otherwise."""
    global _client
    with _client_lock:
        if _client is None:
            _client = _discover()
        return _client


def set_client(client: Client | None) -> None:
    """Use ``client`` from now on (``None`` makes the next call discover again)."""
    global _client
    with _client_lock:
        _client = client


def _discover() -> Client:
    url = os.environ.get("TML_SERVER_URL")
    token = os.environ.get("TML_SERVER_TOKEN")
    if url:
        log.info("using the job manager of the server at %s (TML_SERVER_URL)", url)
        return ServerClient(url, token)
    server = _parent_server()
    if server is not None:
        client = ServerClient(server["url"], server.get("token"))
        try:
            client.config()
        except TrainingManagerError as exc:
            log.warning(
                "the Jupyter server that started this kernel does not serve the "
                "training-manager API (%s); running an embedded job manager instead",
                exc,
            )
        else:
            log.info("using the job manager of the Jupyter server at %s", server["url"])
            return client
    return EmbeddedClient()


def _parent_server() -> dict[str, Any] | None:
    """The running Jupyter server that is an ancestor of this process, if any."""
    try:
        import psutil
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    try:
        servers = {int(info["pid"]): info for info in list_running_servers()}
    except Exception:
        return None
    if not servers:
        return None
    try:
        ancestors = psutil.Process().parents()
    except psutil.Error:
        return None
    for process in ancestors:
        if process.pid in servers:
            return servers[process.pid]
    return None
