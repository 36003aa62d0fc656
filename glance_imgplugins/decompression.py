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

"""Unpack a compressed image safely: the pure core of ``decompression``.

No Glance and no oslo.config here.  What it does:

* recognises the container **by its magic bytes** (never by name): gzip,
  xz, bzip2, zstd, zip, tar, and a tar inside one of the four compressors
  (``tar+xz`` and friends: one archive level, as distributions publish);
* streams the payload to an output file in bounded chunks (never the whole
  image in memory), writing runs of zeros as holes so a sparse raw stays
  sparse;
* stops at the first chunk that would take the output past a
  :class:`Bound` and raises :class:`exception.DecompressedSizeTooLarge`
  naming it; *logical* bounds count every decompressed byte, holes included
  (a stream of terabytes of zeros costs nothing to write but is still
  refused), *data* bounds only the bytes actually written (staging space);
* refuses with :class:`exception.ArchiveRefused` anything it cannot unpack
  safely: an archive inside the archive, a zip with several members or an
  encrypted one, a tar holding links, devices or several files, a
  truncated or corrupt stream, data after the end of the stream, a stream
  that needs more than ``memory_limit`` to decompress.

``inspect_prefix`` gives offline inspection the container and the inner
image's verdict from a bounded decompressed prefix.
"""

from __future__ import annotations

import bz2
import dataclasses
import lzma
import os
import queue
import stat
import struct
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO, Protocol, cast

import zstandard

from glance_imgplugins import exception
from glance_imgplugins import inspection

#: The compressors (a stream of one file) and the archives (members).
COMPRESSORS: tuple[str, ...] = ('gzip', 'xz', 'bzip2', 'zstd')
ARCHIVES: tuple[str, ...] = ('zip', 'tar')
#: Every value ``Result.container`` can take.
CONTAINERS: tuple[str, ...] = COMPRESSORS + ARCHIVES + tuple(
    'tar+' + c for c in COMPRESSORS)

#: Bytes read from the compressed file per call and produced per call.
READ_SIZE = 1 << 20
CHUNK_SIZE = 1 << 20
#: Pieces the writer thread may be behind the decoder.
WRITE_QUEUE = 4
#: Zero runs shorter than this inside data are written as data; the edges of
#: every data run are trimmed at page precision.
HOLE_BLOCK = 64 * 1024
PAGE = 4096
#: Default memory a decoder may use (an xz dictionary, a zstd window).
DEFAULT_MEMORY_LIMIT = 256 << 20
#: Tar headers, long names, pax records and sparse maps of one member may
#: take this many decompressed bytes: tarfile holds them in memory.
TAR_METADATA_LIMIT = 8 << 20
#: A zip may hold folder entries besides its file, up to these.
ZIP_MAX_ENTRIES = 64
ZIP_MAX_DIRECTORY = 1 << 20
#: Decompressed prefix ``inspect_prefix`` reads by default.
DEFAULT_PREFIX = 64 << 20

_ZEROS = bytes(max(CHUNK_SIZE, READ_SIZE, HOLE_BLOCK))

_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b'\x1f\x8b\x08', 'gzip'),
    (0, b'\xfd7zXZ\x00', 'xz'),
    (0, b'(\xb5/\xfd', 'zstd'),
    (0, b'PK\x03\x04', 'zip'),
    (0, b'PK\x05\x06', 'zip'),   # an empty zip
    (257, b'ustar', 'tar'),
)
_BZIP2_MAGIC = b'BZh'
_BZIP2_BLOCK = (b'1AY&SY', b'\x17rE8P\x90')  # a block, or the end of stream
_ZSTD_MAGIC = 0xFD2FB528

_TAR_KINDS: tuple[tuple[str, str], ...] = (
    ('issym', 'a symbolic link'), ('islnk', 'a hard link'),
    ('ischr', 'a character device'), ('isblk', 'a block device'),
    ('isfifo', 'a FIFO'))
