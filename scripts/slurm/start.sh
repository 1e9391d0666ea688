#!/usr/bin/env bash
# Start a one-node SLURM cluster on the loopback interface (munged, slurmctld, slurmd), as root.
#
# Usage: scripts/slurm/start.sh [STATE_DIR]     (default: /tmp/tml-slurm)
#
# Everything the cluster needs lives in STATE_DIR: slurm.conf, its own munge key and socket,
# spool and state folders, logs and pid files. The daemons bind to 127.0.0.1 only. The last
# line printed is the `export SLURM_CONF=...` that points clients at this cluster.
#
# Optional environment: TML_SLURM_CTLD_PORT (6817), TML_SLURM_NODE_PORT (6818),
# TML_SLURM_CLUSTER (tml), TML_SLURM_PARTITION (debug).
set -euo pipefail

STATE_DIR="${1:-/tmp/tml-slurm}"
CTLD_PORT="${TML_SLURM_CTLD_PORT:-6817}"
NODE_PORT="${TML_SLURM_NODE_PORT:-6818}"
CLUSTER="${TML_SLURM_CLUSTER:-tml}"
PARTITION="${TML_SLURM_PARTITION:-debug}"

if [ "$(id -u)" -ne 0 ]; then
  echo "start.sh runs the SLURM daemons as root; run it with sudo" >&2
  exit 1
fi
for cmd in munged mungekey slurmctld slurmd sinfo; do
  if ! command -v "$cmd" >/dev/null; then
    echo "$cmd not found; run scripts/slurm/install.sh first" >&2
    exit 1
  fi
done

mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
CONF="$STATE_DIR/slurm.conf"
export SLURM_CONF="$CONF"

alive() {
  # True when the pid file names a live process.
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

if alive "$STATE_DIR/munged.pid" && alive "$STATE_DIR/slurmctld.pid" \
  && alive "$STATE_DIR/slurmd.pid"; then
  echo "the cluster in $STATE_DIR is already running" >&2
  echo "export SLURM_CONF=$CONF"
  exit 0
fi

chmod 0700 "$STATE_DIR"
mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool" "$STATE_DIR/munge" "$STATE_DIR/log"
chmod 0700 "$STATE_DIR/munge"

# Munge: a key of our own and a socket in the state folder, so that a munged of the
# machine (if any) is neither used nor disturbed.
KEY="$STATE_DIR/munge/munge.key"
SOCKET="$STATE_DIR/munge/munge.socket"
if [ ! -s "$KEY" ]; then
  mungekey --create --keyfile="$KEY" --force
  chmod 0400 "$KEY"
fi
if ! alive "$STATE_DIR/munged.pid"; then
  munged --key-file="$KEY" --socket="$SOCKET" --pid-file="$STATE_DIR/munged.pid" \
    --log-file="$STATE_DIR/log/munged.log" --seed-file="$STATE_DIR/munge/munged.seed" --force
fi

# The node's size as slurmd sees it, so that the node comes up idle rather than invalid.
HW="$(slurmd -C 2>/dev/null | head -n 1)"
CPUS="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$HW")"
BOARDS="$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$HW")"
SOCKETS="$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$HW")"
CORES="$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$HW")"
THREADS="$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$HW")"
MEMORY="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")"
if [ -z "$CPUS" ] || [ -z "$MEMORY" ]; then
  echo "could not read this machine's size from 'slurmd -C' (got: $HW)" >&2
  exit 1
fi
# Leave some memory to the daemons and the Jupyter server.
MEMORY=$((MEMORY * 9 / 10))
DEF_MEM=$((MEMORY / CPUS))

cat >"$CONF" <<CONF
# One-node cluster for training-manager-lab, written by scripts/slurm/start.sh.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$NODE_PORT
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# Finished jobs stay visible to squeue this long (there is no accounting database).
MinJobAge=600
# Time between SIGTERM and SIGKILL: a job's supervisor records a cancel in that window.
KillWait=15
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEMORY State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if ! alive "$STATE_DIR/slurmctld.pid"; then
  slurmctld -f "$CONF"
fi
if ! alive "$STATE_DIR/slurmd.pid"; then
  slurmd -f "$CONF" -N localhost
fi

# Wait for the node to register and become idle.
for _ in $(seq 1 120); do
  state="$(sinfo --noheader --nodes=localhost --format=%T 2>/dev/null | head -n 1 || true)"
  if [ "$state" = "idle" ]; then
    echo "SLURM cluster '$CLUSTER' is up: node localhost ($CPUS CPUs, ${MEMORY} MB), partition $PARTITION" >&2
    echo "export SLURM_CONF=$CONF"
    exit 0
  fi
  sleep 0.5
done

echo "the node did not become idle within 60 s (last state: '${state:-none}');" \
  "see $STATE_DIR/log/slurmctld.log and $STATE_DIR/log/slurmd.log" >&2
exit 1
