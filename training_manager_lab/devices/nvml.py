"""The one seam to NVML: probes that read GPUs, and a reader that remembers unsupported queries."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

#: Environment variable naming a JSON recording that replaces NVML (tests, demos).
RECORDING_ENV = "TML_GPU_RECORDING"

#: The query groups a probe answers; each maps to one or two keys of a GPU entry.
FIELDS: tuple[str, ...] = (
    "uuid",
    "name",
    "memory",
    "utilization",
    "temperature",
    "power",
    "processes",
)

#: Keys of one GPU entry as :func:`GpuReader.read` returns it, besides ``index``.
GPU_KEYS: tuple[str, ...] = (
    "uuid",
    "name",
    "memory_total",
    "memory_used",
    "utilization",
    "temperature",
    "power",
    "processes",
)

# How long a failed NVML initialisation is trusted before trying again (a driver can be
# loaded after the server started).
_INIT_RETRY_SECONDS = 60.0


class GpuUnavailable(Exception):
    """No GPU can be read on this node; the message says why, in words for a user."""


class FieldNotSupported(Exception):
    """The GPU does not support this query (NVML's NOT_SUPPORTED); it is not asked again."""

    def __init__(self, index: int, field: str) -> None:
        super().__init__(f"GPU {index} does not support the {field!r} query")
        self.index = index
        self.field = field


@runtime_checkable
class GpuProbe(Protocol):
    """What the inventory needs from NVML; the only thing a test replaces.

    ``device_count`` raises :class:`GpuUnavailable` when no GPU can be read at all.
    ``query`` answers one of :data:`FIELDS` for one GPU and raises :class:`FieldNotSupported`
    when the GPU does not support it; any other exception means "not available this time".
    Values: ``uuid`` and ``name`` are strings, ``memory`` is ``(total, used)`` in bytes,
    ``utilization`` is a percent, ``temperature`` degrees Celsius, ``power`` watts, and
    ``processes`` a list of ``{"pid": int, "used_memory": int | None}``.
    """

    def device_count(self) -> int:
        """Return the number of GPUs NVML sees."""
        ...

    def query(self, index: int, field: str) -> Any:
        """Return one field of one GPU."""
        ...


class NvmlProbe:
    """The real probe, on ``pynvml`` (the ``nvidia-ml-py`` package).

    Args:
        module: An object with pynvml's functions and exception classes. ``None`` imports
            ``pynvml`` on first use; only tests pass something else.
    """

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._ready = False
        self._failure: str | None = None
        self._failed_at = 0.0
        self._handles: dict[int, Any] = {}

    def device_count(self) -> int:
        """Initialise NVML if needed and return the number of GPUs.

        Raises:
            GpuUnavailable: The library, the package or the driver is missing.
        """
        nvml = self._init()
        try:
            return int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            raise GpuUnavailable(f"NVML could not count the GPUs: {err}") from err

    def query(self, index: int, field: str) -> Any:
        """Return one field of GPU ``index`` (see :class:`GpuProbe`)."""
        nvml = self._init()
        try:
            handle = self._handle(nvml, index)
            return self._read(nvml, handle, field)
        except nvml.NVMLError_NotSupported as err:
            raise FieldNotSupported(index, field) from err

    def reset(self) -> None:
        """Forget a failed initialisation and the device handles, so the next call retries."""
        with self._lock:
            self._ready = False
            self._failure = None
            self._handles.clear()

    def _init(self) -> Any:
        with self._lock:
            if self._ready:
                return self._module
            if self._failure and time.monotonic() - self._failed_at < _INIT_RETRY_SECONDS:
                raise GpuUnavailable(self._failure)
            try:
                nvml = self._module if self._module is not None else _import_pynvml()
                nvml.nvmlInit()
            except GpuUnavailable as err:
                self._remember_failure(str(err))
                raise
            except Exception as err:
                self._remember_failure(_describe_init_error(err))
                raise GpuUnavailable(self._failure) from err
            self._module = nvml
            self._ready = True
            self._failure = None
            logger.debug("NVML initialised")
            return nvml

    def _remember_failure(self, reason: str) -> None:
        if reason != self._failure:
            logger.info("GPUs are not available: %s", reason)
        self._failure = reason
        self._failed_at = time.monotonic()

    def _handle(self, nvml: Any, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._handles[index] = handle
        return handle

    @staticmethod
    def _read(nvml: Any, handle: Any, field: str) -> Any:
        if field == "uuid":
            return _text(nvml.nvmlDeviceGetUUID(handle))
        if field == "name":
            return _text(nvml.nvmlDeviceGetName(handle))
        if field == "memory":
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            return int(info.total), int(info.used)
        if field == "utilization":
            return int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        if field == "temperature":
            return int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        if field == "power":
            return nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        if field == "processes":
            return _processes(nvml, handle)
        raise ValueError(f"unknown GPU field {field!r}; expected one of {', '.join(FIELDS)}")


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as err:
        raise GpuUnavailable(
            f"nvidia-ml-py is not installed ({err}); install it with `pip install nvidia-ml-py`"
        ) from err
    return pynvml


def _describe_init_error(err: Exception) -> str:
    name = type(err).__name__
    if name == "NVMLError_LibraryNotFound":
        return (
            f"NVML library not found: {err}; install the NVIDIA driver "
            "(libnvidia-ml.so.1), or this node has no NVIDIA GPU"
        )
    if name == "NVMLError_DriverNotLoaded":
        return f"NVIDIA driver not loaded: {err}; load the kernel module or reboot the node"
    if name == "NVMLError_NoPermission":
        return f"no permission to use NVML: {err}; give the server's user access to /dev/nvidia*"
    return f"NVML failed to initialise: {type(err).__name__}: {err}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _processes(nvml: Any, handle: Any) -> list[dict[str, Any]]:
    # A process can appear in both lists (compute and graphics); keep the larger figure.
    found: dict[int, int | None] = {}
    readers: list[Callable[[Any], Any]] = [nvml.nvmlDeviceGetComputeRunningProcesses]
    graphics = getattr(nvml, "nvmlDeviceGetGraphicsRunningProcesses", None)
    if graphics is not None:
        readers.append(graphics)
    for read in readers:
        try:
            entries = read(handle)
        except nvml.NVMLError_NotSupported:
            continue
        for entry in entries:
            pid = int(entry.pid)
            used = int(entry.usedGpuMemory) if entry.usedGpuMemory is not None else None
            known = found.get(pid)
            if pid not in found or (used is not None and (known is None or used > known)):
                found[pid] = used
    return [{"pid": pid, "used_memory": used} for pid, used in sorted(found.items())]


class RecordedProbe:
    """A probe that answers from a recorded inventory instead of NVML.

    The recording is JSON: ``{"gpus": [{"index": 0, "uuid": ..., "name": ..., "memory_total":
    ..., "memory_used": ..., "utilization": ..., "temperature": ..., "power": ...,
    "processes": [{"pid": ..., "used_memory": ...}], "unsupported": ["power"]}], "error":
    null}``. Fields listed in a GPU's ``unsupported`` raise :class:`FieldNotSupported`; a
    non-null top-level ``error`` makes the node GPU-less with that reason. A file-backed probe
    reloads when the file changes, so another process can rewrite it during a test.

    Args:
        path: A recording to load.
        data: The recording itself, when there is no file.

    Example:
        >>> probe = RecordedProbe("tests/data/four_gpus.json")
        >>> set_probe(probe)
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, data: dict | None = None):
        if (path is None) == (data is None):
            raise ValueError("RecordedProbe needs exactly one of path= or data=")
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._data: dict = data if data is not None else {}
        #: How often each ``(index, field)`` was asked, for tests.
        self.calls: Counter[tuple[int, str]] = Counter()
        if self.path is not None:
            self._reload()

    @property
    def data(self) -> dict:
        """The recording as now loaded (reloaded from the file when it changed)."""
        self._reload()
        return self._data

    def device_count(self) -> int:
        """Return the number of recorded GPUs, or raise the recorded error."""
        data = self.data
        if data.get("error"):
            raise GpuUnavailable(str(data["error"]))
        return len(data.get("gpus", []))

    def query(self, index: int, field: str) -> Any:
        """Return a recorded field; raise FieldNotSupported for those marked unsupported."""
        with self._lock:
            self.calls[(index, field)] += 1
        gpu = self._gpu(index)
        if field in gpu.get("unsupported", ()):
            raise FieldNotSupported(index, field)
        if field == "memory":
            return gpu["memory_total"], gpu["memory_used"]
        if field == "processes":
            return [dict(p) for p in gpu.get("processes", [])]
        if field not in FIELDS:
            raise ValueError(f"unknown GPU field {field!r}; expected one of {', '.join(FIELDS)}")
        return gpu[field]

    def set_gpu(self, index: int, **fields: Any) -> None:
        """Change recorded fields of one GPU in memory (e.g. ``processes=[...]``)."""
        with self._lock:
            self._gpu(index).update(fields)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the recording as JSON, e.g. for a server started in a subprocess."""
        Path(path).write_text(json.dumps(self._data, indent=2))

    def _gpu(self, index: int) -> dict:
        for gpu in self.data.get("gpus", []):
            if gpu.get("index", None) == index:
                return gpu
        gpus = self.data.get("gpus", [])
        if 0 <= index < len(gpus) and "index" not in gpus[index]:
            return gpus[index]
        raise IndexError(f"the recording has no GPU with index {index}")

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as err:
            raise GpuUnavailable(f"GPU recording {self.path} cannot be read: {err}") from err
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise GpuUnavailable(f"GPU recording {self.path} is not valid JSON: {err}") from err
        with self._lock:
            self._data = data
            self._mtime = mtime


class GpuReader:
    """Reads every GPU through a probe and never repeats a query the GPU does not support.

    Args:
        probe: The probe to read from.
    """

    def __init__(self, probe: GpuProbe) -> None:
        self.probe = probe
        self._unsupported: set[tuple[int, str]] = set()
        self._lock = threading.Lock()

    def read(self) -> tuple[list[dict[str, Any]], str | None]:
        """Return ``(gpus, error)``: one dict per GPU (keys :data:`GPU_KEYS` and ``index``),
        ``None`` for a value that is not supported or not available, and the reason when the
        node has no readable GPU at all."""
        try:
            count = self.probe.device_count()
        except GpuUnavailable as err:
            return [], str(err)
        except Exception as err:
            logger.debug("GPU probe failed", exc_info=True)
            return [], f"GPU probe failed: {type(err).__name__}: {err}"
        return [self._read_one(index) for index in range(count)], None

    def unsupported(self) -> set[tuple[int, str]]:
        """The ``(index, field)`` pairs found unsupported so far."""
        with self._lock:
            return set(self._unsupported)

    def _read_one(self, index: int) -> dict[str, Any]:
        gpu: dict[str, Any] = {"index": index, **dict.fromkeys(GPU_KEYS)}
        for field in FIELDS:
            value = self._query(index, field)
            if field == "memory":
                gpu["memory_total"], gpu["memory_used"] = value if value else (None, None)
            else:
                gpu[field] = value
        if gpu["processes"] is None:
            gpu["processes"] = []
        return gpu

    def _query(self, index: int, field: str) -> Any:
        with self._lock:
            if (index, field) in self._unsupported:
                return None
        try:
            return self.probe.query(index, field)
        except FieldNotSupported:
            with self._lock:
                self._unsupported.add((index, field))
            logger.debug("GPU %d does not support %s; it will not be asked again", index, field)
        except Exception:
            logger.debug("GPU %d: reading %s failed", index, field, exc_info=True)
        return None


_state_lock = threading.Lock()
_probe: GpuProbe | None = None
_reader: GpuReader | None = None


def get_probe() -> GpuProbe:
    """Return the probe in use: the one set by :func:`set_probe`, else a recording named by
    ``TML_GPU_RECORDING``, else real NVML."""
    global _probe
    with _state_lock:
        if _probe is None:
            recording = os.environ.get(RECORDING_ENV)
            if recording:
                logger.info("reading GPUs from the recording %s, not from NVML", recording)
                _probe = RecordedProbe(recording)
            else:
                _probe = NvmlProbe()
        return _probe


def set_probe(probe: GpuProbe | None) -> None:
    """Replace the probe (``None`` goes back to the default); forgets unsupported fields."""
    global _probe, _reader
    with _state_lock:
        _probe = probe
        _reader = None


def get_reader() -> GpuReader:
    """Return the shared reader over :func:`get_probe`."""
    global _reader
    probe = get_probe()
    with _state_lock:
        if _reader is None or _reader.probe is not probe:
            _reader = GpuReader(probe)
        return _reader
