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

"""qemu_img against the real qemu-img: info, convert, progress, limits."""

import os
import stat
import subprocess
import sys
import threading
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


def test_errors_carry_stderr_without_the_path(corpus, tmp_path):
    missing = str(tmp_path / 'missing.qcow2')
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(missing, 'qcow2', name='image 1234')
    # Machinery, not content: retryable, staged data kept.
    assert not isinstance(err.value, exception.QemuImgRefused)
    assert isinstance(err.value, exception.Retryable)
    assert str(err.value) == ("qemu-img info failed: Could not open "
                              "'image 1234': No such file or directory")
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(missing, 'qcow2')
    assert "'the image'" in str(err.value)
    assert str(tmp_path) not in str(err.value)


def test_wrong_format_is_a_content_refusal(corpus):
    # -f is always given: a qcow2 read as vmdk fails instead of being probed.
    with pytest.raises(exception.QemuImgRefused) as err:
        qemu_img.info(str(corpus.path('qcow2_v3')), 'vmdk', name='img')
    assert isinstance(err.value, exception.ContentRefused)
    assert str(err.value) == (
        'vmdk image failed safety check format_detection (qemu-img: invalid '
        'VMDK image descriptor): refused')
    with pytest.raises(exception.QemuImgRefused) as err:
        qemu_img.info(str(corpus.path('vdi')), 'qcow2')
    assert err.value.kwargs == {'format': 'qcow2',
                                'check': 'format_detection',
                                'reason': 'Image is not in qcow2 format'}


QEMU_MESSAGES = {
    'qcow2_l1_too_large': 'Active L1 table too large',
    'qcow2_header_too_long': 'qcow2 header exceeds cluster size',
    'qcow2_cluster_bits_8': 'Unsupported cluster size: 2^8',
    'qcow2_refcount_table_too_large': 'Reference count table too large',
    'qcow2_snapshot_table_too_large': 'Snapshot table too large',
    'vhdx_differencing': 'Operation not supported',
}


@pytest.mark.parametrize('name', sorted(QEMU_MESSAGES))
def test_content_qemu_img_refuses_names_a_check(corpus, tmp_path, name):
    entry = images.ENTRIES[name]
    path = str(corpus.path(name))
    fmt = entry.format
    with pytest.raises(exception.QemuImgRefused) as err:
        qemu_img.info(path, fmt, name='img-42')
    assert err.value.kwargs == {'format': fmt, 'check': entry.qemu_check,
                                'reason': QEMU_MESSAGES[name]}
    assert str(err.value) == '%s image failed safety check %s (qemu-img: ' \
        '%s): refused' % (fmt, entry.qemu_check, QEMU_MESSAGES[name])
    assert '/' not in str(err.value).replace('2^8', '')
    # convert opens the source the same way.
    with pytest.raises(exception.QemuImgRefused) as err:
        qemu_img.convert(path, fmt, str(tmp_path / 'o.raw'), 'raw')
    assert err.value.kwargs['check'] == entry.qemu_check
    # mapped_data_bytes too.
    with pytest.raises(exception.QemuImgRefused):
        qemu_img.mapped_data_bytes(path, fmt)


def test_every_qemu_refused_entry_is_covered():
    named = {n for n, e in images.ENTRIES.items() if e.qemu_check}
    assert named == set(QEMU_MESSAGES)


def test_output_errors_are_not_the_contents(corpus, tmp_path):
    # Writing the output fails (a read-only directory): retryable, and
    # neither path is shown.
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    dst = str(ro / 'o.qcow2')
    try:
        if os.access(str(ro), os.W_OK):
            # root ignores the mode: write into a directory that is a file.
            dst = str(corpus.path('raw_plain')) + '/o.qcow2'
        with pytest.raises(exception.QemuImgError) as err:
            qemu_img.convert(str(corpus.path('qcow2_v3')), 'qcow2', dst,
                             'qcow2', name='img-7')
    finally:
        ro.chmod(stat.S_IRWXU)
    assert not isinstance(err.value, exception.QemuImgRefused)
    assert str(tmp_path) not in str(err.value)
    assert '/' not in str(err.value)
    assert 'the output' in str(err.value)


def test_reduce_stderr_hides_every_path():
    text = ("qemu-img: Could not open '/srv/staging/abc': Could not open "
            "backing file: Could not open '/etc/base.img': No such file\n")
    assert qemu_img.reduce_stderr(text, {'/srv/staging/abc': 'abc'}) == (
        "Could not open 'abc': Could not open backing file: Could not open "
        "'a file': No such file")
    assert qemu_img.content_check(
        qemu_img.reduce_stderr(text, {'/srv/staging/abc': 'abc'}),
        'abc') == ('backing_file', "Could not open backing file: Could not "
                   "open 'a file': No such file")


