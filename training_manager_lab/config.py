"""Where the product keeps its state, and how an operator overrides it."""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "TML_STATE_DIR"
DEFAULT_STATE_DIR = ".training-manager"


def state_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the state directory, creating it if needed.

    The order is: an explicit ``override`` (the server's ``state_dir`` setting), the
    ``TML_STATE_DIR`` environment variable, then ``.training-manager/`` in the working
    directory.
    """
    chosen = override or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    path = Path(chosen).expanduser().resolve()
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def job_dir(root: Path, job_id: str) -> Path:
    """The folder of one job inside a state directory."""
    return root / "jobs" / job_id
