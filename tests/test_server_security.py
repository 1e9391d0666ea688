"""Security of the server extension: authentication, XSRF, and no way out of a job's folder."""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_core.utils import ensure_event_loop
from pytest_jupyter.jupyter_server import *  # noqa: F403
from tornado import websocket
from tornado.httpclient import HTTPClientError, HTTPRequest

import training_manager_lab
from tests.conftest_server import *  # noqa: F403
from tests.conftest_server import (
    API,
    SHORT_SPEC,
    aiotest,
    call,
    fill,
    own_method,
    raw_fetch,
    route_methods,
)
from training_manager_lab.server.handlers import PREFIX, handlers
from training_manager_lab.store import JobStore

SECRET = "tml-secret-" + uuid.uuid4().hex
PASSWD_MARK = "root:x:0:0"
MUTATING = ("POST", "PUT", "DELETE", "PATCH")


@pytest.fixture
def jp_server_config(tml_server_config: dict[str, Any]) -> dict[str, Any]:
    return tml_server_config


def is_websocket(handler: type) -> bool:
    return issubclass(handler, websocket.WebSocketHandler)


@pytest.fixture(scope="session")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside every job folder, holding files a request must never reach."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "secret.txt").write_text(f"{SECRET}\n")
    (folder / "events.jsonl").write_text(f'{{"type": "metric", "key": "{SECRET}", "value": 1}}\n')
    (folder / "rank-0.log").write_text(f"{SECRET}\n")
    return folder


def planted_job(state_dir: Path, name: str) -> str:
    """A finished job in the store whose folder the test then fills with traps.

    The record names a backend that no manager follows, so nothing starts or supervises it.
    """
    store = JobStore(state_dir / "jobs.db")
    job_id = uuid.uuid4().hex[:12]
    store.insert(
        {
            "id": job_id,
            "name": name,
            "experiment": "security",
            "request": {"devices": 1, "accelerator": "cpu"},
            "spec": {"name": name},
            "backend": "planted",
        }
    )
    assert store.transition(job_id, "cancelled", "planted by the security tests")
    store.close()
    return job_id


@pytest.fixture(scope="session")
def trapped_jobs(server_state_dir: Path, outside: Path) -> dict[str, str]:
    """Jobs whose files are symbolic links out of their folders, or whose folder is one."""
    (server_state_dir / "jobs").mkdir(parents=True, exist_ok=True)
    links = planted_job(server_state_dir, "links")
    folder = server_state_dir / "jobs" / links
    folder.mkdir()
    (folder / "rank-0.log").symlink_to("/etc/passwd")
    (folder / "rank-1.log").symlink_to(outside / "secret.txt")
    (folder / "rank-2.log").symlink_to("../../../../../../../../etc/passwd")
    (folder / "events.jsonl").symlink_to(outside / "events.jsonl")

    linked_folder = planted_job(server_state_dir, "linked-folder")
    (server_state_dir / "jobs" / linked_folder).symlink_to(outside, target_is_directory=True)
    return {"links": links, "linked_folder": linked_folder}


def assert_nothing_leaks(body: bytes) -> None:
    text = body.decode(errors="replace")
    assert SECRET not in text
    assert PASSWD_MARK not in text


# -- authentication and XSRF -------------------------------------------------------------


def test_the_route_table_is_what_the_tests_cover() -> None:
    methods = {(pattern.removeprefix(PREFIX), method) for pattern, method, _ in route_methods()}

    handlers_by_pattern = dict(handlers())
    sources = {
        (pattern, method): inspect.getsource(own_method(handler, method))
        for pattern, method, handler in route_methods()
    }

    assert len(methods) == 18
    assert len([m for _, m in methods if m in MUTATING]) == 8
    assert ("/jobs", "POST") in methods and ("/jobs/(?P<job_id>[^/]+)/stream", "GET") in methods
    for (pattern, method), source in sources.items():
        assert "authenticated" in source, (pattern, method)
        if "ws_authenticated" in source:
            # A websocket handler authorizes in pre_get, before the upgrade.
            source = inspect.getsource(handlers_by_pattern[pattern].pre_get)
            assert "is_authorized" in source and "HTTPError(403)" in source, pattern
        else:
            assert "@authorized" in source, (pattern, method)


