"""One rank of a job: load the entry point, build the Trainer, fit; rank zero logs the model."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .environment import ranks_from_slurm

RUN_FILE = "run.json"
MODEL_FILE = "model.json"


def _die_with_parent() -> None:
    """Ask the kernel to kill this rank when its supervisor dies, whatever kills it."""
    parent = os.environ.get("TML_SUPERVISOR_PID")
    if not sys.platform.startswith("linux") or not parent:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(parent):
        # The supervisor died before the request above took effect.
        os._exit(1)


def error_file(job_dir: Path, rank: int) -> Path:
    return job_dir / f"error-rank{rank}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one rank of a training-manager job.")
    parser.add_argument("--job-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    job_dir: Path = args.job_dir

    if os.environ.get("TML_LAUNCHER") == "srun":
        ranks_from_slurm(os.environ)  # type: ignore[arg-type]
    else:
        _die_with_parent()
    rank = int(os.environ.get("RANK", "0"))

    try:
        run(job_dir, rank)
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        message = f"{type(exc).__name__}: {exc}"
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        error = {"rank": rank, "message": message, "traceback": text, "time": time.time()}
        error_file(job_dir, rank).write_text(json.dumps(error))
        return 1
    return 0


def run(job_dir: Path, rank: int) -> None:
    """Fit the job's model in this process."""
    launch = json.loads((job_dir / "launch.json").read_text())
    spec = launch["spec"]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ..entrypoint import load_entry
    from ..events import EVENTS_FILE, EventWriter
    from .callbacks import ProgressCallback, StreamLogger

    if spec.get("cwd") and os.path.isdir(spec["cwd"]):
        sys.path.insert(0, spec["cwd"])
    model, datamodule = load_entry(spec["entry"], str(job_dir), spec.get("cwd"))

    writer = EventWriter(job_dir / EVENTS_FILE)
    trainer_args: dict[str, Any] = dict(spec.get("trainer") or {})
    trainer_args.setdefault("log_every_n_steps", 1)
    callbacks: list[pl.Callback] = [ProgressCallback(writer, world_size=world_size)]
    if trainer_args.get("enable_checkpointing", True):
        callbacks.append(ModelCheckpoint(dirpath=job_dir / "checkpoints"))
    nodes = int(launch.get("nodes", 1))
    devices = max(world_size // nodes, 1)
    strategy = spec.get("strategy", "auto")
    if world_size == 1 and strategy in ("ddp", "auto"):
        strategy = "auto"
    trainer = pl.Trainer(
        **trainer_args,
        devices=devices,
        num_nodes=nodes,
        accelerator=launch["accelerator"],
        strategy=strategy,
        logger=StreamLogger(writer, str(job_dir)),
        callbacks=callbacks,
        enable_progress_bar=False,
        default_root_dir=str(job_dir),
    )
    if trainer.world_size != launch["world_size"]:
        raise RuntimeError(
            f"the job asked for a world of {launch['world_size']} processes but Lightning "
            f"formed {trainer.world_size}; check devices= and the cluster options"
        )
    if trainer.is_global_zero:
        writer.write({"type": "world", "world_size": trainer.world_size})

    trainer.fit(model, datamodule=datamodule)
    if trainer.interrupted:
        raise RuntimeError("training was interrupted")

    if trainer.is_global_zero:
        checkpoint = trainer.checkpoint_callback
        saved = getattr(checkpoint, "best_model_path", "") or getattr(
            checkpoint, "last_model_path", ""
        )
        _log_model(job_dir, launch, model, saved or None)


def _log_model(job_dir: Path, launch: dict[str, Any], model: Any, checkpoint: str | None) -> None:
    from ..tracking import Tracker

    run_id = _wait_for_run(job_dir)
    model._trainer = None  # the fitted Trainer holds processes and files; the model does not
    model_uri = Tracker(launch["tracking_uri"]).log_model(run_id, model.cpu())
    logged = {"model_uri": model_uri, "run_id": run_id, "checkpoint": checkpoint}
    (job_dir / MODEL_FILE).write_text(json.dumps(logged))


def _wait_for_run(job_dir: Path, timeout: float = 300.0) -> str:
    deadline = time.monotonic() + timeout
    path = job_dir / RUN_FILE
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())["run_id"]
        time.sleep(0.2)
    raise RuntimeError("the job's MLflow run was not created in time; see supervisor.log")


if __name__ == "__main__":
    sys.exit(main())
