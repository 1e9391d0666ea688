"""Notebook widgets: the live job view, the jobs table and the series store behind the curves."""

from __future__ import annotations

from typing import Any

__all__ = ["JobView", "JobsTable", "PayloadMeter", "Series", "SeriesStore", "downsample"]

_HOMES = {
    "JobView": "job_view",
    "JobsTable": "jobs_table",
    "PayloadMeter": "series",
    "Series": "series",
    "SeriesStore": "series",
    "downsample": "series",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so that importing the package does not load plotly and ipywidgets.
    module_name = _HOMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module_name}"), name)
