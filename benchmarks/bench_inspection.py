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

"""Inspection cost: bytes read and time per image, independent of size.

Builds a 1 TiB-virtual qcow2, a vhdx, a streamOptimized vmdk with 64 MiB of
data, a 256 MiB raw disk and a GPT disk, then for each prints what
inspection.inspect_file reads (its own count and the kernel's rchar) and its
median time, next to format_inspector.detect_file_format doing the same job.
Target: <= 1 MiB and <= 50 ms per image.

    .venv/bin/python benchmarks/bench_inspection.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from oslo_utils.imageutils import format_inspector as fi

from glance_imgplugins import inspection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import images  # noqa: E402


def rchar() -> int:
    with open('/proc/self/io') as f:
        return int(dict(line.split(': ') for line in f)['rchar'])


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, int]:
    times = []
    read = 0
    for _ in range(repeat):
        before = rchar()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        read = rchar() - before
    return statistics.median(times), read


def build(d: Path) -> dict[str, Path]:
    files = {}
    big = d / 'tib.qcow2'
    images.qemu_img('create', '-f', 'qcow2', str(big), '1T')
    files['qcow2 1 TiB virtual'] = big
    raw = images.write_seed(d / 'data.raw', size=256 * images.MiB)
    with open(raw, 'r+b') as f:
        for mib in range(0, 256, 4):
            f.seek(mib * images.MiB)
            f.write(os.urandom(images.MiB))
    files['raw 256 MiB'] = raw
    for fmt, opts in (('vhdx', ()), ('vmdk', ('-o',
                                              'subformat=streamOptimized'))):
        out = d / ('data.' + fmt)
        images.qemu_img('convert', '-f', 'raw', '-O', fmt, *opts, str(raw),
                        str(out))
        files['%s (%d MiB file)' % (
            fmt if fmt == 'vhdx' else 'vmdk streamOptimized',
            out.stat().st_size // images.MiB)] = out
    corpus = images.Corpus(d / 'corpus')
    files['raw GPT+ESP'] = corpus.path('raw_gpt_esp')
    files['qcow2 with data-file'] = corpus.path('qcow2_data_file')
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=21)
    args, _ = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = build(Path(tmp))
        print('%-36s %9s %9s %8s | %14s %9s'
              % ('image', 'bytes', 'rchar', 'ms', 'detect_file_fmt',
                 'ms'))
        worst_t, worst_b = 0.0, 0
        for label, path in files.items():
            result = inspection.inspect_file(str(path))
            t, read = measure(lambda p=path: inspection.inspect_file(str(p)),
                              args.repeat)
            ut, uread = measure(lambda p=path: fi.detect_file_format(str(p)),
                                max(3, args.repeat // 5))
            worst_t, worst_b = max(worst_t, t), max(worst_b, read)
            print('%-36s %9d %9d %8.2f | %14d %9.2f   %s%s'
                  % (label, result.bytes_read, read, t * 1000, uread,
                     ut * 1000, result.format,
                     '' if result.safe else ' UNSAFE'))
        print('worst: %d bytes read, %.2f ms  (limits: 1048576 bytes, 50 ms)'
              % (worst_b, worst_t * 1000))
        if worst_b > 1 << 20 or worst_t > 0.05:
            sys.exit(1)


if __name__ == '__main__':
    import logging
    logging.getLogger('oslo_utils.imageutils').setLevel(logging.CRITICAL)
    main()
