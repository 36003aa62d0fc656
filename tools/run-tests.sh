#!/usr/bin/env bash
# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

# Runs the three test layers with the project venv (extra args go to pytest),
# then the docs build and the sample config check.
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
# Tempest's image API tests (Keystone, Glance, Ceph); not when pytest args
# select tests, nor with SKIP_TEMPEST=1.
if [ $# -eq 0 ] && [ -z "${SKIP_TEMPEST:-}" ]; then
    echo "=== tempest"
    tools/run-tempest.sh || status=$?
fi
# A fuzz smoke run (both targets at once, seeds built once into fuzz/work):
# a fixed seed and 5000 executions per target, about the same short path
# every time whatever the load (exploring is `make fuzz`); at most 90 s.
# Not when pytest args select tests, nor with SKIP_FUZZ=1.
if [ $# -eq 0 ] && [ -z "${SKIP_FUZZ:-}" ]; then
    echo "=== fuzz smoke"
    "$VENV/bin/python" -m fuzz.run --time "${FUZZ_SMOKE_TIME:-90}" \
        --seed "${FUZZ_SMOKE_SEED:-20261201}" \
        --runs "${FUZZ_SMOKE_RUNS:-5000}" || status=1
fi
# The docs build with warnings as errors, and the sample config matches
# what genconfig writes (both take seconds).
echo "=== docs"
"$VENV/bin/doc8" -q doc/source README.rst || status=1
"$VENV/bin/sphinx-build" -q -W --keep-going -b html -d doc/build/doctrees \
    doc/source doc/build/html || status=1
echo "=== sample config"
"$VENV/bin/python" tools/check-sample-config.py || status=1
exit $status