_ZIP_METHODS = {zipfile.ZIP_STORED: 'stored', zipfile.ZIP_DEFLATED: 'deflate',
                zipfile.ZIP_BZIP2: 'bzip2'}
_ZIP_UNSUPPORTED = {9: 'deflate64', 14: 'lzma', 93: 'zstd', 95: 'xz',
                    98: 'ppmd', 99: 'AES encryption'}


def detect_container(head: bytes) -> str | None:
    """The container ``head`` (a file's first 512 bytes) starts, or None.

    Only the magic bytes count; a tar is recognised by its ustar header
    (POSIX and GNU tar both write one).
    """
    for offset, magic, name in _MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return name
    if (head[:3] == _BZIP2_MAGIC and head[3:4] in b'123456789'
            and head[3:4] and head[4:10] in _BZIP2_BLOCK):
        return 'bzip2'
    return None


@dataclasses.dataclass(frozen=True)
class Bound:
    """A limit on the decompressed output, named as the user reads it.

    ``name`` is what the refusal names (an option, e.g. ``[decompression]
    max_ratio``).  ``data_only`` bounds count only the bytes written (holes
    are free: staging space); the others every byte, holes included.
    """

    limit: int
    name: str
    data_only: bool = False


@dataclasses.dataclass(frozen=True)
class Result:
    """What one decompression did."""

    container: str
    #: The tar or zip member's name (the archive's own text), else None.
    member: str | None
    #: Bytes of the output, holes included.
    size: int
    #: Bytes actually written (the rest are holes).
    data_bytes: int
    compressed_size: int


# --- reading the compressed file -------------------------------------------

class _Source:
    """Sequential reads of the staged file, up to ``end``, counted."""

    def __init__(self, fobj: BinaryIO, start: int, end: int) -> None:
        self.fobj = fobj
        self.pos = start
        self.end = end
        fobj.seek(start)

    def read(self, n: int = READ_SIZE) -> bytes:
        n = min(n, self.end - self.pos)
        if n <= 0:
            return b''
        data = self.fobj.read(n)
        self.pos += len(data)
        return data


class _Decoder(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int) -> bytes: ...


class _ZlibDecoder:
    """zlib's decompressobj behind the lzma/bz2 decoder interface."""

    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._d.decompress(data or self._d.unconsumed_tail,
                                  max_length)


def _new_decoder(codec: str, memory_limit: int) -> _Decoder:
    if codec == 'gzip':
        return _ZlibDecoder(31)
    if codec == 'deflate':
        return _ZlibDecoder(-15)
    if codec == 'xz':
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ,
                                     memlimit=memory_limit)
    return bz2.BZ2Decompressor()


_STREAM_MAGIC = {'gzip': b'\x1f\x8b', 'xz': b'\xfd7zXZ\x00',
                 'bzip2': _BZIP2_MAGIC}


class _Stream:
    """Decompressed bytes of a gzip, xz or bzip2 file (several concatenated
    streams allowed, as pigz/pxz/pbzip2 write them; zero padding after the
    last allowed, anything else after it refused)."""

    def __init__(self, codec: str, source: _Source, container: str,
                 memory_limit: int, multi: bool = True) -> None:
        self.codec = codec
        self.source = source
        self.container = container
        self.memory_limit = memory_limit
        self.multi = multi
        self.decoder = _new_decoder(codec, memory_limit)
        self.pending = b''
        self.done = False

    def _refuse(self, reason: str) -> exception.ArchiveRefused:
        return exception.ArchiveRefused(container=self.container,
                                        reason=reason)

    def read(self, n: int) -> bytes:
        while not self.done:
            d = self.decoder
            if d.eof:
                self._next_stream()
                continue
            data = b''
            if d.needs_input:
                data, self.pending = (self.pending or self.source.read()), b''
            try:
                out = d.decompress(data, n)
            except (zlib.error, lzma.LZMAError, OSError, EOFError,
                    ValueError) as exc:
                raise self._refuse(self._reason(exc)) from None
            if out:
                return out
            if not data and d.needs_input and not d.eof:
                raise self._refuse('the compressed data is truncated')
        return b''

    def _reason(self, exc: BaseException) -> str:
        text = str(exc).lower()
        if 'memory' in text:
            return ('it needs more than %d MiB of memory to decompress'
                    % (self.memory_limit >> 20))
        return 'the compressed data is corrupt'

    def _next_stream(self) -> None:
        rest = self.decoder.unused_data
        magic = _STREAM_MAGIC.get(self.codec, b'')
        while True:
            rest = rest.lstrip(b'\0')
            if len(rest) >= len(magic) or not magic:
                break
            more = self.source.read()
            if not more:
                break
            rest += more
        if not rest:
            self.done = True
            return
        if self.multi and magic and rest.startswith(magic):
            self.decoder = _new_decoder(self.codec, self.memory_limit)
            self.pending = rest
            return
        raise self._refuse('there is data after the end of the compressed '
                           'stream')


