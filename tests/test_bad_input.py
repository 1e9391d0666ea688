"""The bad-input catalogue: one table of odd requests, each through the Python API or the REST API.

Every case must end in a clear error that names the problem (or, for odd metrics, in a job
that records them faithfully), and none may corrupt the job store or another job: after
each case a reference job still reads the same and every transition in the store is allowed.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import training_manager_lab as tml
from tests.conftest_faults import *  # noqa: F403
from tests.conftest_faults import (
    SHORT,
    JupyterServer,
    fault_module,
    import_spec,
    rest_pickled,
    store_problems,
)
from training_manager_lab.examples.digits import DigitsData, DigitsMLP
from training_manager_lab.store import TERMINAL
from training_manager_lab.tracking import Tracker

Outcome = tuple[str, str]

cell = fault_module()


@dataclass
class World:
    """What the cases act on: both APIs, a scratch folder and the jobs run for the catalogue."""

    manager: Any
    server: JupyterServer
    scratch: Path
    jobs: dict[str, dict[str, Any]]

    def job(self, key: str) -> tml.Job:
        return tml.job(self.jobs[key]["id"])


# -- how a case is run, and what it answers -----------------------------------------------


def raised(action: Callable[[], Any]) -> Outcome:
    """Run a Python call that must fail; answer its exception's type and message."""
    try:
        result = action()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "no error", repr(result)[:300]


def rest(response: requests.Response) -> Outcome:
    """An HTTP error answer: its status and its detail, which must be the documented shape."""
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    return str(response.status_code), str(body["detail"])


def job_end(record: dict[str, Any]) -> Outcome:
    error = record.get("error") or {}
    return record["status"], f"{record.get('reason')}\n{error.get('traceback') or ''}"


def post_spec(world: World, spec: Any, **extra: Any) -> Outcome:
    return rest(world.server.post("jobs", {"spec": spec, **extra}))


def spec(**fields: Any) -> dict[str, Any]:
    data = import_spec("bad-input", SHORT)
    data.update(fields)
    return data


def without(key: str) -> dict[str, Any]:
    data = spec()
    del data[key]
    return data


def launch(model: Any = DigitsMLP, **kwargs: Any) -> Callable[[World], Outcome]:
    kwargs.setdefault("accelerator", "cpu")
    return lambda world: raised(lambda: tml.launch(model, **kwargs))


def manager_launch(data: Any, entry: bytes | None = None) -> Callable[[World], Outcome]:
    return lambda world: raised(lambda: world.manager.launch(data, entry))


def rest_spec(data: Any, **extra: Any) -> Callable[[World], Outcome]:
    return lambda world: post_spec(world, data, **extra)


def rest_call(method: str, path: str, **kwargs: Any) -> Callable[[World], Outcome]:
    return lambda world: rest(world.server.request(method, path, **kwargs))


def finished_job(key: str) -> Callable[[World], Outcome]:
    return lambda world: job_end(world.jobs[key])


def register(name: str, **kwargs: Any) -> Callable[[World], Outcome]:
    return lambda world: raised(lambda: world.job("odd-metrics").register_model(name, **kwargs))


