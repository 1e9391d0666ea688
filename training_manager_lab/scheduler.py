"""Who runs next and on which devices: by priority, then arrival; a GPU is never booked twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ResourceUnavailable


@dataclass(frozen=True)
class Capacity:
    """What this node may hand out to local jobs.

    Attributes:
        gpus: indices of the GPUs jobs may use (after ``CUDA_VISIBLE_DEVICES``).
        busy_gpus: those GPUs that processes outside our jobs hold above the threshold.
        cpu_slots: how many CPU processes may run at once when jobs run on the CPU.
        memory: bytes of memory jobs may ask for in all.
    """

    gpus: tuple[int, ...] = ()
    busy_gpus: frozenset[int] = frozenset()
    cpu_slots: int = 1
    memory: int | None = None


@dataclass
class Plan:
    """The outcome of one scheduling pass."""

    starts: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    waiting: dict[str, tuple[int, str]] = field(default_factory=dict)


def uses_gpus(request: dict[str, Any], capacity: Capacity) -> bool:
    accelerator = request.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and bool(capacity.gpus)


def check_feasible(request: dict[str, Any], capacity: Capacity) -> None:
    """Refuse a request this node can never satisfy, saying what it has."""
    devices = request["devices"]
    if uses_gpus(request, capacity):
        if devices > len(capacity.gpus):
            raise ResourceUnavailable(
                f"the job asks for {devices} GPUs but this node has {len(capacity.gpus)} "
                "usable; ask for fewer devices or use cluster='slurm'"
            )
    elif devices > capacity.cpu_slots:
        raise ResourceUnavailable(
            f"the job asks for {devices} CPU processes but this node runs at most "
            f"{capacity.cpu_slots} at once; ask for devices={capacity.cpu_slots} or fewer"
        )
    memory = request.get("memory")
    if memory is not None and capacity.memory is not None and memory > capacity.memory:
        raise ResourceUnavailable(
            f"the job asks for {memory / 2**30:.1f} GiB of memory but this node has "
            f"{capacity.memory / 2**30:.1f} GiB"
        )


def plan(jobs: list[dict[str, Any]], capacity: Capacity, node: str = "localhost") -> Plan:
    """Decide which queued jobs start now and why the others wait.

    ``jobs`` are the active (queued and running) local jobs in scheduling order. Strict
    order: when the job at the head of the queue does not fit, nothing behind it starts,
    so a large job is never starved by a stream of small ones.
    """
    free_gpus = [gpu for gpu in capacity.gpus if gpu not in capacity.busy_gpus]
    free_slots = capacity.cpu_slots
    free_memory = capacity.memory
    for job in jobs:
        if job["status"] != "running":
            continue
        allocation = job.get("allocation") or {}
        for gpu in allocation.get("gpus", []):
            if gpu in free_gpus:
                free_gpus.remove(gpu)
        free_slots -= allocation.get("cpu_slots", 0)
        if free_memory is not None and allocation.get("memory"):
            free_memory -= allocation["memory"]

    result = Plan()
    blocked_by: str | None = None
    position = 0
    for job in jobs:
        if job["status"] != "queued":
            continue
        position += 1
        request = job["request"]
        devices = request["devices"]
        memory = request.get("memory")
        if blocked_by is not None:
            result.waiting[job["id"]] = (position, f"behind job {blocked_by} in the queue")
            continue

        reason = None
        if uses_gpus(request, capacity):
            if devices > len(free_gpus):
                reason = f"waiting for {devices} GPUs, {len(free_gpus)} free"
        elif devices > free_slots:
            reason = f"waiting for {devices} CPU slots, {max(free_slots, 0)} free"
        if reason is None and memory and free_memory is not None and memory > free_memory:
            reason = (
                f"waiting for {memory / 2**30:.1f} GiB of memory, {free_memory / 2**30:.1f} free"
            )
        if reason is not None:
            result.waiting[job["id"]] = (position, reason)
            blocked_by = job["id"]
            continue

        if uses_gpus(request, capacity):
            gpus, free_gpus = free_gpus[:devices], free_gpus[devices:]
            allocation = {"node": node, "gpus": gpus, "cpu_slots": 0, "memory": memory}
        else:
            free_slots -= devices
            allocation = {"node": node, "gpus": [], "cpu_slots": devices, "memory": memory}
        if memory and free_memory is not None:
            free_memory -= memory
        result.starts.append((job, allocation))
        position -= 1
    return result
