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
"""Where a whole import's time goes: ours vs upstream, profiled with py-spy.

The issue's image (a qcow2, default 4 GiB virtual holding 256 MiB of data)
is imported through a real Glance 33 into RBD on a real Ceph (one bluestore
OSD), converted to raw:

* upstream: Glance's ``image_conversion`` (output raw) + ``rbd`` with
  ``rbd_thin_provisioning = True``;
* ours: ``image_introspection`` + ``format_conversion`` + ``rbd_sparse``.

Each import is done in its three API steps (create, ``image-stage``,
``image-import``) so the wall clock splits into phases: upload to staging,
import plugins (until the image reads ``disk_format = raw``; polled every
0.1 s) and store write (until the import finished).  py-spy samples every
thread of the Glance worker meanwhile (``--nonblocking``, 100 Hz); each
sample is put in an activity by the source line it was on (hash updates,
format inspection, RBD writes, zero tests, staged-file reads, waits for
qemu-img, the rest).  The hashing floor (md5 and sha512 of the image's full
size, each on its own thread) is measured in the same run.

Writes a PNG (``--png``, default doc/source/images/import-profile.png) with
two stacked bars per import: wall-clock phases and sampled thread time.

    .venv/bin/python benchmarks/bench_import_profile.py [--virtual-mib 4096]
        [--data-mib 256] [--png FILE] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks.bench_rbd_store import (  # noqa: E402
    build_source, hash_alone, machine)
from tests.support.ceph_cluster import CephCluster  # noqa: E402
from tests.support.glance_server import (  # noqa: E402
    MEMBER_TOKEN, GlanceServer, parse_table)

MiB = 1024 * 1024
RATE = 100
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

SETUPS: dict[str, dict[str, Any]] = {
    'upstream': {'driver': 'rbd', 'extra': {'rbd_thin_provisioning': True},
                 'plugins': ['image_conversion'],
                 'import_conf': {'image_conversion': {
                     'output_format': 'raw'}}},
    'ours': {'driver': 'rbd_sparse', 'extra': {},
             'plugins': ['image_introspection', 'format_conversion'],
             'import_conf': None},
}

# (activity, test on the whole stack, on the sampled frame, on the sampled
# line's source); the first match wins.
ACTIVITIES: list[tuple[str, str | None, str | None, str | None]] = [
    ('hashing (md5, sha512)', None, None, r'\bupdate\(|hexdigest'),
    ('format inspection (Glance)', None, r'format_inspector\.py', None),
    ('upload into staging', r'(stage|upload) \([^)]*image_data\.py', None,
     None),
    ('RBD writes', None, None, r'aio_write|image\.write|wait_for_complete'),
    ('zero detection', None, None, r'any\(|startswith|\.count\('),
    ('reading the staged file', None, None, r'\.read\(|_read_full'),
    ('conversion (waiting for qemu-img)',
     r'qemu_img|image_conversion|processutils|communicate', None, None),
]
OTHER = 'other (Glance, taskflow, database)'
# py-spy --nonblocking cannot always tell a blocked thread from a running
# one: samples whose leaf is a wait are counted apart and not drawn.
WAITING = 'waiting (idle threads)'
WAIT_LEAF = (r'^(select|wait|get|_worker|wait_for_signals|sleep|accept|'
             r'_wait_for_tstate_lock|notify|recv_into|readinto) \(')


def glance_master(server: GlanceServer) -> int:
    """The server's gunicorn master (py-spy follows it into its workers)."""
    with open(server.workdir / 'gunicorn.pid') as f:
        return int(f.read().strip())


def classify(stack: str) -> str:
    frames = stack.split(';')
    leaf = frames[-1]
    m = re.match(r'.* \((.+):(\d+)\)$', leaf)
    line = linecache.getline(m.group(1), int(m.group(2))) if m else ''
    if re.search(WAIT_LEAF, leaf) and not re.search(
            r'qemu_img|processutils|communicate', stack):
        return WAITING
    for name, stack_re, leaf_re, line_re in ACTIVITIES:
        if ((stack_re and re.search(stack_re, stack))
                or (leaf_re and re.search(leaf_re, leaf))
                or (line_re and re.search(line_re, line))):
            return name
    return OTHER


def read_profile(path: str) -> dict[str, float]:
    """Thread-seconds per activity from py-spy's raw (collapsed) output."""
    seconds: dict[str, float] = collections.defaultdict(float)
    with open(path) as f:
        for row in f:
            stack, _, count = row.rstrip('\n').rpartition(' ')
            if stack:
                seconds[classify(stack)] += int(count) / RATE
    return dict(seconds)


