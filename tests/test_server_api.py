"""The REST and websocket API of the server extension, against a real server and real jobs."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403

from tests.conftest_server import *  # noqa: F403
from tests.conftest_server import (
    LONG_SPEC,
    SHORT_SPEC,
    JobCache,
    aiotest,
    all_events,
    call,
    group_processes,
    read_stream,
    short_job,
    wait_for,
)


@pytest.fixture
def jp_server_config(tml_server_config: dict[str, Any]) -> dict[str, Any]:
    return tml_server_config


async def long_job_running(fetch: Any, cache: JobCache) -> dict[str, Any]:
    """The session's long job, once it is running and has written a few progress events."""
    job_id = await cache.launched(fetch, "long", LONG_SPEC)
    return await wait_for(
        fetch,
        job_id,
        lambda r: r["status"] == "running" and (r.get("progress") or {}).get("step", 0) >= 2,
        what="running with progress",
    )


def assert_error(code: int, body: Any, status: int, error: str, mentions: str = "") -> None:
    assert code == status, body
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error
    assert mentions in body["detail"]


@aiotest
async def test_create_with_module_entry_runs_to_success(jp_fetch: Any, job_cache: JobCache) -> None:
    # The long job starts now too, so that it is well under way for the tests that need it.
    await job_cache.launched(jp_fetch, "long", LONG_SPEC)

    created_id = await job_cache.launched(jp_fetch, "short", SHORT_SPEC)
    created = job_cache.created["short"]
    record = await short_job(jp_fetch, job_cache)

    assert re.fullmatch(r"[0-9a-f]{12}", created_id)
    assert created["status"] in ("queued", "running")
    assert created["name"] == "short"
    assert created["spec"]["entry"]["model"].endswith(":DigitsMLP")
    assert record["status"] == "succeeded" and record["reason"] is None
    assert record["world_size"] == 1
    assert record["run_id"] and record["model_uri"]
    assert record["progress"]["fraction"] == 1.0
    assert record["progress"]["total_steps"] == 8
    assert set(record["last_metrics"]) >= {"train_loss", "val_loss", "val_acc"}
    assert record["started_at"] <= record["ended_at"]


@aiotest
async def test_get_returns_the_stored_record(jp_fetch: Any, job_cache: JobCache) -> None:
    record = await short_job(jp_fetch, job_cache)

    code, fetched, _ = await call(jp_fetch, "jobs", record["id"])

    assert code == 200
    assert fetched == record


@aiotest
async def test_logs_tail_and_offset(jp_fetch: Any, job_cache: JobCache) -> None:
    record = await short_job(jp_fetch, job_cache)
    job_id = record["id"]

    code, whole, _ = await call(jp_fetch, "jobs", job_id, "logs", params={"rank": 0})
    _, tail, _ = await call(jp_fetch, "jobs", job_id, "logs", params={"tail": 3})
    middle = whole["offset"] // 2
    _, rest, _ = await call(jp_fetch, "jobs", job_id, "logs", params={"offset": middle})
    _, past, _ = await call(jp_fetch, "jobs", job_id, "logs", params={"offset": 10**9})
    _, missing, _ = await call(jp_fetch, "jobs", job_id, "logs", params={"rank": 7})

    assert code == 200 and whole["rank"] == 0 and whole["text"]
    assert whole["offset"] == len(whole["text"].encode())
    assert tail["text"].splitlines() == whole["text"].splitlines()[-3:]
    assert rest["text"].encode() == whole["text"].encode()[middle:]
    assert rest["offset"] == whole["offset"]
    assert past == {"rank": 0, "text": "", "offset": whole["offset"]}
    assert missing == {"rank": 7, "text": "", "offset": 0}
    for params, name in (
        ({"rank": -1}, "rank"),
        ({"tail": "x"}, "tail"),
        ({"offset": -5}, "offset"),
    ):
        code, body, _ = await call(jp_fetch, "jobs", job_id, "logs", params=params)
        assert_error(code, body, 400, "bad request", name)


