"""A digits MLP that stops where a test tells it to, so a job lasts as long as the test needs.

A test copies this file into a folder with :func:`place` and launches it from there as a file
entry. Before each training step the model looks for ``pause-<step>`` beside the file; if it is
there, the step waits until ``go-<step>`` appears too. So the test sees a running job at a known
step, on a fast machine or a slow one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from training_manager_lab.examples.digits import DigitsMLP

HERE = Path(__file__).parent


class PausingMLP(DigitsMLP):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        step = self.global_step
        if (HERE / f"pause-{step}").exists():
            while not (HERE / f"go-{step}").exists():
                time.sleep(0.05)
        return super().training_step(batch, batch_idx)


def place(folder: Path, *steps: int) -> str:
    """Copy this model into ``folder``, pausing before ``steps``; return its file entry."""
    shutil.copy(__file__, folder / "pausing_model.py")
    for step in steps:
        (folder / f"pause-{step}").touch()
    return "pausing_model.py:PausingMLP"
