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

# Sets up everything the project needs on a Debian 12 machine (root, Python 3.11):
#   system packages named in bindep.txt for the given profile, and the venv (.venv)
#   holding this package, its test requirements and Debian's rados/rbd bindings.
# Usage: tools/setup-env.sh [bindep-profile ...]   (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
PY=${PYTHON:-python3}
profiles=("${@:-test}")

# This machine's pip config names local mirrors that may not exist: drop
# pip's per-package warnings about them, keep everything else.
pip() { "$VENV/bin/pip" "$@" 2> >(grep -v 'is ignored: it is neither' >&2); }

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    pip install -q -U pip
fi
pip install -q bindep

missing=$("$VENV/bin/bindep" -b -f bindep.txt "${profiles[@]}" || true)
if [ -n "$missing" ]; then
    echo "setup-env: installing system packages: $missing" | tr '\n' ' '; echo
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

stamp="$VENV/.deps-$(cat requirements.txt test-requirements.txt doc/requirements.txt fuzz/requirements.txt setup.cfg | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
    # fuzz/requirements.txt: atheris, for the fuzz smoke run of make test.
    pip install -q -r requirements.txt -r test-requirements.txt -r doc/requirements.txt \
        -r fuzz/requirements.txt
    pip install -q -e ".[cli]"
    touch "$stamp"
fi

# Ceph's Python bindings exist only as Debian packages built for CPython 3.11:
# link just those two modules into the venv (a .pth on dist-packages would pull
# in every other Debian Python package).
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for mod in rados rbd; do
    so=$(ls /usr/lib/python3/dist-packages/${mod}.cpython-311-*.so 2>/dev/null | head -n1 || true)
    if [ -n "$so" ]; then ln -sf "$so" "$site/"; fi
done
echo "setup-env: ready ($VENV)"
