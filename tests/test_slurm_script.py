"""The SLURM submission script, its options and environment, checked without a cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from training_manager_lab.backends.slurm import (
    SlurmBackend,
    check_options,
    job_environment,
    sbatch_options,
    submission_arguments,
    submission_script,
)
from training_manager_lab.devices.slurm_nodes import SlurmUnavailable
from training_manager_lab.errors import JobSpecError

JOB_ID = "0123456789ab"


def _sbatch_lines(script: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_multi_node_gpu_request_becomes_one_task_per_gpu_on_every_node(tmp_path: Path) -> None:
    request = {
        "devices": 4,
        "accelerator": "gpu",
        "memory": None,
        "cluster_options": {
            "nodes": 2,
            "partition": "gpu",
            "account": "ml-team",
            "time": "04:00:00",
            "cpus_per_task": 8,
            "mem_per_cpu": "4G",
            "gpu_type": "a100",
            "constraint": "ib&a100",
            "sbatch_args": ["--signal=USR1@90", "--mail-type=END"],
        },
    }
    job_dir = tmp_path / "state dir" / "jobs" / JOB_ID

    options = SlurmBackend().options(request)
    script = submission_script(
        JOB_ID, job_dir, sbatch_options(request, options), python="/opt/py 3/bin/python"
    )

    assert _sbatch_lines(script) == [
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-task=8",
        "--gpus-per-node=a100:4",
        "--mem-per-cpu=4G",
        "--partition=gpu",
        "--account=ml-team",
        "--time=04:00:00",
        "--constraint=ib&a100",
        "--no-requeue",
        "--signal=USR1@90",
        "--mail-type=END",
    ]
    last = script.strip().splitlines()[-1]
    assert last == (
        "exec '/opt/py 3/bin/python' -m training_manager_lab.runtime.supervisor "
        f"--job-dir '{job_dir}' --launcher srun"
    )
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_cpu_request_with_total_memory_asks_each_node_for_its_share() -> None:
    request = {"devices": 3, "accelerator": "cpu", "memory": 6 * 2**30, "cluster_options": {}}

    args = sbatch_options(request, {"nodes": 2, "requeue": True, "exclusive": True})

    assert args == [
        "--nodes=2",
        "--ntasks-per-node=3",
        "--cpus-per-task=1",
        "--mem=3072M",
        "--exclusive",
        "--requeue",
    ]


def test_backend_defaults_apply_unless_the_job_overrides_them() -> None:
    backend = SlurmBackend(defaults={"partition": "site", "time": 60, "account": "lab"})

    options = backend.options({"cluster_options": {"time": "00:30:00"}})

    assert options == {"partition": "site", "time": "00:30:00", "account": "lab"}


def test_paths_and_names_go_on_the_command_line(tmp_path: Path) -> None:
    job_dir = tmp_path / "a b"

    args = submission_arguments(JOB_ID, job_dir)

    assert args == [
        f"--job-name=tml-{JOB_ID}",
        f"--output={job_dir}/supervisor.log",
        "--open-mode=append",
        f"--chdir={job_dir}",
        "--export=ALL",
    ]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"partiton": "debug"}, "unknown cluster option(s) ['partiton']"),
        ({"partition": "debug\n#SBATCH --uid=0"}, "cluster option 'partition'"),
        ({"account": "a b"}, "cluster option 'account'"),
        ({"nodes": 0}, "'nodes' must be a whole number"),
        ({"nodes": True}, "'nodes' must be a whole number"),
        ({"time": "tomorrow"}, "cluster option 'time'"),
        ({"time": 0}, "cluster option 'time'"),
        ({"mem": "4GB"}, "cluster option 'mem'"),
        ({"mem": "4G", "mem_per_cpu": 100}, "exclude each other"),
        ({"exclusive": "yes"}, "'exclusive' must be True or False"),
        ({"sbatch_args": "--exclusive"}, "must be a list of long options"),
        ({"sbatch_args": ["--comment=$(reboot)"]}, "no spaces, quotes or shell characters"),
        ({"sbatch_args": ["--comment=a b"]}, "no spaces, quotes or shell characters"),
        ({"sbatch_args": ["-N2"]}, "'--name' or '--name=value'"),
        ({"sbatch_args": ["--output=/etc/passwd"]}, "--output cannot be given"),
        ({"sbatch_args": ["--ntasks=9"]}, "--ntasks cannot be given"),
        ({"sbatch_args": ["--partition=x"]}, "use cluster_options={'partition'"),
        ({"nodelist": "node[1-4];ls"}, "cluster option 'nodelist'"),
    ],
)
def test_malformed_options_are_refused_with_the_accepted_form(options: dict, words: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        check_options(options)

    assert words in str(caught.value)


@pytest.mark.parametrize(
    "time_limit", [90, "90", "30:00", "04:00:00", "2-00", "1-12:30", "1-12:30:15", "UNLIMITED"]
)
def test_slurm_time_formats_are_accepted(time_limit: int | str) -> None:
    check_options({"time": time_limit})

    assert f"--time={time_limit}" in sbatch_options({"devices": 1}, {"time": time_limit})


def test_submission_environment_drops_the_enclosing_job_but_keeps_the_cluster() -> None:
    inside_allocation = {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/site/lib",
        "SLURM_CONF": "/etc/slurm/site.conf",
        "SLURM_JOB_ID": "777",
        "SLURM_JOBID": "777",
        "SLURM_NTASKS": "16",
        "SLURM_NODELIST": "node[01-04]",
        "SLURM_CPUS_ON_NODE": "64",
        "SBATCH_PARTITION": "other",
        "SALLOC_ACCOUNT": "other",
        "SRUN_CPUS_PER_TASK": "4",
        "PMI_RANK": "3",
        "TML_STATE_DIR": "/shared/state",
    }

    env = job_environment(inside_allocation, {})

    assert env["SLURM_CONF"] == "/etc/slurm/site.conf"
    assert env["TML_STATE_DIR"] == "/shared/state"
    assert env["PATH"] == "/usr/bin"
    leaked = sorted(
        k for k in env if k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "PMI_"))
    )
    assert leaked == ["SLURM_CONF"]
    root = str(Path(__file__).resolve().parent.parent)
    assert env["PYTHONPATH"].split(":") == [root, "/site/lib"]


def test_submission_environment_takes_slurm_conf_from_the_backend_when_missing() -> None:
    env = job_environment({"PATH": "/usr/bin"}, {"SLURM_CONF": "/srv/slurm.conf"})

    assert env["SLURM_CONF"] == "/srv/slurm.conf"


def test_missing_slurm_commands_are_a_clear_launch_error(tmp_path: Path) -> None:
    backend = SlurmBackend(path=str(tmp_path))

    with pytest.raises(SlurmUnavailable) as caught:
        backend.validate({"devices": 1, "accelerator": "cpu", "cluster_options": {}})

    message = str(caught.value)
    assert "'sbatch' was not found" in message
    assert "cluster='local'" in message


def test_start_refuses_bad_options_before_writing_anything(tmp_path: Path) -> None:
    record = {
        "id": JOB_ID,
        "request": {"devices": 1, "cluster_options": {"sbatch_args": ["--wrap=rm"]}},
    }

    with pytest.raises(JobSpecError, match="--wrap cannot be given"):
        SlurmBackend(path=str(tmp_path)).start(record, tmp_path, {})

    assert not (tmp_path / "submit.sh").exists()
