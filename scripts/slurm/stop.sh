#!/usr/bin/env bash
# Stop the one-node SLURM cluster that scripts/slurm/start.sh started, by its pid files only.
#
# Usage: scripts/slurm/stop.sh [STATE_DIR]      (default: /tmp/tml-slurm)
#
# Add --purge after STATE_DIR to delete the state folder once the daemons have stopped.
set -euo pipefail

STATE_DIR="${1:-/tmp/tml-slurm}"
PURGE="${2:-}"

if [ ! -d "$STATE_DIR" ]; then
  echo "no cluster state in $STATE_DIR; nothing to stop" >&2
  exit 0
fi

stop_daemon() {
  # Send TERM to the process in the pid file, wait up to 10 s, then KILL it.
  local name="$1" pidfile="$STATE_DIR/$1.pid" pid
  if [ ! -s "$pidfile" ]; then
    echo "$name: no pid file, not running" >&2
    return 0
  fi
  pid="$(cat "$pidfile")"
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$name: pid $pid is gone already" >&2
    rm -f "$pidfile"
    return 0
  fi
  # Make sure the pid still belongs to this daemon and not to a process that reused it.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    echo "$name: pid $pid is now another program; leaving it alone" >&2
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: pid $pid ignored TERM for 10 s; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  echo "$name stopped (pid $pid)" >&2
}

# The node daemon first (it ends its job steps), then the controller, then munge.
stop_daemon slurmd
stop_daemon slurmctld
stop_daemon munged

if [ "$PURGE" = "--purge" ]; then
  rm -rf "$STATE_DIR"
  echo "removed $STATE_DIR" >&2
fi
