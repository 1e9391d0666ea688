"""Tests of the series store, the downsampling and the payload meter behind the live curves."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from training_manager_lab.widgets.series import (
    PayloadMeter,
    Series,
    SeriesStore,
    downsample,
    payload_bytes,
)

MILLION = 1_000_000


def _noisy(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal(n)) * 0.01 + rng.standard_normal(n)


def test_series_keeps_every_point_appended_one_by_one_and_in_batches() -> None:
    series = Series("train_loss")

    for step in range(1000):
        series.append(step, step * 0.5)
    series.extend(np.arange(1000, 5000), np.arange(1000, 5000) * 0.5)

    assert len(series) == 5000
    np.testing.assert_array_equal(series.x, np.arange(5000))
    np.testing.assert_array_equal(series.y, np.arange(5000) * 0.5)
    assert series.last() == (4999.0, 2499.5)


def test_series_counts_nonfinite_values_and_finds_the_last_finite_one() -> None:
    series = Series("loss")

    series.extend([0, 1, 2, 3], [1.0, float("nan"), float("inf"), float("-inf")])

    assert series.nonfinite_count == 3
    assert series.last_finite() == 1.0
    steps, ypos, kinds = series.nonfinite_points(max_markers=10)
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(ypos, [1.0, 1.0, 1.0])
    assert kinds == ["nan", "inf", "-inf"]


def test_series_views_are_read_only() -> None:
    series = Series("loss")
    series.extend([0, 1], [1.0, 2.0])

    with pytest.raises(ValueError):
        series.y[0] = 5.0


def test_extend_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        Series("loss").extend([0, 1, 2], [1.0])


def test_store_keeps_keys_in_order_of_first_appearance() -> None:
    store = SeriesStore()

    store.append("val_acc", 10, 0.5)
    store.append("train_loss", 1, 2.0)
    store.append("val_acc", 20, 0.7)

    assert store.keys() == ["val_acc", "train_loss"]
    assert len(store["val_acc"]) == 2
    assert store.total_points() == 3
    assert "train_loss" in store and "lr" not in store


def test_a_short_series_is_returned_whole_with_narrow_dtypes() -> None:
    x, y = downsample(np.arange(10), np.linspace(0, 1, 10), max_points=2000)

    np.testing.assert_array_equal(x, np.arange(10))
    np.testing.assert_allclose(y, np.linspace(0, 1, 10), rtol=1e-6)
    assert x.dtype == np.int32
    assert y.dtype == np.float32


def test_a_million_points_shrink_to_max_points_keeping_extremes_and_ends() -> None:
    y = _noisy(MILLION)
    y[123_457] = 40.0
    y[876_543] = -40.0

    xs, ys = downsample(np.arange(MILLION), y, max_points=2000)

    assert 1000 <= xs.size <= 2000
    assert xs[0] == 0 and xs[-1] == MILLION - 1
    assert ys[-1] == pytest.approx(y[-1], rel=1e-6)
    assert np.all(np.diff(xs) > 0)
    assert 123_457 in xs and 876_543 in xs
    assert float(ys.max()) == 40.0 and float(ys.min()) == -40.0


def test_every_bucket_keeps_its_minimum_and_maximum() -> None:
    y = _noisy(100_000, seed=3)

    xs, _ = downsample(np.arange(y.size), y, max_points=500)

    # 99,998 inner points in at most (500 - 2) // 2 buckets: the power-of-two width is 512,
    # with buckets aligned on the second point.
    kept = set(xs.tolist())
    for start in range(1, y.size - 1, 512):
        bucket = y[start : min(start + 512, y.size - 1)]
        assert start + int(bucket.argmin()) in kept
        assert start + int(bucket.argmax()) in kept
    assert xs.size == 2 + 2 * 196


def test_nan_gaps_survive_downsampling() -> None:
    y = _noisy(MILLION)
    y[500_000:500_010] = np.nan
    y[700_000] = np.inf

    xs, ys = downsample(np.arange(MILLION), y, max_points=2000)

    assert xs.size <= 2000
    gaps = xs[np.isnan(ys)]
    assert np.any((gaps >= 500_000) & (gaps < 500_010))
    assert 700_000 in gaps
    assert np.isfinite(ys[0]) and np.isfinite(ys[-1])


def test_incremental_downsample_matches_the_one_shot_result_as_the_series_grows() -> None:
    rng = np.random.default_rng(7)
    y = _noisy(300_000, seed=7)
    y[rng.integers(0, y.size, 5)] = np.nan
    series = Series("loss")
    done = 0

    while done < y.size:
        chunk = int(rng.integers(1, 40_000))
        series.extend(np.arange(done, min(done + chunk, y.size)), y[done : done + chunk])
        done = len(series)
        got_x, got_y = series.downsample(1000)
        want_x, want_y = downsample(series.x, series.y, 1000)

        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
        assert got_x.size <= 1000


def test_max_points_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        downsample(np.arange(100), np.arange(100.0), max_points=4)


def test_nonfinite_markers_are_bounded_and_keep_the_first_and_last() -> None:
    series = Series("loss")
    values = np.full(100_000, np.nan)
    values[:10] = 1.0
    series.extend(np.arange(100_000), values)

    steps, ypos, kinds = series.nonfinite_points(max_markers=50)

    assert steps.size <= 50
    assert steps[0] == 10 and steps[-1] == 99_999
    assert set(kinds) == {"nan"}
    assert np.all(ypos == 1.0)


def test_one_refresh_of_a_million_point_curve_sends_under_256_kb() -> None:
    y = _noisy(MILLION)
    series = Series("train_loss")
    series.extend(np.arange(MILLION), y)
    fig = go.FigureWidget()
    fig.add_scatter(x=[], y=[])

    with PayloadMeter(fig) as meter:
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = series.downsample(2000)

    assert 0 < meter.bytes <= 256 * 1024
    assert meter.messages >= 1
    assert len(fig.data[0].x) <= 2000


def test_the_meter_sees_the_full_cost_of_handing_a_figure_every_point() -> None:
    y = _noisy(MILLION)
    fig = go.FigureWidget()
    fig.add_scatter(x=[], y=[])

    with PayloadMeter(fig) as meter:
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = np.arange(MILLION, dtype=np.float64), y

    assert meter.bytes >= 16 * MILLION
    assert "_send" not in vars(fig)


def test_payload_bytes_counts_json_text_and_buffers() -> None:
    message = {"method": "update", "state": {"a": 1}}

    size = payload_bytes(message, [memoryview(np.zeros(10, dtype=np.float64))])

    assert size == len('{"method":"update","state":{"a":1}}') + 80
