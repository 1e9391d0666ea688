"""The public functions a notebook calls: launch, job, jobs, load_model, models, resources."""

from __future__ import annotations

import os
from typing import Any

from .client import get_client
from .entrypoint import check_entry, lineage_of, pickle_entry
from .errors import JobSpecError
from .handle import Job
from .spec import JobSpec


def launch(
    model: Any,
    *,
    datamodule: Any = None,
    trainer: dict[str, Any] | None = None,
    devices: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    name: str | None = None,
    experiment: str | None = None,
    memory: int | None = None,
    priority: int = 0,
    cluster: str = "local",
    cluster_options: dict[str, Any] | None = None,
    stall_timeout: float | None = 1800.0,
) -> Job:
    """Launch a Lightning training job in processes of its own and return its handle at once.

    Args:
        model: a LightningModule subclass, instance or zero-argument factory, defined
            anywhere (a notebook cell included), or ``"package.module:attr"`` /
            ``"path/file.py:attr"`` naming one.
        datamodule: optional LightningDataModule, in the same forms.
        trainer: keyword arguments for ``lightning.pytorch.Trainer``.
        devices: processes (one per GPU, or CPU processes without GPUs).
        strategy: ``"auto"``, ``"ddp"`` (and its variants) or ``"fsdp"``.
        accelerator: ``"auto"``, ``"cpu"`` or ``"gpu"``.
        name: the job's name; default: the model's class name.
        experiment: the MLflow experiment; default: the job's name.
        memory: bytes of memory the job needs, to keep it queued until they are free.
        priority: higher runs first; equal priorities run in arrival order.
        cluster: ``"local"`` or ``"slurm"``.
        cluster_options: scheduler options for ``cluster="slurm"`` (partition, nodes, ...).
        stall_timeout: seconds without any progress (training or validation) after which
            the job is stopped as failed, for example when a rank hangs in a collective;
            ``None`` waits forever.

    Returns:
        The job's handle; displaying it shows the live widget.

    Raises:
        JobSpecError: for anything that cannot work, before any process starts.

    Example::

        job = tml.launch(DigitsMLP, datamodule=DigitsData, trainer={"max_epochs": 5},
                         devices=2, strategy="ddp")
    """
    cwd = os.getcwd()
    resolved_model = check_entry(model, "model", cwd)
    resolved_datamodule = (
        check_entry(datamodule, "datamodule", cwd) if datamodule is not None else None
    )

    payload = None
    if isinstance(model, str):
        if datamodule is not None and not isinstance(datamodule, str):
            raise JobSpecError(
                "when model is given as 'module:attr', give datamodule the same way (or pass "
                "both as Python objects)"
            )
        kind = "file" if model.split(":", 1)[0].endswith(".py") else "import"
        entry: dict[str, Any] = {"kind": kind, "model": model, "datamodule": datamodule}
    else:
        entry = {"kind": "pickle"}
        payload = pickle_entry(model, datamodule)

    job_name = name or _default_name(model)
    spec = JobSpec(
        name=job_name,
        experiment=experiment or job_name,
        entry=entry,
        trainer=_copied(trainer),
        devices=devices,
        accelerator=accelerator,
        strategy=strategy,
        memory=memory,
        priority=priority,
        cluster=cluster,
        cluster_options=_copied(cluster_options),
        cwd=cwd,
        lineage=lineage_of(model, resolved_model, datamodule, resolved_datamodule),
        stall_timeout=stall_timeout,
    )
    spec.validate()
    client = get_client()
    return Job(client, client.launch(spec.to_dict(), payload))


def job(job_id: str) -> Job:
    """A handle on an existing job; displaying it replays its history, then goes live."""
    client = get_client()
    return Job(client, client.get(job_id))


class JobList(list):  # type: ignore[type-arg]
    """A list of :class:`Job` handles that displays as a table."""

    def _repr_html_(self) -> str:
        from .widgets.jobs_table import JobsTable

        return str(JobsTable([job.record(refresh=False) for job in self])._repr_html_())


def jobs(status: str | None = None, limit: int = 50, offset: int = 0) -> JobList:
    """Recent jobs, newest first, optionally only those with ``status``."""
    client = get_client()
    records, _ = client.list(status, limit, offset)
    return JobList(Job(client, record) for record in records)


def tracking_uri() -> str:
    """The MLflow tracking URI the job manager records jobs in."""
    return str(get_client().config()["tracking_uri"])


def load_model(reference: str) -> Any:
    """Load a registered model: ``"name@alias"``, ``"name/3"`` or ``"models:/..."``."""
    from .tracking import Tracker

    return Tracker(tracking_uri()).load_model(reference)


def models(name: str | None = None) -> Any:
    """A widget over the model registry, or over one model's versions."""
    from IPython.display import display

    from .tracking import Tracker
    from .widgets.models import ModelsWidget

    return ModelsWidget(Tracker(tracking_uri()), name, open_job=lambda job_id: display(job(job_id)))


def resources() -> Any:
    """A live widget of this node's (or cluster's) CPUs, memory, GPUs and queue."""
    from .widgets.resources_view import ResourcesView

    client = get_client()
    return ResourcesView(client.resources, end_process=client.end_process)


def _copied(value: Any) -> Any:
    """A copy of a dict argument; anything else is passed on for the spec to refuse by name."""
    if value is None:
        return {}
    return dict(value) if isinstance(value, dict) else value


def _default_name(model: Any) -> str:
    if isinstance(model, str):
        return model.rsplit(":", 1)[-1].split(".")[-1].lower()
    target = model if isinstance(model, type) else getattr(model, "__class__", None)
    if isinstance(model, type) or not callable(model) or hasattr(model, "training_step"):
        return str(getattr(target, "__name__", "job")).lower()
    return str(getattr(model, "__name__", "job")).lower().replace("<lambda>", "job")
