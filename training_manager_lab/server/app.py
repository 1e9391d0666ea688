"""The Jupyter server extension: hosts the job manager and serves its API."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Dict, Integer, Unicode

from .handlers import handlers


class TrainingManagerApp(ExtensionApp):
    """Owns the jobs of this Jupyter server: they outlive kernels, tabs and server restarts."""

    name = "training_manager_lab"

    state_dir = Unicode(
        "",
        config=True,
        help="Folder for the job store, job folders and the default MLflow store. Default: "
        "TML_STATE_DIR, else .training-manager in the server's root directory.",
    )
    tracking_uri = Unicode(
        "",
        config=True,
        help="MLflow tracking URI. Default: MLFLOW_TRACKING_URI, else a SQLite file in the "
        "state directory.",
    )
    cpu_slots = Integer(
        0, config=True, help="CPU processes jobs may run at once; 0 means the usable cores."
    )
    max_queued = Integer(1000, config=True, help="Jobs the queue may hold before refusing more.")
    gpu_busy_threshold = Integer(
        1 << 30,
        config=True,
        help="Bytes of GPU memory that processes outside our jobs may hold before the GPU "
        "counts as busy.",
    )
    backend_classes = Dict(
        {},
        config=True,
        help="Extra execution backends, name -> 'package.module:Class' (e.g. "
        "{'slurm': 'training_manager_lab.backends.slurm:SlurmBackend'}).",
    )
    local_backend_class = Unicode(
        "",
        config=True,
        help="Backend of local jobs as 'package.module:Class'; default: a supervisor process "
        "per job on this machine. Exported to job processes as TML_LOCAL_BACKEND.",
    )
    backend_options = Dict(
        {}, config=True, help="Keyword arguments for each backend class, by backend name."
    )

    def initialize_settings(self) -> None:
        from ..manager import JobManager
        from ..spec import resolve_reference

        self._unroute_logs = _route_package_logs(self.log)

        state_dir = (
            self.state_dir
            or os.environ.get("TML_STATE_DIR")
            or str(self._root_dir() / ".training-manager")
        )
        if self.local_backend_class:
            os.environ["TML_LOCAL_BACKEND"] = self.local_backend_class
        backends: dict[str, Any] = {}
        for name, reference in self.backend_classes.items():
            backend_class = resolve_reference(reference)
            backends[name] = backend_class(**self.backend_options.get(name, {}))
        manager = JobManager(
            state_dir,
            tracking_uri=self.tracking_uri or None,
            cpu_slots=self.cpu_slots or None,
            max_queued=self.max_queued,
            backends=backends,
            gpu_busy_threshold=self.gpu_busy_threshold,
        )
        manager.adopt()
        manager.start()
        self.settings["tml_manager"] = manager
        self.settings["tml_root_dir"] = str(self._root_dir().resolve())
        self.log.info(
            "training-manager: state in %s, MLflow at %s", manager.state_dir, manager.tracking_uri
        )

    def _root_dir(self) -> Path:
        return Path(self.serverapp.root_dir if self.serverapp is not None else os.getcwd())

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    async def stop_extension(self) -> None:
        manager = self.settings.get("tml_manager")
        if manager is not None:
            manager.stop()
        unroute = getattr(self, "_unroute_logs", None)
        if unroute is not None:
            unroute()


def _route_package_logs(
    server_log: logging.Logger | logging.LoggerAdapter[Any],
) -> Callable[[], None] | None:
    """Send the package's records (a job queued, started, re-adopted, lost) to the server's log.

    The package logs through ``logging.getLogger(__name__)``; Jupyter only gives its own
    loggers a handler, so without this an operator never sees them. Nothing changes when
    the package's logger is configured already or records reach the root logger's handlers.

    Returns:
        A function that undoes the routing (when the extension stops), or None.
    """
    package = logging.getLogger("training_manager_lab")
    if package.handlers:
        return None
    logger: logging.Logger | None = (
        server_log.logger if isinstance(server_log, logging.LoggerAdapter) else server_log
    )
    while logger is not None and not logger.handlers and logger.propagate:
        logger = logger.parent
    if logger is None or logger is logging.getLogger() or not logger.handlers:
        return None
    handlers = list(logger.handlers)
    level, propagate = package.level, package.propagate
    for handler in handlers:
        package.addHandler(handler)
    if level == logging.NOTSET:
        package.setLevel(logging.INFO)
    package.propagate = False

    def undo() -> None:
        for handler in handlers:
            package.removeHandler(handler)
        package.setLevel(level)
        package.propagate = propagate

    return undo
