"""Tests of the MLflow facade against a real SQLite store and a real `mlflow server`."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.utils.validation import _validate_metric_name

from training_manager_lab.errors import ModelNotFound, RegistryError
from training_manager_lab.tracking import (
    MAX_PARAM_VALUE_LENGTH,
    NAMES_TAG,
    Tracker,
    default_tracking_uri,
    describe_code,
    normalize_version,
    store_key,
)

from .conftest_mlflow import log_trained_run

BAD_NAMES = ["", "   ", "team/model", "team:model", "model@candidate", "x" * 251, "it's", " pad"]
BAD_ALIASES = ["latest", "LATEST", "v3", "V12", "two words", "a.b", "", "x" * 256, "a/b"]
BAD_TAG_KEYS = ["", "bad@key", "/abs", "a//b", "a/../b", "x" * 251, "semi;colon", "end/"]


def metric(step: int, key: str, value: float | None, nonfinite: str | None = None) -> dict:
    event: dict[str, Any] = {"type": "metric", "t": time.time(), "step": step, "key": key}
    event["value"] = value
    if nonfinite is not None:
        event["nonfinite"] = nonfinite
    return event


def test_default_tracking_uri_is_sqlite_in_state_dir_unless_env_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_sqlite_store_keeps_artifacts_beside_the_database(sqlite_tracking_uri: str) -> None:
    tracker = Tracker(sqlite_tracking_uri)
    db_dir = Path(sqlite_tracking_uri[len("sqlite:///") :]).parent

    run_id = tracker.start_run(f"exp-{uuid.uuid4().hex[:6]}", "r", {})

    location = tracker.client.get_run(run_id).info.artifact_uri
    assert str(db_dir / "mlartifacts") in location
    assert tracker.artifact_root == str(db_dir / "mlartifacts")


def test_store_key_keeps_valid_names_and_maps_others_deterministically() -> None:
    odd = ["val/mAP@0.5", "val/mAP#0.5", "loss (train)", "a//b", "/lead", "x" * 300, "é/ü"]

    keys = [store_key(name) for name in odd]

    assert store_key("train/loss") == "train/loss"
    assert store_key("val acc: top-1") == "val acc: top-1"
    assert keys == [store_key(name) for name in odd]
    assert len(set(keys)) == len(odd)
    for key in keys:
        assert len(key) <= 250
        _validate_metric_name(key)  # raises if MLflow would refuse the key
    # A valid name that looks like a mapped one is mapped too, so the two cannot collide.
    assert store_key(keys[0]) != keys[0]


def test_nonfinite_and_odd_metric_names_round_trip(tracker: Tracker) -> None:
    run_id = tracker.start_run("metrics", "odd", {})
    events = [
        metric(0, "val/mAP@0.5", 0.25),
        metric(1, "val/mAP@0.5", None, "nan"),
        metric(2, "val/mAP@0.5", None, "inf"),
        metric(3, "val/mAP@0.5", None, "-inf"),
        metric(4, "val/mAP@0.5", 0.75),
        metric(0, "train_loss", float("inf")),
        {"type": "progress", "t": time.time(), "step": 4},
    ]

    tracker.log_metric_events(run_id, events)

    history = tracker.metric_history(run_id, "val/mAP@0.5")
    assert [step for step, _ in history] == [0, 1, 2, 3, 4]
    assert history[0][1] == 0.25 and history[4][1] == 0.75
    assert math.isnan(history[1][1])
    assert history[2][1] == math.inf and history[3][1] == -math.inf
    assert tracker.metric_history(run_id, "train_loss") == [(0, math.inf)]
    stored = tracker.client.get_metric_history(run_id, store_key("val/mAP@0.5"))
    assert all(p.value != sys.float_info.max and p.value != -sys.float_info.max for p in stored)
    assert tracker.original_names(run_id)[store_key("val/mAP@0.5")] == "val/mAP@0.5"
    assert NAMES_TAG in tracker.client.get_run(run_id).data.tags
    assert tracker.run_metrics(run_id) == {"train_loss": math.inf, "val/mAP@0.5": 0.75}


def test_metric_bridge_never_raises(tracker: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    run_id = tracker.start_run("metrics", "bad", {})
    events = [metric(0, "ok", 1.0), {"type": "metric", "key": "broken"}, metric(1, "ok", 2.0)]

    with caplog.at_level(logging.WARNING, logger="training_manager_lab.tracking"):
        tracker.log_metric_events(run_id, events)
        tracker.log_metric_events("0" * 32, [metric(0, "ok", 1.0)])

    assert tracker.metric_history(run_id, "ok") == [(0, 1.0), (1, 2.0)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("malformed metric event" in m for m in messages)
    assert any("could not log 1 events" in m for m in messages)


def test_long_parameter_is_truncated_with_marker_and_saved_whole(
    tracker: Tracker, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    run_id = tracker.start_run("params", "long", {})
    long_value = "".join(str(i % 10) for i in range(9000))

    with caplog.at_level(logging.WARNING, logger="training_manager_lab.tracking"):
        tracker.log_params(run_id, {"lr": 0.01, "layers": [64, 32], "notes": long_value})

    params = tracker.client.get_run(run_id).data.params
    assert params["lr"] == "0.01" and params["layers"] == "[64, 32]"
    assert len(params["notes"]) == MAX_PARAM_VALUE_LENGTH
    assert params["notes"].endswith("[truncated; full value in artifact tml/params/notes.txt]")
    assert long_value.startswith(params["notes"].split("...[truncated")[0])
    full = tracker.client.download_artifacts(run_id, "tml/params/notes.txt", str(tmp_path))
    assert Path(full).read_text() == long_value
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "notes" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("status", "expected"),
    [("succeeded", "FINISHED"), ("failed", "FAILED"), ("cancelled", "KILLED")],
)
def test_end_run_maps_job_status(tracker: Tracker, status: str, expected: str) -> None:
    run_id = tracker.start_run("status", status, {"tml.job_id": "0123456789ab"})

    tracker.end_run(run_id, status)

    run = tracker.client.get_run(run_id)
    assert run.info.status == expected
    assert run.data.tags["tml.job_id"] == "0123456789ab"


def test_registered_model_loads_with_the_same_predictions(
    tracker: Tracker, logged_run: tuple[str, str, str], digits_model: dict, unique_name: str
) -> None:
    run_id, model_uri, job_id = logged_run

    version = tracker.register_model(
        run_id=run_id,
        model_uri=model_uri,
        name=unique_name,
        job_id=job_id,
        tags={"data": "digits"},
        alias="candidate",
        description="first try",
    )

    assert version["version"] == "1" and version["aliases"] == ["candidate"]
    assert version["tags"] == {"data": "digits"} and version["job_id"] == job_id
    assert version["run_id"] == run_id and version["description"] == "first try"
    x = digits_model["x_test"]
    with torch.no_grad():
        expected = digits_model["model"](x)
        refs = (f"{unique_name}@candidate", f"{unique_name}/1", unique_name, model_uri)
        for ref in refs:
            loaded = tracker.load_model(ref)
            loaded.eval()
            assert torch.allclose(loaded(x), expected)
    assert digits_model["accuracy"] > 0.8


def test_registering_the_same_job_twice_returns_the_existing_version(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    run_id, model_uri, job_id = logged_run
    first = tracker.register_model(
        run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id
    )

    again = tracker.register_model(
        run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id, alias="prod"
    )
    other = tracker.register_model(
        run_id=run_id, model_uri=model_uri, name=unique_name, job_id="fedcba987654"
    )

    assert first["version"] == again["version"] == "1"
    assert again["aliases"] == ["prod"]
    assert other["version"] == "2"
    assert [v["version"] for v in tracker.list_versions(unique_name)] == ["1", "2"]


def test_concurrent_registrations_get_distinct_consecutive_versions(
    tracking_uri: str, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    run_id, model_uri, _ = logged_run
    jobs = [uuid.uuid4().hex[:12] for _ in range(5)]
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def register(job_id: str) -> None:
        tracker = Tracker(tracking_uri)
        tracker.client  # noqa: B018 - build the client before the race starts
        barrier.wait()
        try:
            version = tracker.register_model(
                run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id
            )
            results[job_id] = version["version"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sorted(int(v) for v in results.values()) == [1, 2, 3, 4, 5]
    listed = Tracker(tracking_uri).list_versions(unique_name)
    assert {v["job_id"]: v["version"] for v in listed} == results


REGISTER_SCRIPT = """
import json, os, sys, time
from training_manager_lab.tracking import Tracker
uri, run_id, model_uri, name, job_id, go = sys.argv[1:]
tracker = Tracker(uri)
tracker.client.get_run(run_id)
open(go + "." + job_id, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
version = tracker.register_model(run_id=run_id, model_uri=model_uri, name=name, job_id=job_id)
print(json.dumps(version))
"""


def test_registrations_from_several_processes_on_sqlite_get_consecutive_versions(
    sqlite_tracking_uri: str,
    digits_model: dict,
    logged_models: dict,
    unique_name: str,
    tmp_path: Path,
) -> None:
    tracker = Tracker(sqlite_tracking_uri)
    if sqlite_tracking_uri not in logged_models:
        logged_models[sqlite_tracking_uri] = log_trained_run(tracker, digits_model["model"])
    run_id, model_uri, _ = logged_models[sqlite_tracking_uri]
    go = tmp_path / "go"
    jobs = [uuid.uuid4().hex[:12] for _ in range(3)]
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_SCRIPT, sqlite_tracking_uri, run_id, model_uri]
            + [unique_name, job, str(go)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in jobs
    ]

    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{job}").exists() for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [proc.communicate(timeout=180) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0, 0], [err for _, err in outputs]
    versions = {
        json.loads(out.splitlines()[-1])["job_id"]: json.loads(out.splitlines()[-1])["version"]
        for out, _ in outputs
    }
    assert sorted(int(v) for v in versions.values()) == [1, 2, 3]
    assert {v["job_id"]: v["version"] for v in tracker.list_versions(unique_name)} == versions


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_names_are_refused_before_the_store_is_contacted(
    tmp_path: Path, name: str
) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/never.db")

    with pytest.raises(RegistryError, match="a model name must not be empty"):
        tracker.register_model(run_id="r", model_uri="models:/m-1", name=name, job_id="j")
    with pytest.raises(RegistryError, match="a model name"):
        tracker.set_alias(name, "candidate", 1)
    with pytest.raises(RegistryError, match="a model name"):
        tracker.list_versions(name)

    assert tracker._client is None
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("alias", BAD_ALIASES)
def test_bad_aliases_are_refused_before_the_store_is_contacted(tmp_path: Path, alias: str) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/never.db")

    with pytest.raises(RegistryError, match="reserved by MLflow") as refused:
        tracker.register_model(
            run_id="r", model_uri="models:/m-1", name="ok", job_id="j", alias=alias
        )
    with pytest.raises(RegistryError, match="an alias may only contain"):
        tracker.set_alias("ok", alias, "1")
    with pytest.raises(RegistryError, match="an alias may only contain"):
        tracker.delete_alias("ok", alias)

    assert repr(alias) in str(refused.value)
    assert tracker._client is None
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("key", BAD_TAG_KEYS)
def test_bad_tag_keys_are_refused_before_the_store_is_contacted(tmp_path: Path, key: str) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/never.db")

    with pytest.raises(RegistryError, match="a key may only contain"):
        tracker.register_model(
            run_id="r", model_uri="models:/m-1", name="ok", job_id="j", tags={key: "v"}
        )
    with pytest.raises(RegistryError, match="a key may only contain"):
        tracker.set_version_tag("ok", 1, key, "v")
    with pytest.raises(RegistryError, match="a key may only contain"):
        tracker.delete_version_tag("ok", "1", key)

    assert tracker._client is None
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("bad", [0, "0", -1, "x", "1.5", True, None, "v1"])
def test_bad_versions_are_refused(bad: Any) -> None:
    with pytest.raises(RegistryError, match="give a positive integer"):
        normalize_version(bad)


def test_versions_given_as_int_or_string_mean_the_same(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    run_id, model_uri, job_id = logged_run
    tracker.register_model(run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id)

    tracker.set_alias(unique_name, "champion", 1)
    tracker.set_version_tag(unique_name, "1", "owner", "ana")
    tracker.set_description(unique_name, " 1 ", "digits baseline")

    assert tracker.get_version(unique_name, 1) == tracker.get_version(unique_name, "1")
    version = tracker.get_version(unique_name, 1)
    assert version["aliases"] == ["champion"]
    assert version["tags"] == {"owner": "ana"}
    assert version["description"] == "digits baseline"
    assert tracker.resolve(f"models:/{unique_name}@champion")["version"] == "1"


def test_aliases_move_and_tags_come_off(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    run_id, model_uri, _ = logged_run
    for job in ("aaaaaaaaaaa1", "aaaaaaaaaaa2"):
        tracker.register_model(
            run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job, tags={"k": job}
        )

    tracker.set_alias(unique_name, "prod", 1)
    tracker.set_alias(unique_name, "prod", 2)
    tracker.delete_version_tag(unique_name, 1, "k")

    assert tracker.resolve(f"{unique_name}@prod")["version"] == "2"
    assert tracker.get_version(unique_name, 1)["aliases"] == []
    assert tracker.get_version(unique_name, 1)["tags"] == {}
    listed = {m["name"]: m for m in tracker.list_models()}
    assert listed[unique_name]["aliases"] == {"prod": "2"}
    assert listed[unique_name]["latest_version"] == "2"

    tracker.delete_alias(unique_name, "prod")
    with pytest.raises(ModelNotFound, match="has no alias 'prod'"):
        tracker.resolve(f"{unique_name}@prod")
    with pytest.raises(ModelNotFound, match="has no alias 'prod'"):
        tracker.delete_alias(unique_name, "prod")
    with pytest.raises(ModelNotFound, match="has no tag 'k'"):
        tracker.delete_version_tag(unique_name, 1, "k")


def test_unknown_models_and_versions_raise_model_not_found(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    run_id, model_uri, job_id = logged_run
    tracker.register_model(run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id)

    with pytest.raises(ModelNotFound, match="no registered model named"):
        tracker.list_versions(unique_name + "-missing")
    with pytest.raises(ModelNotFound, match="has no version 7"):
        tracker.get_version(unique_name, 7)
    with pytest.raises(ModelNotFound, match="no registered model named"):
        tracker.load_model(unique_name + "-missing@prod")


def test_compare_puts_metrics_side_by_side(
    tracker: Tracker, digits_model: dict, unique_name: str
) -> None:
    model = digits_model["model"]
    first = log_trained_run(tracker, model, metrics={"val_acc": 0.5, "val/mAP@0.5": 0.1})
    second = log_trained_run(tracker, model, metrics={"val_acc": 0.7, "train_loss": 2.0})
    for run_id, model_uri, job_id in (first, second):
        tracker.register_model(run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id)

    frame = tracker.compare(unique_name, [1, "2"])

    assert list(frame.columns) == ["1", "2"]
    assert frame.loc["val_acc", "1"] == 2.5 and frame.loc["val_acc", "2"] == 2.7
    assert frame.loc["val/mAP@0.5", "1"] == pytest.approx(2.1)
    assert math.isnan(frame.loc["val/mAP@0.5", "2"])
    assert frame.loc["train_loss", "2"] == 4.0


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_lineage_of_a_script_defined_model(
    tracker: Tracker,
    logged_run: tuple[str, str, str],
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    script = repo / "train_digits.py"
    script.write_text("import torch\n\nclass Net(torch.nn.Linear):\n    pass\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "train_digits.py")
    _git(repo, "commit", "-q", "-m", "model")
    spec = importlib.util.spec_from_file_location("train_digits_script", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_digits_script", module)
    spec.loader.exec_module(module)
    run_id, model_uri, job_id = logged_run
    code = describe_code(module.Net)
    tracker.log_lineage(
        run_id,
        {
            "job_id": job_id,
            "job": {"world_size": 2, "devices": ["cpu:0", "cpu:1"], "trainer": {"max_epochs": 4}},
            "code": code,
            "checkpoint": "jobs/x/checkpoints/last.ckpt",
        },
    )
    version = tracker.register_model(
        run_id=run_id, model_uri=model_uri, name=unique_name, job_id=job_id
    )

    lineage = tracker.lineage(unique_name, version["version"])

    assert code["kind"] == "file" and code["path"] == str(script)
    assert lineage["code"]["source"] == script.read_text()
    assert lineage["code"]["sha256"] == code["sha256"]
    assert lineage["code"]["git"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert lineage["code"]["git"]["dirty"] is False
    assert lineage["job"]["world_size"] == 2 and lineage["job_id"] == job_id
    assert lineage["checkpoint"] == "jobs/x/checkpoints/last.ckpt"
    assert lineage["run"]["run_id"] == run_id and lineage["run"]["status"] == "FINISHED"
    assert lineage["run"]["duration"] >= 0
    assert lineage["run"]["tags"]["tml.code_sha256"] == code["sha256"]

    script.write_text(script.read_text() + "# edited\n")
    assert describe_code(module.Net)["git"]["dirty"] is True


def test_describe_code_of_a_notebook_cell() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    cell = (
        "import torch\n\n"
        "class CellNet(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x\n"
    )
    result = shell.run_cell(cell)
    assert result.success

    code = describe_code(shell.user_ns["CellNet"]())

    assert code["kind"] == "cell"
    assert code["source"] == cell
    assert len(code["sha256"]) == 64
