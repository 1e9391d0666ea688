"""A background sampler keeping the last minutes of inventories (and process trees) for plots."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

from training_manager_lab.devices.attribution import TreeMeter, gpu_processes
from training_manager_lab.devices.inventory import InventoryReader

logger = logging.getLogger(__name__)

#: A callable returning ``{key: root pid}`` of the process trees to follow, e.g.
#: ``{"job:3f9a1c2b7d10": 4242, "kernel:5e1f...": 4343}``.
TreeSource = Callable[[], Mapping[str, int]]


class Sampler:
    """Samples the local inventory on a daemon thread into a ring buffer.

    One sample reuses the same psutil objects and NVML handles and starts no process. Besides
    the node, each sample can measure process trees (jobs, kernels) named by ``trees``.

    Args:
        interval: Seconds between samples.
        window: Seconds of history to keep.
        reader: The inventory reader; ``None`` makes one for this node.
        trees: Called once per sample for the trees to measure; ``None`` measures none.

    Example:
        >>> sampler = Sampler().start()
        >>> sampler.latest()["cpu"]["percent"]
        >>> sampler.history(60)["gpus"]
        >>> sampler.stop()
    """

    def __init__(
        self,
        interval: float = 1.0,
        window: float = 600.0,
        reader: InventoryReader | None = None,
        trees: TreeSource | None = None,
    ) -> None:
        if interval <= 0 or window < interval:
            raise ValueError(
                f"Sampler needs interval > 0 and window >= interval; got {interval=}, {window=}"
            )
        self.interval = interval
        self.window = window
        self._reader = reader if reader is not None else InventoryReader()
        self._trees = trees
        self._meter = TreeMeter()
        self._buffer: deque[dict[str, Any]] = deque(maxlen=int(window / interval) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    def start(self) -> Sampler:
        """Start the sampling thread (idempotent); returns the sampler."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def sample(self) -> dict[str, Any]:
        """Take one sample now, keep it and return it.

        The sample is an inventory (see ``local_inventory``) plus ``"trees": {key: usage}``
        with the usage of ``tree_usage`` (without the pid list) for every followed tree.
        """
        inventory = self._reader.read()
        trees: dict[str, dict[str, Any]] = {}
        if self._trees is not None:
            procs = gpu_processes(inventory["gpus"], inventory["node"])
            trees = self._meter.usage_many(dict(self._trees()), procs)
            for usage in trees.values():
                usage.pop("pids", None)
        inventory["trees"] = trees
        with self._lock:
            self._buffer.append(inventory)
        return inventory

    def latest(self) -> dict[str, Any]:
        """The newest sample; takes one when there is none yet."""
        with self._lock:
            if self._buffer:
                return self._buffer[-1]
        return self.sample()

    def samples(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """The full samples of the last ``seconds`` (all kept ones when None), oldest first."""
        with self._lock:
            kept = list(self._buffer)
        if seconds is None or not kept:
            return kept
        since = kept[-1]["time"] - seconds
        return [s for s in kept if s["time"] >= since]

    def history(
        self, seconds: float | None = None, trees: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Series of the last ``seconds`` for sparklines, every list aligned with ``t``.

        ``trees`` limits the tree series to those keys (e.g. the jobs running now); every
        tree seen in the window otherwise, which grows with the number of jobs that ran.

        Returns:
            ``{"node": name, "t": [epoch seconds], "cpu_percent": [...], "memory_used":
            [bytes], "memory_percent": [...], "gpus": {uuid (or index as text): {"index": i,
            "utilization": [...], "memory_used": [...]}}, "trees": {key: {"cpu_percent":
            [...], "rss": [...], "gpu_memory": [...]}}}``; None where a sample lacks a value.
        """
        return series(self.samples(seconds), trees)

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample()
                self._last_error = None
            except Exception as err:
                message = f"{type(err).__name__}: {err}"
                if message != self._last_error:
                    logger.warning("resource sampling failed: %s", message, exc_info=True)
                self._last_error = message
            deadline += self.interval
            delay = deadline - time.monotonic()
            if delay < 0:
                # Fell behind (a suspended machine, a slow probe): skip ahead, do not burst.
                deadline = time.monotonic()
                delay = self.interval
            self._stop.wait(delay)


def series(samples: list[dict[str, Any]], trees: Collection[str] | None = None) -> dict[str, Any]:
    """Turn samples (oldest first) into aligned series; see :meth:`Sampler.history`."""
    wanted = None if trees is None else set(trees)
    out: dict[str, Any] = {
        "node": samples[-1]["node"] if samples else None,
        "t": [s["time"] for s in samples],
        "cpu_percent": [s["cpu"].get("percent") for s in samples],
        "memory_used": [s["memory"].get("used") for s in samples],
        "memory_percent": [s["memory"].get("percent") for s in samples],
        "gpus": {},
        "trees": {},
    }
    count = len(samples)
    for position, sample in enumerate(samples):
        for gpu in sample.get("gpus", []):
            key = gpu_key(gpu)
            entry = out["gpus"].setdefault(
                key,
                {
                    "index": gpu["index"],
                    "utilization": [None] * count,
                    "memory_used": [None] * count,
                },
            )
            entry["utilization"][position] = gpu.get("utilization")
            entry["memory_used"][position] = gpu.get("memory_used")
        for key, usage in sample.get("trees", {}).items():
            if wanted is not None and key not in wanted:
                continue
            entry = out["trees"].setdefault(
                key, {name: [None] * count for name in ("cpu_percent", "rss", "gpu_memory")}
            )
            for name in ("cpu_percent", "rss", "gpu_memory"):
                entry[name][position] = usage.get(name)
    return out


def gpu_key(gpu: Mapping[str, Any]) -> str:
    """The stable key of a GPU in series and holder maps: its UUID, else its index as text."""
    return str(gpu.get("uuid") or gpu["index"])


def sample_cost(
    samples: int = 20, reader: InventoryReader | None = None, trees: TreeSource | None = None
) -> dict[str, float]:
    """Measure what one sample costs, in CPU seconds of the sampling thread.

    Args:
        samples: How many samples to take back to back (after one warm-up sample).
        reader: The inventory reader to measure; ``None`` makes one for this node.
        trees: Process trees to measure in every sample, as for :class:`Sampler`.

    Returns:
        ``{"samples": n, "cpu_seconds_per_sample": ..., "wall_seconds_per_sample": ...,
        "core_percent_at_1hz": ...}``; the last is the share of one core used by sampling
        once a second.
    """
    if samples < 1:
        raise ValueError(f"sample_cost needs samples >= 1; got {samples}")
    sampler = Sampler(reader=reader, trees=trees)
    sampler.sample()
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(samples):
        sampler.sample()
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return {
        "samples": float(samples),
        "cpu_seconds_per_sample": cpu / samples,
        "wall_seconds_per_sample": wall / samples,
        "core_percent_at_1hz": 100.0 * cpu / samples,
    }
