"""The walking skeleton end to end: real Lightning jobs in processes of their own, on digits."""

from __future__ import annotations

import hashlib
import linecache
import math
import os
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from mlflow import MlflowClient

import training_manager_lab as tml
from tests import pausing_model
from training_manager_lab.backends.local import job_processes
from training_manager_lab.examples.digits import DigitsData, DigitsMLP, held_out

# A model defined the way a notebook cell defines it: in a module that cannot be imported by
# name, so it can only reach the ranks by value.
NOTEBOOK_CELL = """
import lightning.pytorch as pl
import torch
from torch import nn


class CellMLP(pl.LightningModule):
    def __init__(self, nan_at_step=None):
        super().__init__()
        self.nan_at_step = nan_at_step
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        if self.nan_at_step is not None and self.global_step == self.nan_at_step:
            self.log("weird/metric@0.5", float("nan"))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)
"""


def notebook_module() -> types.ModuleType:
    """Run the cell as IPython does: compiled under a cell name whose lines linecache holds."""
    source = textwrap.dedent(NOTEBOOK_CELL)
    filename = f"<ipython-input-1-{hashlib.sha256(source.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType("__notebook_cell__")
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def wait_until(condition: Any, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.fixture(scope="module")
def ddp_job(client: Any) -> tml.Job:
    """A 2-rank DDP job on digits with a model from a notebook cell, run to the end."""
    cell = notebook_module()
    job = tml.launch(
        cell.CellMLP,
        datamodule=DigitsData,
        trainer={"max_epochs": 4},
        devices=2,
        strategy="ddp",
        name="digits-ddp",
        experiment="digits-tests",
    )
    job.wait(timeout=300)
    return job


def test_ddp_job_trains_in_two_ranks(ddp_job: tml.Job) -> None:
    record = ddp_job.record()

    assert record["status"] == "succeeded", record.get("error")
    assert record["world_size"] == 2
    assert record["allocation"]["cpu_slots"] == 2
    assert "rank 1" in ddp_job.logs(tail=200) or "[rank 1]" in ddp_job.logs(tail=200)
    assert record["last_metrics"]["val_acc"] > 0.8


def test_every_logged_step_appears_once_in_stream_and_mlflow(ddp_job: tml.Job) -> None:
    metrics = ddp_job.metrics()
    client = MlflowClient(ddp_job.record()["tracking_uri"])

    train = metrics[metrics.key == "train_loss"]
    assert len(train) > 20
    assert not train.duplicated(["step"]).any()
    history = client.get_metric_history(ddp_job.run_id, "train_loss")
    assert sorted(m.step for m in history) == sorted(train.step.tolist())
    stream_values = dict(zip(train.step, train.value, strict=True))
    for point in history:
        assert math.isclose(point.value, stream_values[point.step], rel_tol=1e-6)


def test_one_mlflow_run_per_job(ddp_job: tml.Job) -> None:
    client = MlflowClient(ddp_job.record()["tracking_uri"])
    experiment = client.get_experiment_by_name("digits-tests")

    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`tml.job_id` = '{ddp_job.id}'"
    )

    assert [run.info.run_id for run in runs] == [ddp_job.run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["world_size"] == "2"


def test_register_then_load_gives_the_trained_predictions(ddp_job: tml.Job, client: Any) -> None:
    features, labels = held_out()
    checkpoints = sorted((client.manager.job_dir(ddp_job.id) / "checkpoints").glob("*.ckpt"))
    trained = notebook_module().CellMLP.load_from_checkpoint(checkpoints[-1])

    version = ddp_job.register_model("digits-skeleton", tags={"data": "digits"}, alias="candidate")
    loaded = tml.load_model("digits-skeleton@candidate")
    again = tml.load_model(f"digits-skeleton/{version.version}")

    assert version.aliases == ["candidate"]
    assert version.tags["data"] == "digits"
    assert ddp_job.register_model("digits-skeleton").version == version.version
    with torch.no_grad():
        expected = trained.eval()(features)
        assert torch.equal(loaded.eval()(features), expected)
        assert torch.equal(again.eval()(features), expected)
    accuracy = (expected.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(ddp_job.record()["last_metrics"]["val_acc"], abs=0.02)


def test_lineage_leads_to_the_cell_the_data_module_and_the_checkpoint(
    ddp_job: tml.Job, client: Any
) -> None:
    cell = textwrap.dedent(NOTEBOOK_CELL)
    checkpoints = sorted((client.manager.job_dir(ddp_job.id) / "checkpoints").glob("*.ckpt"))

    lineage = ddp_job.register_model("digits-skeleton").lineage()

    assert lineage["job_id"] == ddp_job.id and lineage["run"]["run_id"] == ddp_job.run_id
    assert lineage["code"]["kind"] == "cell" and lineage["code"]["source"] == cell
    assert lineage["code"]["sha256"] == hashlib.sha256(cell.encode()).hexdigest()
    assert lineage["code"]["qualname"] == "__notebook_cell__.CellMLP"
    assert lineage["run"]["tags"]["tml.code_sha256"] == lineage["code"]["sha256"]
    data = lineage["datamodule"]
    assert data["kind"] == "file" and data["path"].endswith(os.path.join("examples", "digits.py"))
    assert data["sha256"] == hashlib.sha256(Path(data["path"]).read_bytes()).hexdigest()
    assert Path(lineage["checkpoint"]).resolve() == checkpoints[-1].resolve()
    assert lineage["job"]["world_size"] == 2
    assert lineage["job"]["spec"]["trainer"] == {"max_epochs": 4}


def test_cancel_stops_every_rank(client: Any) -> None:
    job = tml.launch(
        DigitsMLP,
        datamodule=DigitsData,
        trainer={"max_epochs": 10_000},
        devices=2,
        strategy="ddp",
        name="to-cancel",
    )
    wait_until(lambda: (job.record().get("progress") or {}).get("step", 0) > 5, what="training")
    processes = job_processes(job.record())
    assert len(processes) >= 3  # the supervisor and two ranks
    wait_until(
        lambda: client.resources()["usage"].get(job.id, {}).get("num_procs", 0) >= 3,
        timeout=30,
        what="the job's process tree in the resource samples",
    )
    assert client.resources()["usage"][job.id]["rss"] > 50 * 2**20

    job.cancel()

    assert job.status == "cancelled"
    gone, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []
    assert job_processes(job.record()) == []


def test_a_failing_rank_fails_the_job_with_its_traceback(client: Any) -> None:
    job = tml.launch(
        lambda: DigitsMLP(fail_at_step=5, fail_rank=1),
        datamodule=DigitsData,
        trainer={"max_epochs": 50},
        devices=2,
        strategy="ddp",
        name="fails-at-5",
    )
    job.wait(timeout=300)

    assert job.status == "failed"
    assert job.error["rank"] == 1
    assert "deliberate failure at step 5" in job.error["traceback"]
    assert "rank 1 failed" in job.record()["reason"]
    wait_until(lambda: job_processes(job.record()) == [], timeout=10, what="every process gone")


def test_a_rank_hanging_in_a_collective_is_stopped_after_the_stall_timeout(client: Any) -> None:
    job = tml.launch(
        lambda: DigitsMLP(hang_at_step=3, fail_rank=1),
        datamodule=DigitsData,
        trainer={"max_epochs": 50},
        devices=2,
        strategy="ddp",
        name="hangs-at-3",
        stall_timeout=20,
    )
    job.wait(timeout=300)

    assert job.status == "failed"
    assert "no progress for" in job.record()["reason"]
    assert "stall_timeout=20" in job.error["message"]
    steps = job.metrics().query("key == 'train_loss'").step.tolist()
    assert steps and max(steps) <= 3
    wait_until(lambda: job_processes(job.record()) == [], timeout=10, what="every process gone")


class SlowSetupData(DigitsData):
    """Digits whose set-up takes longer than the stall timeout, as a slow rank joining does."""

    def setup(self, stage: str | None = None) -> None:
        time.sleep(8)
        super().setup(stage)


def test_start_up_after_the_first_events_is_not_a_stall(client: Any) -> None:
    job = tml.launch(
        DigitsMLP,
        datamodule=SlowSetupData,
        trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1},
        name="slow-setup",
        stall_timeout=5,
    )
    job.wait(timeout=300)

    kinds = [event["type"] for event in job.events()]
    assert job.status == "succeeded", job.record()["reason"]
    # Rank 0 wrote its world event before the 8 s set-up: the stall clock had started then.
    assert kinds.index("world") < kinds.index("progress")


def test_nan_and_odd_metric_names_are_kept_and_warned(client: Any) -> None:
    cell = notebook_module()
    job = tml.launch(
        lambda: cell.CellMLP(nan_at_step=3),
        datamodule=DigitsData,
        trainer={"max_epochs": 1},
        name="nan-metric",
    )
    job.wait(timeout=300)

    assert job.status == "succeeded", job.error
    events = job.events()
    weird = [e for e in events if e.get("key") == "weird/metric@0.5"]
    assert weird[0]["step"] == 3
    assert weird[0]["nonfinite"] == "nan"
    assert weird[0]["value"] is None
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("weird/metric@0.5 is nan" in message for message in warnings)
    metrics = job.metrics()
    first = metrics[metrics.key == "weird/metric@0.5"].iloc[0]
    assert first.step == 3
    assert math.isnan(first.value)


def test_widget_figure_grows_while_the_job_runs(
    client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    # The job stops before steps 3 and 6 until the test says go: the figure must show each
    # pause's points while the job still runs, even where the whole job trains between two looks.
    entry = pausing_model.place(tmp_path, 3, 6)
    monkeypatch.chdir(tmp_path)
    job = tml.launch(
        entry,
        datamodule="training_manager_lab.examples.digits:DigitsData",
        trainer={
            "max_epochs": 1,
            "limit_train_batches": 10,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
        },
        name="watched",
    )
    view = job.widget()

    def losses() -> int:
        trace = view.figure.data[view.trace_index["train_loss"]]
        return len(trace.x)

    seen = []
    for gate in (3, 6):
        wait_until(
            lambda gate=gate: "train_loss" in view.trace_index and losses() == gate,
            what=f"the figure showing the {gate} losses before the pause at step {gate}",
        )
        seen.append((losses(), job.status, view.status))
        (tmp_path / f"go-{gate}").touch()
    job.wait(timeout=300)
    wait_until(lambda: view.status == "succeeded", what="widget showing the final status")
    seen.append((losses(), job.status, view.status))
    view.close()

    assert seen == [
        (3, "running", "running"),
        (6, "running", "running"),
        (10, "succeeded", "succeeded"),
    ]
    assert list(view.trace("train_loss").x) == list(range(10))


def test_script_entry_point_runs(client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    script = tmp_path / "train_script.py"
    script.write_text(NOTEBOOK_CELL)
    monkeypatch.chdir(tmp_path)

    job = tml.launch(
        "train_script.py:CellMLP",
        datamodule=None,
        trainer={"max_epochs": 1, "limit_val_batches": 0},
        name="from-script",
    )
    assert job.record()["spec"]["entry"] == {
        "kind": "file",
        "model": "train_script.py:CellMLP",
        "datamodule": None,
    }
    job.wait(timeout=300)

    assert job.status == "failed"
    assert "train_dataloader" in job.error["traceback"]


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (torch.nn.Linear, {}, "does not derive from LightningModule"),
        (torch.nn.Linear(2, 2), {}, "must be a LightningModule subclass"),
        (lambda: torch.nn.Linear(2, 2), {}, "returned Linear, not a LightningModule"),
        (lambda size: DigitsMLP(size), {}, "must take no arguments"),
        (DigitsMLP, {"devices": 0}, "devices must be 1 or more"),
        (DigitsMLP, {"devices": 512}, "this node runs at most"),
        (DigitsMLP, {"strategy": "horovod"}, "unknown strategy 'horovod'"),
        (DigitsMLP, {"accelerator": "tpu9"}, "accelerator must be one of"),
        (DigitsMLP, {"trainer": {"max_epochz": 1}}, "unknown Trainer argument(s) ['max_epochz']"),
        (DigitsMLP, {"trainer": {"devices": 3}}, "is set by the job manager"),
        ("no_such_package.models:Net", {}, "cannot be imported"),
        ("training_manager_lab.examples.digits:Nope", {}, "has no attribute 'Nope'"),
        (DigitsMLP, {"datamodule": DigitsMLP}, "datamodule must be a LightningDataModule"),
        (DigitsMLP, {"name": "../etc"}, "name must be"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    client: Any, model: Any, kwargs: dict[str, Any], message: str
) -> None:
    before = client.manager.store.list(limit=1000)[1]

    with pytest.raises(tml.JobSpecError) as raised:
        tml.launch(model, **kwargs)

    assert message in str(raised.value)
    assert client.manager.store.list(limit=1000)[1] == before


def test_an_unpicklable_model_names_the_culprit(client: Any) -> None:
    model = DigitsMLP()
    model.lock = threading.Lock()

    with pytest.raises(tml.JobSpecError) as raised:
        tml.launch(model)

    assert "the attribute lock of type lock" in str(raised.value)


def test_launch_returns_at_once_with_a_queued_or_running_job(client: Any) -> None:
    job = tml.launch(DigitsMLP, datamodule=DigitsData, trainer={"max_epochs": 1}, name="quick")

    assert job.record(refresh=False)["status"] in ("queued", "running")
    assert len(job.id) == 12
    assert tml.job(job.id).name == "quick"
    assert job.id in [j.id for j in tml.jobs()]
    job.cancel()
    assert job.status == "cancelled"


def test_state_dir_is_where_the_environment_says(client: Any, state_dir: Path) -> None:
    assert Path(client.config()["state_dir"]) == state_dir.resolve()
    assert client.config()["tracking_uri"] == f"sqlite:///{state_dir.resolve()}/mlflow.db" or (
        os.environ.get("MLFLOW_TRACKING_URI")
    )
