"""B4: how long ``tml.launch()`` takes to return, and how long until the job's first step.

``launch()`` is timed warm: the run's job manager exists and has started a job before. The
time to the first step runs from the ``launch()`` call to the ``t`` of the job's first metric
event, which rank zero writes when the first step ends; the baselines run the same fit as a
bare script (``benchmarks/bare_fit.py``, no monitoring) under ``torchrun --nproc_per_node=1``
and under plain ``python``, from starting the command to the end of its first step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Context, Row, job_client, median, say

TARGET_RETURN_MS = 200.0
TARGET_FIRST_STEP_RATIO = 1.2
TRAINER = {"max_steps": 3, "enable_checkpointing": False}


def launch_digits(name: str, trainer: dict[str, Any]) -> Any:
    """Launch the digits MLP as a one-process CPU job; return the job handle."""
    import training_manager_lab as tml
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    return tml.launch(
        DigitsMLP,
        datamodule=DigitsData,
        trainer=trainer,
        devices=1,
        accelerator="cpu",
        name=name,
        experiment="benchmarks",
    )


def first_event_time(job: Any, kind: str = "metric") -> float:
    """The ``t`` of the job's first event of ``kind``."""
    for event in job.events():
        if event.get("type") == kind:
            return float(event["t"])
    raise RuntimeError(f"job {job.id} wrote no {kind} event; its record: {job.record()}")


def ours(name: str) -> tuple[float, dict[str, float]]:
    """Launch a job; return seconds for launch() to return, and seconds to each phase.

    The phases, from the ``launch()`` call: the supervisor's first log line, the ``world``
    event (rank zero imported everything, loaded the entry point and built its Trainer), the
    first ``progress`` event (training starts) and the first ``metric`` event (the first step
    ended).
    """
    called = time.time()
    started = time.perf_counter()
    job = launch_digits(name, TRAINER)
    returned = time.perf_counter() - started
    job.wait(timeout=600)
    if job.status != "succeeded":
        raise RuntimeError(f"benchmark job {job.id} {job.status}: {job.record().get('error')}")
    phases = {
        "ready": first_event_time(job, "world") - called,
        "train_start": first_event_time(job, "progress") - called,
        "first_step": first_event_time(job, "metric") - called,
    }
    supervisor = supervisor_start(Path(os.environ["TML_STATE_DIR"]) / "jobs" / job.id)
    if supervisor is not None:
        phases["supervisor"] = supervisor - called
    return returned, phases


def supervisor_start(folder: Path) -> float | None:
    """When the job's supervisor wrote its first log line (epoch seconds), if it did."""
    try:
        first = (folder / "supervisor.log").read_text().splitlines()[0]
        stamp = datetime.strptime(first[:23], "%Y-%m-%d %H:%M:%S,%f")
    except (OSError, IndexError, ValueError):
        return None
    return stamp.timestamp()


def bare(launcher: str, folder: Path) -> dict[str, float]:
    """Run the bare script; return seconds from starting it to each of its marks."""
    from benchmarks.bare_fit import MARK, READY, TRAIN_START

    script = str(REPO / "benchmarks" / "bare_fit.py")
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node=1", script]
    else:
        command = [sys.executable, script]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    called = time.time()
    result = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    names = {READY: "ready", TRAIN_START: "train_start", MARK: "first_step"}
    phases = {}
    for line in result.stdout.splitlines():
        mark, _, value = line.partition(" ")
        if mark in names:
            phases[names[mark]] = float(value) - called
    if "first_step" not in phases:
        raise RuntimeError(
            f"{launcher} bare_fit.py printed no {MARK} line (exit {result.returncode}):\n"
            f"{result.stderr[-2000:]}"
        )
    return phases


def medians(phases: list[dict[str, float]]) -> dict[str, float]:
    """The median of each phase over the repeats."""
    return {key: median([p[key] for p in phases if key in p]) for key in phases[0]}


def run(ctx: Context) -> list[Row]:
    folder = ctx.folder("b4")
    created = time.perf_counter()
    job_client(ctx)
    manager_seconds = time.perf_counter() - created

    cold_return = cold = None
    if not ctx.smoke:
        # The manager's first job pays for its first scheduling pass; launch() is timed warm.
        say("B4 cold launch (the manager's first job)")
        cold_return, cold = ours("bench-launch-cold")

    repeats = ctx.size(3, 1)
    returns: list[float] = []
    phases: dict[str, list[dict[str, float]]] = {"ours": [], "torchrun": [], "python": []}
    for repeat in range(repeats):
        say(f"B4 first step: ours, torchrun, python ({repeat + 1}/{repeats})")
        returned, timeline = ours("bench-launch")
        returns.append(returned)
        phases["ours"].append(timeline)
        phases["torchrun"].append(bare("torchrun", folder))
        phases["python"].append(bare("python", folder))

    # More warm launches that only time the return (their jobs are cancelled at once).
    for _ in range(ctx.size(5, 0)):
        started = time.perf_counter()
        job = launch_digits("bench-launch-return", TRAINER)
        returns.append(time.perf_counter() - started)
        job.cancel()

    timelines = {name: medians(runs) for name, runs in phases.items()}
    first = {name: [p["first_step"] for p in runs] for name, runs in phases.items()}
    ours_first = median(first["ours"])
    detail = {"median_phases_seconds": timelines, "runs": phases, "cold": cold}
    return [
        Row(
            "B4",
            "B4.launch_return",
            "tml.launch() returns (warm: the manager already ran a job), median"
            if not ctx.smoke
            else "tml.launch() returns (smoke: the manager's first job)",
            median(returns) * 1000,
            "ms",
            target=f"<= {TARGET_RETURN_MS:.0f} ms",
            target_limit=TARGET_RETURN_MS,
            detail={
                "samples_ms": [x * 1000 for x in returns],
                "max_ms": max(returns) * 1000,
                "cold_return_ms": None if cold_return is None else cold_return * 1000,
                "manager_start_ms": manager_seconds * 1000,
            },
        ),
        Row(
            "B4",
            "B4.first_step",
            "launch() call to the job's first step (digits MLP)",
            ours_first,
            "s",
            baseline=median(first["torchrun"]),
            baseline_name="bare script, torchrun --nproc_per_node=1",
            target=f"<= {TARGET_FIRST_STEP_RATIO}x",
            target_on="ratio",
            target_limit=TARGET_FIRST_STEP_RATIO,
            detail=detail,
        ),
        Row(
            "B4",
            "B4.first_step_python",
            "launch() call to the job's first step, against plain python",
            ours_first,
            "s",
            baseline=median(first["python"]),
            baseline_name="bare script, python",
            detail=detail,
        ),
        Row(
            "B4",
            "B4.ready",
            "launch() call to rank zero ready to fit (imports, entry point, Trainer)",
            timelines["ours"]["ready"],
            "s",
            baseline=timelines["python"]["ready"],
            baseline_name="bare script, python",
            detail=detail,
        ),
    ]
