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

"""Real archives made with the standard tools (gzip, xz, bzip2, zstd, zip,
GNU tar) around real images, benign and hostile, for the decompression
tests of every layer.

Bombs are built cheaply from what the formats allow: gzip, xz and bzip2
files may hold several streams one after the other, so one compressed GiB
written N times is a valid file decompressing to N GiB.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

GiB = 1 << 30
MiB = 1 << 20

#: tool -> (command compressing stdin to stdout, file suffix)
COMPRESSORS = {
    'gzip': (['gzip', '-c', '-n'], 'gz'),
    'xz': (['xz', '-c', '-T1'], 'xz'),
    'bzip2': (['bzip2', '-c'], 'bz2'),
    'zstd': (['zstd', '-c', '-q'], 'zst'),
}


def run(*args: str, cwd: str | os.PathLike[str] | None = None) -> None:
    subprocess.run(args, check=True, capture_output=True, cwd=cwd)


def compress(src: pathlib.Path, tool: str, out: pathlib.Path | None = None,
             *options: str) -> pathlib.Path:
    """``tool -c [options] < src > out`` (default out: src.<suffix>)."""
    command, suffix = COMPRESSORS[tool]
    out = out or src.with_name('%s.%s' % (src.name, suffix))
    with open(src, 'rb') as fin, open(out, 'wb') as fout:
        subprocess.run(command + list(options), stdin=fin, stdout=fout,
                       check=True)
    return out


def tar(out: pathlib.Path, folder: pathlib.Path, *members: str,
        options: tuple[str, ...] = ()) -> pathlib.Path:
    """GNU tar of ``members`` (names inside ``folder``); ``options`` such as
    ``-J`` (xz), ``-z``, ``--zstd``, ``-S`` (sparse)."""
    run('tar', '-c', *options, '-f', str(out), '-C', str(folder), *members)
    return out


def zip_(out: pathlib.Path, folder: pathlib.Path, *members: str,
         options: tuple[str, ...] = ()) -> pathlib.Path:
    """Info-ZIP ``zip`` of ``members`` (names inside ``folder``)."""
    if out.exists():
        out.unlink()
    run('zip', '-q', *options, str(out.resolve()), *members, cwd=folder)
    return out


def raw_disk(path: pathlib.Path, size: int = 64 * MiB,
             extents: tuple[int, ...] = (1, 20, 50)) -> pathlib.Path:
    """A sparse raw disk holding 1 MiB of random data at each ``extents``
    MiB offset (the rest holes)."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for i, mib in enumerate(extents):
            f.seek(mib * MiB)
            f.write(os.urandom(MiB // 2) + (b'extent %d ' % i) * (
                MiB // 2 // 9) + b'\xff' * (MiB // 2 % 9))
    return path


def qemu_img(*args: str) -> None:
    run('qemu-img', *args)


def image(folder: pathlib.Path, fmt: str, name: str | None = None
          ) -> tuple[pathlib.Path, pathlib.Path]:
    """(an image in ``fmt`` made by qemu-img from a raw disk, the raw disk)."""
    raw = raw_disk(folder / ('%s-source.raw' % (name or fmt)))
    if fmt == 'raw':
        return raw, raw
    out = folder / ('%s.%s' % (name or 'disk', fmt))
    options = ['-o', 'subformat=streamOptimized'] if fmt == 'vmdk' else []
    qemu_img('convert', '-f', 'raw', '-O', fmt, *options, str(raw), str(out))
    return out, raw


def repeated(path: pathlib.Path, piece: pathlib.Path, times: int
             ) -> pathlib.Path:
    """``piece`` written ``times`` times one after the other."""
    data = piece.read_bytes()
    with open(path, 'wb') as f:
        for _ in range(times):
            f.write(data)
    return path


def xz_zero_bomb(folder: pathlib.Path, tib: int = 1) -> pathlib.Path:
    """An xz file (about 156 MB per TiB) of ``tib`` TiB of zeros: 1024
    streams per TiB, each made by ``xz`` from 1 GiB of zeros."""
    one = folder / 'zeros-1g.xz'
    if not one.exists():
        with open(one, 'wb') as fout:
            zero = subprocess.Popen(['head', '-c', str(GiB), '/dev/zero'],
                                    stdout=subprocess.PIPE)
            subprocess.run(['xz', '-c', '-T1', '-0'], stdin=zero.stdout,
                           stdout=fout, check=True)
            zero.wait()
    return repeated(folder / ('zeros-%dt.raw.xz' % tib), one, 1024 * tib)


def bzip2_zero_bomb(folder: pathlib.Path, tib: int = 1) -> pathlib.Path:
    """A bzip2 file (under 1 MB per TiB) of ``tib`` TiB of zeros."""
    one = folder / 'zeros-1g.bz2'
    if not one.exists():
        with open(one, 'wb') as fout:
            zero = subprocess.Popen(['head', '-c', str(GiB), '/dev/zero'],
                                    stdout=subprocess.PIPE)
            subprocess.run(['bzip2', '-c'], stdin=zero.stdout, stdout=fout,
                           check=True)
            zero.wait()
    return repeated(folder / ('zeros-%dt.raw.bz2' % tib), one, 1024 * tib)


def gzip_data_bomb(folder: pathlib.Path, gib: int = 4) -> pathlib.Path:
    """A gzip file (about 1 MB per GiB) of ``gib`` GiB of non-zero repeated
    text: no hole can absorb it."""
    piece = folder / 'text-64m'
    line = b'glance-imgplugins decompression bomb, no zeros here\n'
    with open(piece, 'wb') as f:
        f.write(line * (64 * MiB // len(line) + 1))
    one = compress(piece, 'gzip', folder / 'text-64m.gz', '-9')
    return repeated(folder / ('text-%dg.raw.gz' % gib), one, 16 * gib)


def truncated(src: pathlib.Path, out: pathlib.Path, keep: int | None = None
              ) -> pathlib.Path:
    """The first ``keep`` bytes of ``src`` (default: half)."""
    data = src.read_bytes()
    out.write_bytes(data[:len(data) // 2 if keep is None else keep])
    return out


def corrupted(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """``src`` with 64 bytes in its middle inverted."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 64):
        data[i] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copyfile(src, dst)
    return dst
