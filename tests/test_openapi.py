"""The OpenAPI document: valid, complete for every route, and true to the server's answers."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from pytest_jupyter.jupyter_server import *  # noqa: F403
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest_server import *  # noqa: F403
from tests.conftest_server import (
    SHORT_SPEC,
    JobCache,
    aiotest,
    call,
    read_stream,
    route_methods,
    short_job,
)
from training_manager_lab.server.handlers import OPENAPI_FILE, PREFIX

DOC = json.loads(OPENAPI_FILE.read_text())
DOC_URI = "urn:training-manager-lab:openapi"
REGISTRY = Registry().with_resource(
    DOC_URI, Resource.from_contents(DOC, default_specification=DRAFT202012)
)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head"}


@pytest.fixture
def jp_server_config(tml_server_config: dict[str, Any]) -> dict[str, Any]:
    return tml_server_config


def template(pattern: str) -> str:
    """The OpenAPI path of a route pattern: ``/jobs/(?P<job_id>[^/]+)`` -> ``/jobs/{job_id}``."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.removeprefix(PREFIX))


def pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def resolve(node: dict[str, Any], location: str) -> tuple[dict[str, Any], str]:
    """Follow a local ``$ref`` (a response object given by reference)."""
    if "$ref" not in node:
        return node, location
    target = node["$ref"].removeprefix("#")
    value: Any = DOC
    for part in target.strip("/").split("/"):
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value, target


def check(schema_location: str, instance: Any) -> list[str]:
    """Validate ``instance`` against the schema at a JSON pointer of the document."""
    validator = Draft202012Validator({"$ref": f"{DOC_URI}#{schema_location}"}, registry=REGISTRY)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def check_response(path: str, method: str, status: int, body: Any) -> list[str]:
    """Problems of one answer against the document: an undocumented status or a wrong body."""
    operation = DOC["paths"][path][method.lower()]
    documented = operation["responses"].get(str(status))
    if documented is None:
        return [f"{method} {path}: status {status} is not documented"]
    response, location = resolve(
        documented, pointer("paths", path, method.lower(), "responses", str(status))
    )
    content = response.get("content", {}).get("application/json")
    if content is None:
        return (
            [] if body is None else [f"{method} {path} {status}: a body where none is documented"]
        )
    return [
        f"{method} {path} {status}: {problem}"
        for problem in check(location + pointer("content", "application/json", "schema"), body)
    ]


def test_the_document_is_valid_openapi_3_1() -> None:
    validate_openapi(DOC)

    assert DOC["openapi"].startswith("3.1")


def test_every_route_and_method_is_documented() -> None:
    routes = {(template(pattern), method.lower()) for pattern, method, _ in route_methods()}
    documented = {
        (path, method)
        for path, item in DOC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }

    assert routes == documented


def test_the_spec_schema_names_every_field_of_a_job_spec() -> None:
    from training_manager_lab.spec import JobSpec

    documented = set(DOC["components"]["schemas"]["JobSpec"]["properties"])

    assert documented == set(JobSpec.__dataclass_fields__)


def test_every_operation_documents_refusal_and_failure() -> None:
    missing = [
        (path, method)
        for path, item in DOC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and "403" not in operation["responses"]
    ]

    assert missing == []


@aiotest
async def test_the_served_document_is_the_file(jp_fetch: Any) -> None:
    code, body, _ = await call(jp_fetch, "openapi.json")

    assert code == 200
    assert body == DOC
    assert check_response("/openapi.json", "GET", code, body) == []


