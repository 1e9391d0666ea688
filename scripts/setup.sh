#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install the project.
#   scripts/setup.sh            the package, JupyterLab and the sidebar
#   scripts/setup.sh test       the same plus the test tools
# On a machine without an NVIDIA GPU torch is pinned to the CPU build named in
# requirements/ci.txt; set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) to
# fetch it from another index. With a GPU, pip installs the normal CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip)
"${pip[@]}" install --quiet --upgrade pip

if ! command -v nvidia-smi >/dev/null 2>&1; then
  index=()
  [ -n "${TORCH_INDEX_URL:-}" ] && index=(--index-url "$TORCH_INDEX_URL")
  "${pip[@]}" install --quiet "${index[@]}" -r requirements/ci.txt
fi

if ! command -v node >/dev/null 2>&1 && [ ! -f training_manager_lab/labextension/static/style.js ]; then
  echo "Node.js is needed to build the JupyterLab sidebar from source (or install the wheel)." >&2
  exit 1
fi

target="."
[ "$extras" = "test" ] && target=".[test,dev]"
"${pip[@]}" install --quiet -e "$target"
echo "Installed into .venv: $(.venv/bin/python -c 'import training_manager_lab as t; print(t.__version__)')"