@aiotest
async def test_events_from_a_cursor(
    jp_fetch: Any, job_cache: JobCache, server_state_dir: Path
) -> None:
    record = await short_job(jp_fetch, job_cache)
    job_id = record["id"]
    lines = (server_state_dir / "jobs" / job_id / "events.jsonl").read_bytes().splitlines(True)
    fifth = sum(len(line) for line in lines[:5])

    code, first, _ = await call(jp_fetch, "jobs", job_id, "events")
    _, later, _ = await call(jp_fetch, "jobs", job_id, "events", params={"cursor": fifth})
    end = first["cursor"]
    _, after, _ = await call(
        jp_fetch, "jobs", job_id, "events", params={"cursor": end, "wait": 0.2}
    )

    assert code == 200
    assert first["events"] == [json.loads(line) for line in lines]
    assert end == sum(len(line) for line in lines)
    assert later == {"events": first["events"][5:], "cursor": end}
    assert after == {"events": [], "cursor": end}
    assert first["events"][-1]["type"] == "status"
    assert first["events"][-1]["status"] == "succeeded"
    assert any(e["type"] == "metric" and e["key"] == "train_loss" for e in first["events"])
    for params, name in (
        ({"cursor": -1}, "cursor"),
        ({"cursor": "a"}, "cursor"),
        ({"wait": "x"}, "wait"),
    ):
        code, body, _ = await call(jp_fetch, "jobs", job_id, "events", params=params)
        assert_error(code, body, 400, "bad request", name)


@aiotest
async def test_long_poll_waits_for_new_events(jp_fetch: Any, job_cache: JobCache) -> None:
    record = await long_job_running(jp_fetch, job_cache)
    _, now, _ = await call(jp_fetch, "jobs", record["id"], "events")

    code, page, _ = await call(
        jp_fetch, "jobs", record["id"], "events", params={"cursor": now["cursor"], "wait": 25}
    )

    assert code == 200
    assert page["events"], "a long poll on a running job returned no new events"
    assert page["cursor"] > now["cursor"]


@aiotest
async def test_delete_is_refused_while_running(jp_fetch: Any, job_cache: JobCache) -> None:
    record = await long_job_running(jp_fetch, job_cache)

    code, body, _ = await call(jp_fetch, "jobs", record["id"], method="DELETE")
    _, after, _ = await call(jp_fetch, "jobs", record["id"])

    assert_error(code, body, 409, "conflict", "cancel it")
    assert after["status"] == "running"


@aiotest
async def test_stream_replays_then_follows_until_cancel_ends_it(
    jp_fetch: Any, jp_ws_fetch: Any, job_cache: JobCache
) -> None:
    record = await long_job_running(jp_fetch, job_cache)
    job_id = record["id"]
    _, before, _ = await call(jp_fetch, "jobs", job_id, "events")

    ws = await jp_ws_fetch(
        "training-manager", "api", "jobs", job_id, "stream", params={"cursor": 0}
    )
    replay = json.loads(await asyncio.wait_for(ws.read_message(), 60))
    live = json.loads(await asyncio.wait_for(ws.read_message(), 60))
    code, cancelled, _ = await call(jp_fetch, "jobs", job_id, "cancel", method="POST")
    rest = await read_stream(ws)
    streamed = [e for m in [replay, live, *rest] for e in m["events"]]

    assert replay["events"][: len(before["events"])] == before["events"]
    assert live["events"] and live["cursor"] > replay["cursor"]
    assert code == 200 and cancelled["status"] == "cancelled"
    assert cancelled["reason"].startswith("cancelled by the user")
    assert streamed == await all_events(jp_fetch, job_id)
    assert streamed[-1]["type"] == "status" and streamed[-1]["status"] == "cancelled"
    assert [e["type"] for e in streamed].count("status") == 1
    assert ws.close_code == 1000
    for _ in range(150):
        if not group_processes(cancelled["pid"]):
            break
        await asyncio.sleep(0.1)
    assert group_processes(cancelled["pid"]) == [], "processes of the cancelled job remain"


@aiotest
async def test_stream_of_an_ended_job_replays_from_cursor_and_closes(
    jp_fetch: Any, jp_ws_fetch: Any, job_cache: JobCache, server_state_dir: Path
) -> None:
    record = await short_job(jp_fetch, job_cache)
    _, whole, _ = await call(jp_fetch, "jobs", record["id"], "events")
    lines = (server_state_dir / "jobs" / record["id"] / "events.jsonl").read_bytes()
    third = len(b"".join(lines.splitlines(True)[:3]))

    ws = await jp_ws_fetch(
        "training-manager", "api", "jobs", record["id"], "stream", params={"cursor": third}
    )
    messages = await read_stream(ws)

    assert [e for m in messages for e in m["events"]] == whole["events"][3:]
    assert messages[-1]["cursor"] == whole["cursor"]
    assert ws.close_code == 1000


@aiotest
async def test_cancel_of_an_ended_job_changes_nothing(jp_fetch: Any, job_cache: JobCache) -> None:
    record = await short_job(jp_fetch, job_cache)

    code, body, _ = await call(jp_fetch, "jobs", record["id"], "cancel", method="POST")

    assert code == 200
    assert body["status"] == "succeeded"


