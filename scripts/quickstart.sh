#!/usr/bin/env bash
# Set up and open JupyterLab on the quickstart notebook, on 127.0.0.1.
#   scripts/quickstart.sh              JupyterLab in your browser
#   scripts/quickstart.sh --headless   run the notebook without a browser and print its results
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TML_STATE_DIR="${TML_STATE_DIR:-$PWD/.training-manager}"

root_flag=()
[ "$(id -u)" = "0" ] && root_flag=(--allow-root)

if [ "${1:-}" = "--headless" ]; then
  .venv/bin/python -m training_manager_lab.cli run-notebook notebooks/quickstart.ipynb
else
  exec .venv/bin/jupyter lab --ip=127.0.0.1 "${root_flag[@]}" notebooks/quickstart.ipynb
fi
