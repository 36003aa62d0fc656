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

"""What an image file is, whether it is safe, and what it says about itself.

The one place that looks inside image files.  Detection and the safety checks
are oslo.utils' ``format_inspector`` (the same code Glance runs); this module
adds three things on top:

* a *seeking* driver for the inspectors: it feeds them exactly the 4 KiB chunks
  ``detect_file_format`` would, but skips the chunks no inspector still wants
  (a vhdx metadata table at 3 MiB, a streamOptimized footer at the end of a
  multi-GiB file), so inspection reads headers only: well under 1 MiB and a few
  milliseconds whatever the virtual or file size;
* Glance's one exception to "several formats match": an ISO whose other
  match is only a partition table (MBR or GPT: a bootable, hybrid ISO) is an
  ISO;
* our own refusals: encryption, a truncated header of a known format, several
  formats at once, a disallowed vmdk createType, a vhd or vhdx differencing
  disk (``backing_file``);
* compressed containers (gzip, xz, bzip2, zstd, zip, tar) recognised by
  their magic bytes: a fact (``compression``), not a refusal (compressed
  bytes are still a valid raw image);
* facts and the image properties they imply (vmware_*, hw_disk_bus,
  hw_scsi_model, hw_firmware_type), read from the regions the inspectors
  already captured.

Only regular files are inspected: a FIFO, a device or a socket raises
``NotRegularFile`` before anything is read (a FIFO would block, a device
would be read as endless raw bytes), and a file whose size changes while it
is read raises ``FileChanged``.

No oslo.config here: policy (which formats, which families of properties)
belongs to the plugins.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_utils.imageutils import format_inspector as fi

from glance_imgplugins import exception

PROPERTY_FAMILIES: tuple[str, ...] = ('vmware', 'bus', 'firmware')

# Glance's default [image_format] vmdk_allowed_types.
DEFAULT_VMDK_ALLOWED_TYPES: tuple[str, ...] = ('streamOptimized',
                                               'monolithicSparse')

# The inspectors' chunk size in detect_file_format(); we keep its chunk
# boundaries so the inspectors see exactly what they would see there.
CHUNK = 4096

# inspector NAME -> Glance disk_format.  qed and luks are no Glance format;
# they keep their own name (and are always refused).
_GLANCE_FORMAT = {'gpt': 'raw'}

# Facts that only a qcow2 L2 scan can give are gathered while the tables fit
# in this many bytes of reads; beyond that the fact is None (unknown).
QCOW2_SCAN_BUDGET = 512 * 1024

_QCOW2_CRYPT = {0: None, 1: 'aes', 2: 'luks'}
# qcow2 incompatible feature bits (docs/interop/qcow2.txt).
_QCOW2_INCOMPAT = {0: 'dirty', 1: 'corrupt', 2: 'data_file',
                   3: 'compression_type', 4: 'extended_l2'}

# VMDK createType, lower-cased as format_inspector stores it -> VMware's
# spelling.
_VMDK_CREATE_TYPES = {t.lower(): t for t in (
    'monolithicSparse', 'streamOptimized', 'monolithicFlat',
    'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'vmfs', 'vmfsSparse',
    'vmfsThin', 'vmfsPreallocated', 'vmfsEagerZeroedThick', 'vmfsRaw',
    'vmfsRawDeviceMap', 'vmfsPassthroughRawDeviceMap', 'fullDevice',
    'partitionedDevice', 'custom', 'seSparse')}
# createType -> metadefs vmware_disktype (sparse, streamOptimized,
# preallocated).  Flat / preallocated layouts all map to 'preallocated'.
_VMDK_DISKTYPE = {
    'streamOptimized': 'streamOptimized',
    'monolithicSparse': 'sparse',
    'twoGbMaxExtentSparse': 'sparse',
    'vmfsSparse': 'sparse',
    'seSparse': 'sparse',
    'vmfsThin': 'sparse',
    'monolithicFlat': 'preallocated',
    'twoGbMaxExtentFlat': 'preallocated',
    'vmfs': 'preallocated',
    'vmfsPreallocated': 'preallocated',
    'vmfsEagerZeroedThick': 'preallocated',
}
# ddb.adapterType (lower-cased) -> (vmware_adaptertype in the metadefs
# spelling, hw_disk_bus, hw_scsi_model).  hw_scsi_model values are nova's
# SCSIModel names.  legacyESX (qemu-img can write it) has no metadefs value
# and no certain bus model: it sets nothing.
_VMDK_ADAPTERS: dict[str, tuple[str, str, str | None]] = {
    'ide': ('ide', 'ide', None),
    'lsilogic': ('lsiLogic', 'scsi', 'lsilogic'),
    'lsilogicsas': ('lsiLogicsas', 'scsi', 'lsisas1068'),
    'lsisas1068': ('lsiLogicsas', 'scsi', 'lsisas1068'),
    'buslogic': ('busLogic', 'scsi', 'buslogic'),
    'paravirtual': ('paraVirtual', 'scsi', 'vmpvscsi'),
    'pvscsi': ('paraVirtual', 'scsi', 'vmpvscsi'),
}
_VMDK_ADAPTER_SPELLING = {'legacyesx': 'legacyESX'}

_PROPERTY_FAMILY = {
    'vmware_disktype': 'vmware',
    'vmware_adaptertype': 'vmware',
    'vmware_hw_version': 'vmware',
    'hw_disk_bus': 'bus',
    'hw_scsi_model': 'bus',
    'hw_firmware_type': 'firmware',
}

# Magic numbers of formats with a header at offset 0: a file that starts with
# one but was detected as raw has a truncated or corrupt header.
_MAGICS = ((b'QFI\xfb', 'qcow2'), (b'KDMV', 'vmdk'), (b'conectix', 'vhd'),
           (b'vhdxfile', 'vhdx'), (b'QED\x00', 'qed'),
           (b'LUKS\xba\xbe', 'luks'))

_ESP_GUID = uuid.UUID('C12A7328-F81F-11D2-BA4B-00A0C93EC93B').bytes_le
# vhdx metadata items (MS-VHDX 2.6.2): File Parameters (flags bit 1:
# HasParent) and the Parent Locator a differencing disk carries.
_VHDX_FILE_PARAMETERS = uuid.UUID(
    'CAA16737-FA36-4D43-B3B6-33F0AA44E76B').bytes_le
_VHDX_PARENT_LOCATOR = uuid.UUID(
    'A8D35F2D-B30B-454D-ABF7-D3D84834AB0C').bytes_le
_VHDX_BAT_REGION = uuid.UUID('2DC27766-F623-4200-9D64-115E9BFD4A08').bytes_le
_VHDX_METADATA_REGION = uuid.UUID(
    '8B7CA206-4790-4B9A-B8FE-575F050F886E').bytes_le
_VHDX_VIRTUAL_SIZE = uuid.UUID(
    '2FA54224-CD1B-4876-B211-5DBED83BF4B8').bytes_le
_VHDX_LOGICAL_SECTOR = uuid.UUID(
    '8141BF1D-A96F-4709-BA47-F233A8FAAB5F').bytes_le
# BAT payload states that read as zeros (MS-VHDX 2.5.1.1): not present,
# undefined, zero, unmapped.  Anything else is read from the file.
_VHDX_ZERO_STATES = frozenset({0, 1, 2, 3})
# vhdx_payload_bytes reads at most this much BAT (2 Mi blocks: 2 TiB of
# 1 MiB blocks, 64 TiB of 32 MiB ones); beyond, it answers None.
VHDX_BAT_BUDGET = 16 * 1024 * 1024

# The most inspect_file() reads, whatever the bytes (the fuzzer checks it,
# counting os.pread): detection's regions, each with a chunk of alignment
# (vmdk descriptor 1 MiB, vhdx header, metadata table and item 64 KiB each,
# ISO 34 KiB, vmdk footer), then the facts of one format (the qcow2 scan
# budget, or a GPT's headers and 256 KiB of entries), head and footer.
READ_BUDGET = 2 * 1024 * 1024

# Compressed containers by magic bytes: (offset, magic, name).
_COMPRESSION_MAGICS = (
    (0, b'\x1f\x8b', 'gzip'),
    (0, b'\xfd7zXZ\x00', 'xz'),
    (0, b'(\xb5/\xfd', 'zstd'),
    (0, b'PK\x03\x04', 'zip'),
    (0, b'PK\x05\x06', 'zip'),
    (257, b'ustar', 'tar'),
)
_BZIP2_RE = re.compile(rb'BZh[1-9]1AY&SY')

_FILE_KINDS = ((stat.S_ISFIFO, 'FIFO'), (stat.S_ISCHR, 'character device'),
               (stat.S_ISBLK, 'block device'), (stat.S_ISSOCK, 'socket'),
               (stat.S_ISDIR, 'directory'))
_VHD_TYPES = {2: 'fixed', 3: 'dynamic', 4: 'differencing'}


@dataclasses.dataclass(frozen=True)
class InspectionResult:
    """What inspection learnt about one file; ``safe`` is the verdict."""

    path: str
    format: str
    inspector_name: str
    virtual_size: int
    file_size: int
    allocated_size: int
    failures: Mapping[str, str]
    facts: Mapping[str, object]
    properties: Mapping[str, str]
    property_families: Mapping[str, str]
    bytes_read: int = 0

    @property
    def safe(self) -> bool:
        return not self.failures

    @property
    def disk_formats(self) -> frozenset[str]:
        """The Glance disk_formats a user may declare for this content.

        ``format`` itself, and ``gpt`` too for a raw disk whose GPT is valid
        (both CRC32s; Glance 33 knows disk_format gpt).  Empty when the
        format is unknown.
        """
        if self.format == 'unknown':
            return frozenset()
        formats = {self.format}
        if self.format == 'raw' and self.inspector_name == 'gpt' \
                and self.facts.get('gpt_valid') is True:
            formats.add('gpt')
        return frozenset(formats)

    def accepts_declared(self, disk_format: str) -> bool:
        """Whether the declared ``disk_format`` matches the content."""
        return disk_format in self.disk_formats

    def failure_summary(self) -> str:
        """``name (reason), ...``: the text a user reads about a refusal."""
        return ', '.join('%s (%s)' % (name, reason)
                         for name, reason in sorted(self.failures.items()))

    def properties_in(self, families: Iterable[str]) -> dict[str, str]:
        """The properties of the given families only."""
        wanted = set(families)
        return {k: v for k, v in self.properties.items()
                if self.property_families.get(k) in wanted}

    def to_dict(self) -> dict[str, object]:
        return {
            'path': self.path,
            'format': self.format,
            'disk_formats': sorted(self.disk_formats),
            'inspector': self.inspector_name,
            'virtual_size': self.virtual_size,
            'file_size': self.file_size,
            'allocated_size': self.allocated_size,
            'safe': self.safe,
            'failures': sorted(self.failures),
            'failure_reasons': dict(sorted(self.failures.items())),
            'properties': dict(sorted(self.properties.items())),
            'property_families': dict(sorted(self.property_families.items())),
            'facts': {k: _jsonable(v) for k, v in sorted(self.facts.items())},
        }


def _jsonable(value: object) -> object:
    if isinstance(value, (tuple, list, set, frozenset)):
        return [_jsonable(v) for v in value]
    return value


# --- reading ---------------------------------------------------------------

class _Reader:
    """pread() on one descriptor, counting the bytes read."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b''
        data = os.pread(self.fd, min(length, self.size - offset), offset)
        self.bytes_read += len(data)
        return data


