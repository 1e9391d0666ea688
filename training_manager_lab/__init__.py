"""training-manager-lab: launch, watch and version Lightning training jobs from JupyterLab."""

from __future__ import annotations

from typing import Any

from .api import job, jobs, launch, load_model, models, resources, tracking_uri
from .errors import (
    JobConflict,
    JobNotFound,
    JobSpecError,
    ModelNotFound,
    QueueFull,
    RegistryError,
    ResourceUnavailable,
    TrainingManagerError,
)
from .handle import Job

__version__ = "0.1.0"

__all__ = [
    "Job",
    "JobConflict",
    "JobNotFound",
    "JobSpecError",
    "ModelNotFound",
    "QueueFull",
    "RegistryError",
    "ResourceUnavailable",
    "TrainingManagerError",
    "job",
    "jobs",
    "launch",
    "load_model",
    "models",
    "resources",
    "tracking_uri",
]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server.app import TrainingManagerApp

    return [{"module": "training_manager_lab", "app": TrainingManagerApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "training-manager-lab"}]
