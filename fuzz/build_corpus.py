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

"""Build the seed corpora: ``python -m fuzz.build_corpus OUT_DIR``.

``OUT_DIR/inspection``: every entry of the test image corpus
(``tests.support.images``: BENIGN, HOSTILE, SIZE_GUARD, QEMU_REFUSED,
COMPRESSED), cut after the last byte inspection reads from it (so a 16 MiB
raw disk becomes its first sectors) and at most ``--max-len`` bytes (a
vhdx gets its metadata and BAT moved in front to fit); the fixed
VHD, whose footer is the file's end, is rebuilt 64 KiB long.
``OUT_DIR/rules``: the example rules file, the same rules as JSON, and
small documents for each part of the schema (and an alias bomb).  Both get
the regression inputs of ``tests/unit/data/fuzz/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import uuid

import yaml

from glance_imgplugins import inspection
from tests.support import images

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_REGRESSIONS = _ROOT / 'tests' / 'unit' / 'data' / 'fuzz'
# The fuzzer's -max_len: larger inputs cost more than they find.
DEFAULT_MAX_LEN = 1024 * 1024

RULE_SEEDS = {
    'minimal.yaml': 'rules: []\n',
    'set.yaml': ('rules:\n  - name: provenance\n    set: {imported_by: '
                 '"${user_id}@${project_id} via ${import_method}"}\n'
                 '    protect: [imported_by]\n'),
    'match.yaml': ('version: 1\nrules:\n  - name: vmdk\n    match:\n'
                   '      disk_format: [vmdk, "re:^v.*"]\n'
                   '      roles: [member]\n'
                   '      facts: {vmware_adaptertype: null}\n'
                   '    unless: {properties: {hw_disk_bus: scsi}}\n'
                   '    default: {vmware_adaptertype: lsiLogic}\n'
                   '    ignore_roles: [admin]\n'),
    'actions.yaml': ('rules:\n  - name: a\n    remove: ["hw_*"]\n'
                     '    forbid: ["os_*", "hw_firmware_*"]\n'
                     '    set: {when: "${utc_date}", t: "$task_id"}\n'),
    'anchors.yaml': ('base: &b {disk_format: raw}\nrules:\n'
                     '  - name: x\n    match: *b\n    set: {k: v}\n'
                     '  - name: y\n    match: {<<: *b, name: "n*"}\n'
                     '    set: {k: w}\n'),
    'laughs.yaml': ('a: &a [x, x, x, x, x, x, x, x, x]\n'
                    'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n'
                    'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n'
                    'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n'
                    'rules: [{name: r, set: {k: v}, remove: *d}]\n'),
    'duplicate.yaml': 'rules: []\nrules: []\n',
    'tags.yaml': ('rules:\n  - name: !!binary aGVsbG8=\n'
                  '    set: {k: !!timestamp 2001-12-14}\n'),
    'minimal.json': '{"rules": [{"name": "r", "set": {"k": "v"}}]}\n',
}


def _read_extent(path: pathlib.Path) -> int:
    """One past the last byte inspect_file needs from ``path``.

    The raw/gpt footer probe (the last 512 bytes: is it a fixed VHD?) does
    not count unless the file is one: the cut file gets a new end anyway.
    """
    reads: list[tuple[int, int]] = []
    real = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        data = real(fd, length, offset)
        reads.append((offset, len(data)))
        return data

    os.pread = pread
    try:
        result = inspection.inspect_file(str(path))
    finally:
        os.pread = real
    size = path.stat().st_size
    if result.format == 'vhd' and result.inspector_name in ('raw', 'gpt'):
        return -1
    return max((o + n for o, n in reads if o != size - 512), default=0)


def _fixed_vhd(footer: bytes, size: int) -> bytes:
    """A fixed VHD of ``size`` zero bytes with ``footer``'s fields."""
    out = bytearray(footer)
    out[40:56] = struct.pack('>QQ', size, size)
    out[64:68] = bytes(4)
    out[64:68] = struct.pack('>I', ~sum(out) & 0xFFFFFFFF)
    return bytes(size) + bytes(out)