class _Detection:
    def __init__(self) -> None:
        self.inspector: fi.FileInspector | None = None
        self.error: str | None = None
        self.matches: list[str] = []
        # The partition table in front of a bootable ISO.
        self.hybrid: fi.FileInspector | None = None


def _next_wanted(inspector: fi.FileInspector, pos: int,
                 size: int) -> int | None:
    """The first offset >= pos that a region of the inspector still needs."""
    best: int | None = None
    for name in inspector.context_info:
        region = inspector.region(name)
        if isinstance(region, fi.EndCaptureRegion):
            start = max(pos, size - region.length)
        elif region.complete or region.offset + region.length <= pos:
            # Complete, or wholly behind us: streaming can never fill it.
            continue
        else:
            start = max(pos, region.offset)
        if best is None or start < best:
            best = start
    return best


def _skip_to(inspector: fi.FileInspector, pos: int) -> None:
    # The inspectors count the stream position themselves (eat_chunk adds each
    # chunk's length); advancing that counter is how a chunk nobody wants is
    # skipped without reading it.  Every region that could want the skipped
    # bytes is complete or starts after them (see _next_wanted), so the
    # inspector's state is what it would be had it eaten them.
    inspector._total_count = pos


def _complete(inspector: fi.FileInspector) -> bool:
    try:
        return bool(inspector.complete)
    except Exception:  # noqa: BLE001 - see _matches
        return True


