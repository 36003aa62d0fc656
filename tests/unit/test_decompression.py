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

"""The pure decompression core on real archives made by the standard tools
around real images made by qemu-img."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from glance_imgplugins import decompression
from glance_imgplugins import exception
from tests.support import archives
from tests.support import digest

MiB = archives.MiB
BIG = decompression.Bound(1 << 40, '[decompression] max_decompressed_size')


@pytest.fixture(scope='module')
def work(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp('archives')


@pytest.fixture(scope='module')
def disks(work: pathlib.Path) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    """fmt -> (image made by qemu-img, the raw disk it was made from)."""
    return {fmt: archives.image(work, fmt) for fmt in ('raw', 'qcow2',
                                                       'vmdk')}


def unpack(src: pathlib.Path, bounds=(BIG,), **kwargs):
    dest = src.with_name(src.name + '.out')
    if dest.exists():
        dest.unlink()
    return decompression.decompress(str(src), str(dest), bounds, **kwargs), \
        dest


def allocated(path: pathlib.Path) -> int:
    return os.stat(path).st_blocks * 512


# --- benign: each container, each inner format, bit-exact -----------------

@pytest.mark.parametrize('fmt', ['raw', 'qcow2', 'vmdk'])
@pytest.mark.parametrize('tool', sorted(archives.COMPRESSORS))
def test_compressed_image_bit_exact(disks, work, tool, fmt):
    image, _raw = disks[fmt]
    packed = archives.compress(image, tool, work / ('%s.%s.%s' % (
        fmt, tool, archives.COMPRESSORS[tool][1])))
    result, out = unpack(packed)
    assert result.container == tool
    assert result.member is None
    assert result.size == image.stat().st_size
    assert result.compressed_size == packed.stat().st_size
    assert digest.sha256(out) == digest.sha256(image)


def test_sparse_raw_stays_sparse(disks, work):
    raw, _ = disks['raw']
    packed = archives.compress(raw, 'xz', work / 'sparse.raw.xz')
    result, out = unpack(packed)
    assert result.size == 64 * MiB
    # Three 1 MiB extents of data: the 61 MiB of zeros are holes.
    assert result.data_bytes == 3 * MiB
    assert allocated(out) <= 3 * MiB + 64 * 1024
    assert digest.sha256(out) == digest.sha256(raw)


@pytest.mark.parametrize('options,container', [
    ((), 'tar'), (('-J',), 'tar+xz'), (('-z',), 'tar+gzip'),
    (('-j',), 'tar+bzip2'), (('--zstd',), 'tar+zstd'),
    (('-S', '-J'), 'tar+xz'), (('-S', '--format=oldgnu', '-z'), 'tar+gzip'),
    (('--format=posix', '-S', '-J'), 'tar+xz'),
])
def test_tar_with_disk_raw(disks, work, options, container):
    """Debian's genericcloud .tar.xz layout: one disk.raw (GNU sparse with
    -S, as GCE-style images are made)."""
    raw, _ = disks['raw']
    folder = work / 'tar-src'
    folder.mkdir(exist_ok=True)
    archives.copy(raw, folder / 'disk.raw')
    out = archives.tar(work / ('disk-%s.tar' % '_'.join(options)), folder,
                       'disk.raw', options=options)
    result, dest = unpack(out)
    assert (result.container, result.member) == (container, 'disk.raw')
    assert digest.sha256(dest) == digest.sha256(raw)
    assert allocated(dest) <= 3 * MiB + 64 * 1024


def test_tar_folder_entries_are_ignored(disks, work):
    raw, _ = disks['raw']
    folder = work / 'tar-dir'
    (folder / 'image').mkdir(parents=True, exist_ok=True)
    archives.copy(raw, folder / 'image' / 'disk.raw')
    out = archives.tar(work / 'dir.tar.gz', folder, 'image', options=('-z',))
    result, dest = unpack(out)
    assert result.member == 'image/disk.raw'
    assert digest.sha256(dest) == digest.sha256(raw)


@pytest.mark.parametrize('options', [(), ('-Z', 'bzip2'), ('-0',)])
def test_zip(disks, work, options):
    image, _ = disks['qcow2']
    folder = image.parent
    out = archives.zip_(work / ('disk%s.zip' % ''.join(options)), folder,
                        image.name, options=options)
    result, dest = unpack(out)
    assert (result.container, result.member) == ('zip', image.name)
    assert digest.sha256(dest) == digest.sha256(image)


def test_concatenated_streams(disks, work):
    """pigz/pbzip2-style files: several streams one after the other."""
    raw, _ = disks['raw']
    one = archives.compress(raw, 'bzip2', work / 'one.bz2')
    two = archives.repeated(work / 'two.bz2', one, 2)
    result, dest = unpack(two)
    assert result.size == 2 * raw.stat().st_size
    with open(dest, 'rb') as f:
        assert f.read(raw.stat().st_size) == raw.read_bytes()


def test_not_compressed_writes_nothing(disks):
    image, _ = disks['qcow2']
    result, dest = unpack(image)
    assert result is None
    assert not dest.exists()
    assert decompression.detect_file(str(image)) is None


def test_progress_reports_bytes_in(disks, work):
    raw, _ = disks['raw']
    packed = archives.compress(raw, 'gzip', work / 'progress.raw.gz')
    seen = []
    unpack(packed, progress=lambda done, total: seen.append((done, total)))
    total = packed.stat().st_size
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) > 2 and seen[0][0] < total


# --- bombs ------------------------------------------------------------------

def test_xz_of_a_terabyte_of_zeros(work):
    """Holes make zeros free to write, so the bound counts them too."""
    bomb = archives.xz_zero_bomb(work, tib=1)
    assert bomb.stat().st_size < 200 * MiB
    bound = decompression.Bound(256 * MiB,
                                '[decompression] max_decompressed_size')
    with pytest.raises(exception.DecompressedSizeTooLarge) as info:
        unpack(bomb, [decompression.Bound(1 << 50, 'staging', True), bound])
    assert str(info.value) == (
        'The xz data decompresses to more than 268435456 bytes '
        '([decompression] max_decompressed_size): not imported')
    assert isinstance(info.value, exception.Retryable)
    assert not bomb.with_name(bomb.name + '.out').exists()


def test_smallest_bound_wins(work):
    bomb = archives.bzip2_zero_bomb(work, tib=1)
    assert bomb.stat().st_size < MiB
    bounds = [decompression.Bound(1 << 40, '[format_conversion] '
                                  'max_virtual_size'),
              decompression.Bound(64 * MiB, '[decompression] max_ratio'),
              decompression.Bound(128 * MiB, '[decompression] '
                                  'max_decompressed_size')]
    with pytest.raises(exception.DecompressedSizeTooLarge) as info:
        unpack(bomb, bounds)
    assert info.value.kwargs['bound'] == '[decompression] max_ratio'
    assert info.value.kwargs['limit'] == 64 * MiB


def test_gzip_of_data_larger_than_staging(work):
    """Non-zero data: no hole absorbs it; the staging bound counts the
    bytes written and stops it."""
    bomb = archives.gzip_data_bomb(work, gib=4)
    assert bomb.stat().st_size < 32 * MiB
    staging = decompression.Bound(
        200 * MiB, 'the staging free space less [decompression] '
        'staging_reserve', data_only=True)
    with pytest.raises(exception.DecompressedSizeTooLarge) as info:
        unpack(bomb, [BIG, staging])
    assert info.value.kwargs['bound'] == staging.name
    assert 'more than 209715200 bytes (the staging free space' in \
        str(info.value)


def test_bound_stops_at_first_byte_past(disks, work):
    raw, _ = disks['raw']
    packed = archives.compress(raw, 'zstd', work / 'exact.raw.zst')
    size = raw.stat().st_size
    result, _ = unpack(packed, [decompression.Bound(size, 'exact')])
    assert result.size == size
    with pytest.raises(exception.DecompressedSizeTooLarge):
        unpack(packed, [decompression.Bound(size - 1, 'exact')])


def test_sparse_tar_member_bounded_with_holes(work):
    """A GNU sparse member stores no zeros at all: its size still counts."""
    folder = work / 'sparse-big'
    folder.mkdir(exist_ok=True)
    with open(folder / 'disk.raw', 'wb') as f:
        f.truncate(1 << 40)
        f.write(b'boot')
    out = archives.tar(work / 'tb.tar', folder, 'disk.raw', options=('-S',))
    (folder / 'disk.raw').unlink()
    assert out.stat().st_size < MiB
    with pytest.raises(exception.DecompressedSizeTooLarge):
        unpack(out, [decompression.Bound(512 * MiB, 'cap')])


# --- refused archives ----------------------------------------------------

def refused(path: pathlib.Path, **kwargs) -> exception.ArchiveRefused:
    with pytest.raises(exception.ArchiveRefused) as info:
        unpack(path, **kwargs)
    assert isinstance(info.value, exception.ContentRefused)
    assert not path.with_name(path.name + '.out').exists()
    # Users read it: no host path.
    assert str(path.parent) not in str(info.value)
    return info.value


@pytest.fixture(scope='module')
def raw_gz(disks, work):
    return archives.compress(disks['raw'][0], 'gzip', work / 'base.raw.gz')


def test_archive_inside_compression(raw_gz, work):
    exc = refused(archives.compress(raw_gz, 'xz', work / 'nested.gz.xz'))
    assert str(exc) == ('xz archive refused: the decompressed data is itself '
                        'a gzip archive (one level of compression or archive '
                        'only)')


def test_compressed_file_inside_tar(raw_gz, work):
    folder = raw_gz.parent
    exc = refused(archives.tar(work / 'nested.tar.xz', folder, raw_gz.name,
                               options=('-J',)))
    assert exc.kwargs['container'] == 'tar+xz'
    assert 'its file is itself a gzip archive' in str(exc)


def test_tar_inside_zip(disks, work):
    raw, _ = disks['raw']
    inner = archives.tar(work / 'inner.tar', raw.parent, raw.name)
    exc = refused(archives.zip_(work / 'tar-in.zip', work, inner.name))
    assert 'its file is itself a tar archive' in str(exc)


def test_zip_with_several_members(disks, work):
    exc = refused(archives.zip_(work / 'two.zip', work,
                                disks['raw'][0].name, disks['qcow2'][0].name))
    assert str(exc) == ('zip archive refused: the zip archive holds 2 files '
                        '(only one is accepted)')


def test_zip_with_many_entries_refused_before_listing(work):
    folder = work / 'many'
    folder.mkdir(exist_ok=True)
    for i in range(70):
        (folder / ('f%02d' % i)).write_bytes(b'x')
    exc = refused(archives.zip_(work / 'many.zip', folder,
                                *sorted(p.name for p in folder.iterdir())))
    assert str(exc) == ('zip archive refused: the zip archive holds 70 '
                        'entries (only one file is accepted)')


def test_tar_header_flood(work):
    """Folder entries cost tarfile memory: all the headers before the
    file share one budget."""
    folder = work / 'flood'
    if not folder.exists():
        for i in range(20000):
            (folder / ('d%05d' % i)).mkdir(parents=True)
    exc = refused(archives.tar(work / 'flood.tar.gz', folder, '.',
                               options=('-z',)))
    assert str(exc) == ('tar+gzip archive refused: its tar headers exceed 8 '
                        'MiB')


def test_encrypted_zip(disks, work):
    exc = refused(archives.zip_(work / 'secret.zip', work,
                                disks['qcow2'][0].name,
                                options=('-P', 'secret')))
    assert str(exc) == 'zip archive refused: its file is encrypted'


def test_tar_with_symlink(disks, work):
    folder = work / 'tar-link'
    folder.mkdir(exist_ok=True)
    if not (folder / 'disk.raw').is_symlink():
        (folder / 'disk.raw').symlink_to('/etc/passwd')
    exc = refused(archives.tar(work / 'link.tar.gz', folder, 'disk.raw',
                               options=('-z',)))
    assert str(exc) == ('tar+gzip archive refused: the tar archive holds a '
                        'symbolic link (only one regular file is accepted)')


def test_tar_with_hard_link(disks, work):
    folder = work / 'tar-hard'
    folder.mkdir(exist_ok=True)
    archives.copy(disks['raw'][0], folder / 'disk.raw')
    if not (folder / 'again.raw').exists():
        os.link(folder / 'disk.raw', folder / 'again.raw')
    exc = refused(archives.tar(work / 'hard.tar', folder, 'disk.raw',
                               'again.raw'))
    assert 'a hard link' in str(exc)


def test_tar_with_device(work):
    exc = refused(archives.tar(work / 'dev.tar.xz', pathlib.Path('/'),
                               'dev/null', options=('-J',)))
    assert 'the tar archive holds a character device' in str(exc)


def test_tar_with_fifo(work):
    folder = work / 'tar-fifo'
    folder.mkdir(exist_ok=True)
    if not (folder / 'disk.raw').exists():
        os.mkfifo(folder / 'disk.raw')
    exc = refused(archives.tar(work / 'fifo.tar', folder, 'disk.raw'))
    assert 'a FIFO' in str(exc)


def test_tar_with_several_files(disks, work):
    exc = refused(archives.tar(work / 'two.tar.zst', work,
                               disks['raw'][0].name, disks['qcow2'][0].name,
                               options=('--zstd',)))
    assert 'holds several files' in str(exc)


def test_tar_with_no_file(work):
    folder = work / 'tar-empty'
    (folder / 'nothing').mkdir(parents=True, exist_ok=True)
    exc = refused(archives.tar(work / 'empty.tar', folder, 'nothing'))
    assert 'holds no file' in str(exc)


@pytest.mark.parametrize('tool', sorted(archives.COMPRESSORS))
def test_truncated_stream(disks, work, tool):
    packed = archives.compress(disks['qcow2'][0], tool)
    exc = refused(archives.truncated(packed, work / ('cut-' + packed.name)))
    assert str(exc) == ('%s archive refused: the compressed data is '
                        'truncated' % tool)


@pytest.mark.parametrize('tool', sorted(archives.COMPRESSORS))
def test_corrupt_stream(disks, work, tool):
    packed = archives.compress(disks['qcow2'][0], tool)
    exc = refused(archives.corrupted(packed, work / ('bad-' + packed.name)))
    assert exc.kwargs['container'] == tool
    assert 'corrupt' in exc.kwargs['reason'] or \
        'truncated' in exc.kwargs['reason']


def test_truncated_tar_xz(disks, work):
    folder = work / 'tar-src'
    folder.mkdir(exist_ok=True)
    archives.copy(disks['raw'][0], folder / 'disk.raw')
    out = archives.tar(work / 'whole.tar.xz', folder, 'disk.raw',
                       options=('-J',))
    exc = refused(archives.truncated(out, work / 'cut.tar.xz'))
    assert exc.kwargs['container'] == 'tar+xz'


def test_truncated_zip_and_tar(disks, work):
    image = disks['qcow2'][0]
    z = archives.zip_(work / 'whole.zip', image.parent, image.name)
    refused(archives.truncated(z, work / 'cut.zip'))
    t = archives.tar(work / 'whole.tar', image.parent, image.name)
    exc = refused(archives.truncated(t, work / 'cut.tar'))
    assert 'truncated or corrupt' in str(exc)


def test_corrupt_zip_member(disks, work):
    image = disks['qcow2'][0]
    z = archives.zip_(work / 'crc.zip', image.parent, image.name)
    exc = refused(archives.corrupted(z, work / 'crc-bad.zip'))
    assert exc.kwargs['container'] == 'zip'


def test_data_after_the_stream(raw_gz, work):
    junk = work / 'junk.raw.gz'
    junk.write_bytes(raw_gz.read_bytes() + b'not a gzip member' * 10)
    exc = refused(junk)
    assert str(exc) == ('gzip archive refused: there is data after the end '
                        'of the compressed stream')


def test_zero_padding_after_the_stream_is_accepted(raw_gz, work, disks):
    padded = work / 'padded.raw.gz'
    padded.write_bytes(raw_gz.read_bytes() + bytes(4096))
    _, dest = unpack(padded)
    assert digest.sha256(dest) == digest.sha256(disks['raw'][0])


def test_memory_limit(disks, work):
    """xz -9 needs a 64 MiB dictionary to decompress."""
    packed = archives.compress(disks['qcow2'][0], 'xz', work / 'nine.xz',
                               '-9')
    exc = refused(packed, memory_limit=16 * MiB)
    assert str(exc) == ('xz archive refused: it needs more than 16 MiB of '
                        'memory to decompress')


def test_zip_unsupported_method(disks, work):
    image = disks['qcow2'][0]
    proc = subprocess.run(['zip', '-h2'], capture_output=True, text=True)
    if '-Z' not in proc.stdout:
        pytest.skip('this zip cannot choose a method')
    # Info-ZIP can only write deflate, bzip2 and store: build a zip whose
    # member says lzma (method 14) by patching both headers.
    z = archives.zip_(work / 'lzma.zip', image.parent, image.name,
                      options=('-0',))
    data = bytearray(z.read_bytes())
    for sig, offset in ((b'PK\x03\x04', 8), (b'PK\x01\x02', 10)):
        pos = data.find(sig)
        data[pos + offset:pos + offset + 2] = (14).to_bytes(2, 'little')
    bad = work / 'lzma-patched.zip'
    bad.write_bytes(bytes(data))
    exc = refused(bad)
    assert 'compressed with lzma, which is not supported' in str(exc)


# --- offline inspection from a bounded prefix ------------------------------

def test_inspect_prefix_qcow2_xz(disks, work):
    packed = archives.compress(disks['qcow2'][0], 'xz', work / 'i.qcow2.xz')
    verdict = decompression.inspect_prefix(str(packed))
    assert verdict.container == 'xz'
    assert verdict.complete
    assert verdict.inner is not None
    assert verdict.inner.format == 'qcow2' and verdict.inner.safe
    assert verdict.inner.virtual_size == 64 * MiB
    assert verdict.inner.path == str(packed)


def test_inspect_prefix_is_bounded(disks, work):
    folder = work / 'tar-src'
    folder.mkdir(exist_ok=True)
    archives.copy(disks['raw'][0], folder / 'disk.raw')
    out = archives.tar(work / 'p.tar.xz', folder, 'disk.raw',
                       options=('-J',))
    verdict = decompression.inspect_prefix(str(out), limit=4 * MiB)
    assert (verdict.container, verdict.member) == ('tar+xz', 'disk.raw')
    assert not verdict.complete
    assert verdict.prefix_bytes == 4 * MiB
    assert verdict.inner.format == 'raw'


def test_inspect_prefix_vmdk_and_hostile(corpus, disks, work):
    vmdk = archives.compress(disks['vmdk'][0], 'zstd', work / 'i.vmdk.zst')
    verdict = decompression.inspect_prefix(str(vmdk))
    assert verdict.inner.format == 'vmdk'
    hostile = archives.compress(corpus.path('qcow2_backing_file'), 'bzip2',
                                work / 'backing.qcow2.bz2')
    verdict = decompression.inspect_prefix(str(hostile))
    assert verdict.inner.format == 'qcow2'
    assert 'backing_file' in verdict.inner.failures


def test_inspect_prefix_refused_and_plain(disks, work):
    two = archives.zip_(work / 'two-i.zip', work, disks['raw'][0].name,
                        disks['qcow2'][0].name)
    verdict = decompression.inspect_prefix(str(two))
    assert verdict.container == 'zip' and verdict.inner is None
    assert verdict.refused == 'the zip archive holds 2 files (only one is ' \
        'accepted)'
    plain = decompression.inspect_prefix(str(disks['qcow2'][0]))
    assert plain.container is None and plain.inner is None


def test_detect_container_by_magic_not_name(disks, work):
    packed = archives.compress(disks['qcow2'][0], 'zstd')
    disguised = archives.copy(packed, work / 'disk.qcow2')
    assert decompression.detect_file(str(disguised)) == 'zstd'
    assert decompression.detect_container(b'\0' * 512) is None


def test_special_file_is_not_read(work):
    fifo = work / 'a-fifo.xz'
    if not fifo.exists():
        os.mkfifo(fifo)
    with pytest.raises(exception.NotRegularFile):
        decompression.decompress(str(fifo), str(work / 'fifo.out'))
