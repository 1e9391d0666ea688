"""The resources widget drawn from the recorded four GPUs, a live sampler, and failing providers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets
import pytest

from training_manager_lab.devices.cgroup import CgroupReader
from training_manager_lab.devices.history import Sampler
from training_manager_lab.devices.inventory import InventoryReader
from training_manager_lab.devices.nvml import RecordedProbe, set_probe
from training_manager_lab.widgets.resources_view import ResourcesView, sparkline

DATA = Path(__file__).parent / "data"
GPU0 = "GPU-5d3c0a7e-01b2-4c3d-9e8f-0a1b2c3d4e50"


@pytest.fixture(autouse=True)
def _restore_probe() -> Iterator[None]:
    yield
    set_probe(None)


def _inventory(recording: str = "four_gpus.json") -> dict[str, Any]:
    set_probe(RecordedProbe(DATA / recording))
    cgroup = CgroupReader(
        DATA / "cgroup" / "v1" / "fs", DATA / "cgroup" / "v1" / "proc_self_cgroup"
    )
    return InventoryReader(cgroup=cgroup).read(env={})


def _buttons(view: ResourcesView) -> dict[str, ipywidgets.Button]:
    found = {}
    for row in view._orphans.children:
        for child in getattr(row, "children", ()):
            if isinstance(child, ipywidgets.Button):
                found[child.description] = child
    return found


def test_view_draws_four_gpus_their_holders_and_the_queue() -> None:
    inventory = _inventory("four_gpus_busy.json")
    node = inventory["node"]
    data = {
        "nodes": [inventory],
        "holders": {
            GPU0: {"job_id": "3f9a1c2b7d10", "name": "digits-mlp"},
            f"{node}:3": [{"kernel_id": "5e1f0c2a", "name": "Untitled.ipynb"}],
        },
        "queue": [
            {"id": "aaaaaaaaaaa2", "name": "second", "position": 2, "reason": "waiting for 2 GPUs"},
            {"id": "aaaaaaaaaaa1", "name": "first", "position": 1, "reason": "waiting for 1 GPU"},
        ],
        "history": {node: {"gpus": {GPU0: {"index": 0, "utilization": [0, 50, 100]}}}},
    }

    view = ResourcesView(lambda: data, autostart=False)
    text = view.html

    assert text.count("NVIDIA A100-SXM4-80GB") == 4
    assert "job 3f9a1c2b7d10 (digits-mlp)" in text
    assert "kernel 5e1f0c2a (Untitled.ipynb)" in text
    assert "1 other process (512.0 MiB)" in text
    assert "1 other process (30.0 GiB)" in text
    assert "2 other processes (1.5 GiB)" not in text
    assert "n/a" in text and "121.7" not in text and "122 W" in text
    assert "▁▅█" in text
    assert text.index("aaaaaaaaaaa1") < text.index("aaaaaaaaaaa2")
    assert "waiting for 2 GPUs" in text
    assert "0.5 cores" in text and "2.0 GiB" in text
    assert not view.following


def test_every_gpu_row_shows_its_numbers() -> None:
    inventory = _inventory()

    view = ResourcesView(lambda: {"nodes": [inventory]}, autostart=False)

    text = view.html
    assert "92 %" in text and "67 °C" in text and "342 W" in text
    assert "1.9 GiB / 80.0 GiB" in text
    assert text.count("free") == 2
    assert "2 other processes (1.5 GiB)" in text
    assert "Queue: empty." in text


def test_names_from_users_are_escaped() -> None:
    inventory = _inventory()
    data = {
        "nodes": [inventory],
        "holders": {0: {"job_id": "3f9a1c2b7d10", "name": "<script>alert(1)</script>"}},
        "queue": [{"id": "x", "name": "<b>bold</b>", "position": 1, "reason": "a & b"}],
    }

    text = ResourcesView(lambda: data, autostart=False).html

    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>bold</b>" not in text and "a &amp; b" in text


def test_node_without_gpus_shows_why() -> None:
    set_probe(RecordedProbe(data={"gpus": [], "error": "NVML library not found: no driver"}))
    inventory = InventoryReader().read(env={})

    text = ResourcesView(lambda: {"nodes": [inventory]}, autostart=False).html

    assert "No GPUs: NVML library not found: no driver" in text
    assert "CPU" in text and "Memory" in text


def test_a_failing_provider_is_shown_and_the_view_recovers() -> None:
    inventory = _inventory()
    answers: list[Any] = [RuntimeError("server unreachable"), {"nodes": [inventory]}]

    def provider() -> dict[str, Any]:
        answer = answers.pop(0) if answers else {"nodes": [inventory]}
        if isinstance(answer, Exception):
            raise answer
        return answer

    view = ResourcesView(provider, autostart=False)
    failed_text = view.html
    recovered = view.refresh()

    assert "could not read resources: server unreachable" in failed_text
    assert recovered is True
    assert "server unreachable" not in view.html
    assert view.html.count("NVIDIA A100-SXM4-80GB") == 4


def test_the_view_refreshes_on_its_own_until_stopped() -> None:
    inventory = _inventory()
    calls = []
    enough = threading.Event()

    def provider() -> dict[str, Any]:
        calls.append(1)
        if len(calls) >= 4:
            enough.set()
        return {"nodes": [inventory], "queue": [{"id": str(len(calls)), "position": 1}]}

    view = ResourcesView(provider, refresh_interval=0.02)
    assert enough.wait(30)
    view.close()
    count = len(calls)

    assert not view.following
    assert count >= 4
    assert len(calls) == count


def test_orphans_are_ended_only_after_confirmation() -> None:
    inventory = _inventory()
    orphan = {"pid": 4190001, "gpu_index": 1, "used_memory": 512 * 1024**2, "node": "n1"}
    orphan.update({"name": "python", "cmdline": "python train.py", "username": "ada"})
    ended: list[int] = []
    data = {"nodes": [inventory], "orphans": [orphan]}

    def end(pid: int) -> str:
        ended.append(pid)
        data["orphans"] = []
        return "terminated"

    view = ResourcesView(lambda: data, end_process=end, autostart=False)
    assert "pid 4190001 (n1): python train.py on GPU 1, 512.0 MiB, user ada" in view.html

    _buttons(view)["End…"].click()
    _buttons(view)["Cancel"].click()
    assert ended == []
    _buttons(view)["End…"].click()
    _buttons(view)["Yes, end 4190001"].click()

    assert ended == [4190001]
    assert "process 4190001: terminated" in view.html
    assert "python train.py" not in view.html


def test_a_refused_end_is_shown_to_the_user() -> None:
    inventory = _inventory()
    data = {"nodes": [inventory], "orphans": [{"pid": 4190001, "gpu_index": 1}]}

    def refuse(pid: int) -> str:
        raise PermissionError("not an orphan any more")

    view = ResourcesView(lambda: data, end_process=refuse, autostart=False)
    _buttons(view)["End…"].click()
    _buttons(view)["Yes, end 4190001"].click()

    assert "process 4190001 was not ended: not an orphan any more" in view.html


def test_view_over_a_live_sampler_of_the_recording() -> None:
    set_probe(RecordedProbe(DATA / "four_gpus.json"))
    sampler = Sampler()
    for _ in range(3):
        sampler.sample()

    def provider() -> dict[str, Any]:
        latest = sampler.latest()
        return {"nodes": [latest], "history": {latest["node"]: sampler.history(600)}}

    text = ResourcesView(provider, autostart=False).html

    assert "▇▇▇" in text
    assert "▁▁▁" in text
    assert json.loads(json.dumps(provider()))["nodes"][0]["gpus"][3]["utilization"] == 92


def test_sparkline_scales_to_the_top_and_leaves_gaps() -> None:
    assert sparkline([0, 50, 100], top=100) == "▁▅█"
    assert sparkline([1, None, 4]) == "▃ █"
    assert sparkline([]) == ""
    assert len(sparkline(list(range(500)))) == 60


def test_holders_under_uuid_and_index_are_merged() -> None:
    inventory = _inventory()
    job = {"job_id": "3f9a1c2b7d10", "name": "digits-mlp"}
    data = {
        "nodes": [inventory],
        "holders": {
            "0": job,
            GPU0: [
                {**job, "pid": 4190005, "used_memory": 1024**3},
                {**job, "pid": 4190006, "used_memory": 1024**3},
                {"kernel_id": "5e1f0c2a", "pid": 4190007, "used_memory": 512 * 1024**2},
            ],
        },
    }

    text = ResourcesView(lambda: data, autostart=False).html

    assert text.count("job 3f9a1c2b7d10") == 1
    assert "job 3f9a1c2b7d10 (digits-mlp), 2.0 GiB" in text
    assert "kernel 5e1f0c2a, 512.0 MiB" in text


def test_kernels_holding_gpu_memory_are_listed() -> None:
    inventory = _inventory()
    kernels = {
        "5e1f0c2a": {"pid": 4190007, "gpu_memory": 3 * 1024**3, "gpus": [1, 2]},
        "77aa0b1c": {"pid": 4190008, "gpu_memory": 0, "gpus": []},
    }

    text = ResourcesView(lambda: {"nodes": [inventory], "kernels": kernels}, autostart=False).html
    listed = ResourcesView(
        lambda: {"nodes": [inventory], "kernels": [{"kernel_id": "k", "pid": 1}]}, autostart=False
    ).html

    assert "kernel 5e1f0c2a: 3.0 GiB on GPU 1, 2" in text
    assert "77aa0b1c" not in text
    assert "Kernels on GPUs" not in listed