def _matches(inspector: fi.FileInspector) -> bool:
    # format_inspector's properties can raise on bytes its parser left half
    # done (oslo.utils 10.2: a VMDK whose text descriptor was never parsed
    # has no vmdktype; found by fuzzing, and detect_file_format raises the
    # AttributeError too).  Such an inspector has not matched.
    try:
        return bool(inspector.format_match)
    except Exception:  # noqa: BLE001 - any parser state error: no match
        return False


def _detect(reader: _Reader) -> _Detection:
    """detect_file_format() without reading what nobody looks at.

    Same inspectors, same chunk boundaries, same error handling and the same
    decision rule as ``InspectWrapper.formats``; tests check it agrees with
    ``format_inspector.detect_file_format`` on the whole corpus.
    """
    inspectors = [cls() for cls in fi.ALL_FORMATS.values()]
    errored: set[int] = set()
    non_raw = [i for i in inspectors if i.NAME != 'raw']
    raw = [i for i in inspectors if i.NAME == 'raw'][0]
    result = _Detection()
    pos = 0
    finished = False
    while True:
        live = [i for i in inspectors if id(i) not in errored]
        if not finished:
            wants = [w for w in (_next_wanted(i, pos, reader.size)
                                 for i in live if i is not raw)
                     if w is not None]
            nxt = min(wants) if wants else reader.size
            nxt -= nxt % CHUNK
            if nxt > pos:
                pos = nxt
                for i in live:
                    _skip_to(i, pos)
            chunk = reader.read(pos, CHUNK)
            if not chunk:
                for i in inspectors:
                    i.finish()
                finished = True
            else:
                pos += len(chunk)
                for i in live:
                    try:
                        i.eat_chunk(chunk)
                    except Exception:  # noqa: BLE001 - as InspectWrapper does
                        errored.add(id(i))
        if not finished and not all(_complete(i) for i in non_raw):
            continue
        matches = [i for i in non_raw if _matches(i)]
        result.matches = sorted(i.NAME for i in matches)
        if result.matches == ['gpt', 'iso']:
            # Glance's rule (glance/location.py): a bootable-as-block ISO
            # legitimately has an MBR or GPT in front; any other pair (a
            # qcow2 header in the system area) stays refused.
            result.inspector = [i for i in matches if i.NAME == 'iso'][0]
            result.hybrid = [i for i in matches if i.NAME == 'gpt'][0]
        elif len(matches) > 1:
            result.error = ('several formats match: %s'
                            % ', '.join(result.matches))
        elif matches:
            result.inspector = matches[0]
        else:
            result.inspector = raw
        return result


