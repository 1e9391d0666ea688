"""The environment of a job's processes: clean of any enclosing job, explicit about ranks."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

#: Variables that make Lightning or torch believe they run inside a cluster or an elastic
#: launch. A local job inherits none of them from the server or the kernel.
_INHERITED_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_", "LSB_", "KUBEFLOW_")
_INHERITED_NAMES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "JPY_PARENT_PID",
    "JPY_SESSION_NAME",
)
#: Kept even though they carry a cluster prefix: they say where the cluster is, not which
#: job we are in.
_KEPT = ("SLURM_CONF",)


def clean_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default ``os.environ``) without inherited job variables."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key in _KEPT:
            continue
        if key.startswith(_INHERITED_PREFIXES) or key in _INHERITED_NAMES:
            del env[key]
    return env


def rank_environment(
    base: Mapping[str, str], *, rank: int, world_size: int, master_port: int
) -> dict[str, str]:
    """The environment of one local rank: the variables torch's elastic launcher sets."""
    env = dict(base)
    env.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
            "GROUP_RANK": "0",
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(world_size),
            "NODE_RANK": "0",
        }
    )
    return env


def ranks_from_slurm(env: dict[str, str]) -> None:
    """Inside an ``srun`` task: derive the elastic variables from SLURM's, in place.

    SLURM's own task variables are then removed so that Lightning follows one code path
    (the elastic environment) on a cluster and on one machine alike.
    """
    rank = int(env["SLURM_PROCID"])
    world_size = int(env["SLURM_NTASKS"])
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    local_world = world_size // max(nodes, 1)
    env.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": str(local_world),
            "GROUP_RANK": env.get("SLURM_NODEID", "0"),
            "NODE_RANK": env.get("SLURM_NODEID", "0"),
            "MASTER_ADDR": env["TML_MASTER_ADDR"],
            "MASTER_PORT": env["TML_MASTER_PORT"],
        }
    )
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        env.pop(key, None)


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