@aiotest
async def test_real_answers_match_the_document(
    jp_fetch: Any, jp_ws_fetch: Any, job_cache: JobCache, bystander: int
) -> None:
    from training_manager_lab.tracking import Tracker

    record = await short_job(jp_fetch, job_cache)
    job = record["id"]
    Tracker(record["tracking_uri"]).register_model(
        run_id=record["run_id"], model_uri=record["model_uri"], name="digits", job_id=job
    )
    tag = ("models", "digits", "versions", "1", "tags", "stage")
    requests: list[tuple[str, str, tuple[str, ...], dict[str, Any] | None, Any]] = [
        ("/jobs", "GET", ("jobs",), None, None),
        ("/jobs", "GET", ("jobs",), {"status": "succeeded", "limit": 2}, None),
        ("/jobs", "GET", ("jobs",), {"status": "nope"}, None),
        ("/jobs", "POST", ("jobs",), None, {"spec": {"name": "x"}}),
        ("/jobs/{job_id}", "GET", ("jobs", job), None, None),
        ("/jobs/{job_id}", "GET", ("jobs", "0123456789ab"), None, None),
        ("/jobs/{job_id}", "DELETE", ("jobs", "0123456789ab"), None, None),
        ("/jobs/{job_id}/cancel", "POST", ("jobs", job, "cancel"), None, None),
        ("/jobs/{job_id}/logs", "GET", ("jobs", job, "logs"), {"tail": 5}, None),
        ("/jobs/{job_id}/logs", "GET", ("jobs", job, "logs"), {"rank": "x"}, None),
        ("/jobs/{job_id}/events", "GET", ("jobs", job, "events"), None, None),
        ("/jobs/{job_id}/events", "GET", ("jobs", job, "events"), {"cursor": -1}, None),
        ("/resources", "GET", ("resources",), None, None),
        (
            "/resources/processes/{pid}",
            "DELETE",
            ("resources", "processes", str(bystander)),
            None,
            None,
        ),
        ("/config", "GET", ("config",), None, None),
        ("/models", "GET", ("models",), None, None),
        ("/models/{name}", "GET", ("models", "digits"), None, None),
        ("/models/{name}", "GET", ("models", "absent"), None, None),
        (
            "/models/{name}/aliases/{alias}",
            "PUT",
            ("models", "digits", "aliases", "best"),
            None,
            {"version": 1},
        ),
        (
            "/models/{name}/aliases/{alias}",
            "PUT",
            ("models", "digits", "aliases", "best"),
            None,
            {},
        ),
        (
            "/models/{name}/aliases/{alias}",
            "DELETE",
            ("models", "digits", "aliases", "best"),
            None,
            None,
        ),
        ("/models/{name}/versions/{version}/tags/{key}", "PUT", tag, None, {"value": "ok"}),
        ("/models/{name}/versions/{version}/tags/{key}", "DELETE", tag, None, None),
        ("/models/{name}/versions/{version}/tags/{key}", "DELETE", tag, None, None),
        ("/openapi.json", "GET", ("openapi.json",), None, None),
    ]
    problems = []
    statuses = []

    for path, method, parts, params, body in requests:
        code, answer, _ = await call(jp_fetch, *parts, method=method, params=params, body=body)
        statuses.append(code)
        problems += check_response(path, method, code, answer)
    problems += check_response("/jobs", "POST", 201, job_cache.created["short"])
    problems += check(pointer("components", "schemas", "CreateJob"), {"spec": SHORT_SPEC})
    ws = await jp_ws_fetch("training-manager", "api", "jobs", job, "stream")
    for message in await read_stream(ws):
        problems += check(pointer("components", "schemas", "EventPage"), message)

    assert problems == []
    assert statuses == [
        200,
        200,
        400,
        400,
        200,
        404,
        404,
        200,
        200,
        400,
        200,
        400,
        200,
        409,
        200,
        200,
        200,
        404,
        200,
        400,
        204,
        200,
        204,
        404,
        200,
    ]


@pytest.fixture
def bystander() -> Any:
    """A process of this test that is no orphan, for the orphan route to refuse."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def test_the_document_rejects_what_the_server_rejects() -> None:
    bad_specs = [
        {"spec": {**SHORT_SPEC, "devices": 0}},
        {"spec": {**SHORT_SPEC, "colour": "red"}},
        {"spec": {**SHORT_SPEC, "entry": {"kind": "shell", "model": "x:y"}}},
        {"spec": {**SHORT_SPEC, "name": "../etc"}},
        {"spec": {**SHORT_SPEC, "strategy": "horovod"}},
        {"entry": "AAAA"},
    ]

    verdicts = [
        bool(check(pointer("components", "schemas", "CreateJob"), body)) for body in bad_specs
    ]

    assert verdicts == [True] * len(bad_specs)