# --- facts per format --------------------------------------------------------

class _Findings:
    def __init__(self) -> None:
        self.failures: dict[str, str] = {}
        self.facts: dict[str, object] = {}
        self.properties: dict[str, str] = {}
        self.virtual_size: int | None = None
        self.format: str | None = None

    def prop(self, key: str, value: str) -> None:
        self.properties[key] = value


def _qcow2_facts(insp: fi.QcowInspector, reader: _Reader,
                 f: _Findings) -> None:
    info = insp.qemu_header_info  # the inspector's own parse of bytes 0..31
    header = bytes(insp.region('header').data)
    version = int(info.get('version', 0))
    cluster_bits = int(info.get('cluster_bits', 0))
    f.facts['qcow2_version'] = version
    f.facts['qcow2_compat'] = {2: '0.10', 3: '1.1'}.get(version)
    f.facts['cluster_size'] = (1 << cluster_bits
                               if 9 <= cluster_bits <= 21 else None)
    # The inspector parses the first 32 bytes only; the rest of the header
    # it captured holds encryption, the L1 table and the feature bits.
    crypt, l1_size, l1_offset = struct.unpack('>IIQ', header[32:48])
    f.facts['encrypted'] = crypt != 0
    f.facts['encryption_format'] = _QCOW2_CRYPT.get(crypt,
                                                    'unknown(%d)' % crypt)
    if crypt:
        f.failures['encryption'] = ('qcow2 image is encrypted (%s)'
                                    % f.facts['encryption_format'])
    incompat = 0
    if version >= 3:
        (incompat,) = struct.unpack('>Q', header[72:80])
        hlen = struct.unpack('>I', header[100:104])[0]
        compression = header[104] if hlen > 104 else 0
        f.facts['compression_type'] = {0: 'zlib', 1: 'zstd'}.get(
            compression, 'unknown')
    else:
        f.facts['compression_type'] = 'zlib'
    f.facts['incompatible_features'] = sorted(
        _QCOW2_INCOMPAT.get(b, 'bit%d' % b) for b in range(64)
        if incompat & (1 << b))
    f.facts['backing_file'] = bool(info.get('bf_offset'))
    f.facts['data_file'] = bool(incompat & 4)
    f.facts['compressed'] = _qcow2_compressed(
        reader, cluster_bits, l1_size, l1_offset, bool(incompat & 16))