def import_once(name: str, server: GlanceServer, qcow2: str,
                cluster: CephCluster, workdir: str) -> dict[str, Any]:
    out = server.glance('image-create', '--name', name, '--disk-format',
                        'qcow2', '--container-format', 'bare',
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    master = glance_master(server)
    profile = os.path.join(workdir, '%s.pyspy' % name)
    spy = subprocess.Popen(
        [os.path.join(BIN, 'py-spy'), 'record', '--pid', str(master),
         '--subprocesses', '--nonblocking', '--rate', str(RATE),
         '--format', 'raw', '--output', profile],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attaches
    _, before = cluster.stored_bytes()
    t0 = time.perf_counter()
    server.glance('image-stage', '--file', qcow2, image_id,
                  token=MEMBER_TOKEN, timeout=1800)
    t1 = time.perf_counter()
    server.glance('image-import', '--import-method', 'glance-direct',
                  image_id, token=MEMBER_TOKEN)
    t2 = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        image = server.image(image_id)
        if t2 is None and image.get('disk_format') == 'raw':
            t2 = time.perf_counter()
        if image['status'] in ('active', 'queued') and not image.get(
                'os_glance_importing_to_stores'):
            tasks = server.tasks(image_id)
            if tasks and tasks[0]['status'] in ('success', 'failure'):
                break
        time.sleep(0.1)
    t3 = time.perf_counter()
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    _, after = cluster.stored_bytes()
    if image['status'] != 'active':
        raise RuntimeError('import %s failed: %s'
                           % (name, server.last_task_message(image_id)))
    server.glance('image-delete', image_id, token=MEMBER_TOKEN)
    t2 = t2 or t3
    return {'phases': {'upload into staging': t1 - t0,
                       'import plugins (inspection, conversion)': t2 - t1,
                       'store write (hashing, writes)': t3 - t2},
            'total': t3 - t0, 'import': t3 - t1,
            'stored': after - before,
            'activities': read_profile(profile)
            if os.path.exists(profile) else {}}


def draw(results: dict[str, dict[str, Any]], floor: float, path: str,
         title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    names = list(results)
    for ax, key, heading in (
            (axes[0], 'phases', 'Wall clock by phase (s)'),
            (axes[1], 'activities', 'Sampled thread time by activity (s)')):
        labels: list[str] = []
        for n in names:
            for label in results[n][key]:
                if label not in labels and label != WAITING:
                    labels.append(label)
        bottoms = [0.0] * len(names)
        cmap = plt.get_cmap('tab10')
        for i, label in enumerate(labels):
            values = [results[n][key].get(label, 0.0) for n in names]
            ax.bar(names, values, bottom=bottoms, label=label,
                   color=cmap(i % 10))
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        if key == 'phases':
            ax.axhline(floor, color='black', linestyle='--', linewidth=1)
            ax.text(-0.45, floor, ' hashing floor %.1f s' % floor,
                    va='bottom', fontsize=8)
        ax.set_title(heading, fontsize=10)
        ax.legend(fontsize=7, loc='upper right')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def redraw(path: str, png: str) -> int:
    with open(path) as f:
        saved = json.load(f)
    results = saved['results']
    for name, r in results.items():
        profile = os.path.join(saved.get('workdir', ''), '%s.pyspy' % name)
        if os.path.exists(profile):
            r['activities'] = read_profile(profile)
    draw(results, saved['floor'], png, saved['title'])
    print('picture: %s' % os.path.relpath(png))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--virtual-mib', type=int, default=4096)
    parser.add_argument('--data-mib', type=int, default=256)
    parser.add_argument('--png', default=os.path.join(
        HERE, '..', 'doc', 'source', 'images', 'import-profile.png'))
    parser.add_argument('--workdir')
    parser.add_argument('--json')
    parser.add_argument('--redraw', metavar='JSON',
                        help='draw again from a --json of an earlier run, '
                             're-reading its py-spy files when its '
                             '--workdir was kept')
    args = parser.parse_args(argv)
    if args.redraw:
        return redraw(args.redraw, args.png)
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench-profile-')
    os.makedirs(workdir, exist_ok=True)
    size = args.virtual_mib * MiB
    raw = os.path.join(workdir, 'src.raw')
    data = build_source(raw, size, args.data_mib / args.virtual_mib, seed=2)
    qcow2 = os.path.join(workdir, 'src.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    qcow2], check=True)
    floor = min(hash_alone(raw, True) for _ in range(2))  # warm cache
    os.unlink(raw)
    print('qcow2: %d MiB virtual, %.1f MiB data; hashing floor (md5 | '
          'sha512, two threads) %.2f s' % (args.virtual_mib, data / MiB,
                                          floor), flush=True)
    cluster = CephCluster(os.path.join(workdir, 'ceph'), name='profile',
                          objectstore='bluestore',
                          bluestore_bytes=max(12 * 1024 * MiB, 3 * size))
    results: dict[str, dict[str, Any]] = {}
    load = [os.getloadavg()[0]]
    try:
        cluster.start()
        cluster.create_pool('images')
        for name, setup in SETUPS.items():
            server = GlanceServer(
                os.path.join(workdir, 'glance-' + name),
                stores={'ceph': (setup['driver'], cluster.store_options(
                    'images', **setup['extra']))},
                plugins=setup['plugins'], import_conf=setup['import_conf'],
                check_config=False)
            server.start()
            try:
                results[name] = import_once(name, server, qcow2, cluster,
                                            workdir)
            finally:
                server.stop()
            load.append(os.getloadavg()[0])
            r = results[name]
            print('%-9s total %6.2f s (import %6.2f s), stored %7.1f MiB'
                  % (name, r['total'], r['import'], r['stored'] / MiB),
                  flush=True)
            for label, secs in r['phases'].items():
                print('    phase    %-45s %6.2f s' % (label, secs))
            for label, secs in sorted(r['activities'].items(),
                                      key=lambda kv: -kv[1]):
                print('    sampled  %-45s %6.2f s' % (label, secs))
    finally:
        cluster.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    up, ours = results['upstream'], results['ours']
    print('\nupstream / ours (whole, upload included): %.2fx'
          % (up['total'] / ours['total']))
    print('ours / hashing floor: %.2fx (import phase only: %.2fx)'
          % (ours['total'] / floor, ours['import'] / floor))
    print('load average (1 min) at start and after each import: %s'
          % ', '.join('%.1f' % v for v in load))
    title = ('%d MiB-virtual qcow2 with %d MiB data -> raw -> RBD; '
             'upstream %.1f s, ours %.1f s, hashing floor %.1f s'
             % (args.virtual_mib, data // MiB, up['total'], ours['total'],
                floor))
    draw(results, floor, args.png, title)
    print('picture: %s' % os.path.relpath(args.png))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'machine': machine(), 'floor': floor, 'load': load,
                       'title': title, 'workdir': args.workdir or '',
                       'results': results}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