_VHDX_METADATA = uuid.UUID('8B7CA206-4790-4B9A-B8FE-575F050F886E').bytes_le
_VHDX_BAT = uuid.UUID('2DC27766-F623-4200-9D64-115E9BFD4A08').bytes_le
_VHDX_COMPACT_META = 320 * 1024
_VHDX_COMPACT_BAT = _VHDX_COMPACT_META + 128 * 1024


def _compact_vhdx(data: bytes) -> bytes:
    """A qemu-made vhdx with its metadata (3 MiB) and BAT (2 MiB) moved.

    The metadata region goes to 320 KiB, the BAT's first 64 KiB after it, so
    the fuzzer's inputs stay under 1 MiB; format_inspector and inspection do
    not check the region table's CRC, so they read the moved copies.
    """
    out = bytearray(data[:_VHDX_COMPACT_META])
    moved = {_VHDX_METADATA: (_VHDX_COMPACT_META, 128 * 1024),
             _VHDX_BAT: (_VHDX_COMPACT_BAT, 64 * 1024)}
    parts: dict[bytes, bytes] = {}
    for table in (192 * 1024, 256 * 1024):
        (count,) = struct.unpack('<I', out[table + 8:table + 12])
        for i in range(min(count, 2047)):
            entry = table + 16 + 32 * i
            guid = bytes(out[entry:entry + 16])
            if guid in moved:
                (offset,) = struct.unpack('<Q', out[entry + 16:entry + 24])
                target, length = moved[guid]
                parts[guid] = data[offset:offset + length].ljust(length,
                                                                 b'\0')
                out[entry + 16:entry + 24] = struct.pack('<Q', target)
    return (bytes(out) + parts.get(_VHDX_METADATA, b'')
            + parts.get(_VHDX_BAT, b''))


def build_inspection(out: pathlib.Path, max_len: int,
                     work: pathlib.Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    corpus = images.Corpus(work)
    built = 0
    for name in images.ENTRIES:
        try:
            path = corpus.path(name)
        except subprocess.CalledProcessError as exc:
            # qemu-img's LUKS timing fails now and then on a busy machine:
            # one seed fewer must not stop the run.
            print('seed %s not built: %s' % (name, exc), file=sys.stderr)
            continue
        built += 1
        size = path.stat().st_size
        extent = _read_extent(path)
        with open(path, 'rb') as f:
            if extent < 0:
                f.seek(size - 512)
                data = _fixed_vhd(f.read(512), min(size - 512, 64 * 1024))
            else:
                data = f.read(min(size, max(extent, 4096)))
        if len(data) > max_len and data.startswith(b'vhdxfile'):
            data = _compact_vhdx(data)
        data = data[:max_len]
        (out / name).write_bytes(data)
    # What broke a property once is where the next bug hides.
    for found in sorted((_REGRESSIONS / 'inspection').iterdir()):
        (out / ('regression-' + found.name)).write_bytes(
            found.read_bytes()[:max_len])
    return built


def build_rules(out: pathlib.Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    example = (_ROOT / 'etc' / 'property-injection-rules.yaml.example')
    text = example.read_text()
    seeds = dict(RULE_SEEDS)
    seeds['example.yaml'] = text
    seeds['example.json'] = json.dumps(yaml.safe_load(text), indent=2)
    for name, body in seeds.items():
        (out / name).write_text(body)
    for found in sorted((_REGRESSIONS / 'rules').iterdir()):
        (out / ('regression-' + found.name)).write_bytes(found.read_bytes())
    return len(seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', type=pathlib.Path)
    parser.add_argument('--max-len', type=int, default=DEFAULT_MAX_LEN)
    args = parser.parse_args(argv)
    # format_inspector logs (warning, error) each refused seed: noise here.
    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix='fuzz-seeds-') as work:
        n = build_inspection(args.out / 'inspection', args.max_len,
                             pathlib.Path(work))
    m = build_rules(args.out / 'rules')
    print('seeds: %d images, %d rules documents in %s' % (n, m, args.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