def _qcow2_compressed(reader: _Reader, cluster_bits: int, l1_size: int,
                      l1_offset: int, extended_l2: bool) -> bool | None:
    """Whether any cluster is compressed, when the L1+L2 tables are small.

    Cost is one read of the L1 table and of each L2 table, so it is only done
    while that stays under QCOW2_SCAN_BUDGET; otherwise None (unknown).
    """
    if not 9 <= cluster_bits <= 21:
        return None
    cluster = 1 << cluster_bits
    if l1_size * 8 > QCOW2_SCAN_BUDGET:
        return None
    l1 = reader.read(l1_offset, l1_size * 8)
    if len(l1) != l1_size * 8:
        return None
    l2_offsets = [e & 0x00FFFFFFFFFFFE00
                  for (e,) in struct.iter_unpack('>Q', l1)]
    l2_offsets = [o for o in l2_offsets if o]
    if len(l1) + len(l2_offsets) * cluster > QCOW2_SCAN_BUDGET:
        return None
    step = 16 if extended_l2 else 8
    for off in l2_offsets:
        table = reader.read(off, cluster)
        for i in range(0, len(table) - 7, step):
            if table[i] & 0x40:  # bit 62: compressed cluster descriptor
                return True
    return False


def _vmdk_facts(insp: fi.VMDKInspector, f: _Findings,
                allowed: Iterable[str]) -> None:
    # The inspector keeps the descriptor it validated, lower-cased, in
    # desc_text (ddb.* lines included): the facts come from that text.
    text = insp.desc_text or ''
    lowered = getattr(insp, 'vmdktype', '')
    # oslo.utils 10.2 takes all the text after createType=" when the closing
    # quote is missing (find() is -1): tens of KiB in the failure reason.
    # Found by fuzzing; such a value names no type.
    malformed = len(lowered) > 64 or not lowered.isprintable()
    create_type = None if malformed else _VMDK_CREATE_TYPES.get(lowered,
                                                                 lowered)
    f.facts['vmdk_create_type'] = create_type
    allowed_l = {a.lower() for a in allowed}
    if insp.desc_text is not None and (malformed or lowered not in allowed_l):
        f.failures['vmdk_create_type'] = (
            'vmdk createType %s is not allowed (allowed: %s)'
            % ('malformed' if malformed else create_type or 'missing',
               ', '.join(sorted(allowed))))
    f.facts['compressed'] = True if create_type == 'streamOptimized' else None
    disktype = _VMDK_DISKTYPE.get(create_type or '')
    if disktype:
        f.prop('vmware_disktype', disktype)
    # Blanks within the line only: with \s, "^\s*" started at every line of
    # a descriptor of newlines and ran to its end (1 MiB of newlines took
    # minutes; found while bounding the fuzzer's read budget).
    ddb = dict(re.findall(r'^[ \t]*ddb\.([a-z0-9_.]+)[ \t]*=[ \t]*'
                          r'"([^"\n]{0,64})"', text, re.MULTILINE))
    adapter = ddb.get('adaptertype')
    if adapter is not None:
        mapped = _VMDK_ADAPTERS.get(adapter)
        f.facts['vmdk_adapter_type'] = (
            mapped[0] if mapped
            else _VMDK_ADAPTER_SPELLING.get(adapter, adapter))
        if mapped:
            f.prop('vmware_adaptertype', mapped[0])
            f.prop('hw_disk_bus', mapped[1])
            if mapped[2]:
                f.prop('hw_scsi_model', mapped[2])
    hw = ddb.get('virtualhwversion')
    if hw is not None and hw.isdigit():
        f.facts['virtual_hw_version'] = int(hw)
        f.prop('vmware_hw_version', hw)


