"""Shared fixtures: a state directory and an embedded job manager for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_mlflow"]

# Jobs started by the tests must never see a GPU that is not there or talk to the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory (job store and MLflow store) shared by the session's jobs.

    A new MLflow SQLite store spends seconds on schema migrations, so the session pays
    that once.
    """
    return tmp_path_factory.mktemp("tml-state")


@pytest.fixture(scope="session")
def client(state_dir: Path) -> Iterator[object]:
    """An embedded job manager over ``state_dir``, installed as the process-wide client."""
    from training_manager_lab.client import EmbeddedClient, set_client

    embedded = EmbeddedClient(str(state_dir))
    embedded.manager._tracking_ready.wait(120)
    set_client(embedded)
    yield embedded
    for record in embedded.manager.store.active():
        embedded.manager.cancel(record["id"])
    embedded.manager.stop()
    set_client(None)
