"""Domain errors: each carries the offending value and says how to fix the call."""

from __future__ import annotations


class TrainingManagerError(Exception):
    """Base class of every error this package raises on purpose."""


class JobSpecError(TrainingManagerError, ValueError):
    """A job spec is malformed or asks for something that cannot work (HTTP 400)."""


class JobNotFound(TrainingManagerError, LookupError):
    """No job has this id (HTTP 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}; tml.jobs() lists the known jobs")
        self.job_id = job_id


class JobConflict(TrainingManagerError):
    """The job is in a state that does not allow the request (HTTP 409)."""


class ResourceUnavailable(JobSpecError):
    """A resource request that this node or cluster can never satisfy (HTTP 400)."""


class QueueFull(JobConflict):
    """The queue holds as many jobs as it is allowed to (HTTP 409)."""


class RegistryError(TrainingManagerError, ValueError):
    """A model registry request that MLflow would refuse, or that names nothing (HTTP 400)."""


class ModelNotFound(RegistryError, LookupError):
    """No registered model, version or alias matches (HTTP 404)."""


class TrackingUnavailable(TrainingManagerError):
    """The MLflow tracking server cannot be reached (HTTP 503)."""


class BackendError(TrainingManagerError):
    """The execution backend (local processes, SLURM) refused or failed a request."""


class ServerError(TrainingManagerError):
    """The Jupyter server answered a request with an error; carries its status and detail."""

    def __init__(self, status: int, error: str, detail: str | None = None) -> None:
        message = error if not detail else f"{error}: {detail}"
        super().__init__(message)
        self.status = status
        self.error = error
        self.detail = detail
