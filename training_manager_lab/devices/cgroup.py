"""Reads the CPU quota, memory limit and usage of this process's cgroup (v1 or v2)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/fs/cgroup"
DEFAULT_PROC_CGROUP = "/proc/self/cgroup"

# cgroup v1 writes "no limit" as a page-aligned 2**63 - 1; anything this large is no limit.
_UNLIMITED = 2**62


@dataclass(frozen=True)
class CgroupLimits:
    """What the cgroup allows this process and what it uses now.

    Attributes:
        version: 1 or 2, or None when no cgroup file system was found.
        cpu_quota: Usable cores (``1.5`` for a quota of 150 ms per 100 ms), or None.
        memory_limit: Memory limit in bytes, or None.
        memory_usage: Memory in use by the cgroup in bytes, without inactive page cache,
            or None when the cgroup does not say (for example the root cgroup).
        cpu_seconds: CPU time used by the cgroup since it was created, or None.
    """

    version: int | None = None
    cpu_quota: float | None = None
    memory_limit: int | None = None
    memory_usage: int | None = None
    cpu_seconds: float | None = None


class CgroupReader:
    """Finds the cgroup folders once, then reads the limits and usage on every call.

    Args:
        root: Where the cgroup file systems are mounted.
        proc_cgroup: The ``/proc/<pid>/cgroup`` file naming this process's cgroups.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
    ) -> None:
        self.root = Path(root)
        self.version: int | None = None
        self._cpu: list[Path] = []
        self._cpuacct: Path | None = None
        self._memory: list[Path] = []
        try:
            lines = Path(proc_cgroup).read_text().splitlines()
        except OSError:
            logger.debug("no %s; cgroup limits are not applied", proc_cgroup)
            return
        paths = _parse_proc_cgroup(lines)
        if (self.root / "cgroup.controllers").is_file() and "" in paths:
            self.version = 2
            chain = _chain(self.root, paths[""])
            self._cpu = self._memory = chain
            self._cpuacct = chain[0]
        elif any(name for name in paths):
            self.version = 1
            self._cpu = self._v1_chain(paths, "cpu")
            self._memory = self._v1_chain(paths, "memory")
            cpuacct = self._v1_chain(paths, "cpuacct")
            self._cpuacct = cpuacct[0] if cpuacct else None

    def limits(self) -> CgroupLimits:
        """Read the limits and usage now."""
        if self.version == 2:
            return CgroupLimits(
                version=2,
                cpu_quota=_min(_v2_cpu_quota(d) for d in self._cpu),
                memory_limit=_min(_read_int(d / "memory.max") for d in self._memory),
                memory_usage=self._usage(self._memory, "memory.current", "inactive_file"),
                cpu_seconds=_v2_cpu_seconds(self._cpuacct),
            )
        if self.version == 1:
            return CgroupLimits(
                version=1,
                cpu_quota=_min(_v1_cpu_quota(d) for d in self._cpu),
                memory_limit=self._v1_memory_limit(),
                memory_usage=self._usage(
                    self._memory, "memory.usage_in_bytes", "total_inactive_file"
                ),
                cpu_seconds=_scaled(_read_int(self._cpuacct / "cpuacct.usage"), 1e-9)
                if self._cpuacct
                else None,
            )
        return CgroupLimits()

    def _v1_chain(self, paths: dict[str, str], controller: str) -> list[Path]:
        for names, path in paths.items():
            if controller not in names.split(","):
                continue
            for mount_name in (names, controller):
                mount = self.root / mount_name
                if mount.is_dir():
                    return _chain(mount, path)
        return []

    def _v1_memory_limit(self) -> int | None:
        if not self._memory:
            return None
        stat = _read_stat(self._memory[0] / "memory.stat")
        limits = [_read_int(d / "memory.limit_in_bytes") for d in self._memory]
        hierarchical = stat.get("hierarchical_memory_limit")
        if hierarchical is not None and hierarchical < _UNLIMITED:
            limits.append(hierarchical)
        return _min(limits)

    @staticmethod
    def _usage(chain: list[Path], usage_file: str, inactive_key: str) -> int | None:
        if not chain:
            return None
        usage = _read_int(chain[0] / usage_file)
        if usage is None:
            return None
        inactive = _read_stat(chain[0] / "memory.stat").get(inactive_key, 0)
        return max(usage - inactive, 0)


def read_limits(
    root: str | os.PathLike[str] = DEFAULT_ROOT,
    proc_cgroup: str | os.PathLike[str] = DEFAULT_PROC_CGROUP,
) -> CgroupLimits:
    """Read the cgroup limits of this process once.

    Args:
        root: Where the cgroup file systems are mounted.
        proc_cgroup: The file naming this process's cgroups.

    Returns:
        The limits; fields are None where there is no limit or no cgroup.
    """
    return CgroupReader(root, proc_cgroup).limits()


def _parse_proc_cgroup(lines: list[str]) -> dict[str, str]:
    """Map the controller list of each hierarchy ("" for v2) to this process's path in it."""
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    return paths


def _chain(mount: Path, path: str) -> list[Path]:
    """Return the cgroup folder and its ancestors up to the mount point, innermost first.

    Without a cgroup namespace, the path names the host's hierarchy while the mount shows
    only the container's part; then the mount point itself is the container's cgroup.
    """
    folder = mount / path.strip("/")
    if not folder.is_dir():
        return [mount]
    chain = [folder]
    while chain[-1] != mount and mount in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < _UNLIMITED else None


def _read_stat(path: Path) -> dict[str, int]:
    stat: dict[str, int] = {}
    for line in (_read_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[key] = int(value)
    return stat


def _v2_cpu_quota(folder: Path) -> float | None:
    text = _read_text(folder / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        return int(quota) / int(period or "100000")
    except (ValueError, ZeroDivisionError):
        return None


def _v1_cpu_quota(folder: Path) -> float | None:
    quota = _read_text(folder / "cpu.cfs_quota_us")
    period = _read_int(folder / "cpu.cfs_period_us")
    if not quota or not period or quota.startswith("-"):
        return None
    try:
        return int(quota) / period
    except ValueError:
        return None


def _v2_cpu_seconds(folder: Path | None) -> float | None:
    if folder is None:
        return None
    return _scaled(_read_stat(folder / "cpu.stat").get("usage_usec"), 1e-6)


def _scaled(value: int | None, factor: float) -> float | None:
    return value * factor if value is not None else None


def _min(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None
