"""What every benchmark shares: result rows, the run context, statistics and the machine."""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One measured figure, with the baseline it is compared to and the target it must meet.

    Args:
        bench: the benchmark it belongs to (``"B1"`` ... ``"B6"``, ``"S"`` for the sidebar).
        key: a stable, unique name of the figure, e.g. ``"B1.digits.ours"``.
        measure: what was measured, in words.
        value: the figure; None when the row was skipped or failed.
        unit: the figure's unit (``"s"``, ``"ms"``, ``"KB"``, ``"events/s"``, ...).
        baseline: the same quantity for the baseline, measured in the same run.
        baseline_name: what the baseline is.
        target: the target as text, e.g. ``"<= 1.05x"`` or ``"<= 200 ms"``.
        target_on: whether the target applies to ``"ratio"`` or to ``"value"``.
        target_limit: the target's bound (an upper bound unless ``higher_is_better``).
        higher_is_better: the target is a lower bound.
        skipped: why the row has no value (skipped or failed), else None.
        detail: further figures (samples, spreads, sizes) for the JSON.
    """

    bench: str
    key: str
    measure: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    target: str | None = None
    target_on: str = "value"
    target_limit: float | None = None
    higher_is_better: bool = False
    skipped: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``value / baseline``, or None without a usable baseline."""
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is no target or no figure."""
        if self.target_limit is None:
            return None
        figure = self.ratio if self.target_on == "ratio" else self.value
        if figure is None:
            return None
        return figure >= self.target_limit if self.higher_is_better else figure <= self.target_limit

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


def skipped_row(bench: str, key: str, measure: str, unit: str, reason: str, **kw: Any) -> Row:
    """A row without a figure, saying why."""
    return Row(bench, key, measure, None, unit, skipped=reason, **kw)


@dataclass
class Context:
    """What a benchmark needs to know about this run.

    Args:
        smoke: tiny sizes, for CI: the figures only show that the benchmark works.
        workdir: a temporary folder for this run's files, removed afterwards.
    """

    smoke: bool
    workdir: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)

    def folder(self, name: str) -> Path:
        """A fresh sub-folder of the work folder."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def size(self, full: int, smoke: int) -> int:
        """``smoke`` in smoke mode, else ``full``."""
        return smoke if self.smoke else full

    def mlflow_store(self, path: Path) -> str:
        """Put an empty, ready MLflow SQLite store at ``path``; return its tracking URI.

        A new store spends seconds (tens on a busy machine) on schema migrations. That is
        set-up, measured by no benchmark, so it is paid once per run and the result copied.
        """
        from training_manager_lab.tracking import Tracker

        template = self.workdir / "mlflow-template.db"
        if not template.exists():
            Tracker(f"sqlite:///{template}").ensure_store()
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"


def job_client(ctx: Context) -> Any:
    """The embedded job manager of this run, made on first use, installed for ``tml.launch``.

    Its state directory is a fresh folder of the run, also exported as ``TML_STATE_DIR``;
    ``MLFLOW_TRACKING_URI`` is removed so that jobs record into that folder's SQLite store.
    The manager is stopped, and its jobs cancelled, when the run ends.
    """
    client = ctx.shared.get("client")
    if client is not None:
        return client
    from training_manager_lab.client import EmbeddedClient, set_client

    state = ctx.folder("jobs-state")
    ctx.mlflow_store(state / "mlflow.db")
    os.environ["TML_STATE_DIR"] = str(state)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = EmbeddedClient(str(state))
    set_client(client)
    ctx.shared["client"] = client

    def stop() -> None:
        for record in client.manager.store.active():
            client.manager.cancel(record["id"])
        client.manager.stop()
        set_client(None)

    ctx.cleanups.append(stop)
    return client


def say(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def quiet_libraries() -> None:
    """Silence Lightning's and MLflow's start-up chatter and the warnings that fits print."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Both set their loggers' levels when imported, so import them first.
    import lightning.pytorch  # noqa: F401
    import mlflow  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def one_thread() -> None:
    """Run torch's operators on one thread in this process.

    On a machine whose cores other work also wants, torch's OpenMP threads spin while they
    wait for each other, and a small model's step becomes ten times slower and far noisier.
    Every variant of an in-process comparison runs the same way, so a ratio stays fair.
    """
    import torch

    torch.set_num_threads(1)


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def machine() -> dict[str, Any]:
    """The machine the benchmarks ran on: cores, memory, CPU model, load and versions."""
    import psutil

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions = {}
    for package in ("torch", "lightning", "mlflow", "plotly", "ipywidgets", "jupyter_server"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def events_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
