"""Tests of the model registry widget, driven through its handlers against real MLflow stores."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from training_manager_lab.tracking import Tracker
from training_manager_lab.widgets.models import MAX_COMPARED, ModelsWidget

ODD_KEY = "val/mAP@0.5"


def _train_with_nonfinite_metrics(folder: Path, poison: bool) -> list[dict[str, Any]]:
    """Fit a tiny model on digits with the job's own stream logger; return the events."""
    import lightning as L
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from training_manager_lab.events import EventWriter, read_events
    from training_manager_lab.runtime.callbacks import StreamLogger

    class Poisoned(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(64, 10)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            score = torch.tensor(0.1 * self.global_step)
            if poison and self.global_step in (2, 4, 6):
                score = torch.tensor({2: math.nan, 4: math.inf, 6: -math.inf}[self.global_step])
            self.log(ODD_KEY, score, on_step=True)
            self.log("train_loss", loss, on_step=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    digits = load_digits()
    data = TensorDataset(
        torch.tensor(digits.data[:320] / 16.0, dtype=torch.float32),
        torch.tensor(digits.target[:320], dtype=torch.long),
    )
    folder.mkdir(parents=True, exist_ok=True)
    with EventWriter(folder / "events.jsonl") as writer:
        trainer = L.Trainer(
            max_steps=10,
            accelerator="cpu",
            devices=1,
            logger=StreamLogger(writer, str(folder)),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Poisoned(), DataLoader(data, batch_size=32))
    events, _ = read_events(folder / "events.jsonl")
    return events


@pytest.fixture(scope="module")
def training_events(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Event streams of two real trainings: one with NaN, +inf and -inf logged, one clean."""
    root = tmp_path_factory.mktemp("jobs")
    return {
        "poisoned": _train_with_nonfinite_metrics(root / "poisoned", poison=True),
        "clean": _train_with_nonfinite_metrics(root / "clean", poison=False),
    }


def _register(
    tracker: Tracker,
    logged_run: tuple[str, str, str],
    name: str,
    events: list[dict] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Register a version whose run holds ``events``; the logged model is shared."""
    _, model_uri, _ = logged_run
    job_id = uuid.uuid4().hex[:12]
    run_id = tracker.start_run("widget-tests", f"job-{job_id}", {"tml.job_id": job_id})
    tracker.log_metric_events(run_id, events or [])
    tracker.end_run(run_id, "succeeded")
    return tracker.register_model(
        run_id=run_id, model_uri=model_uri, name=name, job_id=job_id, **kwargs
    )


def _metric(step: int, key: str, value: float) -> dict[str, Any]:
    return {"type": "metric", "t": 1_700_000_000.0 + step, "step": step, "key": key, "value": value}


def test_widget_lists_versions_and_opens_their_jobs(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    first = _register(
        tracker, logged_run, unique_name, [_metric(0, "val_acc", 0.91)], tags={"data": "digits"}
    )
    second = _register(tracker, logged_run, unique_name, alias="candidate", description="wider")
    opened: list[str] = []

    widget = ModelsWidget(tracker, unique_name, open_job=opened.append)
    widget.job_buttons["1"].click()

    assert unique_name in widget.model_select.options
    assert widget.model_select.value == unique_name
    assert widget.version_select.options == ("1", "2")
    assert opened == [first["job_id"]]
    assert widget.job_buttons["2"].description == second["job_id"]
    cells = [getattr(c, "value", None) for c in widget.table.children]
    assert len(widget.table.children) == 7 * 3
    row_of_1 = cells[14:21]
    assert "val_acc: 0.91" in row_of_1[3] and "data=digits" in row_of_1[4]
    row_of_2 = cells[7:14]
    assert "@candidate" in row_of_2[5] and "wider" in row_of_2[6]
    assert widget.error is None


def test_aliases_are_set_moved_and_removed_after_confirmation(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    for _ in range(2):
        _register(tracker, logged_run, unique_name)
    widget = ModelsWidget(tracker, unique_name)

    widget.version_select.value = "1"
    widget.alias_input.value = "champion"
    widget.on_set_alias()
    assert widget.pending is not None
    assert tracker.get_version(unique_name, 1)["aliases"] == []
    widget.confirm()
    assert tracker.resolve(f"{unique_name}@champion")["version"] == "1"

    widget.version_select.value = "2"
    widget.on_set_alias()
    assert "moving it from version 1" in widget.pending.message
    widget.confirm()
    assert tracker.resolve(f"{unique_name}@champion")["version"] == "2"
    assert tracker.get_version(unique_name, 1)["aliases"] == []

    widget.on_remove_alias()
    widget.confirm()
    assert tracker.get_version(unique_name, 2)["aliases"] == []
    assert widget.pending is None and widget.error is None
    assert "removed" in widget.status.value


def test_tags_and_description_are_edited_after_confirmation(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    _register(tracker, logged_run, unique_name)
    widget = ModelsWidget(tracker, unique_name)

    widget.tag_key_input.value = "reviewed/by"
    widget.tag_value_input.value = "ana"
    widget.on_add_tag()
    widget.confirm()
    widget.description_input.value = "baseline on digits"
    widget.on_save_description()
    widget.confirm()

    version = tracker.get_version(unique_name, "1")
    assert version["tags"] == {"reviewed/by": "ana"}
    assert version["description"] == "baseline on digits"
    assert "reviewed/by=ana" in widget.table.children[7 + 4].value

    widget.on_remove_tag()
    widget.confirm()
    assert tracker.get_version(unique_name, 1)["tags"] == {}


def test_cancelled_changes_leave_the_store_alone(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    _register(tracker, logged_run, unique_name, description="keep me")
    widget = ModelsWidget(tracker, unique_name)

    widget.description_input.value = "overwritten"
    widget.on_save_description()
    widget.cancel()
    widget.confirm()

    assert tracker.get_version(unique_name, 1)["description"] == "keep me"
    assert widget.error == "nothing to confirm"
    assert widget.confirm_box.layout.display == "none"


@pytest.mark.parametrize(
    ("field", "value", "handler", "message"),
    [
        ("alias_input", "latest", "on_set_alias", "reserved by MLflow"),
        ("alias_input", "v3", "on_set_alias", "reserved by MLflow"),
        ("alias_input", "two words", "on_set_alias", "an alias may only contain"),
        ("alias_input", "nowhere", "on_remove_alias", "has no alias 'nowhere'"),
        ("tag_key_input", "bad@key", "on_add_tag", "a key may only contain"),
        ("tag_key_input", "absent", "on_remove_tag", "has no tag 'absent'"),
    ],
)
def test_refused_changes_are_shown_in_the_widget(
    sqlite_tracking_uri: str,
    digits_model: dict,
    logged_models: dict,
    unique_name: str,
    field: str,
    value: str,
    handler: str,
    message: str,
) -> None:
    tracker = Tracker(sqlite_tracking_uri)
    if sqlite_tracking_uri not in logged_models:
        from .conftest_mlflow import log_trained_run

        logged_models[sqlite_tracking_uri] = log_trained_run(tracker, digits_model["model"])
    _register(tracker, logged_models[sqlite_tracking_uri], unique_name, tags={"k": "v"})
    widget = ModelsWidget(tracker, unique_name)

    getattr(widget, field).value = value
    getattr(widget, handler)()

    assert widget.pending is None
    assert message in widget.error
    assert message in widget.status.value.replace("&#x27;", "'")
    assert tracker.get_version(unique_name, 1)["tags"] == {"k": "v"}
    assert tracker.get_version(unique_name, 1)["aliases"] == []


def test_unknown_model_is_reported_in_the_widget(sqlite_tracking_uri: str) -> None:
    widget = ModelsWidget(Tracker(sqlite_tracking_uri), "no-such-model")

    assert "no registered model named 'no-such-model'" in widget.error


def test_compare_shows_metrics_and_overlaid_curves_with_nonfinite_markers(
    tracker: Tracker,
    logged_run: tuple[str, str, str],
    unique_name: str,
    training_events: dict[str, list[dict]],
) -> None:
    _register(tracker, logged_run, unique_name, training_events["poisoned"])
    _register(tracker, logged_run, unique_name, training_events["clean"])
    widget = ModelsWidget(tracker, unique_name)

    widget.compare_select.value = ("1", "2")
    widget.on_compare()
    widget.curve_select.value = ODD_KEY

    assert widget.error is None
    assert list(widget.comparison.columns) == ["1", "2"]
    assert set(widget.comparison.index) == {ODD_KEY, "train_loss"}
    assert widget.comparison.loc[ODD_KEY, "2"] == pytest.approx(0.9)
    assert ODD_KEY in widget.compare_table.value
    assert len(widget.figure.data) == 2 * MAX_COMPARED
    poisoned_line, poisoned_marks, clean_line, clean_marks = widget.figure.data[:4]
    assert poisoned_line.name == "v1" and clean_line.name == "v2"
    assert list(poisoned_line.x) == list(range(10))
    assert [poisoned_line.y[i] for i in (2, 4, 6)] == [None, None, None]
    assert poisoned_line.y[3] == pytest.approx(0.3)
    assert list(poisoned_marks.x) == [2, 4, 6]
    assert [t.split(" = ")[1] for t in poisoned_marks.hovertext] == [
        "nan at step 2",
        "inf at step 4",
        "-inf at step 6",
    ]
    assert all(abs(y) < 10 for y in poisoned_marks.y)
    assert list(clean_marks.x) == [] and clean_line.y[9] == pytest.approx(0.9)
    assert widget.figure.data[4].visible is False
    history = tracker.metric_history(tracker.get_version(unique_name, 1)["run_id"], ODD_KEY)
    assert math.isnan(history[2][1]) and history[4][1] == math.inf and history[6][1] == -math.inf


def test_compare_needs_two_versions(
    tracker: Tracker, logged_run: tuple[str, str, str], unique_name: str
) -> None:
    _register(tracker, logged_run, unique_name)
    widget = ModelsWidget(tracker, unique_name)

    widget.compare_select.value = ("1",)
    widget.on_compare()

    assert widget.error == "choose two or more versions to compare"
    assert widget.comparison is None
