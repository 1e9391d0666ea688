"""Tests of the jobs table that ``tml.jobs()`` returns."""

from __future__ import annotations

import time

import ipywidgets

from training_manager_lab.widgets.jobs_table import (
    JobsTable,
    format_duration,
    main_metric,
    table_row,
)

CREATED = 1733300000.1


def _record(**changes: object) -> dict:
    record = {
        "id": "3f9a1c2b7d10",
        "name": "digits-mlp",
        "experiment": "digits",
        "status": "running",
        "created_at": CREATED,
        "world_size": 2,
        "progress": {
            "step": 40,
            "total_steps": 170,
            "epoch": 1,
            "max_epochs": 5,
            "samples_per_sec": 1234.5,
            "eta": 12.3,
            "fraction": 0.235,
        },
        "last_metrics": {"train_loss": 0.31, "val_acc": 0.93},
    }
    record.update(changes)
    return record


def test_table_behaves_as_a_list_of_records() -> None:
    records = [_record(), _record(id="000000000001", status="succeeded")]

    table = JobsTable(records)

    assert len(table) == 2
    assert table[1]["id"] == "000000000001"
    assert [r["status"] for r in table] == ["running", "succeeded"]
    assert table == records
    assert isinstance(table, list)


def test_html_lists_every_column_of_a_running_job() -> None:
    table = JobsTable([_record()])

    page = table._repr_html_()

    assert "<table" in page and page.count("<tr>") == 2
    for text in ("3f9a1c2b7d10", "digits-mlp", "running", "23.5%", "12 s", "val_acc = 0.93"):
        assert text in page
    assert "<td>2</td>" in page
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(CREATED)) in page


def test_row_of_an_ended_job_has_no_eta_and_a_full_bar_when_it_succeeded() -> None:
    row = table_row(_record(status="succeeded", progress={"step": 170, "total_steps": 170}))

    assert row["status"] == "succeeded"
    assert row["progress"] == "100.0%"
    assert row["ETA"] == ""


def test_queued_job_without_progress_or_metrics_shows_empty_cells() -> None:
    row = table_row(_record(status="queued", progress=None, last_metrics={}, world_size=None))

    assert row["progress"] == ""
    assert row["metric"] == ""
    assert row["world size"] == ""


def test_names_are_escaped_in_html() -> None:
    page = JobsTable([_record(name="<script>alert(1)</script>")])._repr_html_()

    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_empty_table_says_so() -> None:
    table = JobsTable([])

    assert "no jobs yet" in table._repr_html_()
    assert "no jobs yet" in repr(table)


def test_plain_text_repr_is_a_table() -> None:
    text = repr(JobsTable([_record(), _record(id="000000000001", name="other")]))

    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:3] == ["id", "name", "status"]
    assert "digits-mlp" in lines[1] and "other" in lines[2]


def test_widget_and_dataframe_forms_carry_the_same_rows() -> None:
    table = JobsTable([_record()])

    widget = table.to_widget()
    frame = table.to_dataframe()

    assert isinstance(widget, ipywidgets.HTML)
    assert "3f9a1c2b7d10" in widget.value
    assert frame.loc[0, "status"] == "running"
    assert frame.loc[0, "progress"] == "23.5%"


def test_main_metric_prefers_validation_then_loss() -> None:
    assert main_metric({"train_loss": 0.3, "val_acc": 0.9}) == ("val_acc", 0.9)
    assert main_metric({"train_loss": 0.3, "lr": 0.1}) == ("train_loss", 0.3)
    assert main_metric({"val/mAP": 0.4, "lr": 0.1}) == ("val/mAP", 0.4)
    assert main_metric({"lr": 0.1}) == ("lr", 0.1)
    assert main_metric({}) is None


def test_durations_read_naturally() -> None:
    assert format_duration(12.3) == "12 s"
    assert format_duration(184) == "3 min 4 s"
    assert format_duration(7500) == "2 h 5 min"
    assert format_duration(None) == ""
    assert format_duration(float("inf")) == ""
