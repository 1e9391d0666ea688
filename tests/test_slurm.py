"""The SLURM backend against a real one-node cluster (scripts/slurm/start.sh), and its parsers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from training_manager_lab.backends.slurm import SlurmBackend, ending_outcome, outcome
from training_manager_lab.devices.slurm_nodes import (
    SlurmCli,
    exit_code,
    job_state,
    node_inventory,
    parse_gres,
    used_gpu_indices,
)
from training_manager_lab.errors import JobSpecError, ResourceUnavailable

SKIP_REASON = "SLURM is not installed/running (.ci/run starts it)"
#: Generous bounds for a loaded 2-core machine; the tests never assert durations.
JOB_TIMEOUT = 240.0


def _cluster_problem() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set"
    if shutil.which("sinfo") is None:
        return "the sinfo command is not installed"
    try:
        result = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if result.returncode != 0:
        return f"sinfo failed: {result.stderr.strip()}"
    if not result.stdout.strip():
        return "sinfo shows no nodes"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The running cluster's SLURM_CONF; skips without one, fails without one in CI."""
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SKIP_REASON}: {problem}; in CI the SLURM tests must run")
        pytest.skip(SKIP_REASON)
    return os.environ["SLURM_CONF"]


@pytest.fixture
def cli(slurm_cluster: str) -> SlurmCli:
    return SlurmCli(cache_seconds=0.0)


@pytest.fixture
def submitted(cli: SlurmCli) -> Iterator[list[str]]:
    """Job ids a test submits itself; whatever is left is cancelled afterwards."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        cli.run("scancel", [job_id], check=False)


@pytest.fixture(scope="module")
def client(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An embedded job manager on a fresh state directory, used by ``tml.launch``."""
    from training_manager_lab.client import EmbeddedClient, set_client

    embedded = EmbeddedClient(str(tmp_path_factory.mktemp("slurm-state")))
    set_client(embedded)
    yield embedded
    for record in embedded.manager.store.active():
        embedded.manager.backends["slurm"].cancel(record)
    embedded.manager.stop()
    set_client(None)


def _wrap(cli: SlurmCli, submitted: list[str], command: str, *options: str) -> str:
    result = cli.run("sbatch", ["--parsable", "--output=/dev/null", *options, "--wrap", command])
    job_id = result.stdout.strip().split(";")[0]
    submitted.append(job_id)
    return job_id


def _wait_for(predicate: Any, what: str, timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what}")


def _sinfo(field: str) -> list[str]:
    result = subprocess.run(
        ["sinfo", "--noheader", "--Node", f"--format={field}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(set(result.stdout.split()))


def _processes_of(job_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(job_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


# -- parsers (no cluster needed) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"job_state": "RUNNING"}, None),
        ({"job_state": "PENDING", "state_reason": "Priority"}, None),
        ({"job_state": ["COMPLETING"]}, None),
        ({"job_state": ["REQUEUED"], "restart_cnt": 1}, None),
        ({"job_state": "COMPLETED", "exit_code": 0}, ("succeeded", None)),
        ({"job_state": ["COMPLETED"]}, ("succeeded", None)),
        (
            {"job_state": "FAILED", "state_reason": "NonZeroExitCode", "exit_code": 768},
            (
                "failed",
                "the SLURM job failed (FAILED, reason NonZeroExitCode, exit code 3); "
                "see supervisor.log in the job folder",
            ),
        ),
        (
            {"job_state": "TIMEOUT", "state_reason": "TimeLimit"},
            (
                "failed",
                "SLURM stopped the job at its time limit (TIMEOUT, reason TimeLimit); "
                "see supervisor.log in the job folder",
            ),
        ),
        (
            {"job_state": ["NODE_FAIL"], "state_reason": "NodeDown"},
            (
                "failed",
                "a node of the job's allocation failed (NODE_FAIL, reason NodeDown); "
                "see supervisor.log in the job folder",
            ),
        ),
        (
            {"job_state": "PREEMPTED"},
            ("failed", "SLURM preempted the job (PREEMPTED); see supervisor.log in the job folder"),
        ),
        (
            {"job_state": "CANCELLED", "state_reason": "None"},
            ("cancelled", "cancelled in SLURM (CANCELLED)"),
        ),
    ],
)
def test_slurm_states_map_onto_job_statuses(job: dict, expected: tuple | None) -> None:
    assert outcome(job) == expected


def test_a_job_cancelled_while_pending_says_so() -> None:
    assert outcome({"job_state": "CANCELLED"}, was_running=False) == (
        "cancelled",
        "cancelled in SLURM before the job started",
    )


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            {"job_state": "COMPLETING", "state_reason": "None"},
            ("cancelled", "cancelled by the user"),
        ),
        (
            {"job_state": "COMPLETING", "state_reason": "TimeLimit"},
            ("failed", "SLURM stopped the job at its time limit (TimeLimit)"),
        ),
        (
            {"job_state": ["NODE_FAIL", "COMPLETING"], "state_reason": "NodeDown"},
            ("failed", "a node of the job's allocation failed (NODE_FAIL, reason NodeDown)"),
        ),
        (
            {"job_state": "PREEMPTED", "state_reason": "None"},
            ("failed", "SLURM preempted the job (PREEMPTED, reason None)"),
        ),
    ],
)
def test_the_reason_for_a_sigterm_tells_a_time_limit_from_a_cancel(
    job: dict, expected: tuple
) -> None:
    assert ending_outcome(job) == expected