@aiotest
async def test_every_route_refuses_requests_without_credentials(
    http_server_client: Any, jp_base_url: str, jp_http_port: int, trapped_jobs: dict[str, str]
) -> None:
    refused = {}
    for pattern, method, handler in route_methods():
        path = fill(pattern, job_id=trapped_jobs["links"])
        for headers in ({}, {"Authorization": "token wrong-token"}):
            if is_websocket(handler):
                url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}{path}"
                with pytest.raises(HTTPClientError) as refusal:
                    await websocket.websocket_connect(HTTPRequest(url, headers=headers))
                code = refusal.value.code
                location = refusal.value.response.headers.get("Location", "")
                # A browser-facing GET may be sent to the login page instead of a 403.
                if code == 302:
                    assert "/login" in location
                    code = 403
            else:
                response = await raw_fetch(
                    http_server_client, jp_base_url, path, method, headers=headers
                )
                code = response.code
                assert_nothing_leaks(response.body)
            refused[(path, method, headers.get("Authorization"))] = code

    assert len(refused) == 2 * len(route_methods())
    assert {key: code for key, code in refused.items() if code not in (401, 403)} == {}


@aiotest
async def test_mutating_requests_with_cookie_auth_need_the_xsrf_token(
    http_server_client: Any, jp_fetch: Any, jp_base_url: str
) -> None:
    _, _, response = await call(jp_fetch, "config")
    cookie = response.headers["Set-Cookie"].split(";")[0]
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    xsrf = uuid.uuid4().hex
    with_token = {"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    without = {"Cookie": cookie}
    outcomes: dict[tuple[str, str], tuple[int, int]] = {}
    reasons = set()
    try:
        get_code = (
            await raw_fetch(http_server_client, jp_base_url, PREFIX + "/jobs", headers=without)
        ).code
        for pattern, method, _ in route_methods():
            if method not in MUTATING:
                continue
            path = fill(pattern, pid=str(bystander.pid))
            body = b'{"version": "1", "value": "x"}' if method == "PUT" else None
            refused = await raw_fetch(
                http_server_client, jp_base_url, path, method, headers=without, body=body
            )
            allowed = await raw_fetch(
                http_server_client, jp_base_url, path, method, headers=with_token, body=body
            )
            outcomes[(path, method)] = (refused.code, allowed.code)
            reasons.add(b"_xsrf" in refused.body)
        alive = bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

    assert get_code == 200
    assert len(outcomes) == 8
    assert reasons == {True}
    # Without the token: refused. With it the request reaches the handler, which answers
    # for the sample values (unknown job, unknown model, a process that is no orphan).
    assert {key: refused for key, (refused, _) in outcomes.items() if refused != 403} == {}
    assert {key: allowed for key, (_, allowed) in outcomes.items() if allowed == 403} == {}
    assert outcomes[(f"{PREFIX}/resources/processes/{bystander.pid}", "DELETE")][1] == 409
    assert alive


# -- files: symbolic links ---------------------------------------------------------------


@aiotest
async def test_symlinked_rank_logs_are_not_served(
    jp_fetch: Any, trapped_jobs: dict[str, str]
) -> None:
    job_id = trapped_jobs["links"]
    answers = []

    for rank in (0, 1, 2):
        for extra in ({}, {"tail": 5}, {"offset": 0}):
            code, body, response = await call(
                jp_fetch, "jobs", job_id, "logs", params={"rank": rank, **extra}
            )
            assert_nothing_leaks(response.body)
            answers.append((code, body["error"]))

    assert set(answers) == {(400, "bad request")}


@aiotest
async def test_a_symlinked_event_stream_is_not_served(
    jp_fetch: Any, jp_ws_fetch: Any, trapped_jobs: dict[str, str]
) -> None:
    job_id = trapped_jobs["links"]

    code, body, response = await call(jp_fetch, "jobs", job_id, "events")
    with pytest.raises(HTTPClientError) as refusal:
        ws = await jp_ws_fetch(*API, "jobs", job_id, "stream")
        message = await asyncio.wait_for(ws.read_message(), 5)
        assert_nothing_leaks((message or "").encode())

    assert_nothing_leaks(response.body)
    assert code == 400 and body["error"] == "bad request"
    assert refusal.value.code == 400


@aiotest
async def test_a_symlinked_job_folder_is_not_served(
    jp_fetch: Any, jp_ws_fetch: Any, trapped_jobs: dict[str, str], outside: Path
) -> None:
    job_id = trapped_jobs["linked_folder"]
    answers = []

    for parts, params in (
        (("logs",), {"rank": 0}),
        (("logs",), {"rank": 0, "tail": 1}),
        (("events",), {}),
        (("events",), {"cursor": 0, "wait": 0.1}),
    ):
        code, body, response = await call(jp_fetch, "jobs", job_id, *parts, params=params)
        assert_nothing_leaks(response.body)
        answers.append((code, body["error"]))
    with pytest.raises(HTTPClientError) as refusal:
        await jp_ws_fetch(*API, "jobs", job_id, "stream")
    code, _, _ = await call(jp_fetch, "jobs", job_id, method="DELETE")

    assert set(answers) == {(400, "bad request")}
    assert refusal.value.code == 400
    # Deleting the job removes its record, never what its folder's link points to.
    assert code == 204
    assert {"events.jsonl", "rank-0.log", "secret.txt"} <= {p.name for p in outside.iterdir()}


# -- path and id parameters --------------------------------------------------------------

NASTY = [
    "..",
    "../..",
    "../../../../etc/passwd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252f",
    "..%5c..%5cetc%5cpasswd",
    "%c0%ae%c0%ae%c0%af",
    "%00",
    "0123456789ab%00",
    "0123456789ab%2F..%2F..",
    "%E2%80%AE0123456789ab",
    "\u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9",
    "0123456789AB",
    " 0123456789ab",
    "0123456789ab/",
    ".",
    "~",
    "$(id)",
    "`id`",
    "; cat /etc/passwd",
    "*",
    "0",
    "events",
    "logs",
    "stream",
]


def id_paths(value: str, trapped: dict[str, str]) -> list[tuple[str, str]]:
    """Requests that carry ``value`` as a job id or path parameter, in several encodings."""
    encodings = {
        value,
        quote(value, safe=""),
        quote(value, safe="/%"),
        quote(quote(value, safe=""), safe=""),
    }
    known = trapped["links"]
    paths = []
    for encoded in sorted(encodings):
        if any(ord(c) < 33 or ord(c) > 126 for c in encoded):
            continue
        paths += [
            ("GET", f"jobs/{encoded}"),
            ("GET", f"jobs/{encoded}/logs?rank=0"),
            ("GET", f"jobs/{encoded}/events?cursor=0"),
            ("POST", f"jobs/{encoded}/cancel"),
            ("DELETE", f"jobs/{encoded}"),
            ("GET", f"jobs/{known}/{encoded}"),
            ("GET", f"jobs/{known}/logs?rank={encoded}"),
            ("GET", f"jobs/{known}/logs?rank=0&offset={encoded}&tail={encoded}"),
            ("GET", f"jobs/{known}/events?cursor={encoded}&wait={encoded}"),
            ("GET", f"jobs?status={encoded}&limit={encoded}&offset={encoded}"),
            ("GET", f"models/{encoded}"),
            ("PUT", f"models/{encoded}/aliases/{encoded}"),
            ("DELETE", f"models/digits/versions/{encoded}/tags/{encoded}"),
        ]
    return paths


async def probe(
    client: Any, base_url: str, headers: dict[str, str], value: str, trapped: dict[str, str]
) -> dict[tuple[str, str], int]:
    """Send every request for ``value``; return the answers outside the expected statuses.

    Where ``value`` stands for a job id nothing may succeed; in a query parameter it may be
    a valid value (a rank, a cursor), so a 200 is fine there if nothing leaks.
    """
    unexpected = {}
    for method, path in id_paths(value, trapped):
        body = b'{"version": "1", "value": "x"}' if method == "PUT" else None
        response = await raw_fetch(
            client, base_url, f"{PREFIX}/{path}", method, body=body, headers=dict(headers)
        )
        assert_nothing_leaks(response.body)
        if response.code in (301, 302):
            # Jupyter drops a trailing slash with a redirect; it must stay on this server: a
            # path under the base URL, never a scheme or a host ("//host/..." included).
            location = response.headers["Location"]
            target = urlsplit(location)
            assert not target.scheme and not target.netloc, location
            assert location.startswith(base_url) and not location.startswith("//"), location
            continue
        # 403: Jupyter's own trailing-slash handler refuses other verbs.
        refusals = (400, 403, 404, 405)
        parameter = "=" in path and trapped["links"] in path
        if response.code not in ((200, *refusals) if parameter else refusals):
            unexpected[(method, path)] = response.code
    return unexpected


@aiotest
async def test_nasty_ids_and_paths_stay_inside_job_folders(
    http_server_client: Any,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    trapped_jobs: dict[str, str],
) -> None:
    unexpected = {}

    for value in NASTY:
        unexpected.update(
            await probe(http_server_client, jp_base_url, jp_auth_header, value, trapped_jobs)
        )

    assert unexpected == {}


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    value=st.one_of(
        st.text(min_size=1, max_size=40),
        st.lists(
            st.sampled_from(["..", ".", "%2F", "%2e", "/", "%00", "etc", "passwd", "\\"]),
            min_size=1,
            max_size=8,
        ).map("".join),
        st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
    )
)
def test_fuzzed_ids_and_paths_stay_inside_job_folders(
    http_server_client: Any,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    trapped_jobs: dict[str, str],
    value: str,
) -> None:
    loop = ensure_event_loop(prefer_selector_loop=True)

    unexpected = loop.run_until_complete(
        probe(http_server_client, jp_base_url, jp_auth_header, value, trapped_jobs)
    )

    assert unexpected == {}