def _gpt_facts(reader: _Reader, mbr: bytes, f: _Findings,
               set_properties: bool = True) -> None:
    """Partition table kind, and an EFI System Partition in a valid GPT.

    format_inspector reads the MBR only; the GPT header and entries (LBA 1
    and the entry array it names, normally 16 KiB) are read here, and only
    trusted when both CRC32s match.
    """
    types = [mbr[446 + 16 * i + 4] for i in range(4)]
    if 0xEE not in types:
        f.facts['partition_table'] = 'mbr'
        return
    f.facts['partition_table'] = 'gpt'
    f.facts['gpt_esp'] = False
    for sector in (512, 4096):
        hdr = reader.read(sector, 92)
        if len(hdr) < 92 or hdr[:8] != b'EFI PART':
            continue
        (hsize, hcrc) = struct.unpack('<II', hdr[12:20])
        if not 92 <= hsize <= sector:
            continue
        full = bytearray(reader.read(sector, hsize))
        full[16:20] = b'\0\0\0\0'
        if zlib.crc32(full) != hcrc:
            f.facts['gpt_valid'] = False
            return
        lba, count, esize, ecrc = struct.unpack('<QIII', hdr[72:92])
        if esize < 128 or esize % 8 or count * esize > 256 * 1024:
            f.facts['gpt_valid'] = False
            return
        entries = reader.read(lba * sector, count * esize)
        if zlib.crc32(entries) != ecrc:
            f.facts['gpt_valid'] = False
            return
        f.facts['gpt_valid'] = True
        f.facts['gpt_esp'] = any(
            entries[i:i + 16] == _ESP_GUID
            for i in range(0, len(entries), esize))
        if f.facts['gpt_esp'] and set_properties:
            f.prop('hw_firmware_type', 'uefi')
        return
    f.facts['gpt_valid'] = False


def _vhd_footer(data: bytes) -> dict[str, Any] | None:
    """Parse a 512-byte VHD footer whose checksum is right, else None."""
    if len(data) < 512 or data[:8] != b'conectix':
        return None
    (checksum,) = struct.unpack('>I', data[64:68])
    summed = sum(data[:64]) + sum(data[68:512])
    if (~summed & 0xFFFFFFFF) != checksum:
        return None
    (current_size,) = struct.unpack('>Q', data[48:56])
    (disk_type,) = struct.unpack('>I', data[60:64])
    return {'current_size': current_size,
            'disk_type': _VHD_TYPES.get(disk_type, 'unknown(%d)' % disk_type)}


def _vhd_facts(insp: fi.VHDInspector, f: _Findings) -> None:
    footer = _vhd_footer(bytes(insp.region('header').data))
    if footer is None:
        f.failures['footer'] = 'vhd footer checksum does not match'
        return
    f.facts['vhd_disk_type'] = footer['disk_type']
    if footer['disk_type'] != 'dynamic':
        # A differencing disk names a parent file, like a backing file.
        f.failures['backing_file'] = ('vhd image is a %s disk'
                                      % footer['disk_type'])


def _vhdx_facts(insp: fi.VHDXInspector, reader: _Reader,
                f: _Findings) -> None:
    """A differencing vhdx: HasParent or a Parent Locator item.

    The inspector captured the metadata table (its entries); the File
    Parameters item it names is 8 bytes read here.
    """
    if not insp.has_region('metadata'):
        return
    region = insp.region('metadata')
    table = bytes(region.data)
    if len(table) < 32 or table[:8] != b'metadata':
        return
    (count,) = struct.unpack('<H', table[10:12])
    locator = False
    has_parent = False
    for i in range(min(count, 2047)):
        entry = table[32 + 32 * i:64 + 32 * i]
        if len(entry) < 32:
            break
        if entry[:16] == _VHDX_PARENT_LOCATOR:
            locator = True
        elif entry[:16] == _VHDX_FILE_PARAMETERS:
            (offset,) = struct.unpack('<I', entry[16:20])
            params = reader.read(region.offset + offset, 8)
            if len(params) == 8:
                has_parent = bool(struct.unpack('<I', params[4:8])[0] & 2)
    f.facts['vhdx_has_parent'] = has_parent
    f.facts['vhdx_parent_locator'] = locator
    if has_parent or locator:
        f.failures['backing_file'] = ('vhdx image is a differencing disk '
                                      '(it names a parent)')