class _ZstdStream:
    """Decompressed bytes of a zstd file.

    python-zstandard's stream_reader bounds every read but ends silently on
    a truncated frame, so the frame and block headers are walked first
    (a few bytes per 128 KiB block): the file must be whole frames.
    """

    def __init__(self, fobj: BinaryIO, size: int, container: str,
                 memory_limit: int) -> None:
        self.container = container
        _zstd_check_frames(fobj, size, container)
        fobj.seek(0)
        self.source = _Source(fobj, 0, size)
        dctx = zstandard.ZstdDecompressor(max_window_size=memory_limit)
        # stream_reader only calls read() on its source.
        self.reader = dctx.stream_reader(cast(BinaryIO, self.source),
                                         read_size=READ_SIZE,
                                         read_across_frames=True)

    def read(self, n: int) -> bytes:
        try:
            return self.reader.read(n)
        except zstandard.ZstdError as exc:
            reason = 'the compressed data is corrupt'
            if 'window' in str(exc).lower() or 'memory' in str(exc).lower():
                reason = 'it needs too much memory to decompress'
            raise exception.ArchiveRefused(container=self.container,
                                           reason=reason) from None


def _zstd_check_frames(fobj: BinaryIO, size: int, container: str) -> None:
    """Walk the zstd frames (RFC 8878): whole frames up to the end."""
    def refuse(reason: str) -> exception.ArchiveRefused:
        return exception.ArchiveRefused(container=container, reason=reason)

    def pread(offset: int, n: int) -> bytes:
        fobj.seek(offset)
        return fobj.read(n)

    pos = 0
    while pos < size:
        head = pread(pos, 14)
        if len(head) < 8:
            raise refuse('the compressed data is truncated')
        (magic,) = struct.unpack('<I', head[:4])
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
            (length,) = struct.unpack('<I', head[4:8])
            pos += 8 + length
            if pos > size:
                raise refuse('the compressed data is truncated')
            continue
        if magic != _ZSTD_MAGIC:
            raise refuse('there is data after the end of the compressed '
                         'stream')
        fhd = head[4]
        fcs_flag = fhd >> 6
        single = (fhd >> 5) & 1
        checksum = (fhd >> 2) & 1
        did = (0, 1, 2, 4)[fhd & 3]
        fcs = (1 if single else 0, 2, 4, 8)[fcs_flag]
        pos += 4 + 1 + (0 if single else 1) + did + fcs
        while True:
            block = pread(pos, 3)
            if len(block) < 3:
                raise refuse('the compressed data is truncated')
            (value,) = struct.unpack('<I', block + b'\0')
            last, btype, bsize = value & 1, (value >> 1) & 3, value >> 3
            if btype == 3:
                raise refuse('the compressed data is corrupt')
            pos += 3 + (1 if btype == 1 else bsize)
            if pos > size:
                raise refuse('the compressed data is truncated')
            if last:
                break
        pos += 4 if checksum else 0
        if pos > size:
            raise refuse('the compressed data is truncated')


