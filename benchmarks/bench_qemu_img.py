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

"""Which qemu-img convert flags: wall time and output size per flag set.

Source: a qcow2 with scattered data (default 1 GiB virtual, 256 MiB of data in
1 MiB pieces every 4 MiB, half compressible text, half random), converted to
raw and to qcow2 through glance_imgplugins.qemu_img (prlimit included) with
each flag set; median of --repeat runs, page cache warm.

    .venv/bin/python benchmarks/bench_qemu_img.py [--virtual-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time

from glance_imgplugins import qemu_img

FLAG_SETS = {
    'upstream (no flags)': (),
    '-W': ('-W',),
    '-W -m 16': ('-W', '-m', '16'),
    '-W -m 16 -S 4k (chosen)': ('-W', '-m', '16', '-S', '4k'),
    '+ -t none -T none': ('-W', '-m', '16', '-S', '4k', '-t', 'none',
                          '-T', 'none'),
    '+ -T none': ('-W', '-m', '16', '-S', '4k', '-T', 'none'),
}


def build_source(directory: str, virtual_mib: int) -> str:
    raw = os.path.join(directory, 'src.raw')
    rng = random.Random(1)
    with open(raw, 'wb') as f:
        f.truncate(virtual_mib << 20)
        for mib in range(0, virtual_mib, 4):
            f.seek(mib << 20)
            text = (b'scattered text %08d ' % mib) * (512 * 1024 // 24 + 1)
            f.write(text[:512 * 1024] + rng.randbytes(512 * 1024))
    src = os.path.join(directory, 'src.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    src], check=True)
    os.unlink(raw)
    return src


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--virtual-mib', type=int, default=1024)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--dir', default=None,
                        help='work directory (default: a temp dir in /tmp)')
    # parse_known_args: "python -m benchmarks NAME" leaves NAME in argv.
    args, _ = parser.parse_known_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        src = build_source(d, args.virtual_mib)
        print('source: %s, %d MiB virtual, %.0f MiB file'
              % (src, args.virtual_mib, os.path.getsize(src) / 2**20))
        print('%-26s %-6s %9s %12s' % ('flags', 'to', 'median s',
                                       'allocated MiB'))
        for dst_fmt in ('raw', 'qcow2'):
            for label, flags in FLAG_SETS.items():
                times = []
                alloc = 0
                for _ in range(args.repeat):
                    dst = os.path.join(d, 'dst.' + dst_fmt)
                    cmd = ['convert', '-f', 'qcow2', '-O', dst_fmt, *flags,
                           src, dst]
                    t = time.perf_counter()
                    try:
                        qemu_img._execute(
                            'convert', cmd,
                            qemu_img.Limits(timeout=600, cpu_time=600))
                    except Exception as exc:  # noqa: BLE001
                        print('%-26s %-6s failed: %s' % (label, dst_fmt, exc))
                        break
                    times.append(time.perf_counter() - t)
                    alloc = os.stat(dst).st_blocks * 512
                    os.unlink(dst)
                if times:
                    print('%-26s %-6s %9.3f %12.1f'
                          % (label, dst_fmt, statistics.median(times),
                             alloc / 2**20))


if __name__ == '__main__':
    main()
