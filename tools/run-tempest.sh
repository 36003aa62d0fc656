#!/usr/bin/env bash
# Tempest's image API tests (tempest 47) against a local Keystone + Glance 33
# with our three plugins and rbd_sparse on a real Ceph (tests/tempest/run.py).
# Usage: tools/run-tempest.sh [--uwsgi] [--workdir DIR] [--keep]
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
exec "$VENV/bin/python" -m tests.tempest.run "$@"
