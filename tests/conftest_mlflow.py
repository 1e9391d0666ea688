"""Pytest fixtures: real MLflow stores (SQLite, an `mlflow server` on 127.0.0.1), a model."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training_manager_lab.tracking import Tracker

SERVER_START_TIMEOUT = 120.0

# Nothing may leave this machine during tests, and progress bars only clutter the output.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_executable() -> list[str]:
    beside = Path(sys.executable).with_name("mlflow")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlflow")
    if found:
        return [found]
    return [sys.executable, "-m", "mlflow"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder.

    Yields the server's URL; the server is stopped when the session ends.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [
            *_mlflow_executable(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'backend.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {proc.returncode}: "
                    + (root / "server.log").read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer on {url} in time")
            time.sleep(0.3)
        yield url
    finally:
        # The server runs in a session of its own: end its worker processes with it.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="session")
def sqlite_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite tracking store in a temporary state directory, schema created once."""
    state = tmp_path_factory.mktemp("state")
    uri = f"sqlite:///{state / 'mlflow.db'}"
    Tracker(uri).ensure_store()
    return uri


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request: pytest.FixtureRequest) -> str:
    """The URI of each kind of store in turn: the embedded SQLite one, then the server."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_tracking_uri"))
    return str(request.getfixturevalue("mlflow_server"))


@pytest.fixture
def tracker(tracking_uri: str) -> Tracker:
    """A fresh Tracker on each kind of store."""
    return Tracker(tracking_uri)


@pytest.fixture
def unique_name() -> str:
    """A model or experiment name no other test uses, so tests can share one store."""
    return f"m-{uuid.uuid4().hex[:10]}"


def _digits_module() -> Any:
    import lightning as L
    import torch
    from torch import nn

    class DigitsMLP(L.LightningModule):
        def __init__(self, hidden: int = 32, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    return DigitsMLP


@pytest.fixture(scope="session")
def digits_model() -> dict[str, Any]:
    """A small MLP trained for a few epochs on scikit-learn's digits, with held-out inputs.

    Returns ``{"model", "x_test", "y_test", "accuracy"}``.
    """
    import lightning as L
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)

    model = _digits_module()()
    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return {"model": model, "x_test": x_test, "y_test": y_test, "accuracy": accuracy}


@pytest.fixture(scope="session")
def logged_models() -> dict[str, tuple[str, str, str]]:
    """Cache of one run with the digits model logged, per store URI (filled by the tests)."""
    return {}


@pytest.fixture
def logged_run(
    tracker: Tracker, digits_model: dict[str, Any], logged_models: dict[str, tuple[str, str, str]]
) -> tuple[str, str, str]:
    """A finished run on this store with metrics and the digits model: (run_id, model_uri, job_id).

    Logged once per store and shared, since logging a model takes seconds.
    """
    if tracker.tracking_uri not in logged_models:
        logged_models[tracker.tracking_uri] = log_trained_run(tracker, digits_model["model"])
    return logged_models[tracker.tracking_uri]


def log_trained_run(
    tracker: Tracker, model: Any, experiment: str = "tests", metrics: dict[str, float] | None = None
) -> tuple[str, str, str]:
    """Create a run with some metrics and the model logged; return (run_id, model_uri, job_id)."""
    job_id = uuid.uuid4().hex[:12]
    run_id = tracker.start_run(experiment, f"job-{job_id}", {"tml.job_id": job_id})
    events = [
        {"type": "metric", "t": time.time(), "step": step, "key": key, "value": value + step}
        for step in range(3)
        for key, value in (metrics or {"train_loss": 1.0, "val_acc": 0.5}).items()
    ]
    tracker.log_metric_events(run_id, events)
    model_uri = tracker.log_model(run_id, model)
    tracker.end_run(run_id, "succeeded")
    return run_id, model_uri, job_id