@aiotest
async def test_delete_removes_record_and_files(
    jp_fetch: Any, job_cache: JobCache, server_state_dir: Path
) -> None:
    job_id = await job_cache.launched(jp_fetch, "long", LONG_SPEC)
    await call(jp_fetch, "jobs", job_id, "cancel", method="POST")

    code, _, response = await call(jp_fetch, "jobs", job_id, method="DELETE")
    again, body, _ = await call(jp_fetch, "jobs", job_id, method="DELETE")
    gone, _, _ = await call(jp_fetch, "jobs", job_id)

    assert code == 204 and response.body == b""
    assert_error(again, body, 404, "not found", job_id)
    assert gone == 404
    assert not (server_state_dir / "jobs" / job_id).exists()


@aiotest
async def test_list_filters_and_pagination(jp_fetch: Any, job_cache: JobCache) -> None:
    await short_job(jp_fetch, job_cache)
    for status in ("queued", "running"):
        _, active, _ = await call(jp_fetch, "jobs", params={"status": status})
        for job in active["jobs"]:
            await wait_for(jp_fetch, job["id"], lambda r: r["status"] not in ("queued", "running"))

    code, everything, _ = await call(jp_fetch, "jobs", params={"limit": 1000})
    pages = []
    for offset in range(everything["total"] + 1):
        _, page, _ = await call(jp_fetch, "jobs", params={"limit": 1, "offset": offset})
        pages.append(page)
    _, succeeded, _ = await call(jp_fetch, "jobs", params={"status": "succeeded"})
    _, default, _ = await call(jp_fetch, "jobs")

    assert code == 200
    assert everything["total"] == len(everything["jobs"]) >= 1
    created = [job["created_at"] for job in everything["jobs"]]
    assert created == sorted(created, reverse=True)
    assert [p["jobs"][0] for p in pages[:-1]] == everything["jobs"]
    assert pages[-1] == {"jobs": [], "total": everything["total"]}
    assert succeeded["jobs"] == [j for j in everything["jobs"] if j["status"] == "succeeded"]
    assert succeeded["total"] == len(succeeded["jobs"])
    assert default["jobs"] == everything["jobs"][:50]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": "bogus"}, "status"),
        ({"status": "RUNNING"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "1.5"}, "offset"),
    ],
)
@aiotest
async def test_list_refuses_bad_filters(jp_fetch: Any, params: dict[str, Any], names: str) -> None:
    code, body, _ = await call(jp_fetch, "jobs", params=params)

    assert_error(code, body, 400, "bad request", names)


@aiotest
async def test_etag_gives_not_modified_for_jobs_and_resources(
    jp_fetch: Any, job_cache: JobCache
) -> None:
    await short_job(jp_fetch, job_cache)
    outcomes = {}

    for path in ("jobs", "resources"):
        _, _, first = await call(jp_fetch, path)
        etag = first.headers["Etag"]
        # A busy machine may change the answer between two requests; the next one must
        # then match the new tag.
        for _ in range(5):
            code, _, response = await call(jp_fetch, path, headers={"If-None-Match": etag})
            if code == 304:
                break
            etag = response.headers["Etag"]
        outcomes[path] = (code, response.body)

    assert outcomes == {"jobs": (304, b""), "resources": (304, b"")}


@aiotest
async def test_etag_changes_when_jobs_change(jp_fetch: Any, job_cache: JobCache) -> None:
    record = await short_job(jp_fetch, job_cache)
    _, _, before = await call(jp_fetch, "jobs", record["id"])

    code, _, same = await call(
        jp_fetch, "jobs", record["id"], headers={"If-None-Match": before.headers["Etag"]}
    )
    changed, _, _ = await call(
        jp_fetch, "jobs", record["id"], headers={"If-None-Match": '"not-the-tag"'}
    )

    assert code == 304 and same.body == b""
    assert changed == 200


@aiotest
async def test_resources_and_config(jp_fetch: Any, server_state_dir: Path) -> None:
    code, resources, _ = await call(jp_fetch, "resources")
    _, config, _ = await call(jp_fetch, "config")

    assert code == 200
    assert set(resources) >= {"nodes", "holders", "queue", "allocations", "capacity", "kernels"}
    assert resources["capacity"]["cpu_slots"] == 2
    assert resources["nodes"][0]["cpu"]["count"] >= 1
    assert isinstance(resources["kernels"], dict)
    assert config["mode"] == "server"
    assert Path(config["state_dir"]) == server_state_dir.resolve()
    assert config["tracking_uri"].startswith("sqlite:///")


