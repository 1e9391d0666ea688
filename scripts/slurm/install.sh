#!/usr/bin/env bash
# Install a SLURM controller, node daemon and munge from Debian's packages (idempotent, as root).
set -euo pipefail

if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
  && command -v munged >/dev/null; then
  echo "slurm-wlm and munge are already installed ($(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null || echo unknown version))"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh needs root to run apt-get; run it with sudo" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "installed slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm) and munge"
