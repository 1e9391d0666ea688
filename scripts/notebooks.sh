#!/usr/bin/env bash
# Execute every notebook in notebooks/ with nbval, in a fresh virtual environment installed
# from exactly the files in binder/ (what Binder installs) plus the test runner.
#   scripts/notebooks.sh [pytest arguments]
# Cells marked NBVAL_CHECK_OUTPUT must print what the notebook stores for them; every other
# cell must run without an error. Jobs use a temporary state directory, removed at the end.
# Set PYTHON to choose the interpreter (default: python3); pip's cache makes reruns fast.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tml-notebooks.XXXXXX")"
venv="$work/venv"
export TML_STATE_DIR="$work/state"
unset MLFLOW_TRACKING_URI TML_SERVER_URL TML_SERVER_TOKEN

cleanup() {
  # Jobs outlive their kernel: stop whatever a failed notebook left queued or running.
  if [ -x "$venv/bin/python" ] && [ -d "$TML_STATE_DIR" ]; then
    "$venv/bin/python" - <<'PY' || true
import training_manager_lab as tml

for job in tml.jobs():
    if job.status in ("queued", "running"):
        job.cancel()
        print(f"cancelled job {job.id} ({job.name}), left {job.status} by a notebook")
PY
  fi
  rm -rf "$work"
}
trap cleanup EXIT

started=$SECONDS
"$python" -m venv "$venv"
# --no-compile: byte-compiling all of torch and MLflow up front costs more than compiling,
# on first import, the modules the notebooks use.
pip=("$venv/bin/python" -m pip install --quiet --no-compile)
"${pip[@]}" -r binder/requirements.txt
"${pip[@]}" "nbval>=0.11" "pytest>=8" "pytest-timeout>=2.3"
echo "notebooks.sh: environment from binder/ ready in $((SECONDS - started)) s"

"$venv/bin/python" -m pytest -p no:cacheprovider \
  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --timeout=900 \
  --nbval-sanitize-with notebooks/nbval-sanitize.cfg \
  notebooks/ "$@"
echo "notebooks.sh: done in $((SECONDS - started)) s"
