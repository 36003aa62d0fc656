"""qemu_img against the real qemu-img: info, convert, progress, limits."""

import os
import subprocess
import time

import pytest

from glance_imgplugins import exception
from glance_imgplugins import inspection
from glance_imgplugins import qemu_img
from tests.support import images

BENIGN_QEMU = sorted(n for n, e in images.BENIGN.items() if e.qemu_format)


def test_qemu_format_mapping():
    assert qemu_img.qemu_format('vhd') == 'vpc'
    assert qemu_img.qemu_format('gpt') == 'raw'
    assert qemu_img.qemu_format('iso') == 'raw'
    for same in ('raw', 'qcow2', 'vmdk', 'vhdx', 'vdi'):
        assert qemu_img.qemu_format(same) == same


@pytest.mark.parametrize('name', BENIGN_QEMU)
def test_info_agrees_with_inspection(corpus, name):
    entry = images.BENIGN[name]
    path = str(corpus.path(name))
    result = inspection.inspect_file(path)
    # The plugins call info with the Glance disk_format they detected.
    data = qemu_img.info(path, result.format)
    assert data.file_format == entry.qemu_format
    if result.format != 'iso':
        assert data.virtual_size == result.virtual_size
    assert data.backing_file is None


@pytest.mark.parametrize('name', ['vpc_dynamic', 'vpc_fixed'])
def test_vhd_converts_as_vpc(corpus, tmp_path, name):
    out = tmp_path / 'out.raw'
    qemu_img.convert(str(corpus.path(name)), 'vhd', str(out), 'raw')
    data = out.read_bytes()
    for i, off in enumerate(images.DATA_EXTENTS):
        assert data[off:off + images.EXTENT_SIZE] == images.seed_bytes(i)


def test_convert_compressed_qcow2_to_sparse_raw(corpus, tmp_path):
    out = tmp_path / 'out.raw'
    qemu_img.convert(str(corpus.path('qcow2_compressed')), 'qcow2', str(out),
                     'raw')
    with open(out, 'rb') as f:
        data = f.read()
    assert len(data) == images.VIRTUAL_SIZE
    assert data == images.write_seed(tmp_path / 'ref.raw').read_bytes()
    # -S 4k: the holes stay holes (4 data extents of 512 KiB + slack).
    assert os.stat(out).st_blocks * 512 < 4 * images.MiB


def test_convert_progress_increases_to_100(tmp_path):
    src = tmp_path / 'src.raw'
    # Data everywhere: qemu-img reports progress per data chunk it copies,
    # so a mostly sparse source may report only 0 and 100.
    src.write_bytes(os.urandom(64 * images.MiB))
    seen = []
    qemu_img.convert(str(src), 'raw', str(tmp_path / 'o.qcow2'), 'qcow2',
                     progress=seen.append)
    assert len(seen) >= 3
    assert seen == sorted(set(seen))
    assert seen[0] < 50 and seen[-1] == 100.0
    # processutils still saw every byte (the relay forwards them all).
    assert qemu_img.info(str(tmp_path / 'o.qcow2'), 'qcow2').virtual_size \
        == 64 * images.MiB


def test_failing_progress_callback_does_not_stop_convert(corpus, tmp_path):
    def boom(percent):
        raise RuntimeError('callback bug')

    out = tmp_path / 'o.raw'
    qemu_img.convert(str(corpus.path('qcow2_v3')), 'qcow2', str(out), 'raw',
                     progress=boom)
    assert os.path.getsize(out) == images.VIRTUAL_SIZE


def test_timeout_kills_qemu_img(tmp_path):
    src = tmp_path / 'random.raw'
    with open(src, 'wb') as f:
        f.write(os.urandom(64 * images.MiB))
    dst = tmp_path / ('slow-%d.qcow2' % os.getpid())
    started = time.monotonic()
    with pytest.raises(exception.QemuImgTimeout) as err:
        # Compressing 64 MiB of random bytes takes about a second here.
        qemu_img.convert(str(src), 'raw', str(dst), 'qcow2',
                         limits=qemu_img.Limits(timeout=0.3),
                         extra_args=('-c',))
    assert time.monotonic() - started < 5
    assert '0.3 seconds' in str(err.value)
    # The process is gone, not merely abandoned.
    left = subprocess.run(['pgrep', '-f', str(dst)], capture_output=True)
    assert left.returncode == 1, left.stdout


def test_address_space_limit_is_a_named_error(corpus):
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(corpus.path('qcow2_v3')), 'qcow2',
                      limits=qemu_img.Limits(address_space=16 * images.MiB))
    assert not isinstance(err.value, exception.QemuImgTimeout)
    assert 'qemu-img info failed' in str(err.value)


def test_errors_carry_stderr(corpus, tmp_path):
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(tmp_path / 'missing.qcow2'), 'qcow2')
    assert 'Could not open' in str(err.value)
    # -f is always given: a qcow2 read as vmdk fails instead of being probed.
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(corpus.path('qcow2_v3')), 'vmdk')
    assert 'vmdk' in str(err.value).lower()


def test_unknown_format_refused_before_running(tmp_path):
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(tmp_path / 'x'), 'ploop')
    assert 'unsupported format' in str(err.value)
