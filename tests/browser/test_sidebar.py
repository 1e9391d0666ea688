"""The Training panel in real JupyterLab: jobs move through their states, cancel, aliases."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import LabServer, copy_to_docs, open_panel, screenshot, start_lab

pytestmark = pytest.mark.browser

# A digits MLP that sleeps in each training step, so a browser can watch it move.
ENTRY_MODULE = """
import time

from training_manager_lab.examples.digits import DigitsData, DigitsMLP


class SlowDigits(DigitsMLP):
    def __init__(self, delay: float = 0.2) -> None:
        super().__init__()
        self.delay = delay

    def training_step(self, batch, batch_idx):
        time.sleep(self.delay)
        return super().training_step(batch, batch_idx)


def quick():
    return SlowDigits(0.25)


def endless():
    return SlowDigits(2.0)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab with two CPU job slots and the slow entry module in its root dir."""
    server = start_lab(
        tmp_path_factory.mktemp("lab"), extra_args=["--TrainingManagerApp.cpu_slots=2"]
    )
    (server.root_dir / "slowdigits.py").write_text(ENTRY_MODULE)
    yield server
    for job in server.api("GET", "jobs?limit=100")["jobs"]:
        if job["status"] in ("queued", "running"):
            server.api("POST", f"jobs/{job['id']}/cancel", {})
    server.stop()


def launch(server: LabServer, name: str, factory: str, devices: int, epochs: int = 2) -> str:
    """Launch a job of the slow entry module through the REST API; return its id."""
    spec = {
        "name": name,
        "experiment": "browser",
        "entry": {
            "kind": "file",
            "model": f"slowdigits.py:{factory}",
            "datamodule": "slowdigits.py:DigitsData",
        },
        "trainer": {"max_epochs": epochs, "limit_val_batches": 1},
        "devices": devices,
        "accelerator": "cpu",
    }
    return str(server.api("POST", "jobs", {"spec": spec})["id"])


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_row(panel: Any, job_id: str) -> Any:
    return panel.locator(f'.tml-Job[data-job-id="{job_id}"]')


def progress_of(row: Any) -> float | None:
    value = row.locator(".tml-Bar").get_attribute("aria-valuenow")
    return None if value is None else float(value)


def test_panel_shows_resources_jobs_and_models(page: Any, lab: LabServer) -> None:
    panel = open_panel(page, lab)

    panel.locator(".tml-Node").first.wait_for(timeout=30_000)
    titles = panel.locator(".tml-SectionTitle").all_inner_texts()
    node_text = panel.locator(".tml-Node").first.inner_text()
    screenshot(page, "panel-empty")

    assert [title.split(" (")[0] for title in titles] == ["Resources", "Jobs", "Models"]
    assert "CPU" in node_text and "Memory" in node_text
    assert panel.locator(".tml-Banner[role=alert]").count() == 0


def test_job_goes_from_queued_to_running_to_succeeded(page: Any, lab: LabServer) -> None:
    panel = open_panel(page, lab)
    blocker = launch(lab, "blocker", "endless", devices=2)
    wait_until(lambda: lab.api("GET", f"jobs/{blocker}")["status"] == "running", 90, "blocker")
    quick = launch(lab, "quick", "quick", devices=1)

    row = job_row(panel, quick)
    row.and_(page.locator('[data-status="queued"]')).wait_for(timeout=30_000)
    screenshot(page, "job-queued")
    lab.api("POST", f"jobs/{blocker}/cancel", {})
    row.and_(page.locator('[data-status="running"]')).wait_for(timeout=90_000)
    seen: list[float] = []

    def finished() -> bool:
        value = progress_of(row)
        if value is not None and (not seen or value != seen[-1]):
            seen.append(value)
        return row.get_attribute("data-status") not in ("queued", "running")

    row.get_by_role("button", name=f"Open the logs of job quick ({quick})").click()
    logs = page.locator(f"#tml-logs-{quick} .tml-LogsOutput")
    wait_until(lambda: logs.inner_text().strip(), 60, "rank 0 output in the logs tab")
    row.get_by_role("button", name=f"Open the live chart of job quick ({quick})").click()
    page.locator('.tml-Chart[data-metric="train_loss"] path[d^="M"]').wait_for(timeout=90_000)
    wait_until(lambda: finished() or (seen and seen[-1] >= 50), 180, "the job to pass 50%")
    copy_to_docs(screenshot(page, "job-running-chart"))
    wait_until(finished, 180, "the quick job to end")
    final = row.get_attribute("data-status")
    final_text = row.inner_text()
    page.locator(".lm-TabBar-tab", has_text="Logs quick").click()
    logs_status = page.locator(f"#tml-logs-{quick} .tml-LogsStatus")
    wait_until(lambda: "output complete" in logs_status.inner_text(), 30, "the logs tab to stop")
    screenshot(page, "job-succeeded")

    assert final == "succeeded", lab.api("GET", f"jobs/{quick}")
    assert len(seen) >= 3, f"the progress bar only showed {seen}"
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert "100%" in final_text
    assert "world 1" in final_text


def test_cancel_from_the_panel_stops_every_process(page: Any, lab: LabServer) -> None:
    panel = open_panel(page, lab)
    job_id = launch(lab, "to-cancel", "endless", devices=2)

    def ranks_running() -> list[psutil.Process]:
        record = lab.api("GET", f"jobs/{job_id}")
        if record["status"] != "running" or not (record.get("progress") or {}).get("step"):
            return []
        supervisor = psutil.Process(int(record["backend_id"]))
        return [supervisor, *supervisor.children(recursive=True)]

    processes = wait_until(ranks_running, 120, "the job's ranks to report progress")
    row = job_row(panel, job_id)
    row.and_(page.locator('[data-status="running"]')).wait_for(timeout=30_000)
    row.get_by_role("button", name=f"Cancel job to-cancel ({job_id})").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    screenshot(page, "cancel-confirmation")
    dialog.get_by_role("button", name="Cancel job").click()
    row.and_(page.locator('[data-status="cancelled"]')).wait_for(timeout=60_000)
    screenshot(page, "job-cancelled")

    def all_gone() -> bool:
        return not any(_alive(process) for process in processes)

    assert len(processes) >= 3, "expected a supervisor and two ranks"
    assert wait_until(all_gone, 30, "the job's processes to exit")
    assert lab.api("GET", f"jobs/{job_id}")["status"] == "cancelled"


def test_set_move_alias_and_tag_from_the_panel(page: Any, lab: LabServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracking_uri = lab.api("GET", "config")["tracking_uri"]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model("browser-model")
    for _ in range(2):
        client.create_model_version("browser-model", source=str(tmp_path), run_id=None)
    panel = open_panel(page, lab)
    panel.get_by_role("button", name="Refresh the Training panel").click()
    version2 = panel.locator(
        '.tml-Model[data-model="browser-model"] .tml-Version[data-version="2"]'
    )
    version1 = panel.locator(
        '.tml-Model[data-model="browser-model"] .tml-Version[data-version="1"]'
    )
    version2.wait_for(timeout=30_000)

    _set_alias(page, version2, "browser-model version 2", "champion", "Set alias")
    version2.locator('[data-alias="champion"]').wait_for(timeout=30_000)
    screenshot(page, "alias-set")
    after_set = client.get_model_version_by_alias("browser-model", "champion").version

    _set_alias(page, version1, "browser-model version 1", "champion", "Move alias")
    version1.locator('[data-alias="champion"]').wait_for(timeout=30_000)
    after_move = client.get_model_version_by_alias("browser-model", "champion").version

    version1.get_by_role("button", name="Add a tag to browser-model version 1").click()
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_label("Tag key").fill("stage")
    dialog.get_by_label("Tag value").fill("production")
    dialog.get_by_role("button", name="Add tag").click()
    version1.locator('[data-tag="stage"]').wait_for(timeout=30_000)
    screenshot(page, "alias-moved-tag-added")
    tags = client.get_model_version("browser-model", "1").tags

    assert str(after_set) == "2"
    assert str(after_move) == "1"
    assert version2.locator('[data-alias="champion"]').count() == 0
    assert tags.get("stage") == "production"


def _set_alias(page: Any, version: Any, label: str, alias: str, confirm: str) -> None:
    version.get_by_role("button", name=f"Set or move an alias to {label}").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input").fill(alias)
    dialog.get_by_role("button", name="Next").click()
    confirmation = page.locator(".jp-Dialog", has_text=confirm.split()[0] + " alias")
    confirmation.get_by_role("button", name=confirm).click()
    page.locator(".jp-Dialog").wait_for(state="detached", timeout=10_000)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_filter_by_status_and_copy_the_reattach_line_by_keyboard(page: Any, lab: LabServer) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    job_id = launch(lab, "filtered", "endless", devices=1)
    lab.api("POST", f"jobs/{job_id}/cancel", {})
    panel = open_panel(page, lab)
    row = job_row(panel, job_id)
    row.and_(page.locator('[data-status="cancelled"]')).wait_for(timeout=60_000)

    panel.get_by_label("Show jobs with status").select_option("cancelled")
    row.wait_for(timeout=30_000)
    cancelled_statuses = panel.locator(".tml-Job").evaluate_all(
        "rows => rows.map(row => row.dataset.status)"
    )
    panel.get_by_label("Show jobs with status").select_option("succeeded")
    row.wait_for(state="detached", timeout=30_000)
    panel.get_by_label("Show jobs with status").select_option("")
    row.wait_for(timeout=30_000)
    row.get_by_role(
        "button", name=f"Copy the line that re-attaches to job filtered ({job_id})"
    ).focus()
    page.keyboard.press("Enter")
    page.locator(".Toastify__toast", has_text="Copied").wait_for(timeout=10_000)
    clipboard = page.evaluate("navigator.clipboard.readText()")

    assert cancelled_statuses and set(cancelled_statuses) == {"cancelled"}
    assert clipboard == f'tml.job("{job_id}")'
