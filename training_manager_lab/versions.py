"""``ModelVersion``: a registered model version, with its lineage one call away."""

from __future__ import annotations

from typing import Any


class ModelVersion:
    """One version of a registered model.

    Args:
        tracker: the MLflow facade of the store the version lives in.
        info: the version as the facade describes it (name, version, aliases, tags, ...).
    """

    def __init__(self, tracker: Any, info: dict[str, Any]) -> None:
        self._tracker = tracker
        self.info = dict(info)

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def version(self) -> str:
        return str(self.info["version"])

    @property
    def aliases(self) -> list[str]:
        return list(self.info.get("aliases") or [])

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.info.get("tags") or {})

    @property
    def run_id(self) -> str | None:
        return self.info.get("run_id")

    @property
    def job_id(self) -> str | None:
        return self.info.get("job_id")

    def lineage(self) -> dict[str, Any]:
        """The run, job, checkpoint and code this version came from."""
        return dict(self._tracker.lineage(self.name, self.version))

    def load(self) -> Any:
        """The model of this version, as a torch module."""
        return self._tracker.load_model(f"{self.name}/{self.version}")

    def __repr__(self) -> str:
        aliases = f" @{','.join(self.aliases)}" if self.aliases else ""
        return f"<ModelVersion {self.name}/{self.version}{aliases}>"