def test_state_and_exit_code_read_both_json_generations() -> None:
    old = {"job_state": "FAILED", "exit_code": 9}
    new = {
        "job_state": ["FAILED", "REQUEUED"],
        "exit_code": {
            "status": ["SIGNALED"],
            "return_code": {"set": True, "number": 0},
            "signal": {"id": {"set": True, "number": 9}, "name": "KILL"},
        },
    }

    assert job_state(old) == ("FAILED", [])
    assert job_state(new) == ("FAILED", ["REQUEUED"])
    assert exit_code(old) == (None, 9)
    assert exit_code(new) == (0, 9)
    assert exit_code({"exit_code": 768}) == (3, None)


def test_gpus_and_their_allocation_come_from_gres() -> None:
    assert [g["type"] for g in parse_gres("gpu:a100:2(S:0-1),gpu:t4:1,nic:1")] == [
        "a100",
        "a100",
        "t4",
    ]
    assert [g["index"] for g in parse_gres("gpu:3")] == [0, 1, 2]
    assert parse_gres("(null)") == []
    assert used_gpu_indices("gpu:a100:3(IDX:0,2-3),nic:0") == {0, 2, 3}
    assert used_gpu_indices("gpu:a100:0(IDX:N/A)") == set()


def test_a_gpu_node_is_shaped_like_the_local_inventory() -> None:
    node = {
        "name": "gpu07",
        "cpus": 64,
        "alloc_cpus": 16,
        "idle_cpus": 48,
        "real_memory": 512000,
        "alloc_memory": 128000,
        "free_memory": 400000,
        "cpu_load": 1250,
        "gres": "gpu:a100:4(S:0-1)",
        "gres_used": "gpu:a100:2(IDX:1-2)",
        "state": "mixed",
        "partitions": ["gpu"],
        "reason": "",
    }

    inventory = node_inventory(node, now=1.0)

    assert inventory["node"] == "gpu07"
    assert inventory["cpu"] == {
        "count": 64,
        "logical": 64,
        "percent": 25.0,
        "load": [12.5, None, None],
        "allocated": 16,
        "free": 48,
    }
    assert inventory["memory"]["total"] == 512000 * 2**20
    assert inventory["memory"]["available"] == 384000 * 2**20
    assert [g["allocated"] for g in inventory["gpus"]] == [False, True, True, False]
    assert inventory["gpu_visible"] == [0, 1, 2, 3]
    assert inventory["slurm"]["state"] == "MIXED"
    assert inventory["slurm"]["partitions"] == ["gpu"]


# -- the cluster ----------------------------------------------------------------------------