class _Reader(Protocol):
    def read(self, n: int) -> bytes: ...


class _Peek:
    """A reader with its first bytes read ahead (to look for an archive
    inside), and a count of the bytes it produced."""

    def __init__(self, reader: _Reader, n: int = 512) -> None:
        self.reader = reader
        self.count = 0
        self.head = b''
        while len(self.head) < n:
            more = reader.read(n - len(self.head))
            if not more:
                break
            self.head += more
        self._buffer = self.head
        #: Reads past this many bytes raise ``limit_error`` (tar metadata).
        self.limit: int | None = None
        self.limit_error: Exception | None = None
        #: Logical bounds on the stream itself (tar metadata, trailing
        #: zeros): checked as bytes come out.
        self.bounds: Sequence[Bound] = ()
        self.container = ''

    def read(self, n: int = CHUNK_SIZE) -> bytes:
        if self._buffer:
            # The read-ahead and the rest of the first chunk together, so
            # chunks stay aligned for the writer.
            out, self._buffer = self._buffer[:n], self._buffer[n:]
            if len(out) < n and not self._buffer:
                out += self.reader.read(n - len(out))
        else:
            out = self.reader.read(n)
        self.count += len(out)
        if self.limit is not None and self.count > self.limit \
                and self.limit_error is not None:
            raise self.limit_error
        for bound in self.bounds:
            if self.count > bound.limit + TAR_METADATA_LIMIT:
                raise exception.DecompressedSizeTooLarge(
                    container=self.container, limit=bound.limit,
                    bound=bound.name)
        return out


# --- writing the output -----------------------------------------------------

