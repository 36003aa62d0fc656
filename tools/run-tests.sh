#!/usr/bin/env bash
# Runs the three test layers with the project venv. Extra args go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
status=0
for layer in unit flow functional; do
    echo "=== tests/$layer"
    "$VENV/bin/pytest" -q -rs "tests/$layer" "$@"
    rc=$?
    # 5: a layer with no tests yet is not a failure.
    if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; fi
done
exit $status