@pytest.mark.slurm
def test_sinfo_reaches_the_resources_view(cli: SlurmCli, submitted: list[str]) -> None:
    blocker = _wrap(cli, submitted, "sleep 300", "--ntasks=1", "--job-name=resources-probe")
    _wait_for(lambda: cli.jobs().get(blocker, {}).get("job_state") == "RUNNING", "the probe job")

    view = SlurmBackend(cli=cli).resources()

    assert view["error"] is None
    assert sorted(node["node"] for node in view["nodes"]) == _sinfo("%N")
    assert [str(node["cpu"]["count"]) for node in view["nodes"]] == _sinfo("%c")
    assert all(node["cpu"]["allocated"] >= 1 for node in view["nodes"])
    assert any(part["default"] for part in view["partitions"])
    probe = [job for job in view["queue"] if job["job_id"] == blocker]
    assert probe and probe[0]["state"] == "RUNNING" and probe[0]["name"] == "resources-probe"


@pytest.mark.slurm
def test_poll_follows_script_jobs_to_their_end(cli: SlurmCli, submitted: list[str]) -> None:
    backend = SlurmBackend(cli=cli)
    good = _wrap(cli, submitted, "true")
    bad = _wrap(cli, submitted, "exit 3")
    sleeper = _wrap(cli, submitted, "sleep 300")

    def record(slurm_id: str) -> dict[str, Any]:
        return {"id": "0" * 12, "backend_id": slurm_id, "status": "running"}

    assert _wait_for(lambda: backend.poll(record(good)), "the good job") == ("succeeded", None)
    status, reason = _wait_for(lambda: backend.poll(record(bad)), "the failing job")
    assert status == "failed"
    assert "exit code 3" in reason and "NonZeroExitCode" in reason
    _wait_for(lambda: backend.describe(record(sleeper))["state"] == "RUNNING", "the sleeper")
    assert backend.poll(record(sleeper)) is None
    assert backend.describe(record(sleeper))["nodes"] == _sinfo("%N")[:1]

    backend.cancel(record(sleeper))

    status, reason = _wait_for(lambda: backend.poll(record(sleeper)), "the cancelled job")
    assert (status, reason) == ("cancelled", "cancelled in SLURM (CANCELLED)")
    assert backend.poll(record("99999999"))[0] == "failed"
    assert "no longer knows job 99999999" in backend.poll(record("99999999"))[1]


@pytest.mark.slurm
def test_launch_checks_partition_and_size_with_slurms_words(cli: SlurmCli) -> None:
    backend = SlurmBackend(cli=cli)
    cpus = max(int(c) for c in _sinfo("%c"))

    backend.validate({"devices": 1, "accelerator": "cpu", "cluster_options": {}})
    with pytest.raises(ResourceUnavailable) as unknown:
        backend.validate({"devices": 1, "cluster_options": {"partition": "nope"}})
    with pytest.raises(ResourceUnavailable) as too_large:
        backend.validate({"devices": cpus + 1, "accelerator": "cpu", "cluster_options": {}})
    with pytest.raises(ResourceUnavailable) as no_gpus:
        backend.validate({"devices": 1, "accelerator": "gpu", "cluster_options": {}})

    assert "unknown SLURM partition 'nope'" in str(unknown.value)
    assert "invalid partition specified: nope" in str(unknown.value)
    assert f"the largest has {cpus} CPUs" in str(too_large.value)
    assert "Requested node configuration is not available" in str(too_large.value)
    assert "0 GPUs" in str(no_gpus.value)
    assert "SLURM says:" in str(no_gpus.value)


