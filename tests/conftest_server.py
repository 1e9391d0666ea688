"""Fixtures for the server extension tests: a pytest-jupyter server with the extension on."""

from __future__ import annotations

import functools
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado.httpclient import HTTPResponse

API = ("training-manager", "api")
DIGITS_MODEL = "training_manager_lab.examples.digits:DigitsMLP"
DIGITS_DATA = "training_manager_lab.examples.digits:DigitsData"
TERMINAL = ("succeeded", "failed", "cancelled")

Fetch = Callable[..., Awaitable[HTTPResponse]]


#: Session-wide objects behind the fixtures below. Test modules import these fixtures by
#: name, which makes a separate fixture per module; keeping the objects here lets every
#: module share one state directory and one set of jobs all the same.
_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def server_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of every extension server of the session.

    Each test gets a fresh Jupyter server (pytest-jupyter's servers live for one test), but
    they all share this folder, so a job launched by one test's server is adopted by the
    next one, and the MLflow store's schema is created once.
    """
    if "state_dir" not in _SHARED:
        _SHARED["state_dir"] = tmp_path_factory.mktemp("tml-server-state")
    return Path(_SHARED["state_dir"])


def aiotest(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test on pytest-jupyter's event loop.

    The server tests import pytest-jupyter's fixtures into their modules instead of loading it
    as a plugin for the whole suite (its autouse fixtures would then wrap every test), so its
    hook that runs coroutine tests is not there; this decorator stands in for it.
    """
    from jupyter_core.utils import ensure_event_loop

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        ensure_event_loop(prefer_selector_loop=True).run_until_complete(test(*args, **kwargs))

    return run


@pytest.fixture
def tml_server_config(server_state_dir: Path) -> dict[str, Any]:
    """Server config: the extension on, unauthenticated access off, two CPU slots.

    A test module hands it to pytest-jupyter by defining ``jp_server_config`` from it.
    """
    return {
        "ServerApp": {
            "jpserver_extensions": {
                "training_manager_lab": True,
                "jupyter_server_terminals": False,
            },
            "allow_unauthenticated_access": False,
        },
        "TrainingManagerApp": {"state_dir": str(server_state_dir), "cpu_slots": 2},
    }


def digits_spec(name: str, **trainer: Any) -> dict[str, Any]:
    """A job spec that trains the digits example, imported by module name."""
    return {
        "name": name,
        "experiment": "server-tests",
        "entry": {"kind": "import", "model": DIGITS_MODEL, "datamodule": DIGITS_DATA},
        "trainer": trainer,
        "devices": 1,
        "accelerator": "cpu",
    }


async def call(
    fetch: Fetch,
    *parts: str,
    method: str = "GET",
    body: Any = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, HTTPResponse]:
    """One API request; returns the status, the decoded JSON body (or None) and the response."""
    raw = None if body is None else body if isinstance(body, (bytes, str)) else json.dumps(body)
    if raw is None and method in ("POST", "PUT"):
        raw = b""
    response = await fetch(
        *API,
        *parts,
        method=method,
        body=raw,
        params=params,
        headers=headers,
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    decoded = None
    if response.body:
        try:
            decoded = json.loads(response.body)
        except ValueError:
            decoded = None
    return response.code, decoded, response


async def launch(fetch: Fetch, spec: dict[str, Any]) -> dict[str, Any]:
    """POST a job and return its record; the request must succeed."""
    code, record, _ = await call(fetch, "jobs", method="POST", body={"spec": spec})
    assert code == 201, record
    return record


async def wait_for(
    fetch: Fetch,
    job_id: str,
    condition: Callable[[dict[str, Any]], bool],
    timeout: float = 180.0,
    what: str = "condition",
) -> dict[str, Any]:
    """Poll a job's record until ``condition`` holds; return the record."""
    import asyncio

    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code, record, _ = await call(fetch, "jobs", job_id)
        assert code == 200, record
        if condition(record):
            return record
        await asyncio.sleep(0.25)
    raise AssertionError(f"job {job_id}: {what} not reached in {timeout} s; last {record}")


async def wait_terminal(fetch: Fetch, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    return await wait_for(
        fetch, job_id, lambda r: r["status"] in TERMINAL, timeout, "a terminal status"
    )


async def all_events(fetch: Fetch, job_id: str) -> list[dict[str, Any]]:
    """The whole event stream of a job, read page by page over REST."""
    events: list[dict[str, Any]] = []
    cursor = 0
    while True:
        code, page, _ = await call(fetch, "jobs", job_id, "events", params={"cursor": cursor})
        assert code == 200, page
        if not page["events"]:
            return events
        events.extend(page["events"])
        cursor = page["cursor"]


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    import os

    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != "zombie":
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


class JobCache:
    """Jobs shared by several tests of a session (one digits fit serves many assertions).

    The jobs outlive the per-test servers: each new server adopts them from the shared
    state directory.
    """

    def __init__(self) -> None:
        self.created: dict[str, dict[str, Any]] = {}

    async def launched(self, fetch: Fetch, key: str, spec: dict[str, Any]) -> str:
        """The id of the job launched under ``key``, launching it on first use."""
        if key not in self.created:
            self.created[key] = await launch(fetch, spec)
        return str(self.created[key]["id"])

    async def finished(self, fetch: Fetch, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The record of the job under ``key`` once it has ended."""
        return await wait_terminal(fetch, await self.launched(fetch, key, spec))


#: A digits fit that ends in tens of seconds, most of it process start-up and MLflow.
SHORT_SPEC = digits_spec(
    "short", max_epochs=2, limit_train_batches=4, limit_val_batches=2, log_every_n_steps=1
)
#: A digits fit that runs until it is cancelled.
LONG_SPEC = digits_spec("long", max_epochs=100_000, limit_val_batches=1, log_every_n_steps=1)


async def short_job(fetch: Fetch, cache: JobCache) -> dict[str, Any]:
    """The session's short job, run to its end (launched by whichever test needs it first)."""
    record = await cache.finished(fetch, "short", SHORT_SPEC)
    assert record["status"] == "succeeded", record
    return record


async def raw_fetch(
    client: Any, base_url: str, path: str, method: str = "GET", **kwargs: Any
) -> HTTPResponse:
    """A request for a path used exactly as given (no escaping), under the server's base URL."""
    kwargs.setdefault("raise_error", False)
    kwargs.setdefault("allow_nonstandard_methods", True)
    kwargs.setdefault("follow_redirects", False)
    if method in ("POST", "PUT") and kwargs.get("body") is None:
        kwargs["body"] = b""
    return await client.fetch(
        base_url.rstrip("/") + "/" + path.lstrip("/"), method=method, **kwargs
    )


async def read_stream(ws: Any, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every message of a job's event stream until the server closes it."""
    import asyncio

    messages = []
    while True:
        message = await asyncio.wait_for(ws.read_message(), timeout)
        if message is None:
            return messages
        messages.append(json.loads(message))


@pytest.fixture(scope="session")
def job_cache() -> JobCache:
    return _SHARED.setdefault("job_cache", JobCache())


#: Values for the path parameters of every route.
SAMPLES = {
    "job_id": "0123456789ab",
    "name": "digits",
    "alias": "champion",
    "version": "1",
    "key": "stage",
    "pid": "999999999",
}


def route_methods() -> list[tuple[str, str, type]]:
    """Every (path pattern, method, handler) the extension registers, from its own table."""
    from training_manager_lab.server.handlers import handlers

    found = []
    for pattern, handler in handlers():
        for method in handler.SUPPORTED_METHODS:
            if own_method(handler, method):
                found.append((pattern, method, handler))
    return found


def own_method(handler: type, method: str) -> Any:
    """The handler's method for an HTTP verb when this package defines it, else None.

    Jupyter's base classes answer CORS preflight (OPTIONS) without credentials, by design;
    every verb the extension itself implements is checked.
    """
    function = getattr(handler, method.lower(), None)
    module = getattr(inspect.unwrap(function), "__module__", "") if function else ""
    return function if module.startswith("training_manager_lab") else None


def fill(pattern: str, **values: str) -> str:
    """A concrete path for a route pattern, with sample values for its parameters."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values.get(m[1], SAMPLES[m[1]]), pattern)
    assert re.fullmatch(pattern, path), (pattern, path)
    return path
