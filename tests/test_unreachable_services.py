"""The server starts and serves while the services around it are down.

One real Jupyter server with the extension, configured the way an operator would configure
it, where every outside service fails: the MLflow tracking URI names a port on 127.0.0.1
where nothing listens, the SLURM backend is on and ``SLURM_CONF`` names a controller that
does not answer (where SLURM is not installed, its commands are simply missing), and NVML
reports that it cannot be loaded. The server must come up, answer every read route, say
what is missing in plain words, and fail a job with the reason instead of hanging it. The
Python API names the unreachable tracking server the same way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest_faults import SHORT, JupyterServer, free_port, import_spec, store_problems
from training_manager_lab.devices.nvml import RECORDING_ENV
from training_manager_lab.errors import RegistryError, TrackingUnavailable
from training_manager_lab.tracking import Tracker

NVML_ERROR = "NVML library not found: driver not loaded (recorded for this test)"

pytestmark = pytest.mark.timeout(600)


def dead_slurm_conf(folder: Path) -> Path:
    """A slurm.conf whose controller port on 127.0.0.1 has nobody listening."""
    conf = folder / "slurm.conf"
    conf.write_text(
        "ClusterName=tml-down\n"
        "SlurmctldHost=localhost(127.0.0.1)\n"
        f"SlurmctldPort={free_port()}\n"
        "AuthType=auth/munge\n"
        f"AuthInfo=socket={folder / 'munge.socket'}\n"
        "NodeName=localhost NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN\n"
        "PartitionName=debug Nodes=localhost Default=YES\n"
    )
    return conf


@pytest.fixture(scope="module")
def isolated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    folder = tmp_path_factory.mktemp("services-down")
    recording = folder / "nvml.json"
    recording.write_text(json.dumps({"gpus": [], "error": NVML_ERROR}))
    server = JupyterServer(
        folder / "state",
        folder,
        cpu_slots=1,
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        config={"backend_classes": {"slurm": "training_manager_lab.backends.slurm:SlurmBackend"}},
        env={
            "SLURM_CONF": str(dead_slurm_conf(folder)),
            RECORDING_ENV: str(recording),
            # MLflow retries a refused connection for minutes by default; one try is enough
            # to see the outcome here.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        },
    )
    server.start()
    yield server
    server.stop()


def test_resources_show_cpu_and_memory_and_say_why_gpus_and_cluster_are_missing(
    isolated_server: JupyterServer,
) -> None:
    answer = isolated_server.get("resources")

    assert answer.status_code == 200
    resources = answer.json()
    node = resources["nodes"][0]
    assert node["cpu"]["count"] >= 1 and node["memory"]["total"] > 0
    assert node["gpus"] == [] and node["gpu_error"] == NVML_ERROR
    cluster_error = resources["cluster"]["error"]
    if shutil.which("sinfo"):
        assert "Unable to contact slurm controller" in cluster_error
    else:
        assert "was not found on this machine" in cluster_error


def test_job_routes_answer(isolated_server: JupyterServer) -> None:
    assert isolated_server.get("jobs").json() == {"jobs": [], "total": 0}
    assert isolated_server.get("config").json()["tracking_uri"].startswith("http://127.0.0.1:")
    assert isolated_server.get("openapi.json").status_code == 200


def test_registry_routes_say_the_tracking_server_cannot_be_reached(
    isolated_server: JupyterServer,
) -> None:
    uri = isolated_server.get("config").json()["tracking_uri"]
    for path in ("models", "models/digits-mlp"):
        answer = isolated_server.get(path)
        assert answer.status_code == 503, (path, answer.text)
        body = answer.json()
        assert body["error"] == "tracking server unavailable"
        assert f"the MLflow tracking server at {uri} cannot be reached" in body["detail"]


def test_a_job_fails_with_the_reason_and_the_store_stays_consistent(
    isolated_server: JupyterServer,
) -> None:
    uri = isolated_server.get("config").json()["tracking_uri"]
    record = isolated_server.launch(import_spec("no-tracking", SHORT, experiment="down"))
    final = isolated_server.wait_terminal(record["id"], 300)

    assert final["status"] == "failed"
    assert f"the MLflow tracking server at {uri} cannot be reached" in final["reason"]
    assert store_problems(isolated_server.state_dir) == []
    # The server is still there and still answers.
    assert isolated_server.get(f"jobs/{record['id']}").json()["status"] == "failed"


def test_the_python_api_names_the_unreachable_tracking_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    tracker = Tracker(uri)
    calls = {
        "list_models": lambda: tracker.list_models(),
        "start_run": lambda: tracker.start_run("down", "run", {}),
        "resolve": lambda: tracker.resolve("digits-mlp@candidate"),
    }

    for what, call in calls.items():
        with pytest.raises(TrackingUnavailable) as caught:
            call()
        assert f"the MLflow tracking server at {uri} cannot be reached" in str(caught.value), what

    # Other refusals are not mistaken for an unreachable server.
    with pytest.raises(RegistryError, match="invalid model name"):
        tracker.resolve("bad/name@candidate")
