#!/usr/bin/env bash
# Long variants of the reliability suite: the same tests as CI runs, with many more trials.
#
#   scripts/soak.sh                          faults, load and crash consistency
#   scripts/soak.sh tests/test_faults.py -x  only the tests named (any pytest arguments)
#
# Environment (defaults are the long variant; CI's quick run uses the tests' own defaults):
#   TML_TRIALS=50            times each fault (rank, supervisor, server kill, kernel restart,
#                            hung rank) and the server kill during launches are repeated
#   TML_LOAD_SEQUENCE=500    short jobs run one after another through the server
#   TML_LOAD_PARALLEL=20     short jobs run at once through the server
#   TML_FIGURES=<file>       where the measured figures go, one JSON object per line
#                            (default: soak-figures.jsonl in a new temporary folder)
#
# It needs the environment `scripts/setup.sh test` builds (.venv) and takes hours on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

export TML_TRIALS="${TML_TRIALS:-50}"
export TML_LOAD_SEQUENCE="${TML_LOAD_SEQUENCE:-500}"
export TML_LOAD_PARALLEL="${TML_LOAD_PARALLEL:-20}"
export TML_FIGURES="${TML_FIGURES:-$(mktemp -d)/soak-figures.jsonl}"

echo "soak: ${TML_TRIALS} trials per fault, ${TML_LOAD_SEQUENCE} jobs in sequence," \
  "${TML_LOAD_PARALLEL} at once; figures in ${TML_FIGURES}"
if [ "$#" -eq 0 ]; then
  set -- tests/test_faults.py tests/test_load.py tests/test_crash_consistency.py
fi
status=0
.venv/bin/python -m pytest -p no:cacheprovider -o timeout=0 --durations=0 "$@" || status=$?

echo "soak: figures"
cat "${TML_FIGURES}" 2>/dev/null || echo "(none recorded)"
exit "${status}"
