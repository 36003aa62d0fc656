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
"""copy-image from one Ceph cluster to another: upstream ``rbd`` -> ``rbd``
vs ``rbd_sparse`` -> ``rbd_sparse``, through a real Glance 33.

One run: two clusters (central, edge; one mon + one bluestore OSD each, on
sparse files, started by tests.support.ceph_cluster), one Glance with four
stores (``rbd`` and ``rbd_sparse`` on each cluster).  The source is a raw
image (default 4 GiB virtual, 256 MiB of data in islands), imported once
into each central store (not timed).  Timed: ``glance image-import
--import-method copy-image`` to the edge store of the same driver, until
the import finished.  Reported per copy: seconds, bytes read from the
central OSD (its ``op_r_out_bytes`` counter), bytes allocated on the edge
OSD, and the most disk the staging file took (``st_blocks``, sampled).

Glance copies through its staging store: the source store's ``get()``
feeds the filesystem store's ``add()`` into staging, then the target
store's ``add()`` reads the staged file.  With ``--staging-thin`` a second
Glance with ``[os_glance_staging_store] filesystem_thin_provisioning =
True`` repeats both copies: what that option costs and saves.

    .venv/bin/python benchmarks/bench_copy_image.py [--virtual-mib 4096]
        [--data-mib 256] [--repeat 2] [--staging-thin] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks.bench_rbd_store import (  # noqa: E402
    build_source, hash_alone, machine)
from tests.support.ceph_cluster import CephCluster  # noqa: E402
from tests.support.glance_server import (  # noqa: E402
    ADMIN_TOKEN, MEMBER_TOKEN, GlanceServer, parse_table)

MiB = 1024 * 1024
PAIRS = {'upstream rbd -> rbd': ('c_rbd', 'e_rbd'),
         'rbd_sparse -> rbd_sparse': ('c_sparse', 'e_sparse')}


def osd_read_bytes(cluster: CephCluster) -> int:
    return int(cluster.osd_perf()['osd']['op_r_out_bytes'])


class StagingPeak(threading.Thread):
    """Samples the disk the staging folder takes, keeps the maximum."""

    def __init__(self, folder: str) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            used = 0
            try:
                for entry in os.scandir(self.folder):
                    try:
                        used += entry.stat().st_blocks * 512
                    except FileNotFoundError:
                        pass
            except FileNotFoundError:
                pass
            self.peak = max(self.peak, used)
            self._done.wait(0.1)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def read_logged(server: GlanceServer, image_id: str) -> int | None:
    """Bytes our get() says it read from the source cluster, if logged."""
    found = None
    for line in server.log_path.read_text().splitlines():
        if 'read image %s:' % image_id in line:
            m = re.search(r'(\d+) read from the cluster', line)
            if m:
                found = int(m.group(1))
    return found


def log_time(line: str) -> float:
    stamp = ' '.join(line.split()[:2])
    return time.mktime(time.strptime(stamp[:19], '%Y-%m-%d %H:%M:%S')) + \
        float('0' + stamp[19:])


def staging_seconds(server: GlanceServer, image_id: str) -> float | None:
    """Seconds of the last copy into staging of this image (source get()
    feeding the staging store's add()), from Glance's own log lines."""
    start = end = None
    for line in server.log_path.read_text().splitlines():
        if 'Found image, copying it in staging area' in line:
            start = log_time(line)
        elif start and 'Wrote' in line and '/staging/%s' % image_id in line:
            end = log_time(line)
    return end - start if start and end and end > start else None


def run_server(label: str, server: GlanceServer, raw: str,
               central: CephCluster, edge: CephCluster, repeat: int,
               results: dict[str, dict[str, Any]]) -> None:
    server.start()
    try:
        images = {}
        for name, (source, _) in PAIRS.items():
            out = server.glance(
                'image-create-via-import', '--name', name, '--disk-format',
                'raw', '--container-format', 'bare', '--stores', source,
                '--file', raw, token=MEMBER_TOKEN, timeout=1800)
            image_id = parse_table(out.stdout)['id']
            image = server.wait_for_import(image_id, timeout=1800)
            if image['stores'] != source:
                raise RuntimeError('upload to %s failed: %s' % (
                    source, server.last_task_message(image_id)))
            images[name] = image_id
        for _ in range(repeat):
            for name, (_, target) in PAIRS.items():
                image_id = images[name]
                read_before = osd_read_bytes(central)
                _, alloc_before = edge.stored_bytes()
                peak = StagingPeak(str(server.staging_dir))
                peak.start()
                started = time.perf_counter()
                server.glance('image-import', '--import-method',
                              'copy-image', '--stores', target, image_id,
                              token=ADMIN_TOKEN)
                image = server.wait_for_import(image_id, timeout=1800)
                elapsed = time.perf_counter() - started
                staged = peak.stop()
                read = osd_read_bytes(central) - read_before
                _, alloc_after = edge.stored_bytes()
                if target not in image['stores'].split(','):
                    raise RuntimeError('copy to %s failed: %s' % (
                        target, server.last_task_message(image_id)))
                key = '%s, %s' % (name, label)
                r = results.setdefault(key, {'seconds': elapsed})
                r['seconds'] = min(r['seconds'], elapsed)
                into_staging = staging_seconds(server, image_id)
                if r['seconds'] == elapsed:  # the phases of the best run
                    r['into_staging'] = into_staging
                r.update(read=read, allocated=alloc_after - alloc_before,
                         staged=staged,
                         logged_read=read_logged(server, image_id))
                print('  %-50s %7.2f s (into staging %5.1f s)  read %7.1f MiB'
                      '  edge %7.1f MiB  staging %7.1f MiB'
                      % (key, elapsed, into_staging or 0, read / MiB,
                         r['allocated'] / MiB, staged / MiB), flush=True)
                server.glance('stores-delete', '--store', target, image_id)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--virtual-mib', type=int, default=4096)
    parser.add_argument('--data-mib', type=int, default=256)
    parser.add_argument('--repeat', type=int, default=2)
    parser.add_argument('--staging-thin', action='store_true',
                        help='also copy with a thin staging store')
    parser.add_argument('--workdir')
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench-copy-')
    os.makedirs(workdir, exist_ok=True)
    size = args.virtual_mib * MiB
    raw = os.path.join(workdir, 'src.raw')
    data = build_source(raw, size, args.data_mib / args.virtual_mib, seed=2)
    # The edge store's md5 | sha512 over every byte, as rbd_sparse hashes.
    hash_floor = min(hash_alone(raw, True) for _ in range(2))
    print('source: raw, %d MiB virtual, %.1f MiB data; hashing floor '
          '(md5 | sha512, two threads) %.2f s' % (
              args.virtual_mib, data / MiB, hash_floor), flush=True)
    disk = max(12 * 1024 * MiB, 3 * size)
    central = CephCluster(os.path.join(workdir, 'central'), name='central',
                          objectstore='bluestore', bluestore_bytes=disk)
    edge = CephCluster(os.path.join(workdir, 'edge'), name='edge',
                       objectstore='bluestore', bluestore_bytes=disk)
    results: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    try:
        for cluster in (central, edge):
            cluster.start()
            cluster.create_pool('images')
        stores = {'c_rbd': ('rbd', central.store_options('images')),
                  'c_sparse': ('rbd_sparse', central.store_options('images')),
                  'e_rbd': ('rbd', edge.store_options('images')),
                  'e_sparse': ('rbd_sparse', edge.store_options('images'))}
        variants = [('staging thick', None)]
        if args.staging_thin:
            variants.append(('staging thin', {'os_glance_staging_store': {
                'filesystem_thin_provisioning': True}}))
        for label, api_conf in variants:
            server = GlanceServer(
                os.path.join(workdir, 'glance-%s' % label.split()[-1]),
                stores=stores, default_store='c_sparse', api_conf=api_conf)
            run_server(label, server, raw, central, edge, args.repeat,
                       results)
    finally:
        for cluster in (central, edge):
            cluster.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    info = machine()
    print('\nmachine: %(cpu)s, %(cores)s cores, %(ram_gib)s GiB RAM, '
          'Python %(python)s, %(ceph)s' % info)
    print('load average (1 min) before %.1f, after %.1f'
          % (load_before[0], load_after[0]))
    print('%-44s %7s %8s %10s %9s %11s' % (
        'copy-image central -> edge', 'best s', 'staging', 'read MiB',
        'edge MiB', 'staging MiB'))
    for key, r in results.items():
        print('%-44s %7.2f %8.1f %10.1f %9.1f %11.1f' % (
            key, r['seconds'], r.get('into_staging') or 0, r['read'] / MiB,
            r['allocated'] / MiB, r['staged'] / MiB))
    for label in ('staging thick', 'staging thin'):
        up = results.get('upstream rbd -> rbd, %s' % label)
        ours = results.get('rbd_sparse -> rbd_sparse, %s' % label)
        if up and ours:
            print('%s: upstream / rbd_sparse %.2fx; bytes read from the '
                  'source cluster %.1f MiB vs %.1f MiB'
                  % (label, up['seconds'] / ours['seconds'],
                     up['read'] / MiB, ours['read'] / MiB))
            if ours.get('into_staging'):
                # Glance's own pass into staging (the file store's add(),
                # md5 over every byte, fed by our get() that reads only
                # the data) plus hashing the edge copy: no store driver
                # copies faster than that.
                floor = ours['into_staging'] + hash_floor
                print('%s: Glance-bound floor %.2f s (into staging %.2f s '
                      '+ edge hashing floor %.2f s): ceiling for any '
                      'driver %.2fx, rbd_sparse at %.2fx of the floor'
                      % (label, floor, ours['into_staging'], hash_floor,
                         up['seconds'] / floor, ours['seconds'] / floor))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'machine': info, 'size': size, 'data': data,
                       'repeat': args.repeat, 'load': [load_before,
                                                       load_after],
                       'hash_floor': hash_floor,
                       'results': results}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
