#!/usr/bin/env bash
# Set up everything the tests need and run them: the virtual environment, Chromium for the
# browser tests and a one-node SLURM cluster on 127.0.0.1 (both need root and apt-get), then
# run the test suite and, in a fresh environment built from binder/, every notebook.
#   scripts/test.sh                    everything (what CI runs)
#   scripts/test.sh [pytest arguments] only pytest, with those arguments (e.g. tests/test_jobs.py)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
  scripts/slurm/install.sh
  slurm_state="$(mktemp -d /tmp/tml-slurm.XXXXXX)"
  scripts/slurm/start.sh "$slurm_state"
  export SLURM_CONF="$slurm_state/slurm.conf"
  trap 'scripts/slurm/stop.sh "$slurm_state"' EXIT
fi

.venv/bin/python -m pytest "$@"

if [ "$#" -eq 0 ]; then
  # The sidebar's unit tests (Jest), with the node modules the build installed.
  (cd labextension && ../.venv/bin/jlpm install --immutable >/dev/null && ../.venv/bin/jlpm test --silent)
  # The notebooks run in a fresh environment built from binder/ alone, as Binder builds it.
  scripts/notebooks.sh
fi