@pytest.mark.slurm
def test_a_submission_from_inside_an_allocation_gets_its_own_world(
    cli: SlurmCli, tmp_path: Path, submitted: list[str]
) -> None:
    # A stand-in for the interpreter records what the batch step sees and runs one step.
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/bash\n"
        'env > "$4/env.txt"\n'
        'srun --output="$4/task-%t.txt" bash -c \'echo "$SLURM_PROCID/$SLURM_NTASKS"\'\n'
    )
    fake_python.chmod(0o755)
    job_dir = tmp_path / "jobs" / "abcdefabcdef"
    job_dir.mkdir(parents=True)
    enclosing = {
        "SLURM_JOB_ID": "424242",
        "SLURM_JOBID": "424242",
        "SLURM_NTASKS": "16",
        "SLURM_NNODES": "4",
        "SLURM_JOB_NODELIST": "node[01-04]",
        "SLURM_CPUS_ON_NODE": "64",
        "SBATCH_PARTITION": "no-such-partition",
    }
    env = {**os.environ, **enclosing}
    record = {
        "id": "abcdefabcdef",
        "request": {"devices": 2, "accelerator": "cpu", "cluster_options": {}},
        "status": "queued",
    }
    backend = SlurmBackend(cli=cli, python=str(fake_python))

    launched = backend.start(record, job_dir, env)
    submitted.append(launched.backend_id)

    record["backend_id"] = launched.backend_id
    assert _wait_for(lambda: backend.poll(record), "the job") == ("succeeded", None)
    seen = dict(
        line.split("=", 1) for line in (job_dir / "env.txt").read_text().splitlines() if "=" in line
    )
    assert seen["SLURM_JOB_ID"] == launched.backend_id
    assert seen["SLURM_NTASKS"] == "2"
    assert seen["SLURM_CONF"] == os.environ["SLURM_CONF"]
    assert "SBATCH_PARTITION" not in seen
    tasks = sorted((job_dir / f"task-{i}.txt").read_text().strip() for i in range(2))
    assert tasks == ["0/2", "1/2"]
    assert "#SBATCH --ntasks-per-node=2" in (job_dir / "submit.sh").read_text()


@pytest.mark.slurm
def test_a_batch_step_told_to_stop_learns_it_was_cancelled(
    cli: SlurmCli, tmp_path: Path, submitted: list[str]
) -> None:
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import signal, sys, time\n"
        "from training_manager_lab.backends.slurm import ending_reason\n"
        "def stop(signum, frame):\n"
        "    open(sys.argv[1], 'w').write(repr(ending_reason()))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "open(sys.argv[1] + '.ready', 'w').close()\n"
        "time.sleep(300)\n"
    )
    answer = tmp_path / "answer.txt"
    root = Path(__file__).resolve().parent.parent
    job_id = _wrap(
        cli,
        submitted,
        f"PYTHONPATH={root} exec {sys.executable} {probe} {answer}",
        f"--chdir={tmp_path}",
    )
    _wait_for(lambda: Path(f"{answer}.ready").exists(), "the probe to start")

    cli.run("scancel", [job_id])

    _wait_for(answer.exists, "the probe's answer", timeout=60)
    assert answer.read_text() == repr(("cancelled", "cancelled by the user"))


@pytest.mark.slurm
def test_two_task_ddp_job_trains_streams_and_registers_its_model(client: Any) -> None:
    import torch
    from sklearn.datasets import load_digits

    import training_manager_lab as tml
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    job = tml.launch(
        DigitsMLP,
        datamodule=DigitsData,
        trainer={"max_epochs": 3},
        devices=2,
        strategy="ddp",
        accelerator="cpu",
        cluster="slurm",
    )
    record = job.wait(timeout=JOB_TIMEOUT).record()

    assert record["status"] == "succeeded", record
    assert record["backend"] == "slurm" and record["backend_id"].isdigit()
    assert record["world_size"] == 2
    assert record["progress"]["fraction"] == 1.0
    assert record["progress"]["epoch"] == 3
    events = job.events()
    progress = [event for event in events if event["type"] == "progress"]
    assert len(progress) >= 3
    assert [event["step"] for event in progress] == sorted(event["step"] for event in progress)
    keys = {event["key"] for event in events if event["type"] == "metric"}
    assert {"train_loss", "val_acc"} <= keys
    assert events[-1] == {**events[-1], "type": "status", "status": "succeeded"}
    folder = client.manager.job_dir(job.id)
    assert (folder / "rank-0.log").exists() and (folder / "rank-1.log").exists()
    assert "MEMBER: 2/2" in job.logs(rank=1)
    backend = client.manager.backends["slurm"]
    _wait_for(lambda: backend.describe(record)["state"] == "COMPLETED", "SLURM's end of job")
    assert backend.describe(record)["tasks"] == 2

    model = tml.load_model(record["model_uri"])
    features, labels = load_digits(return_X_y=True)
    with torch.no_grad():
        predicted = model(torch.tensor(features / 16.0, dtype=torch.float32)).argmax(dim=1)
    assert (predicted.numpy() == labels).mean() > 0.5


