"""Complete metric series in growable arrays, and bounded downsampled views of them for display."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Smallest ``max_points`` that still leaves room for the first and last point and two buckets.
MIN_DISPLAY_POINTS = 8

_INITIAL_CAPACITY = 256


class Series:
    """One metric's complete history: steps and values in growable numpy arrays.

    Appending is amortised O(1): the arrays double when full. Non-finite values (NaN and
    infinities) are stored as they are, so that the display can show them as gaps and markers.
    The downsampled view is cached per bucket, so that a refresh of a long, growing series only
    looks at the points added since the previous refresh.

    Args:
        key: the metric name.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._x = np.empty(_INITIAL_CAPACITY, dtype=np.float64)
        self._y = np.empty(_INITIAL_CAPACITY, dtype=np.float64)
        self._n = 0
        self._nonfinite = 0
        self._cache: _BucketCache | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def x(self) -> np.ndarray:
        """The steps, a read-only view of the stored points."""
        view = self._x[: self._n]
        view.flags.writeable = False
        return view

    @property
    def y(self) -> np.ndarray:
        """The values, a read-only view of the stored points."""
        view = self._y[: self._n]
        view.flags.writeable = False
        return view

    @property
    def nonfinite_count(self) -> int:
        """How many stored values are NaN or infinite."""
        return self._nonfinite

    def last(self) -> tuple[float, float] | None:
        """The last point as ``(step, value)``, or None while the series is empty."""
        if self._n == 0:
            return None
        return float(self._x[self._n - 1]), float(self._y[self._n - 1])

    def last_finite(self) -> float | None:
        """The latest finite value, or None when there is none."""
        finite = np.flatnonzero(np.isfinite(self._y[: self._n]))
        if finite.size == 0:
            return None
        return float(self._y[finite[-1]])

    def append(self, step: float, value: float) -> None:
        """Add one point at the end."""
        if self._n == self._x.size:
            self._grow(self._n + 1)
        self._x[self._n] = step
        self._y[self._n] = value
        self._n += 1
        if not np.isfinite(value):
            self._nonfinite += 1

    def extend(self, steps: np.ndarray | list[float], values: np.ndarray | list[float]) -> None:
        """Add many points at the end.

        Raises:
            ValueError: if ``steps`` and ``values`` differ in length.
        """
        xs = np.asarray(steps, dtype=np.float64).ravel()
        ys = np.asarray(values, dtype=np.float64).ravel()
        if xs.size != ys.size:
            raise ValueError(
                f"steps and values must have the same length, got {xs.size} and {ys.size}"
            )
        end = self._n + xs.size
        if end > self._x.size:
            self._grow(end)
        self._x[self._n : end] = xs
        self._y[self._n : end] = ys
        self._n = end
        self._nonfinite += int(np.count_nonzero(~np.isfinite(ys)))

    def downsample(self, max_points: int) -> tuple[np.ndarray, np.ndarray]:
        """Return at most ``max_points`` points that draw like the whole series.

        Same result as :func:`downsample` on :attr:`x` and :attr:`y`, computed incrementally.
        """
        _check_max_points(max_points)
        n = self._n
        if n <= max_points:
            return _display_arrays(self._x[:n], self._y[:n], np.arange(n))
        per_bucket = 3 if self._nonfinite else 2
        width = _bucket_width(n, max_points, per_bucket)
        cache = self._cache
        if cache is None or cache.width != width or cache.per_bucket != per_bucket:
            cache = self._cache = _BucketCache(width, per_bucket)
        cache.advance(self._y, n)
        tail = _bucket_candidates(self._y, 1 + cache.complete * width, n - 1, width)
        idx = np.concatenate(([0], cache.indices(), tail, [n - 1]))
        return _display_arrays(self._x[:n], self._y[:n], idx)

    def nonfinite_points(self, max_markers: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Where the series is NaN or infinite, for markers: at most ``max_markers`` of them.

        Returns:
            The steps, a y position for each marker (the latest finite value before it, or 0),
            and the kind of each (``"nan"``, ``"inf"`` or ``"-inf"``). When there are more than
            ``max_markers``, an evenly spaced selection that keeps the first and the last.
        """
        y = self._y[: self._n]
        finite = np.isfinite(y)
        bad = np.flatnonzero(~finite)
        if bad.size > max_markers:
            pick = np.unique(np.linspace(0, bad.size - 1, max(max_markers, 2)).round().astype(int))
            bad = bad[pick]
        good = np.flatnonzero(finite)
        before = np.searchsorted(good, bad) - 1
        ypos = np.where(before >= 0, y[good[np.maximum(before, 0)]] if good.size else 0.0, 0.0)
        kinds = ["nan" if np.isnan(v) else ("inf" if v > 0 else "-inf") for v in y[bad]]
        return self._x[bad].copy(), np.asarray(ypos, dtype=np.float64), kinds

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._x.size)
        for name in ("_x", "_y"):
            old = getattr(self, name)
            new = np.empty(capacity, dtype=np.float64)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)


class SeriesStore:
    """The series of every metric key of one job, in the order the keys first appeared."""

    def __init__(self) -> None:
        self._series: dict[str, Series] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._series

    def __getitem__(self, key: str) -> Series:
        return self._series[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._series)

    def __len__(self) -> int:
        return len(self._series)

    def keys(self) -> list[str]:
        """Metric keys in the order they first appeared."""
        return list(self._series)

    def series(self, key: str) -> Series:
        """The series of ``key``, created empty when it is new."""
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series(key)
        return found

    def append(self, key: str, step: float, value: float) -> Series:
        """Add one point to the series of ``key``; returns that series."""
        found = self.series(key)
        found.append(step, value)
        return found

    def total_points(self) -> int:
        """Points stored over all keys."""
        return sum(len(s) for s in self._series.values())


def downsample(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to at most ``max_points`` points that draw like the whole series.

    The points are cut into buckets of equal, power-of-two width aligned on the start of the
    series (so that buckets do not shift as the series grows); each bucket keeps its minimum and
    its maximum in step order, and its first non-finite point when it has one, so that NaN gaps
    stay visible. The first and the last point are always kept. A series that already fits is
    returned whole. Non-finite values come back as NaN, which plotting libraries draw as a gap.

    Args:
        x: the steps.
        y: the values, NaN and infinities allowed.
        max_points: the most points to return; at least 8.

    Returns:
        The kept steps (``int32`` when they are whole numbers that fit, else ``float64``) and
        values (``float32`` when every finite value fits, else ``float64``).

    Raises:
        ValueError: if ``max_points`` is below 8 or ``x`` and ``y`` differ in length.
    """
    _check_max_points(max_points)
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(
            f"x and y must be one-dimensional and of the same length, got {xs.shape} and {ys.shape}"
        )
    n = ys.size
    if n <= max_points:
        return _display_arrays(xs, ys, np.arange(n))
    per_bucket = 3 if not np.isfinite(ys).all() else 2
    width = _bucket_width(n, max_points, per_bucket)
    inner = _bucket_candidates(ys, 1, n - 1, width)
    idx = np.concatenate(([0], inner, [n - 1]))
    return _display_arrays(xs, ys, idx)


def payload_bytes(message: dict[str, Any], buffers: list[Any] | None = None) -> int:
    """Bytes one widget message puts on the wire: its JSON text plus its binary buffers."""
    text = json.dumps(message, separators=(",", ":"), default=_json_fallback)
    return len(text.encode()) + sum(memoryview(b).nbytes for b in buffers or ())


class PayloadMeter:
    """Counts the bytes a widget sends to the frontend, for benchmarks and tests.

    Attach it to any ipywidget (a plotly ``FigureWidget`` included): every message the widget
    sends while attached is measured (JSON text plus binary buffers, as :func:`payload_bytes`)
    and still sent. Works without a frontend, since the widget builds its messages either way.

    Example:
        >>> with PayloadMeter(fig) as meter:
        ...     with fig.batch_update():
        ...         fig.data[0].y = values
        >>> meter.bytes

    Args:
        widget: the widget to watch.
    """

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        self.bytes = 0
        self.messages = 0
        self._attached = False

    def attach(self) -> PayloadMeter:
        """Start counting; returns the meter."""
        if not self._attached:
            original = type(self.widget)._send.__get__(self.widget)

            def counting_send(msg: dict[str, Any], buffers: list[Any] | None = None) -> None:
                self.bytes += payload_bytes(msg, buffers)
                self.messages += 1
                original(msg, buffers=buffers)

            self.widget._send = counting_send
            self._attached = True
        return self

    def detach(self) -> None:
        """Stop counting; the widget sends as before."""
        if self._attached:
            del self.widget._send
            self._attached = False

    def reset(self) -> int:
        """Return the bytes counted so far and start again from zero."""
        counted, self.bytes, self.messages = self.bytes, 0, 0
        return counted

    def __enter__(self) -> PayloadMeter:
        return self.attach()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()


class _BucketCache:
    """Kept candidates of the complete buckets of one bucket width."""

    def __init__(self, width: int, per_bucket: int) -> None:
        self.width = width
        self.per_bucket = per_bucket
        self.complete = 0
        self._parts: list[np.ndarray] = []
        self._joined: np.ndarray | None = np.empty(0, dtype=np.int64)

    def advance(self, y: np.ndarray, n: int) -> None:
        # A bucket is complete once a later point exists, since the last point is kept apart.
        complete = (n - 2) // self.width
        if complete > self.complete:
            start = 1 + self.complete * self.width
            stop = 1 + complete * self.width
            self._parts.append(_bucket_candidates(y, start, stop, self.width))
            self.complete = complete
            self._joined = None

    def indices(self) -> np.ndarray:
        if self._joined is None:
            self._joined = np.concatenate(self._parts)
            self._parts = [self._joined]
        return self._joined


def _check_max_points(max_points: int) -> None:
    if max_points < MIN_DISPLAY_POINTS:
        raise ValueError(f"max_points must be at least {MIN_DISPLAY_POINTS}, got {max_points}")


def _bucket_width(n: int, max_points: int, per_bucket: int) -> int:
    """Smallest power-of-two bucket width that keeps ``n`` points within ``max_points``."""
    budget = (max_points - 2) // per_bucket
    inner = n - 2
    width = 1
    while -(-inner // width) > budget:
        width *= 2
    return width


def _bucket_candidates(y: np.ndarray, start: int, stop: int, width: int) -> np.ndarray:
    """Indices kept from ``y[start:stop]`` cut into buckets of ``width``, in increasing order."""
    count = stop - start
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    buckets = -(-count // width)
    pad = buckets * width - count
    values = y[start:stop]
    finite = np.isfinite(values)

    low = np.where(finite, values, np.inf)
    high = np.where(finite, values, -np.inf)
    bad = ~finite
    if pad:
        low = np.concatenate((low, np.full(pad, np.inf)))
        high = np.concatenate((high, np.full(pad, -np.inf)))
        bad = np.concatenate((bad, np.zeros(pad, dtype=bool)))
        finite = np.concatenate((finite, np.zeros(pad, dtype=bool)))
    low = low.reshape(buckets, width)
    high = high.reshape(buckets, width)
    bad = bad.reshape(buckets, width)
    has_finite = finite.reshape(buckets, width).any(axis=1)
    has_bad = bad.any(axis=1)

    # Candidates per bucket: minimum, maximum, first non-finite point. Absent ones get a
    # sentinel past every real index, so that a row sort puts them last and a filter drops them.
    base = start + np.arange(buckets, dtype=np.int64) * width
    sentinel = np.iinfo(np.int64).max
    lo_idx = np.where(has_finite, base + low.argmin(axis=1), sentinel)
    hi_idx = np.where(has_finite, base + high.argmax(axis=1), sentinel)
    bad_idx = np.where(has_bad, base + bad.argmax(axis=1), sentinel)
    rows = np.sort(np.stack((lo_idx, hi_idx, bad_idx), axis=1), axis=1).ravel()
    rows = rows[rows != sentinel]
    if rows.size > 1:
        rows = rows[np.concatenate(([True], rows[1:] != rows[:-1]))]
    return rows


def _display_arrays(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``idx`` and narrow the dtypes so that the widget sends fewer bytes."""
    xs = x[idx]
    ys = y[idx]
    ys = np.where(np.isfinite(ys), ys, np.nan)
    if xs.size == 0 or (
        np.all(np.isfinite(xs))
        and np.all(xs == np.round(xs))
        and xs.min() >= np.iinfo(np.int32).min
        and xs.max() <= np.iinfo(np.int32).max
    ):
        xs = xs.astype(np.int32)
    magnitude = np.abs(ys[np.isfinite(ys) & (ys != 0)])
    if magnitude.size == 0 or (magnitude.max() < 1e37 and magnitude.min() > 1e-37):
        ys = ys.astype(np.float32)
    return xs, ys


def _json_fallback(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
