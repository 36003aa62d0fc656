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

"""A corpus of real disk images, benign and hostile, built with real qemu-img.

Every entry has a name, a builder and what inspection must say about it, so
any test (unit, flow, functional) can reuse the same files::

    from tests.support import images
    corpus = images.Corpus(tmp_dir)          # builds lazily, once per name
    path = corpus.path('vmdk_stream_lsilogic')
    entry = images.ENTRIES['vmdk_stream_lsilogic']
    entry.format, entry.failures, entry.properties, entry.qemu_format

``BENIGN`` entries are safe (no failures); ``HOSTILE`` entries each exercise
one attack class and list the EXACT failure names inspection reports.
Images are small: 16 MiB virtual with about 2 MiB of data (compressible text
and incompressible random bytes in four extents, the rest holes).

External tools: qemu-img and qemu-io (qemu-utils), xorriso, sgdisk (gdisk)
and zstd.  Hostile files are crafted by patching real images (descriptor
text, header bytes, L2 tables, block maps, vhdx metadata), and GPT/MBR disks
are written here with struct + CRC32 as the UEFI spec lays them out.

Besides ``BENIGN`` and ``HOSTILE``: ``SIZE_GUARD`` (images whose point is the
bytes a conversion writes, ``Entry.data_bytes``: expansion bombs that
inspection alone finds safe, and an image whose data fills the guest),
``QEMU_REFUSED`` (content only qemu-img's driver refuses,
``Entry.qemu_check``) and ``COMPRESSED`` (a qcow2 inside gzip, xz, bzip2,
zstd, zip and tar: inspection says raw with the fact ``compression``).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import pathlib
import random
import re
import shutil
import struct
import subprocess
import tarfile
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping

MiB = 1 << 20
VIRTUAL_SIZE = 16 * MiB
# Where the seed's data extents sit (each 512 KiB: half text, half random).
DATA_EXTENTS = (1 * MiB, 5 * MiB, 9 * MiB, 13 * MiB)
EXTENT_SIZE = 512 * 1024
SECRET = 'corpus-secret'
ESP_TYPE = uuid.UUID('C12A7328-F81F-11D2-BA4B-00A0C93EC93B')
LINUX_TYPE = uuid.UUID('0FC63DAF-8483-4772-8E79-3D69D8477DE4')

Builder = Callable[[pathlib.Path, str], pathlib.Path]


# qemu times PBKDF2 with getrusage() to pick the LUKS iteration count and
# its first round often takes less than one clock tick: "measured nothing"
# fails about 40 % of attempts here, busy or not.  Twenty-five attempts
# leave one build in 10^10 to chance.
_TRANSIENT = b'Unable to get accurate CPU usage'


def qemu_img(*args: str) -> None:
    for _attempt in range(25):
        proc = subprocess.run(('qemu-img',) + args, capture_output=True)
        if proc.returncode == 0:
            return
        if _TRANSIENT not in proc.stderr:
            break
    raise subprocess.CalledProcessError(proc.returncode, ('qemu-img',) + args,
                                        proc.stdout, proc.stderr)


def seed_bytes(extent: int) -> bytes:
    """The deterministic contents of data extent number ``extent``."""
    text = (b'glance-imgplugins corpus extent %d ' % extent) * (
        EXTENT_SIZE // 2 // 32 + 1)
    rnd = random.Random(extent).randbytes(EXTENT_SIZE // 2)
    return text[:EXTENT_SIZE // 2] + rnd


def write_seed(path: pathlib.Path, size: int = VIRTUAL_SIZE,
               head: bytes = b'') -> pathlib.Path:
    """A sparse raw file with the four data extents (and ``head`` at 0)."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for i, off in enumerate(DATA_EXTENTS):
            if off + EXTENT_SIZE <= size:
                f.seek(off)
                f.write(seed_bytes(i))
        if head:
            f.seek(0)
            f.write(head)
    return path


def seed(directory: pathlib.Path) -> pathlib.Path:
    path = directory / '_seed.raw'
    if not path.exists():
        tmp = directory / ('_seed.raw.%d' % threading.get_ident())
        write_seed(tmp)
        os.replace(tmp, path)
    return path


# --- partition tables --------------------------------------------------------

def _mbr_entry(boot: int, ptype: int, start: int, count: int,
               chs_start: tuple[int, int, int] = (0, 2, 0)) -> bytes:
    return struct.pack('<B3BB3BII', boot, *chs_start, ptype, 0xFE, 0xFF,
                       0xFF, start, count)


def mbr(entries: Iterable[bytes]) -> bytes:
    table = b''.join(entries).ljust(64, b'\0')
    return b'\0' * 446 + table + b'\x55\xaa'


def gpt_disk(path: pathlib.Path, partitions: Iterable[tuple[uuid.UUID, int,
                                                             int, str]],
             size: int = VIRTUAL_SIZE) -> pathlib.Path:
    """A raw disk with a protective MBR and primary + backup GPT (512 B LBA).

    ``partitions``: (type GUID, first LBA, last LBA, name).  Data extents of
    the seed are kept (they land inside the partitions).
    """
    write_seed(path, size)
    sectors = size // 512
    rng = random.Random(str(path.name))
    entries = bytearray(128 * 128)
    for i, (ptype, first, last, name) in enumerate(partitions):
        entries[i * 128:(i + 1) * 128] = struct.pack(
            '<16s16sQQQ72s', ptype.bytes_le,
            uuid.UUID(int=rng.getrandbits(128)).bytes_le, first, last, 0,
            name.encode('utf-16-le'))
    ecrc = zlib.crc32(entries)
    disk_guid = uuid.UUID(int=rng.getrandbits(128)).bytes_le

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = [b'EFI PART', 0x00010000, 92, 0, 0, current, backup, 34,
                  sectors - 34, disk_guid, entries_lba, 128, 128, ecrc]
        raw = struct.pack('<8sIIIIQQQQ16sQIII', *fields)
        fields[3] = zlib.crc32(raw)
        return struct.pack('<8sIIIIQQQQ16sQIII', *fields).ljust(512, b'\0')

    protective = mbr([_mbr_entry(0, 0xEE, 1, min(sectors - 1, 0xFFFFFFFF))])
    with open(path, 'r+b') as f:
        f.write(protective)
        f.write(header(1, sectors - 1, 2))
        f.write(entries)
        f.seek((sectors - 33) * 512)
        f.write(entries)
        f.write(header(sectors - 1, 1, sectors - 33))
    return path