@aiotest
async def test_errors_are_json_with_status(jp_fetch: Any) -> None:
    spec = dict(SHORT_SPEC)
    cases = [
        (("jobs", "0123456789ab"), "GET", None, 404, "not found", "0123456789ab"),
        (("jobs", "not-an-id"), "GET", None, 404, "not found", "not-an-id"),
        (("jobs", "0123456789ab", "cancel"), "POST", None, 404, "not found", ""),
        (("jobs", "0123456789ab", "logs"), "GET", None, 404, "not found", ""),
        (("jobs", "0123456789ab", "events"), "GET", None, 404, "not found", ""),
        (("jobs",), "POST", b"{not json", 400, "bad request", "not valid JSON"),
        (("jobs",), "POST", {"name": "x"}, 400, "bad request", "spec"),
        (("jobs",), "POST", {"spec": {**spec, "devices": 0}}, 400, "bad request", "devices"),
        (("jobs",), "POST", {"spec": {**spec, "devices": 64}}, 400, "bad request", "CPU"),
        (("jobs",), "POST", {"spec": {**spec, "colour": 1}}, 400, "bad request", "colour"),
        (("jobs",), "POST", {"spec": {**spec, "name": "../x"}}, 400, "bad request", "name"),
        (("jobs",), "POST", {"spec": spec, "entry": "%%%"}, 400, "bad request", "base64"),
        (
            ("jobs",),
            "POST",
            {"spec": {**spec, "entry": {"kind": "pickle"}}},
            400,
            "bad request",
            "pickle",
        ),
        (("models", "no-such-model"), "GET", None, 404, "not found", "no-such-model"),
    ]
    for parts, method, body, status, error, mentions in cases:
        code, answer, _ = await call(jp_fetch, *parts, method=method, body=body)
        assert_error(code, answer, status, error, mentions)


@aiotest
async def test_unexpected_failure_returns_a_fixed_message(
    jp_fetch: Any, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    manager = jp_serverapp.web_app.settings["tml_manager"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /var/lib/x")

    monkeypatch.setattr(manager, "list", broken)
    with caplog.at_level(logging.ERROR):
        code, body, response = await call(jp_fetch, "jobs")

    assert code == 500
    assert body == {
        "error": "internal error",
        "detail": "the server could not complete the request; see its log",
    }
    assert b"secret" not in response.body and b"Traceback" not in response.body
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info and "secret internal detail" in str(logged[0].exc_info[1])


@aiotest
async def test_model_registry_routes(jp_fetch: Any, job_cache: JobCache) -> None:
    from training_manager_lab.tracking import Tracker

    record = await short_job(jp_fetch, job_cache)
    tracker = Tracker(record["tracking_uri"])
    tracker.register_model(
        run_id=record["run_id"], model_uri=record["model_uri"], name="digits", job_id=record["id"]
    )

    _, models, _ = await call(jp_fetch, "models")
    code, model, _ = await call(jp_fetch, "models", "digits")
    alias = await call(
        jp_fetch, "models", "digits", "aliases", "champion", method="PUT", body={"version": "1"}
    )
    _, with_alias, _ = await call(jp_fetch, "models", "digits")
    unalias = await call(jp_fetch, "models", "digits", "aliases", "champion", method="DELETE")
    tag = await call(
        jp_fetch,
        "models",
        "digits",
        "versions",
        "1",
        "tags",
        "stage",
        method="PUT",
        body={"value": "tested"},
    )
    _, with_tag, _ = await call(jp_fetch, "models", "digits")
    untag = await call(
        jp_fetch, "models", "digits", "versions", "1", "tags", "stage", method="DELETE"
    )
    untag_again = await call(
        jp_fetch, "models", "digits", "versions", "1", "tags", "stage", method="DELETE"
    )
    bad_alias = await call(
        jp_fetch, "models", "digits", "aliases", "v2", method="PUT", body={"version": "1"}
    )
    bad_body = await call(
        jp_fetch, "models", "digits", "aliases", "best", method="PUT", body={"v": 1}
    )
    no_version = await call(
        jp_fetch, "models", "digits", "aliases", "best", method="PUT", body={"version": "9"}
    )

    assert [m["name"] for m in models["models"]] == ["digits"]
    assert code == 200 and [v["version"] for v in model["versions"]] == ["1"]
    assert model["versions"][0]["job_id"] == record["id"]
    assert alias[:2] == (200, {"name": "digits", "alias": "champion", "version": "1"})
    assert with_alias["versions"][0]["aliases"] == ["champion"]
    assert unalias[0] == 204
    assert tag[:2] == (200, {"name": "digits", "version": "1", "key": "stage", "value": "tested"})
    assert with_tag["versions"][0]["tags"]["stage"] == "tested"
    assert untag[0] == 204
    assert_error(*untag_again[:2], 404, "not found", "stage")
    assert_error(*bad_alias[:2], 400, "bad request", "v2")
    assert_error(*bad_body[:2], 400, "bad request", "version")
    assert_error(*no_version[:2], 404, "not found", "9")
