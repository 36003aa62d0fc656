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

"""Glance's in-tree ``image_conversion`` against our ``format_conversion``.

Same run, same machine, same image: a qcow2 of 4 GiB virtual size holding
256 MiB of (incompressible) data, imported with the real ``glance`` CLI
(``image-create-via-import``, glance-direct) into a real Glance 33 (file
store), output raw, once with each plugin, alternating, ``--repeat`` times.

Measured:

* conversion step: wall time of the plugin's taskflow task, from the
  engine's own RUNNING -> SUCCESS transitions in the Glance log;
* whole import: the import task's pending -> success, from the same log;
* peak staging bytes: allocated bytes (st_blocks) under the staging
  directory, sampled every 20 ms (and the peak apparent size);
* bytes written: ``write_bytes`` and ``wchar`` of the Glance worker process
  from ``/proc/PID/io``; reaped children (qemu-img) are included by the
  kernel.  Glance's store phase (identical for both) dominates these.

Also the conversion task alone, in process (see ``in_process``).

    .venv/bin/python benchmarks/bench_conversion_import.py [--repeat N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.glance_server import (  # noqa: E402
    MEMBER_TOKEN, GlanceServer, parse_table)

MiB = 1 << 20
GiB = 1 << 30
VIRTUAL = 4 * GiB
DATA = 256 * MiB
EXTENT = 4 * MiB

CANDIDATES = {
    # name -> (plugins, import conf, the conversion task's name part)
    'in-tree image_conversion': (
        ['image_conversion'],
        {'image_conversion': {'output_format': 'raw'}}, 'Convert_Image'),
    'ours format_conversion': (
        ['format_conversion'],
        {'format_conversion': {'output_format': 'raw'}},
        'ImgPlugins-FormatConversion'),
}


def build_image(d: Path) -> Path:
    """4 GiB virtual, 256 MiB of random data in 64 extents spread over it."""
    raw = d / 'source.raw'
    rng = random.Random(42)
    with open(raw, 'wb') as f:
        f.truncate(VIRTUAL)
        count = DATA // EXTENT
        stride = VIRTUAL // count
        for i in range(count):
            f.seek(i * stride + (stride - EXTENT) // 2 // 65536 * 65536)
            f.write(rng.randbytes(EXTENT))
    out = d / 'source.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(out)], check=True)
    raw.unlink()
    return out


class StagingSampler(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.peak_allocated = 0
        self.peak_apparent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            allocated = apparent = 0
            try:
                for entry in os.scandir(self.path):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    allocated += st.st_blocks * 512
                    apparent += st.st_size
            except FileNotFoundError:
                pass
            self.peak_allocated = max(self.peak_allocated, allocated)
            self.peak_apparent = max(self.peak_apparent, apparent)
            self.stop.wait(0.02)


def worker_pid(glance: GlanceServer) -> int:
    master = int((glance.workdir / 'gunicorn.pid').read_text())
    children = Path('/proc/%d/task/%d/children' % (master, master))
    return int(children.read_text().split()[0])


def proc_io(pid: int) -> dict[str, int]:
    with open('/proc/%d/io' % pid) as f:
        return {k: int(v) for k, v in (line.split(': ') for line in f)}


_STAMP = r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) '


def _when(line: str) -> datetime.datetime:
    match = re.match(_STAMP, line)
    assert match, line
    return datetime.datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S.%f')


def log_times(glance: GlanceServer, task_id: str,
              step: str) -> tuple[float, float]:
    """(conversion step seconds, whole import task seconds)."""
    lines = glance.log_path.read_text(errors='replace').splitlines()
    start = end = run = done = None
    for line in lines:
        if task_id not in line:
            continue
        if 'status changing from pending to processing' in line:
            start = _when(line)
        elif 'status changing from processing to success' in line:
            end = _when(line)
        elif step in line and "into state 'RUNNING'" in line:
            run = _when(line)
        elif step in line and "into state 'SUCCESS'" in line:
            done = _when(line)
    if None in (start, end, run, done):
        raise RuntimeError('task %s: log lines missing (%s %s %s %s)'
                           % (task_id, start, end, run, done))
    return ((done - run).total_seconds(),  # type: ignore[operator]
            (end - start).total_seconds())  # type: ignore[operator]


def import_once(glance: GlanceServer, source: Path, step: str
                ) -> dict[str, float]:
    pid = worker_pid(glance)
    sampler = StagingSampler(glance.staging_dir)
    io_before = proc_io(pid)
    sampler.start()
    out = glance.glance('image-create-via-import', '--name', 'bench',
                        '--disk-format', 'qcow2', '--container-format',
                        'bare', '--stores', 'fast', '--file', str(source),
                        token=MEMBER_TOKEN, timeout=1800)
    image_id = parse_table(out.stdout)['id']
    image = glance.wait_for_import(image_id, timeout=1800)
    sampler.stop.set()
    sampler.join()
    io_after = proc_io(pid)
    if image['status'] != 'active' or image['disk_format'] != 'raw':
        raise RuntimeError('import failed: %r %s' % (
            image, glance.last_task_message(image_id)))
    task_id = glance.tasks(image_id)[0]['id']
    conversion, whole = log_times(glance, task_id, step)
    stored = glance.stored_files(image_id)['fast']
    result = {
        'conversion_s': conversion,
        'import_s': whole,
        'peak_staging_allocated': sampler.peak_allocated,
        'peak_staging_apparent': sampler.peak_apparent,
        'write_bytes': io_after['write_bytes'] - io_before['write_bytes'],
        'wchar': io_after['wchar'] - io_before['wchar'],
        'stored_size': stored.stat().st_size,
    }
    glance.glance('image-delete', image_id)
    return result


def in_process(source: Path, d: Path, repeat: int
               ) -> dict[str, list[float]]:
    """The conversion task alone, both plugins, in this process.

    Each plugin's task from its own ``get_flow()`` runs ``execute`` on a
    fresh staged copy, with Glance's ImportActionWrapper over the in-memory
    repositories of the flow tests: no HTTP, no database, no store phase,
    so the step's own cost shows with less noise.
    """
    from glance.async_.flows.plugins import image_conversion
    from oslo_config import cfg

    from glance_imgplugins.plugins import format_conversion
    from tests.flow import conftest as flow

    cfg.CONF.set_override('enabled_backends', {'fast': 'file'})
    cfg.CONF.set_override('python_interpreter', sys.executable,
                          group='wsgi')
    staging = d / 'inproc-staging'
    staging.mkdir()
    flows = {'in-tree image_conversion': image_conversion.get_flow,
             'ours format_conversion': format_conversion.get_flow}
    times: dict[str, list[float]] = {n: [] for n in flows}
    for i in range(repeat):
        order = list(flows)
        if i % 2:
            order.reverse()
        for name in order:
            for leftover in staging.iterdir():
                leftover.unlink()
            imp = flow.Import(staging, source, 'qcow2')
            [task] = list(flows[name](**imp.kwargs()))
            os.sync()  # no earlier run's dirty pages in this one's time
            t = time.perf_counter()
            task.execute(file_path='file://%s' % imp.staged)
            times[name].append(time.perf_counter() - t)
            assert imp.image.disk_format == 'raw'
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=3,
                        help='imports through Glance per plugin')
    parser.add_argument('--inproc-repeat', type=int, default=15,
                        help='in-process conversion task runs per plugin')
    parser.add_argument('--workdir', default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir,
                                     prefix='bench-conv-') as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        source = build_image(d)
        print('source: %s, %d bytes virtual, %d bytes file, %d allocated '
              '(built in %.1f s)' % (source.name, VIRTUAL,
                                     source.stat().st_size,
                                     source.stat().st_blocks * 512,
                                     time.perf_counter() - t), flush=True)
        step = in_process(source, d, args.inproc_repeat)
        print('\nconversion task alone, in process, %d runs each:'
              % args.inproc_repeat)
        for name, values in step.items():
            print('  %-26s median %.3f s  min %.3f s  max %.3f s' % (
                name, statistics.median(values), min(values), max(values)))
        print(flush=True)
        servers = {}
        for name, (plugins, conf, _step) in CANDIDATES.items():
            workdir = d / name.split()[0]
            workdir.mkdir()
            servers[name] = GlanceServer(
                workdir, stores={'fast': ('file', {})}, plugins=plugins,
                import_conf=conf).start()
        results: dict[str, list[dict[str, float]]] = {
            n: [] for n in CANDIDATES}
        try:
            for i in range(args.repeat):
                order = list(CANDIDATES)
                if i % 2:
                    order.reverse()
                for name in order:
                    step = CANDIDATES[name][2]
                    r = import_once(servers[name], source, step)
                    results[name].append(r)
                    print('run %d %-26s conversion %6.2f s  import %6.2f s  '
                          'peak staging %4d MiB  written %5d MiB' % (
                              i + 1, name, r['conversion_s'], r['import_s'],
                              r['peak_staging_allocated'] // MiB,
                              r['write_bytes'] // MiB), flush=True)
        finally:
            for server in servers.values():
                server.stop()

    print('\nmedians over %d runs (qcow2 4 GiB virtual, 256 MiB data, '
          'output raw, one file store):' % args.repeat)
    print('%-26s %12s %10s %14s %14s %12s %12s' % (
        'plugin', 'conversion', 'import', 'staging alloc', 'staging size',
        'write_bytes', 'wchar'))
    med: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        med[name] = {k: statistics.median(r[k] for r in runs)
                     for k in runs[0]}
        m = med[name]
        print('%-26s %10.2f s %8.2f s %10d MiB %10d MiB %8d MiB %8d MiB' % (
            name, m['conversion_s'], m['import_s'],
            m['peak_staging_allocated'] // MiB,
            m['peak_staging_apparent'] // MiB, m['write_bytes'] // MiB,
            m['wchar'] // MiB))
    base, ours = (med[n] for n in CANDIDATES)
    print('\nconversion step: ours %.2fx as fast (%.2f s saved); whole '
          'import: %.2f s saved' % (
              base['conversion_s'] / max(ours['conversion_s'], 1e-6),
              base['conversion_s'] - ours['conversion_s'],
              base['import_s'] - ours['import_s']))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