# --- vmdk descriptor patching ----------------------------------------------

def patch_vmdk_descriptor(path: pathlib.Path,
                          edit: Callable[[str], str]) -> None:
    """Rewrite the embedded descriptor text of a sparse vmdk in place."""
    with open(path, 'r+b') as f:
        header = f.read(512)
        desc_sec, desc_num = struct.unpack('<QQ', header[28:44])
        f.seek(desc_sec * 512)
        region = f.read(desc_num * 512)
        text = region.split(b'\0', 1)[0].decode('ascii')
        new = edit(text).encode('ascii')
        if len(new) > len(region):
            raise ValueError('patched descriptor does not fit')
        f.seek(desc_sec * 512)
        f.write(new.ljust(len(region), b'\0'))


def _vmdk(subformat: str, adapter: str,
          patch: Callable[[str], str] | None = None) -> Builder:
    def build(d: pathlib.Path, name: str) -> pathlib.Path:
        out = d / (name + '.vmdk')
        qemu_img('convert', '-f', 'raw', '-O', 'vmdk', '-o',
                 'subformat=%s,adapter_type=%s' % (subformat, adapter),
                 str(seed(d)), str(out))
        if patch:
            patch_vmdk_descriptor(out, patch)
        return out
    return build


def _set_adapter(value: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        lines = [('ddb.adapterType = "%s"' % value
                  if line.startswith('ddb.adapterType') else line)
                 for line in text.split('\n')]
        return '\n'.join(lines)
    return edit


def _set_extent_file(target: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        lines = [re.sub(r'"[^"]*"', '"%s"' % target, line)
                 if line.startswith('RW ') else line
                 for line in text.split('\n')]
        return '\n'.join(lines)
    return edit


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        if old not in text:
            raise ValueError('%r not in descriptor' % old)
        return text.replace(old, new)
    return edit


# --- builders --------------------------------------------------------------

def _convert(fmt: str, *options: str, ext: str | None = None) -> Builder:
    def build(d: pathlib.Path, name: str) -> pathlib.Path:
        out = d / ('%s.%s' % (name, ext or fmt))
        qemu_img('convert', '-f', 'raw', '-O', fmt, *options, str(seed(d)),
                 str(out))
        return out
    return build


def _raw_plain(d: pathlib.Path, name: str) -> pathlib.Path:
    out = d / (name + '.raw')
    shutil.copyfile(seed(d), out)
    return out


def _raw_mbr(d: pathlib.Path, name: str) -> pathlib.Path:
    sectors = VIRTUAL_SIZE // 512
    head = mbr([_mbr_entry(0x80, 0x83, 2048, sectors - 2048)])
    return write_seed(d / (name + '.raw'), head=head)


def _gpt(with_esp: bool) -> Builder:
    def build(d: pathlib.Path, name: str) -> pathlib.Path:
        parts = []
        last = VIRTUAL_SIZE // 512 - 34
        if with_esp:
            parts.append((ESP_TYPE, 2048, 10239, 'EFI system'))
            parts.append((LINUX_TYPE, 10240, last, 'root'))
        else:
            parts.append((LINUX_TYPE, 2048, last, 'root'))
        return gpt_disk(d / (name + '.raw'), parts)
    return build


def _iso(d: pathlib.Path, name: str) -> pathlib.Path:
    src = d / ('_%s_tree' % name)
    src.mkdir(exist_ok=True)
    (src / 'README.TXT').write_bytes(seed_bytes(0))
    out = d / (name + '.iso')
    subprocess.run(['xorriso', '-as', 'mkisofs', '-quiet', '-V', 'CORPUS',
                    '-o', str(out), str(src)], check=True,
                   capture_output=True)
    return out


def _qcow2_backing(d: pathlib.Path, name: str) -> pathlib.Path:
    base = _convert('qcow2')(d, name + '_base')
    out = d / (name + '.qcow2')
    qemu_img('create', '-f', 'qcow2', '-b', base.name, '-F', 'qcow2',
             str(out))
    return out


def _qcow2_data_file(d: pathlib.Path, name: str) -> pathlib.Path:
    out = d / (name + '.qcow2')
    qemu_img('create', '-f', 'qcow2', '-o',
             # Absolute: a relative name lands in qemu-img's working dir.
             'data_file=%s,data_file_raw=on' % (d / (name + '.data')),
             str(out),
             str(VIRTUAL_SIZE))
    return out


def _secret() -> tuple[str, str]:
    return '--object', 'secret,id=sec0,data=%s' % SECRET


def _qcow2_luks(d: pathlib.Path, name: str) -> pathlib.Path:
    out = d / (name + '.qcow2')
    qemu_img('create', *_secret(), '-f', 'qcow2', '-o',
             'encrypt.format=luks,encrypt.key-secret=sec0,'
             'encrypt.iter-time=10', str(out), str(VIRTUAL_SIZE))
    return out


def _luks(d: pathlib.Path, name: str) -> pathlib.Path:
    out = d / (name + '.luks')
    qemu_img('create', *_secret(), '-f', 'luks', '-o',
             'key-secret=sec0,iter-time=10', str(out), str(VIRTUAL_SIZE))
    return out


def _patched(base: Builder, ext: str,
             patch: Callable[[bytearray], None]) -> Builder:
    """Build ``base`` then edit its first 64 KiB in place."""
    def build(d: pathlib.Path, name: str) -> pathlib.Path:
        src = base(d, '_' + name)
        out = d / ('%s.%s' % (name, ext))
        os.replace(src, out)
        with open(out, 'r+b') as f:
            head = bytearray(f.read(64 * 1024))
            patch(head)
            f.seek(0)
            f.write(head)
        return out
    return build


def _set_bytes(offset: int, value: bytes) -> Callable[[bytearray], None]:
    def patch(head: bytearray) -> None:
        head[offset:offset + len(value)] = value
    return patch


def _or_byte(offset: int, bits: int) -> Callable[[bytearray], None]:
    def patch(head: bytearray) -> None:
        head[offset] |= bits
    return patch


def _truncated(base: Builder, ext: str, keep: int) -> Builder:
    def build(d: pathlib.Path, name: str) -> pathlib.Path:
        src = base(d, '_' + name)
        out = d / ('%s.%s' % (name, ext))
        os.replace(src, out)
        os.truncate(out, keep)
        return out
    return build


def _qcow2_in_iso(d: pathlib.Path, name: str) -> pathlib.Path:
    # The ISO system area (first 32 KiB) is free for anything: here a real
    # qcow2 header, which qemu would follow if told no format.
    iso = _iso(d, '_' + name)
    qcow = _convert('qcow2')(d, '_%s_q' % name)
    out = d / (name + '.iso')
    os.replace(iso, out)
    with open(qcow, 'rb') as q, open(out, 'r+b') as f:
        f.write(q.read(512))
    return out


def _qcow2_with_mbr(d: pathlib.Path, name: str) -> pathlib.Path:
    # A qcow2 whose first sector also carries a protective MBR: "gpt" to a
    # reader of partition tables, qcow2 to qemu.
    def patch(head: bytearray) -> None:
        table = mbr([_mbr_entry(0, 0xEE, 1, VIRTUAL_SIZE // 512 - 1)])
        head[446:512] = table[446:512]
    return _patched(_convert('qcow2'), 'qcow2', patch)(d, name)


def _gpt_extra_partition(d: pathlib.Path, name: str) -> pathlib.Path:
    path = _gpt(True)(d, name)
    sectors = VIRTUAL_SIZE // 512
    with open(path, 'r+b') as f:
        f.seek(446 + 16)
        f.write(_mbr_entry(0, 0x83, 2048, sectors - 2048))
    return path


def _vmdk_flat_descriptor(d: pathlib.Path, name: str) -> pathlib.Path:
    out = d / (name + '.vmdk')
    qemu_img('create', '-f', 'vmdk', '-o', 'subformat=monolithicFlat',
             str(out), str(VIRTUAL_SIZE))
    return out


def _vmdk_flat_host_path(d: pathlib.Path, name: str) -> pathlib.Path:
    out = d / (name + '.vmdk')
    out.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\n'
        'parentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW %d FLAT "/etc/passwd" 0\n\n'
        '# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\n'
        'ddb.adapterType = "ide"\n' % (VIRTUAL_SIZE // 512))
    return out


# --- expansion bombs and full images ---------------------------------------

GiB = 1 << 30


def _qcow2_l2_repeat(d: pathlib.Path, name: str) -> pathlib.Path:
    """1 GiB qcow2 with one 64 KiB data cluster that every guest cluster maps
    to: both L1 entries name the first L2 table, whose entries all copy
    entry 0.  A few hundred KiB on disk, 1 GiB of non-zero guest data."""
    out = d / (name + '.qcow2')
    qemu_img('create', '-f', 'qcow2', str(out), str(GiB))
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x41 0 64k',
                    str(out)], check=True, capture_output=True)
    with open(out, 'r+b') as f:
        header = f.read(104)
        l1_size, l1_offset = struct.unpack('>IQ', header[36:48])
        cluster = 1 << struct.unpack('>I', header[20:24])[0]
        f.seek(l1_offset)
        l1 = f.read(8 * l1_size)
        f.seek(l1_offset)
        f.write(l1[:8] * l1_size)
        l2_offset = struct.unpack('>Q', l1[:8])[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2_offset)
        first = f.read(8)
        f.seek(l2_offset)
        f.write(first * (cluster // 8))
    return out


def _vdi_block_repeat(d: pathlib.Path, name: str) -> pathlib.Path:
    """256 MiB vdi with one 1 MiB block that every block map entry names."""
    out = d / (name + '.vdi')
    qemu_img('create', '-f', 'vdi', str(out), str(256 * MiB))
    subprocess.run(['qemu-io', '-f', 'vdi', '-c', 'write -P 0x42 0 1M',
                    str(out)], check=True, capture_output=True)
    with open(out, 'r+b') as f:
        header = f.read(512)
        (bmap,) = struct.unpack('<I', header[0x154:0x158])
        (blocks,) = struct.unpack('<I', header[0x180:0x184])
        f.seek(bmap)
        first = f.read(4)
        f.seek(bmap)
        f.write(first * blocks)
    return out


def _vmdk_gt_repeat(d: pathlib.Path, name: str) -> pathlib.Path:
    """64 MiB sparse vmdk with one 64 KiB grain that every grain table
    entry names, and every grain directory entry names the first table
    (both directories: qemu reads the primary, others the redundant)."""
    out = d / (name + '.vmdk')
    qemu_img('create', '-f', 'vmdk', str(out), str(64 * MiB))
    subprocess.run(['qemu-io', '-f', 'vmdk', '-c', 'write -P 0x45 0 64k',
                    str(out)], check=True, capture_output=True)
    with open(out, 'r+b') as f:
        header = f.read(512)
        capacity, grain = struct.unpack('<QQ', header[12:28])
        (per_gt,) = struct.unpack('<I', header[44:48])
        rgd, gd = struct.unpack('<QQ', header[48:64])
        tables = -(-capacity // (grain * per_gt))
        for directory in (gd, rgd):
            f.seek(directory * 512)
            (first_gt,) = struct.unpack('<I', f.read(4))
            f.seek(first_gt * 512)
            entry = f.read(4)
            f.seek(first_gt * 512)
            f.write(entry * per_gt)
            f.seek(directory * 512)
            f.write(struct.pack('<I', first_gt) * tables)
    return out


def _vhd_bat_repeat(d: pathlib.Path, name: str) -> pathlib.Path:
    """64 MiB dynamic vhd whose BAT names one 2 MiB block for all blocks."""
    out = d / (name + '.vhd')
    qemu_img('create', '-f', 'vpc', str(out), str(64 * MiB))
    subprocess.run(['qemu-io', '-f', 'vpc', '-c', 'write -P 0x46 0 2M',
                    str(out)], check=True, capture_output=True)
    with open(out, 'r+b') as f:
        footer = f.read(512)
        (dynamic,) = struct.unpack('>Q', footer[16:24])
        f.seek(dynamic)
        header = f.read(1024)
        (table,) = struct.unpack('>Q', header[16:24])
        (entries,) = struct.unpack('>I', header[28:32])
        f.seek(table)
        first = f.read(4)
        f.seek(table)
        f.write(first * entries)
    return out


def _vhdx_blocks(d: pathlib.Path, name: str, repeat: bool) -> pathlib.Path:
    """64 MiB vhdx with 1 MiB blocks and data in blocks 0 and 10; with
    ``repeat`` every BAT payload entry then copies entry 0 (one file block
    behind all 64 guest blocks)."""
    out = d / (name + '.vhdx')
    qemu_img('create', '-f', 'vhdx', '-o', 'block_size=1M', str(out),
             str(64 * MiB))
    subprocess.run(['qemu-io', '-f', 'vhdx', '-c', 'write -P 0x43 0 1M',
                    '-c', 'write -P 0x44 10M 1M', str(out)], check=True,
                   capture_output=True)
    if repeat:
        with open(out, 'r+b') as f:
            f.seek(192 * 1024)
            regions = f.read(64 * 1024)
            (count,) = struct.unpack('<I', regions[8:12])
            for i in range(count):
                entry = regions[16 + 32 * i:48 + 32 * i]
                if entry[:16] == _VHDX_BAT_REGION.bytes_le:
                    (bat,) = struct.unpack('<Q', entry[16:24])
            f.seek(bat)
            first = f.read(8)
            # chunk_ratio is 4096 here: the 64 entries are all payload.
            f.seek(bat)
            f.write(first * 64)
    return out


def _qcow2_full(d: pathlib.Path, name: str) -> pathlib.Path:
    """16 MiB qcow2 whose data fills the guest (random, incompressible)."""
    raw = d / ('_%s.raw' % name)
    raw.write_bytes(random.Random(name).randbytes(VIRTUAL_SIZE))
    out = d / (name + '.qcow2')
    qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw), str(out))
    raw.unlink()
    return out


# --- content only qemu-img refuses -----------------------------------------

def _qcow2_header_patch(offset: int, value: bytes) -> Builder:
    return _patched(_convert('qcow2'), 'qcow2', _set_bytes(offset, value))


# --- bootable ISOs, blank GPT, vhdx with a parent --------------------------

def _iso_tree(d: pathlib.Path, name: str) -> pathlib.Path:
    src = d / ('_%s_tree' % name)
    src.mkdir(exist_ok=True)
    (src / 'README.TXT').write_bytes(seed_bytes(0))
    return src


def _iso_hybrid_mbr(d: pathlib.Path, name: str) -> pathlib.Path:
    # -partition_offset 16: an MBR partition for the ISO filesystem, as
    # isohybrid images (bootable from a USB stick) carry.
    out = d / (name + '.iso')
    subprocess.run(['xorriso', '-as', 'mkisofs', '-quiet', '-V', 'CORPUS',
                    '-partition_offset', '16', '-o', str(out),
                    str(_iso_tree(d, name))], check=True, capture_output=True)
    return out


def _iso_hybrid_gpt(d: pathlib.Path, name: str) -> pathlib.Path:
    # A GPT (protective MBR) with an appended EFI System Partition, as
    # UEFI-bootable distribution ISOs have.
    tree = _iso_tree(d, name)
    efi = d / ('_%s_efi.img' % name)
    efi.write_bytes(random.Random(name).randbytes(MiB))
    out = d / (name + '.iso')
    subprocess.run(['xorriso', '-as', 'mkisofs', '-quiet', '-V', 'CORPUS',
                    '-partition_offset', '16', '-append_partition', '2',
                    '0xef', str(efi), '-appended_part_as_gpt', '-o',
                    str(out), str(tree)], check=True, capture_output=True)
    return out


def _gpt_blank(d: pathlib.Path, name: str) -> pathlib.Path:
    # What Tempest's ImagesFormatTest uploads as disk_format gpt: a blank
    # disk with a new, empty GPT written by sgdisk.
    out = d / (name + '.raw')
    with open(out, 'wb') as f:
        f.truncate(VIRTUAL_SIZE)
    subprocess.run(['sgdisk', '--clear', str(out)], check=True,
                   capture_output=True)
    return out


_VHDX_METADATA_REGION = uuid.UUID('8B7CA206-4790-4B9A-B8FE-575F050F886E')
_VHDX_BAT_REGION = uuid.UUID('2DC27766-F623-4200-9D64-115E9BFD4A08')
_VHDX_FILE_PARAMETERS = uuid.UUID('CAA16737-FA36-4D43-B3B6-33F0AA44E76B')
VHDX_PARENT_LOCATOR = uuid.UUID('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C')
_VHDX_LOCATOR_TYPE = uuid.UUID('B04AEFB7-D19E-4A81-B789-25B8E9445913')


def _vhdx_parent_locator() -> bytes:
    pairs = [('parent_linkage', '{%s}' % uuid.UUID(int=7)),
             ('absolute_win32_path', '\\\\?\\C:\\images\\parent.vhdx')]
    table = bytearray(_VHDX_LOCATOR_TYPE.bytes_le
                      + struct.pack('<HH', 0, len(pairs)))
    heap = bytearray()
    base = 20 + 12 * len(pairs)
    for key, value in pairs:
        k, v = key.encode('utf-16-le'), value.encode('utf-16-le')
        table += struct.pack('<IIHH', base + len(heap),
                             base + len(heap) + len(k), len(k), len(v))
        heap += k + v
    return bytes(table + heap)


def _vhdx_differencing(d: pathlib.Path, name: str) -> pathlib.Path:
    """A vhdx that says it has a parent: File Parameters HasParent set and
    a Parent Locator metadata item (qemu-img cannot write one)."""
    src = _convert('vhdx')(d, '_' + name)
    out = d / (name + '.vhdx')
    os.replace(src, out)
    with open(out, 'r+b') as f:
        f.seek(192 * 1024)
        regions = f.read(64 * 1024)
        (count,) = struct.unpack('<I', regions[8:12])
        meta = None
        for i in range(count):
            entry = regions[16 + 32 * i:48 + 32 * i]
            if entry[:16] == _VHDX_METADATA_REGION.bytes_le:
                (meta,) = struct.unpack('<Q', entry[16:24])
        assert meta is not None
        f.seek(meta)
        table = bytearray(f.read(64 * 1024))
        (items,) = struct.unpack('<H', table[10:12])
        end = 0
        for i in range(items):
            entry = table[32 + 32 * i:64 + 32 * i]
            offset, length = struct.unpack('<II', entry[16:24])
            end = max(end, offset + length)
            if entry[:16] == _VHDX_FILE_PARAMETERS.bytes_le:
                f.seek(meta + offset + 4)
                (flags,) = struct.unpack('<I', f.read(4))
                f.seek(meta + offset + 4)
                f.write(struct.pack('<I', flags | 2))  # HasParent
        locator = _vhdx_parent_locator()
        offset = (end + 7) // 8 * 8
        new = (VHDX_PARENT_LOCATOR.bytes_le
               + struct.pack('<IIII', offset, len(locator), 0x6, 0))
        table[32 + 32 * items:64 + 32 * items] = new
        table[10:12] = struct.pack('<H', items + 1)
        f.seek(meta)
        f.write(table[:64 + 32 * items])
        f.seek(meta + offset)
        f.write(locator)
    return out


# --- compressed containers -------------------------------------------------

def _compressed(container: str) -> Builder:
    def build(d: pathlib.Path, name: str) -> pathlib.Path:
        inner = _convert('qcow2')(d, '_%s_inner' % name)
        data = inner.read_bytes()
        out = d / ('%s.qcow2.%s' % (name, container))
        if container == 'gz':
            out.write_bytes(gzip.compress(data))
        elif container == 'xz':
            out.write_bytes(lzma.compress(data))
        elif container == 'bz2':
            out.write_bytes(bz2.compress(data))
        elif container == 'zst':
            subprocess.run(['zstd', '-q', '-f', '-o', str(out), str(inner)],
                           check=True, capture_output=True)
        elif container == 'zip':
            with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:
                z.write(inner, 'disk.qcow2')
        elif container == 'tar':
            with tarfile.open(out, 'w', format=tarfile.USTAR_FORMAT) as t:
                t.add(inner, 'disk.qcow2')
        else:
            raise ValueError(container)
        inner.unlink()
        return out
    return build


# --- the corpus ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus image and what inspection must report for it."""

    name: str
    builder: Builder
    format: str
    failures: frozenset[str] = frozenset()
    virtual_size: int | None = VIRTUAL_SIZE   # None: not asserted
    facts: Mapping[str, object] = dataclasses.field(default_factory=dict)
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The format to give qemu-img -f for this file, None when qemu-img must
    # never open it (hostile) or cannot.
    qemu_format: str | None = None
    doc: str = ''
    # Bytes of guest data qemu-img map reports (mapped_data_bytes), when
    # the entry is about that.
    data_bytes: int | None = None
    # The check QemuImgRefused names when qemu-img opens the file.
    qemu_check: str | None = None

    @property
    def hostile(self) -> bool:
        return bool(self.failures)


def _entries(*items: Entry) -> dict[str, Entry]:
    return {e.name: e for e in items}


_QCOW2_V3 = {'qcow2_version': 3, 'qcow2_compat': '1.1',
             'cluster_size': 65536, 'encrypted': False}

_ADAPTER_PROPS = {
    'ide': {'vmware_adaptertype': 'ide', 'hw_disk_bus': 'ide'},
    'lsilogic': {'vmware_adaptertype': 'lsiLogic', 'hw_disk_bus': 'scsi',
                 'hw_scsi_model': 'lsilogic'},
    'buslogic': {'vmware_adaptertype': 'busLogic', 'hw_disk_bus': 'scsi',
                 'hw_scsi_model': 'buslogic'},
    'legacyESX': {},
    'lsiLogicsas': {'vmware_adaptertype': 'lsiLogicsas',
                    'hw_disk_bus': 'scsi', 'hw_scsi_model': 'lsisas1068'},
    'paraVirtual': {'vmware_adaptertype': 'paraVirtual',
                    'hw_disk_bus': 'scsi', 'hw_scsi_model': 'vmpvscsi'},
}


# Hostile entries still report what they claim to be (the plugins refuse
# them before any property is used).
_FLAT_PROPS = {'vmware_disktype': 'preallocated', 'vmware_hw_version': '4',
               **_ADAPTER_PROPS['ide']}


def _vmdk_entries() -> list[Entry]:
    out = []
    kinds = (('sparse', 'monolithicSparse', 'sparse'),
             ('stream', 'streamOptimized', 'streamOptimized'))
    for short, subformat, disktype in kinds:
        for adapter in ('ide', 'lsilogic', 'buslogic', 'legacyESX',
                        'lsiLogicsas', 'paraVirtual'):
            if adapter in ('lsiLogicsas', 'paraVirtual'):
                # qemu-img cannot write these: patch the descriptor.
                build = _vmdk(subformat, 'lsilogic', _set_adapter(adapter))
            else:
                build = _vmdk(subformat, adapter)
            props = {'vmware_disktype': disktype, 'vmware_hw_version': '4',
                     **_ADAPTER_PROPS[adapter]}
            out.append(Entry(
                'vmdk_%s_%s' % (short, adapter.lower()), build, 'vmdk',
                facts={'vmdk_create_type': subformat,
                       'vmdk_adapter_type': (
                           props.get('vmware_adaptertype') or adapter),
                       'virtual_hw_version': 4,
                       'compressed': True if short == 'stream' else None},
                properties=props, qemu_format='vmdk',
                doc='%s vmdk, ddb.adapterType %s' % (subformat, adapter)))
    return out


BENIGN: dict[str, Entry] = _entries(
    Entry('raw_plain', _raw_plain, 'raw', facts={}, qemu_format='raw',
          doc='sparse raw file, no partition table'),
    Entry('raw_mbr', _raw_mbr, 'raw', facts={'partition_table': 'mbr'},
          qemu_format='raw', doc='raw disk with an MBR (one Linux partition)'),
    Entry('raw_gpt_esp', _gpt(True), 'raw',
          facts={'partition_table': 'gpt', 'gpt_valid': True,
                 'gpt_esp': True},
          properties={'hw_firmware_type': 'uefi'}, qemu_format='raw',
          doc='raw disk with a GPT holding an EFI System Partition'),
    Entry('raw_gpt_no_esp', _gpt(False), 'raw',
          facts={'partition_table': 'gpt', 'gpt_valid': True,
                 'gpt_esp': False},
          qemu_format='raw', doc='raw disk with a GPT, no ESP'),
    Entry('qcow2_v2', _convert('qcow2', '-o', 'compat=0.10'), 'qcow2',
          facts={**_QCOW2_V3, 'qcow2_version': 2, 'qcow2_compat': '0.10',
                 'compressed': False},
          qemu_format='qcow2', doc='qcow2 version 2 (compat=0.10)'),
    Entry('qcow2_v3', _convert('qcow2'), 'qcow2',
          facts={**_QCOW2_V3, 'compressed': False,
                 'compression_type': 'zlib'},
          qemu_format='qcow2', doc='qcow2 version 3 (compat=1.1)'),
    Entry('qcow2_compressed', _convert('qcow2', '-c'), 'qcow2',
          facts={**_QCOW2_V3, 'compressed': True},
          qemu_format='qcow2', doc='qcow2 with compressed clusters'),
    Entry('qcow2_zstd', _convert('qcow2', '-c', '-o',
                                 'compression_type=zstd'), 'qcow2',
          facts={**_QCOW2_V3, 'compressed': True,
                 'compression_type': 'zstd',
                 'incompatible_features': ['compression_type']},
          qemu_format='qcow2', doc='qcow2 with zstd-compressed clusters'),
    *_vmdk_entries(),
    Entry('vhdx', _convert('vhdx'), 'vhdx', qemu_format='vhdx',
          doc='vhdx (dynamic)'),
    Entry('vpc_dynamic', _convert('vpc', '-o', 'subformat=dynamic',
                                  ext='vhd'),
          'vhd', virtual_size=None, facts={'vhd_disk_type': 'dynamic'},
          qemu_format='vpc', doc='vhd (qemu vpc) dynamic'),
    Entry('vpc_fixed', _convert('vpc', '-o', 'subformat=fixed', ext='vhd'),
          'vhd', virtual_size=None, facts={'vhd_disk_type': 'fixed'},
          qemu_format='vpc',
          doc='vhd (qemu vpc) fixed: raw data then a footer at the end'),
    Entry('vdi', _convert('vdi'), 'vdi', qemu_format='vdi',
          doc='VirtualBox vdi'),
    Entry('iso', _iso, 'iso', virtual_size=None, qemu_format='raw',
          doc='ISO 9660 from xorriso'),
    Entry('iso_hybrid_mbr', _iso_hybrid_mbr, 'iso', virtual_size=None,
          facts={'partition_table': 'mbr', 'matched_formats': ['gpt', 'iso']},
          qemu_format='raw',
          doc='bootable (hybrid) ISO: an MBR partition table in front'),
    Entry('iso_hybrid_gpt', _iso_hybrid_gpt, 'iso', virtual_size=None,
          facts={'partition_table': 'gpt', 'gpt_valid': True,
                 'gpt_esp': True, 'matched_formats': ['gpt', 'iso']},
          qemu_format='raw',
          doc='bootable (hybrid) ISO: a GPT with an EFI System Partition'),
    Entry('raw_gpt_blank', _gpt_blank, 'raw',
          facts={'partition_table': 'gpt', 'gpt_valid': True,
                 'gpt_esp': False},
          qemu_format='raw',
          doc='blank disk with an empty GPT (sgdisk --clear): disk_format '
          'gpt'),
)

HOSTILE: dict[str, Entry] = _entries(
    Entry('qcow2_backing_file', _qcow2_backing, 'qcow2',
          frozenset({'backing_file'}), facts={'backing_file': True},
          doc='qcow2 naming a backing file'),
    Entry('qcow2_data_file', _qcow2_data_file, 'qcow2',
          frozenset({'data_file'}), facts={'data_file': True},
          doc='qcow2 with an external data-file (OSSA-2024-001)'),
    Entry('qcow2_encrypted', _qcow2_luks, 'qcow2', frozenset({'encryption'}),
          facts={'encrypted': True, 'encryption_format': 'luks'},
          doc='qcow2 with LUKS encryption'),
    Entry('qcow2_unknown_feature',
          _patched(_convert('qcow2'), 'qcow2', _or_byte(79 - 0, 0x40)),
          'qcow2', frozenset({'unknown_features'}),
          doc='qcow2 v3 with incompatible feature bit 6 set'),
    Entry('qcow2_bad_version',
          _patched(_convert('qcow2'), 'qcow2',
                   _set_bytes(4, struct.pack('>I', 99))),
          'qcow2', frozenset({'unknown_features'}),
          doc='qcow2 magic with version 99 (garbage header)'),
    Entry('qcow2_truncated', _truncated(_convert('qcow2'), 'qcow2', 200),
          'raw', frozenset({'format_detection'}), virtual_size=200,
          doc='qcow2 cut inside its header'),
    Entry('vmdk_truncated', _truncated(_vmdk('monolithicSparse', 'ide'),
                                       'vmdk', 600),
          'vmdk', frozenset({'format_detection'}), virtual_size=0,
          doc='sparse vmdk cut inside its descriptor'),
    Entry('vmdk_extent_host_path',
          _vmdk('monolithicSparse', 'ide',
                _set_extent_file('/etc/passwd')),
          'vmdk', frozenset({'descriptor'}),
          facts={'vmdk_create_type': 'monolithicSparse'},
          properties={'vmware_disktype': 'sparse', 'vmware_hw_version': '4',
                      **_ADAPTER_PROPS['ide']},
          doc='sparse vmdk whose extent names /etc/passwd (OSSA-2023-002)'),
    Entry('vmdk_flat_descriptor', _vmdk_flat_descriptor, 'vmdk',
          frozenset({'descriptor', 'vmdk_create_type'}), virtual_size=0,
          facts={'vmdk_create_type': 'monolithicFlat'},
          properties=_FLAT_PROPS,
          doc='monolithicFlat descriptor file (extent is another file)'),
    Entry('vmdk_flat_host_path', _vmdk_flat_host_path, 'vmdk',
          frozenset({'descriptor', 'vmdk_create_type'}), virtual_size=0,
          facts={'vmdk_create_type': 'monolithicFlat'},
          properties=_FLAT_PROPS,
          doc='monolithicFlat descriptor whose extent is /etc/passwd'),
    Entry('vmdk_twogb_sparse',
          _vmdk('monolithicSparse', 'ide',
                _replace('monolithicSparse', 'twoGbMaxExtentSparse')),
          'vmdk', frozenset({'descriptor', 'vmdk_create_type'}),
          virtual_size=0,
          facts={'vmdk_create_type': 'twoGbMaxExtentSparse'},
          properties={'vmware_disktype': 'sparse', 'vmware_hw_version': '4',
                      **_ADAPTER_PROPS['ide']},
          doc='sparse vmdk relabelled with a disallowed createType'),
    Entry('qcow2_in_iso', _qcow2_in_iso, 'unknown',
          frozenset({'format_detection'}), virtual_size=0,
          facts={'matched_formats': ['iso', 'qcow2']},
          doc='ISO whose system area holds a qcow2 header (OSSA-2024-002)'),
    Entry('qcow2_with_mbr', _qcow2_with_mbr, 'unknown',
          frozenset({'format_detection'}), virtual_size=0,
          facts={'matched_formats': ['gpt', 'qcow2']},
          doc='qcow2 whose first sector is also a protective MBR'),
    Entry('gpt_extra_mbr_partition', _gpt_extra_partition, 'raw',
          frozenset({'mbr'}), facts={'partition_table': 'gpt',
                                     'gpt_esp': True},
          properties={'hw_firmware_type': 'uefi'},
          doc='GPT disk whose protective MBR also '
          'defines a second partition'),
    Entry('qed', _convert('qed'), 'qed', frozenset({'banned'}),
          virtual_size=0, doc='qed image (format always refused)'),
    Entry('luks', _luks, 'luks', frozenset({'encryption'}), virtual_size=None,
          doc='LUKS-encrypted raw image'),
    Entry('vhdx_differencing', _vhdx_differencing, 'vhdx',
          frozenset({'backing_file'}),
          facts={'vhdx_has_parent': True, 'vhdx_parent_locator': True},
          qemu_check='header',
          doc='vhdx differencing disk (HasParent and a parent locator)'),
)

SIZE_GUARD: dict[str, Entry] = _entries(
    Entry('qcow2_l2_repeat_bomb', _qcow2_l2_repeat, 'qcow2',
          virtual_size=GiB, qemu_format='qcow2', data_bytes=GiB,
          doc='qcow2 whose L2 entries all name one data cluster: 1 GiB of '
          'data from a few hundred KiB'),
    Entry('vdi_block_repeat_bomb', _vdi_block_repeat, 'vdi',
          virtual_size=256 * MiB, qemu_format='vdi', data_bytes=256 * MiB,
          doc='vdi whose block map names one block 256 times'),
    Entry('vmdk_gt_repeat_bomb', _vmdk_gt_repeat, 'vmdk',
          virtual_size=64 * MiB, qemu_format='vmdk', data_bytes=64 * MiB,
          facts={'vmdk_create_type': 'monolithicSparse'},
          properties={'vmware_disktype': 'sparse', 'vmware_hw_version': '4',
                      'vmware_adaptertype': 'ide', 'hw_disk_bus': 'ide'},
          doc='sparse vmdk whose grain tables name one grain everywhere'),
    # qemu's vpc geometry rounds 64 MiB up to 67125248 bytes (CHS).
    Entry('vhd_bat_repeat_bomb', _vhd_bat_repeat, 'vhd',
          virtual_size=67125248, qemu_format='vpc', data_bytes=67125248,
          facts={'vhd_disk_type': 'dynamic'},
          doc='dynamic vhd whose BAT names one 2 MiB block everywhere'),
    Entry('vhdx_bat_repeat_bomb',
          lambda d, n: _vhdx_blocks(d, n, repeat=True), 'vhdx',
          virtual_size=64 * MiB, qemu_format='vhdx', data_bytes=64 * MiB,
          doc='vhdx whose BAT names one 1 MiB block for all 64 blocks'),
    Entry('vhdx_sparse', lambda d, n: _vhdx_blocks(d, n, repeat=False),
          'vhdx', virtual_size=64 * MiB, qemu_format='vhdx',
          data_bytes=2 * MiB,
          doc='64 MiB vhdx with two of its 1 MiB blocks written'),
    Entry('qcow2_full', _qcow2_full, 'qcow2', qemu_format='qcow2',
          data_bytes=VIRTUAL_SIZE,
          doc='qcow2 whose incompressible data fills the guest'),
)

QEMU_REFUSED: dict[str, Entry] = _entries(
    Entry('qcow2_l1_too_large',
          _qcow2_header_patch(36, struct.pack('>I', 0x2000001)), 'qcow2',
          qemu_format='qcow2', qemu_check='l1_table',
          doc='qcow2 whose l1_size is beyond what qemu accepts'),
    Entry('qcow2_header_too_long',
          _qcow2_header_patch(100, struct.pack('>I', 70000)), 'qcow2',
          qemu_format='qcow2', qemu_check='header',
          doc='qcow2 v3 header_length beyond its 64 KiB cluster'),
    Entry('qcow2_cluster_bits_8',
          _qcow2_header_patch(20, struct.pack('>I', 8)), 'qcow2',
          qemu_format='qcow2', qemu_check='cluster_size',
          facts={'cluster_size': None},
          doc='qcow2 with 256-byte clusters (qemu needs 512 B..2 MiB)'),
    Entry('qcow2_refcount_table_too_large',
          _qcow2_header_patch(56, struct.pack('>I', 0x7FFFFFFF)), 'qcow2',
          qemu_format='qcow2', qemu_check='refcount_table',
          doc='qcow2 whose refcount table would be 128 TiB'),
    Entry('qcow2_snapshot_table_too_large',
          _qcow2_header_patch(60, struct.pack('>I', 70000)), 'qcow2',
          qemu_format='qcow2', qemu_check='snapshot_table',
          doc='qcow2 claiming 70000 snapshots'),
)

COMPRESSED: dict[str, Entry] = _entries(*(
    Entry('qcow2_in_%s' % kind, _compressed(ext), 'raw', virtual_size=None,
          facts={'compression': kind}, qemu_format='raw',
          doc='qcow2 compressed with %s (declared qcow2: refused as '
          'compressed)' % kind)
    for kind, ext in (('gzip', 'gz'), ('xz', 'xz'), ('bzip2', 'bz2'),
                      ('zstd', 'zst'), ('zip', 'zip'), ('tar', 'tar'))))

ENTRIES: dict[str, Entry] = {**BENIGN, **HOSTILE, **SIZE_GUARD,
                              **QEMU_REFUSED, **COMPRESSED}


class Corpus:
    """Builds corpus images into ``directory`` on first use, then reuses them.

    Thread safe; share one per test session (see tests/unit/conftest.py).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._paths: dict[str, pathlib.Path] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> pathlib.Path:
        with self._lock:
            if name not in self._paths:
                entry = ENTRIES[name]
                self._paths[name] = entry.builder(self.directory, name)
            return self._paths[name]

    def build_all(self, names: Iterable[str] | None = None,
                  ) -> dict[str, pathlib.Path]:
        return {n: self.path(n) for n in (names or ENTRIES)}