@pytest.mark.slurm
def test_cancel_ends_a_running_slurm_job(client: Any) -> None:
    import training_manager_lab as tml
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    job = tml.launch(
        DigitsMLP,
        datamodule=DigitsData,
        trainer={"max_epochs": 10000},
        devices=2,
        strategy="ddp",
        accelerator="cpu",
        cluster="slurm",
    )
    cursor, streamed = 0, []
    while not any(event["type"] == "progress" for event in streamed):
        events, cursor = job.read_events(cursor, wait=JOB_TIMEOUT)
        assert events, "no progress streamed while the job ran"
        streamed.extend(events)
    assert job.status == "running"
    assert "GLOBAL_RANK: 1" in job.logs(rank=1)

    record = job.cancel().wait(timeout=60).record()

    assert record["status"] == "cancelled", record
    backend = client.manager.backends["slurm"]
    _wait_for(lambda: backend.describe(record)["state"] == "CANCELLED", "SLURM's cancel")
    folder = client.manager.job_dir(job.id)
    _wait_for(lambda: not _processes_of(folder), "the ranks to exit", timeout=60)


@pytest.mark.slurm
def test_a_failing_task_fails_the_job_with_its_traceback(client: Any) -> None:
    import training_manager_lab as tml
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    job = tml.launch(
        DigitsMLP(fail_at_step=2, fail_rank=1),
        datamodule=DigitsData,
        trainer={"max_epochs": 5},
        devices=2,
        strategy="ddp",
        accelerator="cpu",
        cluster="slurm",
        name="slurm-failing",
    )
    record = job.wait(timeout=JOB_TIMEOUT).record()

    assert record["status"] == "failed"
    assert record["error"]["rank"] == 1
    assert "deliberate failure at step 2" in record["error"]["message"]
    assert 'raise RuntimeError(f"deliberate failure' in record["error"]["traceback"]
    assert "rank 1 failed" in record["reason"]


@pytest.mark.slurm
def test_a_pending_job_shows_slurms_reason_and_cancels_before_it_starts(
    client: Any, cli: SlurmCli, submitted: list[str]
) -> None:
    import training_manager_lab as tml
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    cpus = max(int(c) for c in _sinfo("%c"))
    blocker = _wrap(cli, submitted, "sleep 300", f"--ntasks={cpus}", "--job-name=blocker")
    _wait_for(lambda: cli.jobs().get(blocker, {}).get("job_state") == "RUNNING", "the blocker")

    job = tml.launch(DigitsMLP, datamodule=DigitsData, accelerator="cpu", cluster="slurm")

    backend = client.manager.backends["slurm"]

    def pending_details() -> dict[str, Any] | None:
        details = backend.describe(job.record())
        return details if details["reason"] in ("Resources", "Priority") else None

    details = _wait_for(pending_details, "SLURM's pending reason", timeout=30)
    assert details["state"] == "PENDING"
    assert job.status == "queued"
    queue = backend.resources()["queue"]
    assert [entry["state"] for entry in queue if entry["tml_job_id"] == job.id] == ["PENDING"]

    record = job.cancel().wait(timeout=60).record()

    assert record["status"] == "cancelled"
    assert record["reason"] == "cancelled in SLURM before the job started"
    assert not (client.manager.job_dir(job.id) / "run.json").exists()


@pytest.mark.slurm
def test_launch_refuses_an_unknown_partition_before_recording_a_job(client: Any) -> None:
    import training_manager_lab as tml
    from training_manager_lab.examples.digits import DigitsData, DigitsMLP

    before = client.manager.list()[1]

    with pytest.raises(JobSpecError) as caught:
        tml.launch(
            DigitsMLP,
            datamodule=DigitsData,
            cluster="slurm",
            cluster_options={"partition": "nope"},
        )

    assert "invalid partition specified: nope" in str(caught.value)
    assert client.manager.list()[1] == before
