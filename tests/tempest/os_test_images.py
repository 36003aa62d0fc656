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

"""The os-test-images set, built here for Tempest's ImagesFormatTest.

The same fifteen images as the OpenStack os-test-images manifest (names,
formats, ``usable``), made on this machine with qemu-img, xorriso
(ISO 9660), genisoimage (UDF) and sgdisk (GPT), plus the ``manifest.yaml``
Tempest reads (``[image] images_manifest_file``).  Nothing is downloaded.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Callable

import yaml

Builder = Callable[[Path, str], None]


def _run(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                   timeout=120)


def _create(fmt: str, size: str, *opts: str) -> Builder:
    def build(d: Path, fn: str) -> None:
        _run('qemu-img', 'create', '-f', fmt, *opts, fn, size, cwd=d)
    return build


def _gpt(d: Path, fn: str) -> None:
    _run('qemu-img', 'create', '-f', 'raw', fn, '1M', cwd=d)
    _run('sgdisk', '--clear', fn, cwd=d)


def _hosts_tree(d: Path) -> Path:
    tree = d / 'iso-tree'
    tree.mkdir(exist_ok=True)
    (tree / 'hosts').write_text('127.0.0.1 localhost\n')
    return tree


def _iso9660(d: Path, fn: str) -> None:
    _run('xorriso', '-as', 'mkisofs', '-V', 'standard-iso9660', '-o', fn,
         str(_hosts_tree(d)), cwd=d)


def _udf(name: str) -> Builder:
    def build(d: Path, fn: str) -> None:
        _run('genisoimage', '-quiet', '-udf', '-V', name, '-o', fn,
             str(_hosts_tree(d)), cwd=d)
    return build


def _iso_with_qcow2(d: Path, fn: str) -> None:
    # A qcow2 header in the ISO's system area (its first 32 KiB).
    _udf('iso-with-qcow2')(d, fn)
    _run('qemu-img', 'create', '-f', 'qcow2', 'tmp.qcow', '10M', cwd=d)
    header = (d / 'tmp.qcow').read_bytes()[:32768]
    with open(d / fn, 'r+b') as f:
        f.write(header)
    (d / 'tmp.qcow').unlink()


def _qcow_with_datafile(d: Path, fn: str) -> None:
    _run('qemu-img', 'create', '-f', 'qcow2', '-o',
         'data_file=qcow-data-file,data_file_raw=on', fn, '10M', cwd=d)
    (d / 'qcow-data-file').unlink()


def _vmdk_flat(leak: bool) -> Builder:
    def build(d: Path, fn: str) -> None:
        _run('qemu-img', 'create', '-f', 'vmdk', '-o',
             'subformat=monolithicFlat', fn, '10M', cwd=d)
        flat = fn.replace('.vmdk', '-flat.vmdk')
        if leak:
            text = (d / fn).read_text()
            (d / fn).write_text(text.replace(flat, '/etc/hosts'))
        (d / flat).unlink()
    return build


def _vmdk_url_backing(d: Path, fn: str) -> None:
    # The embedded descriptor (sector 1) names /etc/hosts as its extent.
    _run('qemu-img', 'create', '-f', 'vmdk', '-o',
         'subformat=monolithicSparse', fn, '10M', cwd=d)
    with open(d / fn, 'r+b') as f:
        f.seek(512)
        sector = f.read(512)
        f.seek(512)
        f.write(sector.replace(fn.encode(), b'/etc/hosts')[:512].ljust(
            512, b'\0'))


def _vmdk_footer(d: Path, fn: str) -> None:
    # monolithicSparse whose header says "grain directory in the footer",
    # followed by a footer marker, the footer (a header copy) and EOS.
    _run('qemu-img', 'create', '-f', 'vmdk', '-o',
         'subformat=monolithicSparse', fn, '10M', cwd=d)
    with open(d / fn, 'r+b') as f:
        header = f.read(512)
        f.seek(56)
        f.write(struct.pack('<Q', 0xffffffffffffffff))
        f.seek(0, 2)
        f.write(b'\0' * 512 * 3)
        f.seek(-512 * 3 + 12, 2)
        f.write(struct.pack('<I', 3))
        f.seek(-512 * 2, 2)
        f.write(header)


# name, format, usable, builder (os-test-images' manifest order).
IMAGES: list[tuple[str, str, bool, Builder]] = [
    ('standard-qcow2v3', 'qcow2', True, _create('qcow2', '10M')),
    ('qcow-with-backing', 'qcow2', False,
     _create('qcow2', '10M', '-F', 'raw', '-b', '/etc/hosts')),
    ('qcow-with-datafile', 'qcow2', False, _qcow_with_datafile),
    ('raw-blank', 'raw', True, _create('raw', '1M')),
    ('gpt-blank', 'gpt', True, _gpt),
    ('standard', 'qed', False, _create('qed', '10M')),
    ('standard-iso9660', 'iso', True, _iso9660),
    ('standard-udf', 'iso', True, _udf('standard-udf')),
    ('iso-with-qcow2-in-system', 'iso', False, _iso_with_qcow2),
    ('vmdk-monolithicSparse', 'vmdk', True,
     _create('vmdk', '10M', '-o', 'subformat=monolithicSparse')),
    ('vmdk-streamOptimized', 'vmdk', True,
     _create('vmdk', '10M', '-o', 'subformat=streamOptimized')),
    ('vmdk-monolithicFlat', 'vmdk', False, _vmdk_flat(leak=False)),
    ('vmdk-monolithicFlat-leak', 'vmdk', False, _vmdk_flat(leak=True)),
    ('vmdk-sparse-with-url-backing', 'vmdk', False, _vmdk_url_backing),
    ('vmdk-sparse-with-footer', 'vmdk', True, _vmdk_footer),
]


def build(directory: Path) -> Path:
    """Build every image into ``directory``; the manifest's path."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, fmt, usable, builder in IMAGES:
        filename = '%s.%s' % (name, fmt)
        if not (directory / filename).exists():
            builder(directory, filename)
        manifest.append({'name': name, 'format': fmt, 'usable': usable,
                         'filename': filename})
    path = directory / 'manifest.yaml'
    path.write_text(yaml.safe_dump({'images': manifest}))
    return path
