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

# Tempest's image API tests (tempest 47) against a local Keystone + Glance 33
# with our three plugins and rbd_sparse on a real Ceph (tests/tempest/run.py).
# Usage: tools/run-tempest.sh [--uwsgi] [--workdir DIR] [--keep]
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
exec "$VENV/bin/python" -m tests.tempest.run "$@"
