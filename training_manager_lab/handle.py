"""``Job``: the handle a user holds on one job, wherever the job manager runs."""

from __future__ import annotations

import time
from typing import Any

from .client import Client
from .errors import RegistryError
from .events import decode_value
from .store import TERMINAL


class Job:
    """A handle on one job. Displaying it in a notebook shows the live widget.

    Args:
        client: the job manager to ask.
        record: the job's record as last seen.
    """

    def __init__(self, client: Client, record: dict[str, Any]) -> None:
        self._client = client
        self._record = record

    # -- state ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self._record["id"])

    @property
    def job_id(self) -> str:
        return self.id

    @property
    def name(self) -> str:
        return str(self._record["name"])

    def record(self, refresh: bool = True) -> dict[str, Any]:
        """The job's record (status, progress, allocation, error, ...)."""
        if refresh and self._record.get("status") not in TERMINAL:
            self._record = self._client.get(self.id)
        return dict(self._record)

    @property
    def status(self) -> str:
        return str(self.record()["status"])

    @property
    def error(self) -> dict[str, Any] | None:
        """For a failed job: the failing rank, its message and traceback."""
        return self.record().get("error")

    @property
    def run_id(self) -> str | None:
        return self.record().get("run_id")

    @property
    def world_size(self) -> int | None:
        return self.record().get("world_size")

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> Job:
        """Block until the job has ended; return the job.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.record()["status"] not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} is still {self._record['status']} after {timeout} s"
                )
            time.sleep(poll)
        return self

    def cancel(self) -> Job:
        """Stop every process of the job (or take it off the queue)."""
        self._record = self._client.cancel(self.id)
        return self

    # -- output ---------------------------------------------------------------------------

    def read_events(self, cursor: int = 0, wait: float = 0.0) -> tuple[list[dict[str, Any]], int]:
        """Events after byte ``cursor``, waiting up to ``wait`` seconds for new ones."""
        return self._client.events(self.id, cursor, wait)

    def events(self) -> list[dict[str, Any]]:
        """The whole event stream so far."""
        everything: list[dict[str, Any]] = []
        cursor = 0
        while True:
            batch, cursor = self.read_events(cursor)
            if not batch:
                return everything
            everything.extend(batch)

    def metrics(self) -> Any:
        """Every logged metric as a pandas DataFrame: step, epoch, key, value, time."""
        import pandas as pd

        rows = [
            {
                "step": event.get("step"),
                "epoch": event.get("epoch"),
                "key": event["key"],
                "value": decode_value(event),
                "time": event.get("t"),
            }
            for event in self.events()
            if event.get("type") == "metric"
        ]
        return pd.DataFrame(rows, columns=["step", "epoch", "key", "value", "time"])

    def logs(self, tail: int = 100, rank: int | None = None) -> str:
        """The last ``tail`` lines of output: one rank's, or every rank's, rank-prefixed."""
        if rank is not None:
            return str(self._client.logs(self.id, rank, tail=tail)["text"])
        world = self.record().get("world_size") or 1
        lines: list[str] = []
        for index in range(int(world)):
            text = self._client.logs(self.id, index, tail=tail)["text"]
            lines.extend(f"[rank {index}] {line}" for line in text.splitlines())
        return "\n".join(lines)

    # -- models ---------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        tags: dict[str, str] | None = None,
        alias: str | None = None,
        description: str | None = None,
    ) -> Any:
        """Register the job's trained model as a new version of ``name``.

        Registering the same job twice returns the version it already has.

        Raises:
            RegistryError: when the job has not succeeded, or a name is invalid.
        """
        from .versions import ModelVersion

        record = self.record()
        if record["status"] != "succeeded":
            raise RegistryError(
                f"job {self.id} is {record['status']}; only a succeeded job has a model to register"
            )
        if not record.get("model_uri") or not record.get("run_id"):
            raise RegistryError(f"job {self.id} succeeded but recorded no model")
        tracker = self._tracker()
        info = tracker.register_model(
            run_id=record["run_id"],
            model_uri=record["model_uri"],
            name=name,
            job_id=self.id,
            tags=tags,
            alias=alias,
            description=description,
        )
        return ModelVersion(tracker, info)

    def _tracker(self) -> Any:
        from .tracking import Tracker

        uri = self._record.get("tracking_uri") or self._client.config()["tracking_uri"]
        return Tracker(uri)

    # -- display --------------------------------------------------------------------------

    def widget(self) -> Any:
        """A new live widget for this job (replays its history, then follows it)."""
        from .widgets.job_view import JobView

        return JobView(self)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())

    def __repr__(self) -> str:
        record = self._record
        return f"<Job {record['id']} {record['name']!r} {record['status']}>"