@pytest.mark.parametrize('stderr,expected', [
    ("Could not open 'img': Could not read qcow2 header: Input/output error",
     None),
    ("Could not open 'img': Could not open 'img': Permission denied", None),
    ("Could not open 'img': Active L1 table too large",
     ('l1_table', 'Active L1 table too large')),
    ("Could not open 'img': Could not open 'img': Invalid argument",
     ('header', 'Invalid argument')),
    # About another file (the output): never the source's content.
    ("Could not open 'the output': Invalid argument", None),
    ("error while writing at byte 0: No space left on device", None),
])
def test_content_check_needs_the_source_and_a_content_reason(stderr,
                                                             expected):
    assert qemu_img.content_check(stderr, 'img') == expected


def test_unknown_format_refused_before_running(tmp_path):
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(tmp_path / 'x'), 'ploop')
    assert str(err.value) == 'qemu-img info failed: unsupported format ploop'


# --- the prlimit wrapper's interpreter ---------------------------------------

def test_python_exec_runs_the_prlimit_wrapper(corpus, tmp_path):
    log = tmp_path / 'calls'
    wrapper = tmp_path / 'python'
    wrapper.write_text('#!/bin/sh\necho "$@" >> %s\nexec %s "$@"\n'
                       % (log, sys.executable))
    wrapper.chmod(0o755)
    limits = qemu_img.Limits(python_exec=str(wrapper))
    data = qemu_img.info(str(corpus.path('qcow2_v3')), 'qcow2', limits)
    assert data.virtual_size == images.VIRTUAL_SIZE
    calls = log.read_text().splitlines()
    assert len(calls) == 1
    assert calls[0].startswith('-m oslo_concurrency.prlimit --as=')
    # None: sys.executable (the wrapper is not used again).
    qemu_img.info(str(corpus.path('qcow2_v3')), 'qcow2', qemu_img.Limits())
    assert len(log.read_text().splitlines()) == 1


def test_python_exec_missing_or_unusable(corpus, tmp_path):
    limits = qemu_img.Limits(python_exec=str(tmp_path / 'no-python'))
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(corpus.path('qcow2_v3')), 'qcow2', limits)
    assert str(err.value) == ('qemu-img info failed: cannot run qemu-img: '
                              'No such file or directory')
    # An interpreter without oslo.concurrency (uWSGI's base python).
    bare = tmp_path / 'bare-python'
    bare.write_text('#!/bin/sh\nexec %s -I -S "$@"\n' % sys.executable)
    bare.chmod(0o755)
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.info(str(corpus.path('qcow2_v3')), 'qcow2',
                      qemu_img.Limits(python_exec=str(bare)))
    assert str(err.value) == (
        'qemu-img info failed: the Python interpreter that runs the prlimit '
        'wrapper has no oslo_concurrency module (see [wsgi] '
        'python_interpreter)')
    assert str(tmp_path) not in str(err.value)


# --- the running-conversion watchdog ----------------------------------------

class Stop(Exception):
    pass


def _slow_source(tmp_path):
    src = tmp_path / 'random.raw'
    src.write_bytes(os.urandom(64 * images.MiB))
    return src


def test_check_stops_a_running_convert(tmp_path):
    src = _slow_source(tmp_path)
    dst = tmp_path / ('watched-%d.qcow2' % os.getpid())
    calls = []

    def check():
        calls.append(threading.current_thread().name)
        if len(calls) >= 2:
            raise Stop('staging space low')

    started = time.monotonic()
    with pytest.raises(Stop, match='staging space low'):
        # Compressing 64 MiB of random bytes takes over a second here.
        qemu_img.convert(str(src), 'raw', str(dst), 'qcow2',
                         extra_args=('-c',), check=check,
                         check_interval=0.05)
    assert time.monotonic() - started < 1.0
    assert len(calls) == 2
    assert calls[0] != threading.current_thread().name
    left = subprocess.run(['pgrep', '-f', str(dst)], capture_output=True)
    assert left.returncode == 1, left.stdout


def test_check_that_passes_lets_convert_finish(corpus, tmp_path):
    calls = []
    out = tmp_path / 'o.raw'
    qemu_img.convert(str(_slow_source(tmp_path)), 'raw', str(out), 'qcow2',
                     check=lambda: calls.append(1), check_interval=0.01)
    assert calls
    assert qemu_img.info(str(out), 'qcow2').virtual_size == 64 * images.MiB
