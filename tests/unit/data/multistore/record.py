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

"""Re-record the Glance answers the multistore unit tests replay.

Runs a real Glance 33 (tests.support.glance_server) in serial and parallel
store mode, breaks one file store for real (its datadir replaced by a
regular file), and runs ``glance-imgplugins import/copy --record`` so every
image and task answer polled lands in ``<scenario>.jsonl`` here.
Consecutive identical answers are collapsed.  Usage::

    .venv/bin/python tests/unit/data/multistore/record.py [serial]
        [parallel] [conversion]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
sys.path.insert(0, str(REPO))

from tests.support.glance_server import ADMIN_TOKEN, GlanceServer  # noqa: E402

MiB = 1024 * 1024
CLI = str(Path(sys.executable).parent / 'glance-imgplugins')


def make_images(tmp: Path) -> tuple[Path, Path]:
    raw = tmp / 'data.raw'
    with open(raw, 'wb') as f:
        f.write(os.urandom(24 * MiB))
    big = tmp / 'big.raw'
    with open(big, 'wb') as f:
        f.truncate(512 * MiB)
        for offset in range(0, 512 * MiB, 8 * MiB):
            f.seek(offset)
            f.write(os.urandom(2 * MiB))
    qcow2 = tmp / 'big.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(big), str(qcow2)], check=True)
    big.unlink()
    return raw, qcow2


def break_store(glance: GlanceServer, name: str) -> None:
    shutil.rmtree(glance.store_dir(name))
    glance.store_dir(name).write_text('not a directory\n')


def mend_store(glance: GlanceServer, name: str) -> None:
    glance.store_dir(name).unlink()
    glance.store_dir(name).mkdir()


def run(glance: GlanceServer, scenario: str, *args: str) -> str:
    path = HERE / ('%s.jsonl' % scenario)
    raw = Path(tempfile.mktemp(suffix='.jsonl'))
    proc = subprocess.run([CLI, *args, '-f', 'json', '--interval', '0.1',
                           '--record', str(raw)],
                          env=glance.env(ADMIN_TOKEN), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)
    result = json.loads(proc.stdout)
    rows, last = [], None
    for line in raw.read_text().splitlines():
        snap = json.loads(line)
        key = json.dumps([snap['image'], snap['tasks']], sort_keys=True)
        if key != last:
            rows.append(line)
        last = key
    raw.unlink()
    path.write_text('\n'.join(rows) + '\n')
    print('%-34s exit %d, %d snapshots' % (scenario, proc.returncode,
                                           len(rows)))
    return str(result['id'])


def main(groups: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    groups = groups or ['serial', 'parallel', 'conversion']
    tmp = Path(tempfile.mkdtemp(prefix='record-multistore-'))
    raw, qcow2 = make_images(tmp)
    stores = {'fast': ('file', {}), 'bad': ('file', {}),
              'cheap': ('file', {})}
    three = ['--store', 'fast', '--store', 'bad', '--store', 'cheap']
    image = ['--disk-format', 'raw', '--name', 'recorded']
    servers = []
    try:
        if 'serial' in groups:
            serial = GlanceServer(tmp / 'serial', stores=stores,
                                  max_parallel_stores=1)
            servers.append(serial.start())
            break_store(serial, 'bad')
            partial = run(serial, 'serial_allow_failure', 'import',
                          str(raw), *image, *three)
            run(serial, 'serial_must_succeed', 'import', str(raw), *image,
                *three, '--disallow-failure')
            mend_store(serial, 'bad')
            run(serial, 'copy_retry_failed', 'copy', partial,
                '--retry-failed')
        if 'parallel' in groups:
            parallel = GlanceServer(tmp / 'parallel', stores=stores,
                                    max_parallel_stores=3)
            servers.append(parallel.start())
            break_store(parallel, 'bad')
            run(parallel, 'parallel_allow_failure', 'import', str(raw),
                *image, *three)
            run(parallel, 'parallel_must_succeed', 'import', str(raw),
                *image, *three, '--disallow-failure')
        if 'conversion' in groups:
            converting = GlanceServer(
                tmp / 'converting', stores=stores,
                plugins=['format_conversion'],
                import_conf={'format_conversion': {
                    'output_format': 'raw', 'progress_interval': 0}})
            servers.append(converting.start())
            run(converting, 'serial_conversion', 'import', str(qcow2),
                '--disk-format', 'qcow2', '--name', 'converted',
                '--store', 'fast', '--store', 'cheap')
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main(sys.argv[1:])
