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

"""Store ``add()`` of a sparse raw image: upstream ``rbd`` vs ``rbd_sparse``.

One run, one cluster (one mon + one OSD, bluestore on a sparse file, started
by tests.support.ceph_cluster), one source file: a raw image (default 1 GiB)
with 25% of its bytes in scattered random islands (4 KiB-aligned, sizes
log-uniform from 4 KiB to 16 MiB).  Each store is loaded through
glance_store's multi-store API and given the file the way Glance does
(``store_add_to_backend_with_multihash``, md5 + sha512).  Reported: wall time
(best of --repeat), the bytes the OSD allocated for the image (bluestore
counters, 4 KiB units), and as references the time to only read and hash
the stream (md5 then sha512 on one thread, as upstream does; and the two in
parallel threads).

With ``--glance``, also (b): the whole import of a qcow2 (default 4 GiB
virtual, 256 MiB of data) through a real Glance 33 with our
``image_introspection`` + ``format_conversion`` plugins (converted to raw),
into an ``rbd`` store (thin off, thin on) and an ``rbd_sparse`` store of the
same cluster: wall time from ``glance image-create-via-import`` until the
import finished, and the bytes stored.

    .venv/bin/python benchmarks/bench_rbd_store.py [--size-mib 1024]
        [--density 0.25] [--repeat 3] [--workdir DIR] [--json OUT]
        [--glance [--glance-virtual-mib 4096 --glance-data-mib 256]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from glance_store import location as gs_location  # noqa: E402
from glance_store import multi_backend  # noqa: E402

from glance_imgplugins.stores.rbd_sparse import _HashThread  # noqa: E402
from tests.support.stores import load_multi_stores  # noqa: E402
from tests.support.ceph_cluster import CephCluster  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
READ = 8 * MiB

STORES: dict[str, tuple[str, dict[str, Any]]] = {
    'rbd (thin off)': ('rbd', {}),
    'rbd (thin on)': ('rbd', {'rbd_thin_provisioning': True}),
    'rbd_sparse': ('rbd_sparse', {}),
    'rbd_sparse 4k': ('rbd_sparse', {'rbd_sparse_granularity': 4096}),
}


def build_source(path: str, size: int, density: float, seed: int = 1
                 ) -> int:
    """Write the sparse source; return its non-zero byte count."""
    rng = random.Random(seed)
    data = 0
    with open(path, 'wb') as f:
        f.truncate(size)
        offset = 0
        while True:
            island = int(math.exp(rng.uniform(math.log(4 * KiB),
                                              math.log(16 * MiB))))
            island = max(4 * KiB, island // (4 * KiB) * (4 * KiB))
            gap = int(island * (1 - density) / density
                      * rng.uniform(0.5, 1.5)) // (4 * KiB) * (4 * KiB)
            offset += gap
            if offset + island > size:
                break
            f.seek(offset)
            f.write(rng.randbytes(island))
            data += island
            offset += island
    return data


def hash_alone(path: str, parallel: bool) -> float:
    """Read the file and hash it: one thread (upstream's way), or md5 and
    sha512 each in its own thread (rbd_sparse's way), fed as it is read."""
    started = time.perf_counter()
    md5, sha = hashlib.md5(), hashlib.sha512()
    with open(path, 'rb') as f:
        if not parallel:
            for chunk in iter(lambda: f.read(READ), b''):
                md5.update(chunk)
                sha.update(chunk)
        else:
            threads = [_HashThread(n, [h.update], depth=4)
                       for n, h in (('md5', md5), ('sha512', sha))]
            for t in threads:
                t.start()
            for chunk in iter(lambda: f.read(READ), b''):
                for t in threads:
                    t.feed(chunk)
            for t in threads:
                t.finish()
    return time.perf_counter() - started


def load_stores(workdir: str, cluster: CephCluster) -> dict[str, Any]:
    names = {label: 'b%d' % i for i, label in enumerate(STORES)}
    conf = load_multi_stores(workdir, {
        names[label]: (driver, cluster.store_options('images', **extra))
        for label, (driver, extra) in STORES.items()})
    result = {}
    for label, (driver, _) in STORES.items():
        entry = gs_location.SCHEME_TO_CLS_BACKEND_MAP[driver][names[label]]
        result[label] = (names[label], entry['store'], conf)
    return result


def add_once(store: Any, backend: str, conf: Any, path: str, size: int,
             cluster: CephCluster) -> tuple[float, int, str]:
    image_id = str(uuid.uuid4())
    _, before = cluster.stored_bytes()
    with open(path, 'rb') as f:
        started = time.perf_counter()
        uri, written, md5, _, _ = (
            multi_backend.store_add_to_backend_with_multihash(
                image_id, f, size, 'sha512', store))
        elapsed = time.perf_counter() - started
    assert written == size
    _, after = cluster.stored_bytes()
    loc = gs_location.get_location_from_uri_and_backend(uri, backend,
                                                        conf=conf)
    store.delete(loc)
    return elapsed, after - before, md5


def glance_import(workdir: str, cluster: CephCluster, virtual_mib: int,
                  data_mib: int, repeat: int) -> dict[str, dict[str, float]]:
    """(b): whole imports through a real Glance; label -> best seconds."""
    from tests.support.glance_server import (
        MEMBER_TOKEN, GlanceServer, parse_table)

    raw = os.path.join(workdir, 'glance-src.raw')
    size = virtual_mib * MiB
    data = build_source(raw, size, data_mib / virtual_mib, seed=2)
    qcow2 = os.path.join(workdir, 'glance-src.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    qcow2], check=True)
    os.unlink(raw)
    print('(b) qcow2: %d MiB virtual, %.1f MiB data, %.1f MiB file'
          % (virtual_mib, data / MiB, os.path.getsize(qcow2) / MiB),
          flush=True)
    stores = {'rbd_thin_off': ('rbd', cluster.store_options('images')),
              'rbd_thin_on': ('rbd', cluster.store_options(
                  'images', rbd_thin_provisioning=True)),
              'rbd_sparse': ('rbd_sparse', cluster.store_options('images'))}
    server = GlanceServer(os.path.join(workdir, 'glance'), stores=stores,
                          plugins=['image_introspection',
                                   'format_conversion'])
    results: dict[str, dict[str, float]] = {}
    server.start()
    try:
        for _ in range(repeat):
            for name in stores:
                _, before = cluster.stored_bytes()
                started = time.perf_counter()
                out = server.glance(
                    'image-create-via-import', '--name', name,
                    '--disk-format', 'qcow2', '--container-format', 'bare',
                    '--stores', name, '--file', qcow2, token=MEMBER_TOKEN,
                    timeout=1800)
                image_id = parse_table(out.stdout)['id']
                image = server.wait_for_import(image_id, timeout=1800)
                elapsed = time.perf_counter() - started
                _, after = cluster.stored_bytes()
                if image['status'] != 'active' or image['stores'] != name:
                    raise RuntimeError('import into %s failed: %s' % (
                        name, server.last_task_message(image_id)))
                server.glance('image-delete', image_id, token=MEMBER_TOKEN)
                label = 'import qcow2 -> raw -> %s' % name
                r = results.setdefault(label, {'seconds': elapsed,
                                               'stored': after - before,
                                               'data': data})
                r['seconds'] = min(r['seconds'], elapsed)
                print('  %-40s %7.2f s  %8.1f MiB stored'
                      % (label, elapsed, (after - before) / MiB), flush=True)
    finally:
        server.stop()
    best_upstream = min(results['import qcow2 -> raw -> rbd_thin_off'],
                        results['import qcow2 -> raw -> rbd_thin_on'],
                        key=lambda r: r['seconds'])['seconds']
    sparse = results['import qcow2 -> raw -> rbd_sparse']
    print('(b) upstream best / rbd_sparse: %.2fx; rbd_sparse stored/data '
          '%.3f' % (best_upstream / sparse['seconds'],
                    sparse['stored'] / data))
    return results


def machine() -> dict[str, Any]:
    cpu = ''
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    with open('/proc/meminfo') as f:
        mem_kib = int(f.readline().split()[1])
    ceph = subprocess.run(['ceph', '--version'], capture_output=True,
                          text=True).stdout.strip()
    return {'cpu': cpu, 'cores': os.cpu_count(),
            'ram_gib': round(mem_kib / MiB, 1),
            'kernel': platform.release(), 'python': platform.python_version(),
            'ceph': ceph.split('(')[0].strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--density', type=float, default=0.25)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--workdir')
    parser.add_argument('--json')
    parser.add_argument('--glance', action='store_true',
                        help='also time whole imports through Glance (b)')
    parser.add_argument('--glance-virtual-mib', type=int, default=4096)
    parser.add_argument('--glance-data-mib', type=int, default=256)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench-rbd-')
    os.makedirs(workdir, exist_ok=True)
    size = args.size_mib * MiB
    src = os.path.join(workdir, 'src.raw')
    data = build_source(src, size, args.density)
    hash_alone(src, False)  # warm the page cache
    print('source: %d MiB virtual, %.1f MiB data (%.1f%%) in islands'
          % (args.size_mib, data / MiB, 100 * data / size), flush=True)

    cluster = CephCluster(os.path.join(workdir, 'ceph'), name='bench',
                          objectstore='bluestore',
                          bluestore_bytes=max(8 * 1024 * MiB, 4 * size))
    results: dict[str, dict[str, float]] = {}
    glance_results: dict[str, dict[str, float]] = {}
    try:
        cluster.start()
        cluster.create_pool('images')
        stores = load_stores(workdir, cluster)
        expected_md5 = None
        for _ in range(args.repeat):
            for label, fn in (('hash alone (md5+sha512, one thread)',
                               lambda: hash_alone(src, False)),
                              ('hash alone (md5 | sha512, two threads)',
                               lambda: hash_alone(src, True))):
                t = fn()
                r = results.setdefault(label, {'seconds': t, 'stored': 0})
                r['seconds'] = min(r['seconds'], t)
            for label, (backend, store, conf) in stores.items():
                t, stored, md5 = add_once(store, backend, conf, src, size,
                                          cluster)
                expected_md5 = expected_md5 or md5
                assert md5 == expected_md5, label
                r = results.setdefault(label, {'seconds': t,
                                               'stored': stored})
                r['seconds'] = min(r['seconds'], t)
                print('  %-40s %7.2f s  %8.1f MiB stored'
                      % (label, t, stored / MiB), flush=True)
        if args.glance:
            glance_results = glance_import(
                workdir, cluster, args.glance_virtual_mib,
                args.glance_data_mib, max(1, args.repeat // 2))
    finally:
        cluster.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    report(results, data, size)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'machine': machine(), 'size': size, 'data': data,
                       'repeat': args.repeat, 'results': results,
                       'glance_import': glance_results}, f, indent=2)
    return 0


def report(results: dict[str, dict[str, float]], data: int,
           size: int) -> None:
    info = machine()
    print('\nmachine: %(cpu)s, %(cores)s cores, %(ram_gib)s GiB RAM, '
          'Python %(python)s, %(ceph)s' % info)
    print('%-40s %9s %10s %9s' % ('', 'best s', 'MiB/s', 'stored/data'))
    for label, r in results.items():
        stored = ('%9.3f' % (r['stored'] / data)) if r['stored'] else ''
        print('%-40s %9.2f %10.0f %s' % (label, r['seconds'],
                                         size / MiB / r['seconds'], stored))

    def ratio(a: str, b: str) -> float:
        return results[a]['seconds'] / results[b]['seconds']

    print('\nrbd (thin on) / rbd_sparse:                 %.2fx'
          % ratio('rbd (thin on)', 'rbd_sparse'))
    print('rbd (thin off) / rbd_sparse:                %.2fx'
          % ratio('rbd (thin off)', 'rbd_sparse'))
    print('rbd_sparse / hash alone (one thread):       %.2fx'
          % ratio('rbd_sparse', 'hash alone (md5+sha512, one thread)'))
    print('rbd_sparse / hash alone (two threads):      %.2fx'
          % ratio('rbd_sparse', 'hash alone (md5 | sha512, two threads)'))


if __name__ == '__main__':
    sys.exit(main())
