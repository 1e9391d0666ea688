"""The Lightning logger and callback that turn a fit into the job's event stream."""

from __future__ import annotations

import logging
import math
import time
from argparse import Namespace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from ..events import EventWriter, encode_value

log = logging.getLogger(__name__)


class StreamLogger(Logger):
    """A Lightning logger that appends every logged metric to the job's event stream.

    Only rank zero writes (Lightning calls loggers on rank zero). A value that is not a
    scalar is skipped with one warning per key; NaN and infinities are kept, marked, and
    announced with a warning event the first time they appear for a key. Nothing here
    raises into the training step: a failing write is logged and training goes on.

    Args:
        writer: the job's event stream.
        save_dir: the job's folder, where Lightning puts checkpoints.

    Example::

        trainer = Trainer(logger=StreamLogger(EventWriter("events.jsonl"), "job-folder"))
    """

    def __init__(self, writer: EventWriter, save_dir: str) -> None:
        super().__init__()
        self._writer = writer
        self._save_dir = save_dir
        self._warned: set[str] = set()

    @property
    @override
    def name(self) -> str:
        return ""

    @property
    @override
    def version(self) -> str:
        return ""

    @property
    @override
    def save_dir(self) -> str:
        return self._save_dir

    @property
    @override
    def root_dir(self) -> str:
        return self._save_dir

    @property
    @override
    def log_dir(self) -> str:
        return self._save_dir

    @override
    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        flat = {str(key): _plain(value) for key, value in dict(params).items()}
        self._emit({"type": "params", "params": flat})

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        events = []
        for key, raw in metrics.items():
            value = self._scalar(key, raw)
            if value is None:
                continue
            event = {"type": "metric", "step": step, "key": key, **encode_value(value)}
            if epoch is not None:
                event["epoch"] = int(epoch)
            events.append(event)
            if not math.isfinite(value) and key not in self._warned:
                self._warned.add(key)
                message = f"{key} is {value} at step {step}"
                log.warning(message)
                events.append({"type": "warning", "key": key, "step": step, "message": message})
        self._emit(*events)

    def _scalar(self, key: str, raw: Any) -> float | None:
        if isinstance(raw, torch.Tensor):
            if raw.numel() != 1:
                self._warn_once(
                    f"shape:{key}",
                    f"{key} has shape {tuple(raw.shape)}; only scalars are recorded, so it is "
                    "skipped",
                )
                return None
            return float(raw.detach().cpu().item())
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        self._warn_once(f"type:{key}", f"{key} is a {type(raw).__name__}, not a number; skipped")
        return None

    def _warn_once(self, tag: str, message: str) -> None:
        if tag in self._warned:
            return
        self._warned.add(tag)
        log.warning(message)
        self._emit({"type": "warning", "message": message})

    def _emit(self, *events: dict[str, Any]) -> None:
        try:
            self._writer.write(*events)
        except Exception:
            log.exception("could not write to the job's event stream")


class ProgressCallback(pl.Callback):
    """Records training progress (step, total, epoch, throughput, ETA) on rank zero.

    Progress events are throttled to ``interval`` seconds, plus one at the end of each
    epoch and of the fit, so the cost per step is a clock read.

    Args:
        writer: the job's event stream.
        interval: least time between two progress events, in seconds.
        world_size: processes in the job, to turn a rank's batch size into samples/s.
    """

    def __init__(self, writer: EventWriter, interval: float = 0.2, world_size: int = 1) -> None:
        self._writer = writer
        self._interval = interval
        self._world_size = world_size
        self._start = 0.0
        self._last_emit = 0.0
        self._samples = 0
        self._total: int | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        total = trainer.estimated_stepping_batches
        self._total = int(total) if math.isfinite(total) else None
        if trainer.is_global_zero:
            self._emit(trainer, force=True)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += _batch_size(batch) * self._world_size
        if trainer.is_global_zero and time.monotonic() - self._last_emit >= self._interval:
            self._emit(trainer)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Validation counts as progress too: the supervisor stops jobs that show none.
        if trainer.is_global_zero and time.monotonic() - self._last_emit >= 5.0:
            self._emit(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._emit(trainer, force=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._emit(trainer, force=True)

    def _emit(self, trainer: pl.Trainer, force: bool = False) -> None:
        now = time.monotonic()
        self._last_emit = now
        elapsed = now - self._start
        step = trainer.global_step
        eta = None
        if self._total and step:
            eta = max(self._total - step, 0) * elapsed / step
        event = {
            "type": "progress",
            "step": step,
            "total_steps": self._total,
            "epoch": trainer.current_epoch,
            "max_epochs": trainer.max_epochs,
            "samples_per_sec": self._samples / elapsed if elapsed > 0 else None,
            "elapsed": elapsed,
            "eta": eta,
        }
        try:
            self._writer.write(event)
        except Exception:
            log.exception("could not write progress to the job's event stream")


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)