def raising_script(world: World) -> Outcome:
    (world.scratch / "raises_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    return raised(lambda: tml.launch("raises_on_import.py:Model", accelerator="cpu"))


def odd_metrics_recorded(world: World) -> Outcome:
    """The odd-metrics job kept inf and -inf, marked, and skipped the vector with a warning."""
    job = world.job("odd-metrics")
    events = job.events()
    marks = {e["key"]: e.get("nonfinite") for e in events if e.get("type") == "metric"}
    warnings = " | ".join(e["message"] for e in events if e.get("type") == "warning")
    assert marks["odd/inf"] == "inf" and marks["odd/neg_inf"] == "-inf", marks
    assert "odd/vector" not in marks
    history = Tracker(job.record()["tracking_uri"]).metric_history(job.run_id, "odd/inf")
    assert history and all(value == float("inf") for _, value in history), history
    return job.status, warnings


def unpicklable_lock(world: World) -> Outcome:
    model = DigitsMLP()
    model.lock = threading.Lock()
    return raised(lambda: tml.launch(model, accelerator="cpu"))


def huge_body(world: World) -> Outcome:
    return post_spec(world, spec(name="n" * 20_000_000))


def unknown_job(world: World) -> Outcome:
    return raised(lambda: tml.job("0123456789ab"))


# -- the catalogue ------------------------------------------------------------------------

P, R = "python", "rest"

CASES = [
    # Malformed specs.
    pytest.param(
        P,
        manager_launch("not a spec"),
        "JobSpecError",
        "must be a JSON object, got str",
        id="spec-not-a-dict",
    ),
    pytest.param(
        P,
        manager_launch(without("name")),
        "JobSpecError",
        "a job spec needs 'name'",
        id="spec-without-name",
    ),
    pytest.param(
        P,
        manager_launch(spec(gpus=2)),
        "JobSpecError",
        "unknown job spec field(s) ['gpus']",
        id="spec-unknown-field",
    ),
    pytest.param(
        P,
        manager_launch(spec(entry={"kind": "exec"})),
        "JobSpecError",
        "entry must be {'kind'",
        id="spec-entry-kind",
    ),
    pytest.param(
        P,
        manager_launch(spec(entry={"kind": "import", "model": "no colon"})),
        "JobSpecError",
        "entry model must be 'package.module:attr'",
        id="spec-entry-reference",
    ),
    pytest.param(
        P,
        manager_launch(spec(entry={"kind": "pickle"})),
        "JobSpecError",
        "needs the pickled entry point",
        id="spec-pickle-without-payload",
    ),
    pytest.param(
        R,
        rest_call("POST", "jobs", data=b"{not json"),
        "400",
        "not valid JSON",
        id="rest-body-not-json",
    ),
    pytest.param(
        R,
        rest_call("POST", "jobs", json=[1, 2]),
        "400",
        'the body must be {"spec"',
        id="rest-body-a-list",
    ),
    pytest.param(
        R,
        rest_spec(without("entry")),
        "400",
        "a job spec needs 'entry'",
        id="rest-spec-without-entry",
    ),
    pytest.param(
        R,
        rest_spec(spec(entry={"kind": "pickle"}), entry="%%%not base64"),
        "400",
        "entry must be base64",
        id="rest-entry-not-base64",
    ),
    # Wrong types.
    pytest.param(
        P,
        launch(devices="2"),
        "JobSpecError",
        "devices must be a whole number, got '2'",
        id="devices-a-string",
    ),
    pytest.param(
        P,
        launch(devices=True),
        "JobSpecError",
        "devices must be a whole number, got True",
        id="devices-a-bool",
    ),
    pytest.param(
        P,
        launch(priority=1.5),
        "JobSpecError",
        "priority must be a whole number",
        id="priority-a-float",
    ),
    pytest.param(
        P,
        launch(trainer=[1]),
        "JobSpecError",
        "trainer must be a dict",
        id="trainer-a-list",
    ),
    pytest.param(
        P,
        launch(trainer={"max_epochs": float("nan")}),
        "JobSpecError",
        "plain JSON values",
        id="trainer-nan",
    ),
    pytest.param(
        P,
        launch(cluster_options="fast"),
        "JobSpecError",
        "cluster_options must be a dict",
        id="cluster-options-a-string",
    ),
    pytest.param(
        R,
        rest_spec(spec(devices="two")),
        "400",
        "devices must be a whole number, got 'two'",
        id="rest-devices-a-string",
    ),
    pytest.param(
        R,
        rest_spec(spec(trainer="fast")),
        "400",
        "trainer must be a dict",
        id="rest-trainer-a-string",
    ),
    pytest.param(
        R, rest_spec(spec(cwd=5)), "400", "cwd must be a folder path", id="rest-cwd-a-number"
    ),
    pytest.param(
        R,
        rest_call("GET", "jobs", params={"limit": "many"}),
        "400",
        "limit must be a whole number",
        id="rest-limit-not-a-number",
    ),
    pytest.param(
        R,
        rest_call("GET", "jobs/0123456789ab/events", params={"wait": "soon"}),
        "404",
        "no job with id",
        id="rest-events-of-unknown-job",
    ),
    # Absurd resource requests and values out of range.
    pytest.param(
        P, launch(devices=0), "JobSpecError", "devices must be 1 or more", id="devices-zero"
    ),
    pytest.param(
        P,
        launch(devices=10**6),
        "ResourceUnavailable",
        "this node runs at most",
        id="devices-a-million",
    ),
    pytest.param(
        P,
        launch(memory=2**70),
        "ResourceUnavailable",
        "GiB of memory but this node has",
        id="memory-a-zebibyte",
    ),
    pytest.param(
        P,
        launch(memory=-5),
        "JobSpecError",
        "memory must be a number of bytes above 0",
        id="memory-negative",
    ),
    pytest.param(
        P,
        launch(priority=10**100),
        "JobSpecError",
        "priority must lie between -1000 and 1000",
        id="priority-huge",
    ),
    pytest.param(
        P,
        launch(accelerator="tpu"),
        "JobSpecError",
        "accelerator must be one of",
        id="accelerator-unknown",
    ),
    pytest.param(
        P, launch(cluster="moon"), "JobSpecError", "cluster must be one of", id="cluster-unknown"
    ),
    pytest.param(
        P,
        launch(trainer={"max_epochz": 1}),
        "JobSpecError",
        "unknown Trainer argument(s) ['max_epochz']",
        id="trainer-unknown-argument",
    ),
    pytest.param(
        R,
        rest_spec(spec(devices=10**9)),
        "400",
        "this node runs at most",
        id="rest-devices-a-billion",
    ),
    pytest.param(
        R,
        rest_spec(spec(memory=2**70)),
        "400",
        "GiB of memory but this node has",
        id="rest-memory-a-zebibyte",
    ),
    pytest.param(
        R,
        rest_call("GET", "jobs", params={"limit": "0"}),
        "400",
        "limit must lie between 1 and 1000",
        id="rest-limit-zero",
    ),
    pytest.param(
        R,
        rest_call("GET", "jobs", params={"status": "sleeping"}),
        "400",
        "status filter must be one of",
        id="rest-status-unknown",
    ),
    # Huge parameters.
    pytest.param(
        P,
        launch(name="n" * 10_000),
        "JobSpecError",
        "name must be 1-100 characters",
        id="name-ten-thousand-characters",
    ),
    pytest.param(
        R, huge_body, "400", "name must be 1-100 characters", id="rest-twenty-megabyte-name"
    ),
    pytest.param(
        R,
        rest_call("GET", "jobs/0123456789ab/logs", params={"tail": str(10**12)}),
        "404",
        "no job with id",
        id="rest-logs-of-unknown-job",
    ),
    # Unknown ids.
    pytest.param(
        P, unknown_job, "JobNotFound", "no job with id '0123456789ab'", id="job-unknown-id"
    ),
    pytest.param(
        P,
        lambda w: raised(lambda: tml.job("../../etc/passwd")),
        "JobNotFound",
        "no job with id",
        id="job-id-a-path",
    ),
    pytest.param(
        P,
        lambda w: raised(lambda: w.manager.cancel("ffffffffffff")),
        "JobNotFound",
        "no job with id",
        id="cancel-unknown-id",
    ),
    pytest.param(
        P,
        lambda w: raised(lambda: w.manager.get(12)),
        "JobNotFound",
        "no job with id '12'",
        id="job-id-a-number",
    ),
    pytest.param(
        R,
        rest_call("GET", "jobs/0123456789ab"),
        "404",
        "no job with id '0123456789ab'",
        id="rest-unknown-id",
    ),
    pytest.param(
        R,
        rest_call("POST", "jobs/ffffffffffff/cancel"),
        "404",
        "no job with id",
        id="rest-cancel-unknown-id",
    ),
    pytest.param(
        R,
        rest_call("DELETE", "jobs/%2E%2E%2Fetc"),
        "404",
        "no job with id",
        id="rest-delete-a-path",
    ),
    # Names and aliases the registry refuses.
    pytest.param(
        P,
        register("digits/bad"),
        "RegistryError",
        "invalid model name 'digits/bad'",
        id="register-name-with-slash",
    ),
    pytest.param(
        P,
        register("digits@v1"),
        "RegistryError",
        "invalid model name 'digits@v1'",
        id="register-name-with-at",
    ),
    pytest.param(
        P,
        register("digits-ok", alias="latest"),
        "RegistryError",
        "invalid alias 'latest'",
        id="register-alias-latest",
    ),
    pytest.param(
        P,
        register("digits-ok", alias="v3"),
        "RegistryError",
        "invalid alias 'v3'",
        id="register-alias-version-like",
    ),
    pytest.param(
        P,
        lambda w: raised(lambda: w.job("unloadable").register_model("digits-ok")),
        "RegistryError",
        "only a succeeded job has a model",
        id="register-a-failed-job",
    ),
    pytest.param(
        P,
        lambda w: raised(lambda: tml.load_model("nope@x")),
        "ModelNotFound",
        "nope",
        id="load-unknown-model",
    ),
    pytest.param(
        P,
        lambda w: raised(lambda: tml.load_model("")),
        "RegistryError",
        "",
        id="load-empty-reference",
    ),
    pytest.param(
        R,
        rest_call("PUT", "models/digits-ok/aliases/latest", json={"version": "1"}),
        "400",
        "invalid alias 'latest'",
        id="rest-alias-latest",
    ),
    pytest.param(
        R,
        rest_call("PUT", "models/digits-ok/aliases/best", json={}),
        "400",
        'the body must be {"version"',
        id="rest-alias-without-version",
    ),
    pytest.param(
        R, rest_call("GET", "models/no-such-model"), "404", "no-such-model", id="rest-unknown-model"
    ),
    # Unicode and slashes in names.
    pytest.param(P, launch(name="模型"), "JobSpecError", "name must be", id="name-unicode"),
    pytest.param(P, launch(name="a/b"), "JobSpecError", "got 'a/b'", id="name-with-slash"),
    pytest.param(
        P, launch(experiment="../up"), "JobSpecError", "experiment must be", id="experiment-dot-dot"
    ),
    pytest.param(R, rest_spec(spec(name="ζ-job")), "400", "name must be", id="rest-name-unicode"),
    pytest.param(
        R,
        rest_spec(spec(experiment="x/y")),
        "400",
        "experiment must be",
        id="rest-experiment-with-slash",
    ),
    # Code that cannot be loaded.
    pytest.param(
        P,
        raising_script,
        "JobSpecError",
        "raised while loading: RuntimeError('boom at import')",
        id="script-raises-on-import",
    ),
    pytest.param(
        P,
        launch("asyncio.windows_utils:Popen"),
        "JobSpecError",
        "raised while importing: ImportError('win32 only')",
        id="module-raises-on-import",
    ),
    pytest.param(
        P,
        unpicklable_lock,
        "JobSpecError",
        "the attribute lock of type lock",
        id="unpicklable-attribute",
    ),
    pytest.param(
        P,
        finished_job("unloadable"),
        "failed",
        "cannot be loaded in the job process",
        id="pickled-by-reference-to-a-test-module",
    ),
    pytest.param(
        R,
        finished_job("raising-import"),
        "failed",
        "raised while importing: ImportError('win32 only')",
        id="rest-module-raises-on-import",
    ),
    # Non-finite and non-scalar metrics.
    pytest.param(
        P,
        odd_metrics_recorded,
        "succeeded",
        "odd/vector has shape (3,)",
        id="inf-and-vector-metrics",
    ),
    pytest.param(
        R, finished_job("vector-log"), "failed", "odd/vector", id="rest-self-log-of-a-vector"
    ),
]


@pytest.fixture(scope="module")
def world(client: Any, tml_server: JupyterServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Both APIs, with the jobs the catalogue needs run to their end (all at once)."""
    from training_manager_lab import client as client_module

    previous = client_module._client
    client_module.set_client(client)
    jobs = {
        "odd-metrics": tml.launch(
            lambda: cell.FaultMLP(odd_metrics=True), datamodule=DigitsData, trainer=SHORT,
            accelerator="cpu", name="odd-metrics", experiment="bad-input",
        ).record(),
        "unloadable": tml.launch(
            ghost_model(), datamodule=DigitsData, trainer=SHORT, accelerator="cpu",
            name="unloadable", experiment="bad-input",
        ).record(),
        "raising-import": tml_server.launch(
            import_spec("raising-import", SHORT, entry={
                "kind": "import", "model": "asyncio.windows_utils:Popen", "datamodule": None,
            })
        ),
        "vector-log": rest_pickled(
            tml_server, "vector-log", lambda: cell.FaultMLP(vector_log=True), SHORT
        ),
    }  # fmt: skip
    for key, record in jobs.items():
        jobs[key] = tml_server.wait_terminal(record["id"], 300)
    yield World(client.manager, tml_server, tmp_path_factory.mktemp("scratch"), jobs)
    client_module.set_client(previous)


def ghost_model() -> type:
    """A model class in a module that exists only in this process, so it pickles by reference."""
    name = "tml_test_only_models"
    module = types.ModuleType(name)
    module.__spec__ = importlib.util.spec_from_loader(name, loader=None)
    exec(
        "from training_manager_lab.examples.digits import DigitsMLP\n"
        "class GhostMLP(DigitsMLP):\n    pass\n",
        module.__dict__,
    )
    sys.modules[name] = module
    return module.GhostMLP  # type: ignore[no-any-return]


def test_catalogue_has_forty_cases_through_both_apis() -> None:
    via = [case.values[0] for case in CASES]

    assert len(CASES) >= 40
    assert via.count(P) >= 20 and via.count(R) >= 20


@pytest.mark.parametrize(("via", "case", "kind", "mentions"), CASES)
def test_bad_input_gets_a_clear_error_and_harms_nothing(
    world: World, via: str, case: Callable[[World], Outcome], kind: str, mentions: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(world.scratch)
    reference = world.jobs["odd-metrics"]
    events_before = len(world.job("odd-metrics").events())

    outcome = case(world)

    assert outcome[0] == kind, outcome
    assert mentions in outcome[1], outcome
    assert world.manager.get(reference["id"]) == reference
    assert world.server.record(reference["id"]) == reference
    assert len(world.job("odd-metrics").events()) == events_before
    assert store_problems(world.manager.state_dir) == []
    assert all(job["status"] in TERMINAL for job in world.jobs.values())