class _SparseWriter:
    """pwrite()s the data runs, leaves holes for zero runs, enforces the
    bounds before anything past them is written.

    Input is regrouped into CHUNK_SIZE pieces at CHUNK_SIZE offsets, so
    holes fall on page boundaries whatever sizes the decoders return.  With
    ``threaded`` the pieces are written by a thread of its own, at most
    WRITE_QUEUE behind: decoding (which releases the GIL) and writing
    overlap.
    """

    def __init__(self, fd: int, bounds: Sequence[Bound], container: str,
                 threaded: bool = False) -> None:
        self.fd = fd
        #: Bytes taken in (the output's size once finished).
        self.size = 0
        self.data_bytes = 0
        self.container = container
        self._offset = 0  # where the next processed piece goes
        self._pending = bytearray()
        self.logical = sorted((b for b in bounds if not b.data_only),
                              key=lambda b: b.limit)
        self.data = sorted((b for b in bounds if b.data_only),
                           key=lambda b: b.limit)
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=WRITE_QUEUE)
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name='decompression-writer')
            self._thread.start()

    def _refuse(self, bound: Bound) -> exception.DecompressedSizeTooLarge:
        return exception.DecompressedSizeTooLarge(
            container=self.container, limit=bound.limit, bound=bound.name)

    def write(self, buf: bytes) -> None:
        n = len(buf)
        if self.logical and self.size + n > self.logical[0].limit:
            raise self._refuse(self.logical[0])
        self.size += n
        if not self._pending and n == CHUNK_SIZE:
            self._submit(buf)
            return
        self._pending += buf
        while len(self._pending) >= CHUNK_SIZE:
            piece = bytes(self._pending[:CHUNK_SIZE])
            del self._pending[:CHUNK_SIZE]
            self._submit(piece)

    def _submit(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._queue is None:
            self._process(piece)
        else:
            self._queue.put(piece)

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            piece = self._queue.get()
            if piece is None:
                return
            if self._error is not None:
                continue  # drain: the main thread raises it
            try:
                self._process(piece)
            except BaseException as exc:  # noqa: B036 - handed over
                self._error = exc

    def _process(self, buf: bytes) -> None:
        start = self._offset
        self._offset += len(buf)
        if _ZEROS.startswith(buf):
            return
        view = memoryview(buf)
        for a, b in _data_runs(buf):
            if self.data and self.data_bytes + b - a > self.data[0].limit:
                raise self._refuse(self.data[0])
            _pwrite_all(self.fd, view[a:b], start + a)
            self.data_bytes += b - a

    def close(self) -> None:
        """Stop the writer thread (idempotent); raise what it hit."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        if self._pending:
            self._submit(bytes(self._pending))
            self._pending.clear()
        self.close()
        # A trailing hole becomes part of the file's length.
        os.ftruncate(self.fd, self.size)


def _is_zero(buf: bytes, a: int, b: int) -> bool:
    if b - a == PAGE:
        return buf.startswith(_ZEROS[:PAGE], a)
    return _ZEROS.startswith(buf[a:b])


def _data_runs(buf: bytes) -> list[tuple[int, int]]:
    """[start, end) ranges of ``buf`` that are not zero: HOLE_BLOCK
    granularity (a comparison with a zero buffer per block, no per-byte
    Python work), the edges of each run trimmed to PAGE precision."""
    runs: list[tuple[int, int]] = []
    n = len(buf)
    run_start: int | None = None
    zero_block = _ZEROS[:HOLE_BLOCK]
    for off in range(0, n, HOLE_BLOCK):
        end = min(off + HOLE_BLOCK, n)
        zero = (buf.startswith(zero_block, off) if end - off == HOLE_BLOCK
                else _ZEROS.startswith(buf[off:end]))
        if zero:
            if run_start is not None:
                runs.append((run_start, off))
                run_start = None
        elif run_start is None:
            run_start = off
    if run_start is not None:
        runs.append((run_start, n))
    trimmed = []
    for a, b in runs:
        while b - a > PAGE and _is_zero(buf, a, a + PAGE):
            a += PAGE
        while b - a > PAGE:
            last = b - PAGE if b % PAGE == 0 else b - b % PAGE
            if not _is_zero(buf, last, b):
                break
            b = last
        trimmed.append((a, b))
    return trimmed


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


# --- the payload, per container ------------------------------------------

def _refuse(container: str, reason: str) -> exception.ArchiveRefused:
    return exception.ArchiveRefused(container=container, reason=reason)


def _check_not_archive(head: bytes, container: str, what: str) -> None:
    inner = detect_container(head)
    if inner is not None:
        raise _refuse(container, '%s is itself a %s archive (one level of '
                      'compression or archive only)' % (what, inner))


class _TarMember:
    """The one regular file of a tar stream (through tarfile, which parses
    pax, GNU long names and GNU sparse members)."""

    def __init__(self, stream: _Peek, container: str) -> None:
        self.stream = stream
        self.container = container
        self.stream.limit_error = _refuse(
            container, 'its tar headers exceed %d MiB'
            % (TAR_METADATA_LIMIT >> 20))
        try:
            self.stream.limit = self.stream.count + TAR_METADATA_LIMIT
            self.tar: tarfile.TarFile = tarfile.open(
                fileobj=cast(BinaryIO, stream), mode='r|',
                bufsize=CHUNK_SIZE)
            self.info = self._next_file(first=True)
            if self.info is None:
                raise _refuse(container, 'the tar archive holds no file')
            extracted = self.tar.extractfile(self.info)
        except tarfile.TarError:
            raise self._corrupt() from None
        assert extracted is not None  # a regular file always has data
        self.file = extracted
        self.name = self.info.name
        self.remaining = self.info.size

    def _corrupt(self) -> exception.ArchiveRefused:
        return _refuse(self.container,
                       'the tar data is truncated or corrupt')

    def _next_file(self, first: bool) -> tarfile.TarInfo | None:
        # One budget for all the headers up to the next file, folder
        # entries included (tarfile keeps every member it saw).
        self.stream.limit = self.stream.count + TAR_METADATA_LIMIT
        while True:
            info = self.tar.next()
            if info is None:
                self.stream.limit = None
                return None
            if info.isdir():
                continue  # a folder entry holds no data
            self.stream.limit = None
            for test, kind in _TAR_KINDS:
                if getattr(info, test)():
                    raise _refuse(self.container, 'the tar archive holds %s '
                                  '(only one regular file is accepted)'
                                  % kind)
            if not info.isreg():
                raise _refuse(self.container, 'the tar archive holds a '
                              'member of an unknown type')
            if not first:
                raise _refuse(self.container, 'the tar archive holds '
                              'several files (only one is accepted)')
            return info

    def read(self, n: int) -> bytes:
        try:
            data = self.file.read(min(n, self.remaining))
        except tarfile.TarError:
            raise self._corrupt() from None
        if not data and self.remaining:
            raise self._corrupt()
        self.remaining -= len(data)
        if not data:
            self._finish()
        return data

    def _finish(self) -> None:
        try:
            self._next_file(first=False)
        except tarfile.TarError:
            raise self._corrupt() from None
        # Whatever follows the end-of-archive blocks must be padding: read
        # it to the end so a truncated or corrupt compressed tail is seen.
        while True:
            rest = self.stream.read(CHUNK_SIZE)
            if not rest:
                return
            if not _ZEROS.startswith(rest):
                raise _refuse(self.container, 'there is data after the end '
                              'of the tar archive')


def _zip_entries(fobj: BinaryIO, size: int) -> tuple[int, int] | None:
    """(entries, central directory bytes) from the end of central
    directory record, or None when there is none (zipfile says why)."""
    tail_len = min(size, 0xFFFF + 22)
    fobj.seek(size - tail_len)
    tail = fobj.read(tail_len)
    pos = tail.rfind(b'PK\x05\x06')
    if pos < 0 or len(tail) - pos < 22:
        return None
    fields = struct.unpack('<4s4H2LH', tail[pos:pos + 22])
    return int(fields[4]), int(fields[5])


class _ZipMember:
    """The one file of a zip, read from its local header with our own
    bounded decoders (zipfile's bzip2 reader is not output-bounded)."""

    def __init__(self, fobj: BinaryIO, size: int,
                 memory_limit: int) -> None:
        self.container = 'zip'
        entries = _zip_entries(fobj, size)
        if entries is not None and (entries[0] > ZIP_MAX_ENTRIES or
                                    entries[1] > ZIP_MAX_DIRECTORY):
            # zipfile would build an object per entry: refused before.
            raise _refuse('zip', 'the zip archive holds %d entries (only one '
                          'file is accepted)' % entries[0])
        try:
            archive = zipfile.ZipFile(fobj)
            infos = [i for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError,
                ValueError, EOFError):
            raise _refuse('zip', 'its directory is truncated or corrupt') \
                from None
        if not infos:
            raise _refuse('zip', 'the zip archive holds no file')
        if len(infos) > 1:
            raise _refuse('zip', 'the zip archive holds %d files (only one '
                          'is accepted)' % len(infos))
        info = infos[0]
        if info.flag_bits & 0x41:
            raise _refuse('zip', 'its file is encrypted')
        method = info.compress_type
        if method not in _ZIP_METHODS:
            raise _refuse('zip', 'its file is compressed with %s, which is '
                          'not supported (deflate, bzip2 or stored are)'
                          % _ZIP_UNSUPPORTED.get(method,
                                                 'method %d' % method))
        fobj.seek(info.header_offset)
        header = fobj.read(30)
        if len(header) < 30 or header[:4] != b'PK\x03\x04':
            raise _refuse('zip', 'its local file header is corrupt')
        name_len, extra_len = struct.unpack('<HH', header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        end = start + info.compress_size
        if end > size:
            raise _refuse('zip', 'the compressed data is truncated')
        self.name = info.filename
        self.expected_size = info.file_size
        self.expected_crc = info.CRC
        self.crc = 0
        self.count = 0
        self.source = _Source(fobj, start, end)
        self.stream: _Stream | None = None
        if method != zipfile.ZIP_STORED:
            codec = 'deflate' if method == zipfile.ZIP_DEFLATED else 'bzip2'
            self.stream = _Stream(codec, self.source, 'zip', memory_limit,
                                  multi=False)

    def read(self, n: int) -> bytes:
        if self.stream is not None:
            data = self.stream.read(n)
        else:
            data = self.source.read(n)
        if data:
            self.crc = zlib.crc32(data, self.crc)
            self.count += len(data)
            return data
        if self.source.pos < self.source.end:
            raise _refuse('zip', 'the compressed data is truncated' if
                          self.stream is None else 'its data is corrupt')
        if self.count != self.expected_size or self.crc != self.expected_crc:
            raise _refuse('zip', 'its data does not match its CRC or size '
                          '(corrupt)')
        return b''


@dataclasses.dataclass
class _Opened:
    container: str
    member: str | None
    reader: _Reader
    #: Where the compressed input stands, for progress.
    position: Callable[[], int]
    peek: _Peek | None


def _open(fobj: BinaryIO, size: int, memory_limit: int,
          bounds: Sequence[Bound]) -> _Opened | None:
    fobj.seek(0)
    head = fobj.read(512)
    kind = detect_container(head)
    if kind is None:
        return None
    if kind == 'zip':
        member = _ZipMember(fobj, size, memory_limit)
        peek = _Peek(member)
        _check_not_archive(peek.head, 'zip', 'its file')
        src = member.source
        return _Opened('zip', member.name, peek, lambda: src.pos, None)
    if kind == 'tar':
        source = _Source(fobj, 0, size)
        raw = _Peek(source)
        raw.container = 'tar'
        tar = _TarMember(raw, 'tar')
        peek = _Peek(tar)
        _check_not_archive(peek.head, 'tar', 'its file')
        return _Opened('tar', tar.name, peek, lambda: source.pos, raw)
    stream: _Stream | _ZstdStream
    if kind == 'zstd':
        stream = _ZstdStream(fobj, size, kind, memory_limit)
        position = stream.source
    else:
        position = _Source(fobj, 0, size)
        stream = _Stream(kind, position, kind, memory_limit)
    decompressed = _Peek(stream)
    inner = detect_container(decompressed.head)
    if inner == 'tar':
        container = 'tar+' + kind
        stream.container = decompressed.container = container
        decompressed.bounds = [b for b in bounds if not b.data_only]
        tar = _TarMember(decompressed, container)
        peek = _Peek(tar)
        _check_not_archive(peek.head, container, 'its file')
        return _Opened(container, tar.name, peek, lambda: position.pos,
                       decompressed)
    if inner is not None:
        raise _refuse(kind, 'the decompressed data is itself a %s archive '
                      '(one level of compression or archive only)' % inner)
    return _Opened(kind, None, decompressed, lambda: position.pos, None)


def _open_regular(path: str) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading; only a regular file (a FIFO would block,
    a device read as endless data)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise exception.NotRegularFile(path=path, kind='special file')
        os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb', buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def detect_file(path: str) -> str | None:
    """The container of the file at ``path`` by its first bytes, or None
    (for a tar inside a compressor this says the compressor)."""
    fobj, _size = _open_regular(path)
    with fobj:
        return detect_container(fobj.read(512))


def decompress(src: str, dest: str, bounds: Iterable[Bound] = (),
               progress: Callable[[int, int], None] | None = None,
               memory_limit: int = DEFAULT_MEMORY_LIMIT) -> Result | None:
    """Decompress the container at ``src`` into a new file ``dest``.

    Returns None, writing nothing, when ``src`` is no container.
    ``progress(bytes_in, total_in)`` is called as the compressed data is
    consumed.  Raises :class:`exception.DecompressedSizeTooLarge` (the
    first bound crossed), :class:`exception.ArchiveRefused`, OSError
    (``dest`` exists, the disk is full); ``dest`` never survives an error.
    """
    bounds = tuple(bounds)
    fobj, size = _open_regular(src)
    with fobj:
        opened = _open(fobj, size, memory_limit, bounds)
        if opened is None:
            return None
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        writer = _SparseWriter(fd, bounds, opened.container, threaded=True)
        try:
            while True:
                data = opened.reader.read(CHUNK_SIZE)
                if not data:
                    break
                writer.write(data)
                if progress is not None:
                    progress(opened.position(), size)
            writer.finish()
        except BaseException:
            try:
                writer.close()
            except BaseException:  # noqa: B036 - already raised, or lesser
                pass
            os.close(fd)
            try:
                os.remove(dest)
            except FileNotFoundError:
                pass
            raise
        os.close(fd)
        if progress is not None:
            progress(size, size)
        return Result(container=opened.container, member=opened.member,
                      size=writer.size, data_bytes=writer.data_bytes,
                      compressed_size=size)


# --- offline inspection ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PrefixVerdict:
    """A container and what its inner image is, from a bounded prefix."""

    #: None when the file is no container (inspect it directly).
    container: str | None
    member: str | None
    #: The inspection of the decompressed prefix; ``path`` is the
    #: container's own path.  None when not a container or refused.
    inner: inspection.InspectionResult | None
    #: Decompressed bytes inspected.
    prefix_bytes: int
    #: Whether the whole payload fit in the prefix (else sizes, footers and
    #: a vmdk's end are unseen: the verdict is about the headers).
    complete: bool
    #: Why the container itself is refused (ArchiveRefused's reason).
    refused: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {'container': self.container, 'member': self.member,
                'prefix_bytes': self.prefix_bytes, 'complete': self.complete,
                'refused': self.refused,
                'inner': self.inner.to_dict() if self.inner else None}


def inspect_prefix(
        path: str, limit: int = DEFAULT_PREFIX,
        vmdk_allowed_types: Iterable[str] = (
            inspection.DEFAULT_VMDK_ALLOWED_TYPES),
        tmpdir: str | None = None,
        memory_limit: int = DEFAULT_MEMORY_LIMIT) -> PrefixVerdict:
    """The container at ``path`` and its inner image's verdict, from at
    most ``limit`` decompressed bytes (written sparsely to a temporary file
    in ``tmpdir``, removed before returning)."""
    fobj, size = _open_regular(path)
    with fobj:
        kind = detect_container(fobj.read(512))
        if kind is None:
            return PrefixVerdict(None, None, None, 0, False)
        try:
            opened = _open(fobj, size, memory_limit, ())
        except exception.ArchiveRefused as exc:
            return PrefixVerdict(str(exc.kwargs.get('container', kind)),
                                 None, None, 0, False,
                                 refused=str(exc.kwargs.get('reason', exc)))
        assert opened is not None
        with tempfile.TemporaryDirectory(dir=tmpdir) as folder:
            out = os.path.join(folder, 'prefix')
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            complete = False
            refused = None
            try:
                writer = _SparseWriter(fd, (), opened.container)
                while writer.size < limit:
                    try:
                        data = opened.reader.read(
                            min(CHUNK_SIZE, limit - writer.size))
                    except exception.ArchiveRefused as exc:
                        refused = str(exc.kwargs.get('reason', exc))
                        break
                    if not data:
                        complete = True
                        break
                    writer.write(data)
                writer.finish()
            finally:
                os.close(fd)
            if refused is not None:
                return PrefixVerdict(opened.container, opened.member, None,
                                     writer.size, False, refused=refused)
            inner = inspection.inspect_file(out, vmdk_allowed_types)
    return PrefixVerdict(opened.container, opened.member,
                         dataclasses.replace(inner, path=path),
                         writer.size, complete)