# -- no shell ----------------------------------------------------------------------------

#: Calls that hand a string to a shell.
SHELL_CALLS = {"system", "popen", "getoutput", "getstatusoutput", "create_subprocess_shell"}


def shell_uses(source: str) -> list[str]:
    """Lines of ``source`` that start a process through a shell."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        through_shell = any(
            keyword.arg == "shell"
            and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
            for keyword in node.keywords
        )
        if name in SHELL_CALLS or through_shell:
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_shell_uses_are_found() -> None:
    assert (
        len(shell_uses("import os, subprocess\nos.system(x)\nsubprocess.run(x, shell=True)")) == 2
    )
    assert shell_uses("subprocess.run(['sbatch', path], shell=False)") == []


def test_no_process_is_started_through_a_shell() -> None:
    package = Path(training_manager_lab.__file__).parent
    sources = sorted(package.rglob("*.py"))

    found = {
        str(path.relative_to(package)): uses
        for path in sources
        if (uses := shell_uses(path.read_text()))
    }

    assert len(sources) > 30
    assert found == {}


# -- scripts and working folders outside the root ----------------------------------------


@aiotest
async def test_entries_and_folders_outside_the_root_are_refused(
    jp_fetch: Any, jp_root_dir: Path, outside: Path
) -> None:
    (outside / "model.py").write_text("raise SystemExit('must never run')\n")
    (jp_root_dir / "link.py").symlink_to(outside / "model.py")
    (jp_root_dir / "sub").mkdir()

    def file_spec(model: str, **extra: Any) -> dict[str, Any]:
        return {
            **SHORT_SPEC,
            "entry": {"kind": "file", "model": model, "datamodule": None},
            **extra,
        }

    cases = {
        "parent": file_spec("../model.py:Model"),
        "absolute": file_spec(f"{outside}/model.py:Model"),
        "deep": file_spec("sub/../../../../../../tmp/model.py:Model"),
        "symlink": file_spec("link.py:Model"),
        "datamodule": {
            **file_spec("sub/model.py:Model"),
            "entry": {"kind": "file", "model": "sub/m.py:M", "datamodule": f"{outside}/d.py:D"},
        },
        "cwd parent": file_spec("model.py:Model", cwd=".."),
        "cwd absolute": file_spec("model.py:Model", cwd=str(outside)),
    }
    _, before, _ = await call(jp_fetch, "jobs", params={"limit": 1})
    answers = {}
    for label, spec in cases.items():
        code, body, _ = await call(jp_fetch, "jobs", method="POST", body={"spec": spec})
        answers[label] = (code, body["error"], "outside the server's root" in body["detail"])
    _, after, _ = await call(jp_fetch, "jobs", params={"limit": 1})

    assert answers == {label: (400, "bad request", True) for label in cases}
    assert after == before


@aiotest
async def test_orphan_route_never_ends_a_process_that_is_no_orphan(jp_fetch: Any) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        answers = {}
        for pid in (bystander.pid, os.getpid(), 1):
            code, body, _ = await call(
                jp_fetch, "resources", "processes", str(pid), method="DELETE"
            )
            answers[pid] = (code, body["error"])
        alive = psutil.pid_exists(bystander.pid) and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

    assert set(answers.values()) == {(409, "conflict")}
    assert alive
