"""B1: what live monitoring costs a training loop that logs on every step, against the alternatives.

Each model is fitted in this process (no job processes: the per-step cost alone; torch on one
thread, see ``common.one_thread``) with ``log_every_n_steps=1`` in five ways, interleaved and
repeated, and the median wall time of ``trainer.fit`` is compared with the fit that logs
nothing:

- ``off``: ``logger=False`` and no callbacks, the baseline;
- ``null``: a logger whose methods do nothing: what Lightning itself spends per step once any
  logger is attached (collecting the logged values, turning tensors into numbers);
- ``ours``: our ``StreamLogger`` and ``ProgressCallback`` writing a real event stream;
- ``ours + bridge``: the same while a supervisor's metric bridge, in a process of its own,
  forwards the stream to an MLflow run on SQLite (the whole path of a real job);
- ``MLFlowLogger``: Lightning's stock logger on SQLite, a blocking write per step;
- ``MLFlowLogger async``: the same with ``synchronous=False`` (MLflow's asynchronous logging),
  the queue flushed before the clock stops.

Since a fit's wall time on a shared machine varies by more than the few percent in question,
``B1.ours_direct`` also measures the CPU time of our logger's and callback's per-step calls
themselves, made without a fit, against the time of a digits step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Context, Row, median, one_thread, say

VARIANTS = ("off", "null", "ours", "ours+bridge", "mlflow", "mlflow-async")
LABELS = {
    "off": "logging off",
    "null": "a logger that does nothing (Lightning's own share)",
    "ours": "ours: StreamLogger + ProgressCallback",
    "ours+bridge": "ours + supervisor bridge to MLflow (2 processes)",
    "mlflow": "Lightning MLFlowLogger, SQLite",
    "mlflow-async": "MLFlowLogger, SQLite, synchronous=False",
}
TARGET_RATIO = 1.05


@dataclass
class Workload:
    """A model and data to fit, and how long."""

    name: str
    label: str
    build: Callable[[], tuple[Any, Any]]
    trainer: dict[str, Any]
    repeats: int


def workloads(ctx: Context) -> list[Workload]:
    from benchmarks.models import SyntheticImages, WideMLP
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    wide_steps = ctx.size(100, 5)
    return [
        Workload(
            "digits",
            "digits MLP",
            lambda: (DigitsMLP(), DigitsData()),
            {"max_epochs": ctx.size(10, 1)},
            ctx.size(5, 1),
        ),
        Workload(
            "wide",
            "wide MLP",
            lambda: (WideMLP(), SyntheticImages(samples=64 * wide_steps)),
            {"max_steps": wide_steps},
            ctx.size(3, 1),
        ),
    ]


def null_logger() -> Any:
    """A Lightning logger that records nothing."""
    from lightning.pytorch.loggers.logger import Logger

    class NullLogger(Logger):
        @property
        def name(self) -> str:
            return "null"

        @property
        def version(self) -> str:
            return "0"

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            return None

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            return None

    return NullLogger()


class Fitter:
    """Fits a workload in one of the variants and returns the seconds ``trainer.fit`` took."""

    def __init__(self, ctx: Context) -> None:
        from training_manager_lab.store import JobStore

        self.ctx = ctx
        self.root = ctx.folder("b1")
        self.state_dir = self.root / "state"
        (self.state_dir / "jobs").mkdir(parents=True, exist_ok=True)
        # Two stores, so that the stock logger and the bridge never wait on each other's
        # locks; both exist before any clock starts.
        self.mlflow_uri = ctx.mlflow_store(self.root / "mlflow-stock.db")
        self.bridge_uri = ctx.mlflow_store(self.state_dir / "mlflow.db")
        self.store = JobStore(self.state_dir / "jobs.db")
        self.bridge_lags: list[float] = []

    def fit(self, work: Workload, variant: str) -> tuple[float, int]:
        import lightning.pytorch as pl

        pl.seed_everything(0, verbose=False)
        model, data = work.build()
        folder = self.root / f"{work.name}-{variant}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        kwargs: dict[str, Any] = {
            **work.trainer,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(folder),
        }
        bridge = None
        if variant == "off":
            trainer = pl.Trainer(logger=False, **kwargs)
        elif variant == "null":
            trainer = pl.Trainer(logger=null_logger(), **kwargs)
        elif variant in ("ours", "ours+bridge"):
            from training_manager_lab.events import EventWriter
            from training_manager_lab.runtime.callbacks import ProgressCallback, StreamLogger

            if variant == "ours+bridge":
                folder = self._job_folder(work)
                bridge = self._start_bridge(folder)
            writer = EventWriter(folder / "events.jsonl")
            trainer = pl.Trainer(
                logger=StreamLogger(writer, str(folder)),
                callbacks=[ProgressCallback(writer)],
                **kwargs,
            )
        else:
            from lightning.pytorch.loggers import MLFlowLogger

            options = {"synchronous": False} if variant == "mlflow-async" else {}
            logger = MLFlowLogger(
                experiment_name=f"bench-{work.name}", tracking_uri=self.mlflow_uri, **options
            )
            trainer = pl.Trainer(logger=logger, **kwargs)

        started = time.perf_counter()
        trainer.fit(model, datamodule=data)
        if variant == "mlflow-async":
            import mlflow

            mlflow.flush_async_logging()
        seconds = time.perf_counter() - started

        if bridge is not None:
            self._stop_bridge(folder, bridge)
        return seconds, int(trainer.global_step)

    def _job_folder(self, work: Workload) -> Path:
        job_id = uuid.uuid4().hex[:12]
        folder = self.state_dir / "jobs" / job_id
        folder.mkdir()
        spec = {
            "name": f"bench-{work.name}",
            "experiment": "bench-bridge",
            "trainer": work.trainer,
            "devices": 1,
            "strategy": "auto",
        }
        launch = {
            "job_id": job_id,
            "state_dir": str(self.state_dir),
            "tracking_uri": self.bridge_uri,
            "spec": spec,
            "allocation": {"node": "localhost", "gpus": [], "cpu_slots": 1},
            "accelerator": "cpu",
            "world_size": 1,
            "nodes": 1,
        }
        (folder / "launch.json").write_text(json.dumps(launch))
        self.store.insert(
            {
                "id": job_id,
                "name": spec["name"],
                "experiment": spec["experiment"],
                "request": {"devices": 1},
                "spec": spec,
                "tracking_uri": self.bridge_uri,
            }
        )
        self.store.transition(job_id, "running")
        return folder

    def _start_bridge(self, folder: Path) -> subprocess.Popen[str]:
        from benchmarks.bridge import READY_FILE

        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bridge", "--job-dir", str(folder)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=open(folder / "bridge.log", "w"),
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (folder / READY_FILE).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge process did not start; see {folder / 'bridge.log'}")
            time.sleep(0.05)
        return process

    def _stop_bridge(self, folder: Path, process: subprocess.Popen[str]) -> None:
        from benchmarks.bridge import STOP_FILE

        (folder / STOP_FILE).touch()
        out, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"the bridge process failed; see {folder / 'bridge.log'}")
        self.bridge_lags.append(float(json.loads(out.strip().splitlines()[-1])["catch_up_seconds"]))


def direct_cost(folder: Path, steps: int) -> float:
    """CPU seconds per step that our logger and callback spend, called without a fit.

    The calls are those Lightning makes on every logged step: ``log_metrics`` with the values
    already turned into numbers, and ``on_train_batch_end``; they write to a real stream.
    """
    from types import SimpleNamespace

    import torch

    from training_manager_lab.events import EventWriter
    from training_manager_lab.runtime.callbacks import ProgressCallback, StreamLogger

    folder.mkdir(parents=True, exist_ok=True)
    with EventWriter(folder / "direct.jsonl") as writer:
        logger = StreamLogger(writer, str(folder))
        callback = ProgressCallback(writer)
        trainer = SimpleNamespace(
            is_global_zero=True,
            global_step=0,
            current_epoch=0,
            max_epochs=10,
            estimated_stepping_batches=steps,
        )
        batch = (torch.zeros(64, 64), torch.zeros(64, dtype=torch.long))
        callback.on_train_start(trainer, None)  # type: ignore[arg-type]
        started = time.thread_time()
        for step in range(steps):
            trainer.global_step = step + 1
            logger.log_metrics({"train_loss": 0.5 / (step + 1), "epoch": 0.0}, step)
            callback.on_train_batch_end(trainer, None, None, batch, step)  # type: ignore[arg-type]
        return (time.thread_time() - started) / steps


def run(ctx: Context) -> list[Row]:
    one_thread()
    fitter = Fitter(ctx)
    rows: list[Row] = []
    if not ctx.smoke:
        # The first fit of each variant pays for imports and first-use set-up.
        from training_manager_lab.examples.digits import DigitsData, DigitsMLP

        warm_up = Workload("warm-up", "", lambda: (DigitsMLP(), DigitsData()), {"max_steps": 3}, 1)
        for variant in VARIANTS:
            say(f"B1 warm-up fit: {variant}")
            fitter.fit(warm_up, variant)
    for work in workloads(ctx):
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        steps = 0
        for repeat in range(work.repeats):
            # Round-robin, so that a slow spell of a shared machine hits every variant.
            order = VARIANTS if repeat % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                say(f"B1 {work.label}: {variant} ({repeat + 1}/{work.repeats})")
                seconds, steps = fitter.fit(work, variant)
                times[variant].append(seconds)
        base = median(times["off"]) / steps * 1000
        if work.name == "digits":
            # The fits' ratios cannot resolve a few percent on a busy machine; this can.
            cost = direct_cost(fitter.root / "direct", ctx.size(20_000, 2_000))
            rows.append(
                Row(
                    "B1",
                    "B1.ours_direct",
                    "ours' own CPU per logged step, called without a fit, against a digits step",
                    cost * 1000,
                    "ms/step",
                    baseline=base,
                    baseline_name="digits step, logging off",
                    target="<= 0.05x",
                    target_on="ratio",
                    target_limit=TARGET_RATIO - 1,
                )
            )
        for variant in VARIANTS:
            per_step = median(times[variant]) / steps * 1000
            targeted = variant in ("ours", "ours+bridge")
            detail: dict[str, Any] = {"steps": steps, "fit_seconds": times[variant]}
            if variant == "ours+bridge":
                detail["bridge_catch_up_seconds"] = fitter.bridge_lags[-work.repeats :]
            rows.append(
                Row(
                    "B1",
                    f"B1.{work.name}.{variant}",
                    f"{work.label}, {steps} steps: {LABELS[variant]}",
                    per_step,
                    "ms/step",
                    baseline=base,
                    baseline_name="logging off",
                    target=f"<= {TARGET_RATIO}x" if targeted else None,
                    target_on="ratio",
                    target_limit=TARGET_RATIO if targeted else None,
                    detail=detail,
                )
            )
    return rows