def vhdx_payload_bytes(path: str) -> int | None:
    """Guest bytes of a vhdx that are read from the file, from its BAT.

    Each payload block whose BAT state is not a zero state counts its
    block size once per guest block (a BAT that names one file block
    everywhere counts the whole disk), the last block clipped to the
    virtual size.  qemu 7.2's vhdx driver reports no block status, so this
    is what makes a sparse vhdx count its data rather than its virtual size.

    The layout is read as qemu reads it (the region table at 192 KiB, the
    first metadata table, qemu's BAT entry count with a sector-bitmap
    entry after every chunk_ratio payload entries).  None (unknown) when a
    header names a log to replay (the BAT on disk would not be the one
    used), when anything does not parse, or when the BAT exceeds
    VHDX_BAT_BUDGET; callers then keep an upper bound.  Reads are bounded:
    two 4 KiB headers, the region and metadata tables, four metadata items,
    the BAT.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return _vhdx_payload(_Reader(fd, st.st_size))
    finally:
        os.close(fd)


def _vhdx_payload(reader: _Reader) -> int | None:
    if reader.read(0, 8) != b'vhdxfile':
        return None
    for offset in (64 * 1024, 128 * 1024):
        header = reader.read(offset, 64)
        if len(header) < 64:
            return None
        if header[:4] == b'head' and header[48:64] != bytes(16):
            return None  # a log to replay
    regions = reader.read(192 * 1024, 64 * 1024)
    if len(regions) < 16 or regions[:4] != b'regi':
        return None
    (count,) = struct.unpack('<I', regions[8:12])
    found: dict[bytes, tuple[int, int]] = {}
    for i in range(min(count, 2047)):
        entry = regions[16 + 32 * i:48 + 32 * i]
        if len(entry) < 32:
            return None
        offset, length = struct.unpack('<QI', entry[16:28])
        if entry[:16] in found:
            return None
        found[entry[:16]] = (offset, length)
    if _VHDX_BAT_REGION not in found or _VHDX_METADATA_REGION not in found:
        return None
    meta_offset = found[_VHDX_METADATA_REGION][0]
    table = reader.read(meta_offset, 64 * 1024)
    if len(table) < 32 or table[:8] != b'metadata':
        return None
    (items,) = struct.unpack('<H', table[10:12])
    values: dict[bytes, bytes] = {}
    for i in range(min(items, 2047)):
        entry = table[32 + 32 * i:64 + 32 * i]
        if len(entry) < 32:
            return None
        if entry[:16] in (_VHDX_FILE_PARAMETERS, _VHDX_VIRTUAL_SIZE,
                          _VHDX_LOGICAL_SECTOR):
            (offset,) = struct.unpack('<I', entry[16:20])
            values[entry[:16]] = reader.read(meta_offset + offset, 8)
    try:
        block_size, flags = struct.unpack(
            '<II', values[_VHDX_FILE_PARAMETERS])
        (virtual,) = struct.unpack('<Q', values[_VHDX_VIRTUAL_SIZE])
        (sector,) = struct.unpack('<I', values[_VHDX_LOGICAL_SECTOR][:4])
    except (KeyError, struct.error):
        return None
    if flags & 2 or sector not in (512, 4096) or \
            not (1 << 20) <= block_size <= (256 << 20) or \
            block_size & (block_size - 1):
        return None
    chunk_ratio = (1 << 23) * sector // block_size
    blocks = -(-virtual // block_size)
    if blocks == 0:
        return 0
    entries = blocks + (blocks - 1) // chunk_ratio
    bat_offset, bat_length = found[_VHDX_BAT_REGION]
    if entries * 8 > min(bat_length, VHDX_BAT_BUDGET):
        return None
    total = 0
    block = 0
    pos = 0
    step = 1 << 20
    while pos < entries * 8:
        data = reader.read(bat_offset + pos, min(step, entries * 8 - pos))
        if len(data) % 8 or not data:
            return None
        for j, (value,) in enumerate(struct.iter_unpack('<Q', data)):
            index = pos // 8 + j
            if index % (chunk_ratio + 1) == chunk_ratio:
                continue  # a sector bitmap entry
            if value & 7 not in _VHDX_ZERO_STATES:
                total += min(block_size, virtual - block * block_size)
            block += 1
        pos += len(data)
    return total


def _compression(head: bytes) -> str | None:
    """The compressed container ``head`` (the first 512 bytes) starts."""
    for offset, magic, name in _COMPRESSION_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return name
    if _BZIP2_RE.match(head):
        return 'bzip2'
    return None


def _file_kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return 'special file'


# --- the one entry point -----------------------------------------------------

def inspect_file(
        path: str,
        vmdk_allowed_types: Iterable[str] = DEFAULT_VMDK_ALLOWED_TYPES,
) -> InspectionResult:
    """Inspect the image at ``path``.

    Never raises for a bad or hostile image (``failures`` says why it is
    refused).  Raises ``exception.NotRegularFile`` (``kind``: FIFO,
    character device, block device, socket, directory) without reading or
    blocking, ``exception.FileChanged`` when the file's size changes while
    it is read, and OSError when it cannot be read.
    """
    # stat first: opening a FIFO would block until a writer comes, and a
    # socket cannot be opened at all.
    kind = _file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise exception.NotRegularFile(path=path, kind=kind)
    # O_NONBLOCK: if it was swapped for a FIFO since, open must not wait.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        kind = _file_kind(st.st_mode)
        if kind is not None:
            raise exception.NotRegularFile(path=path, kind=kind)
        reader = _Reader(fd, st.st_size)
        f = _Findings()
        inspector_name = _inspect(reader, f, tuple(vmdk_allowed_types))
        if os.fstat(fd).st_size != st.st_size:
            raise exception.FileChanged(path=path)
    finally:
        os.close(fd)
    families = {k: _PROPERTY_FAMILY[k] for k in f.properties}
    return InspectionResult(
        path=path,
        format=f.format or 'unknown',
        inspector_name=inspector_name,
        virtual_size=f.virtual_size if f.virtual_size is not None else 0,
        file_size=st.st_size,
        allocated_size=st.st_blocks * 512,
        failures=dict(sorted(f.failures.items())),
        facts=dict(sorted(f.facts.items())),
        properties=dict(sorted(f.properties.items())),
        property_families=families,
        bytes_read=reader.bytes_read,
    )


def _inspect(reader: _Reader, f: _Findings,
             vmdk_allowed_types: tuple[str, ...]) -> str:
    detection = _detect(reader)
    insp = detection.inspector
    if insp is None:
        f.failures['format_detection'] = str(detection.error)
        f.facts['matched_formats'] = detection.matches
        return 'unknown'
    name = insp.NAME
    f.format = _GLANCE_FORMAT.get(name, name)
    if detection.hybrid is not None:
        # Facts only: a hybrid ISO's boot firmware is the ISO's business.
        f.facts['matched_formats'] = detection.matches
        _gpt_facts(reader, bytes(detection.hybrid.region('mbr').data), f,
                   set_properties=False)
    try:
        insp.safety_check()
    except fi.SafetyCheckFailed as exc:
        for check, reason in exc.failures.items():
            f.failures[str(check)] = str(reason)
    except fi.ImageFormatError as exc:
        f.failures['format_detection'] = str(exc)
    except Exception:  # noqa: BLE001 - the parser's own bug: refuse
        # format_inspector's checks parse headers too (struct.error on a
        # short one); an image its checks cannot read is not safe.
        f.failures['format_detection'] = (
            'the %s header cannot be parsed' % name)

    head = reader.read(0, 512) if name in ('raw', 'gpt') else b''
    if name == 'raw':
        f.virtual_size = reader.size
        for magic, fmt in _MAGICS:
            if head.startswith(magic):
                f.failures['format_detection'] = (
                    'file starts like %s but its header is truncated or '
                    'corrupt' % fmt)
        container = _compression(head)
        if container is not None:
            f.facts['compression'] = container
    elif name == 'gpt':
        f.virtual_size = reader.size
        _gpt_facts(reader, bytes(insp.region('mbr').data), f)
    elif name == 'qed':
        f.virtual_size = 0
    elif name == 'luks':
        f.failures['encryption'] = 'image is LUKS encrypted'
        try:
            payload = int(insp.header_items['payload_offset']) * 512 \
                if isinstance(insp, fi.LUKSInspector) else 0
        except (struct.error, KeyError, ValueError):
            # The magic matched but the 592-byte header is cut short
            # (header_items raised struct.error; found by fuzzing).
            f.failures['format_detection'] = ('luks header is truncated or '
                                              'corrupt')
            payload = 0
        f.virtual_size = max(reader.size - payload, 0)
    else:
        f.virtual_size = insp.virtual_size
    if isinstance(insp, fi.QcowInspector):
        _qcow2_facts(insp, reader, f)
    elif isinstance(insp, fi.VMDKInspector):
        _vmdk_facts(insp, f, vmdk_allowed_types)
    elif isinstance(insp, fi.VHDInspector):
        _vhd_facts(insp, f)
    elif isinstance(insp, fi.VHDXInspector):
        _vhdx_facts(insp, reader, f)

    if name in ('raw', 'gpt') and reader.size >= 1024:
        # A fixed VHD is raw data followed by a footer, which
        # format_inspector (reading from the start) cannot see.
        footer = _vhd_footer(reader.read(reader.size - 512, 512))
        if footer and footer['disk_type'] == 'fixed' \
                and footer['current_size'] == reader.size - 512:
            f.format = 'vhd'
            f.facts['vhd_disk_type'] = 'fixed'
            f.virtual_size = footer['current_size']
    return name
