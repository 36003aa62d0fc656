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

"""inspect_file on the real corpus: exact formats, facts and failures."""

import json
import os
import socket
import subprocess
import threading
import time

import pytest
from oslo_utils.imageutils import format_inspector as fi

from glance_imgplugins import exception
from glance_imgplugins import inspection
from tests.support import images

# Our own checks, on top of format_inspector's.
OURS = {'encryption', 'format_detection', 'vmdk_create_type', 'footer',
        'backing_file'}


@pytest.mark.parametrize('name', sorted(images.ENTRIES))
def test_corpus_entry(corpus, name):
    entry = images.ENTRIES[name]
    result = inspection.inspect_file(str(corpus.path(name)))
    assert result.format == entry.format
    assert set(result.failures) == set(entry.failures)
    assert result.safe is (not entry.failures)
    if entry.virtual_size is not None:
        assert result.virtual_size == entry.virtual_size
    for key, value in entry.facts.items():
        assert result.facts.get(key) == value, key
    assert dict(result.properties) == dict(entry.properties)
    assert set(result.property_families) == set(result.properties)
    assert set(result.property_families.values()) <= set(
        inspection.PROPERTY_FAMILIES)
    assert result.file_size == os.path.getsize(corpus.path(name))
    # Headers only, whatever the file.
    assert result.bytes_read <= 1 << 20


@pytest.mark.parametrize('name', sorted(images.ENTRIES))
def test_same_verdict_as_format_inspector(corpus, name):
    """The seeking driver decides exactly as detect_file_format does."""
    path = str(corpus.path(name))
    result = inspection.inspect_file(path)
    try:
        upstream = fi.detect_file_format(path)
    except fi.ImageFormatError:
        matched = set(result.facts.get('matched_formats', ()))
        if matched == {'gpt', 'iso'}:
            # Glance's own rule (glance/location.py): iso + gpt is an ISO.
            assert result.inspector_name == 'iso'
            assert result.safe
            return
        assert result.inspector_name == 'unknown'
        assert 'format_detection' in result.failures
        return
    assert upstream.NAME == result.inspector_name
    try:
        upstream.safety_check()
        upstream_failures = set()
    except fi.SafetyCheckFailed as exc:
        upstream_failures = set(exc.failures)
    except fi.ImageFormatError:
        upstream_failures = {'format_detection'}
    assert upstream_failures <= set(result.failures)
    assert set(result.failures) - upstream_failures <= OURS
    if upstream.NAME not in ('raw', 'gpt', 'luks', 'qed'):
        assert upstream.virtual_size == result.virtual_size or (
            result.facts.get('vhd_disk_type') == 'fixed')


@pytest.mark.parametrize('name', ['vhdx', 'vmdk_stream_lsilogic'])
def test_reads_less_than_detect_file_format(corpus, name):
    # detect_file_format streams up to the vhdx metadata (3 MiB) or to the
    # streamOptimized footer (end of file); we seek.
    path = corpus.path(name)
    result = inspection.inspect_file(str(path))
    assert result.bytes_read < 128 * 1024 < os.path.getsize(path)


def _rchar():
    with open('/proc/self/io') as f:
        return int(dict(line.split(': ') for line in f)['rchar'])


def test_one_tib_qcow2_reads_headers_only(tmp_path):
    path = tmp_path / 'big.qcow2'
    images.qemu_img('create', '-f', 'qcow2', str(path), '1T')
    before = _rchar()
    result = inspection.inspect_file(str(path))
    read = _rchar() - before
    assert result.virtual_size == 1 << 40
    assert result.safe
    # The L1 table of a 1 TiB image is 16 KiB: no L2 tables, compressed=False
    assert result.facts['compressed'] is False
    # rchar also counts the read of /proc/self/io itself.
    assert result.bytes_read <= read < result.bytes_read + 4096
    assert read <= 1 << 20


def test_compressed_unknown_beyond_budget(tmp_path, monkeypatch):
    path = tmp_path / 'c.qcow2'
    images.write_seed(tmp_path / 's.raw')
    images.qemu_img('convert', '-c', '-O', 'qcow2', str(tmp_path / 's.raw'),
                    str(path))
    assert inspection.inspect_file(str(path)).facts['compressed'] is True
    monkeypatch.setattr(inspection, 'QCOW2_SCAN_BUDGET', 4096)
    assert inspection.inspect_file(str(path)).facts['compressed'] is None


def test_vmdk_allowed_types_is_policy(corpus):
    path = str(corpus.path('vmdk_flat_descriptor'))
    result = inspection.inspect_file(
        path, vmdk_allowed_types=['monolithicFlat'])
    # Our createType check obeys the list; format_inspector's does not.
    assert set(result.failures) == {'descriptor'}
    result = inspection.inspect_file(
        str(corpus.path('vmdk_stream_ide')),
        vmdk_allowed_types=['monolithicSparse'])
    assert set(result.failures) == {'vmdk_create_type'}


def test_gpt_is_a_real_gpt(corpus):
    # GPT fdisk reads the crafted table as a valid GPT with an ESP.
    path = str(corpus.path('raw_gpt_esp'))
    verify = subprocess.run(['sgdisk', '--verify', path], check=True,
                            capture_output=True, text=True).stdout
    assert 'No problems found' in verify
    info = subprocess.run(['sgdisk', '--info=1', path], check=True,
                          capture_output=True, text=True).stdout
    assert str(images.ESP_TYPE).upper() in info


def test_corrupt_gpt_sets_no_firmware(corpus, tmp_path):
    path = tmp_path / 'bad.raw'
    path.write_bytes(corpus.path('raw_gpt_esp').read_bytes())
    with open(path, 'r+b') as f:
        f.seek(1024 + 100)  # inside the partition entries: CRC breaks
        f.write(b'X')
    result = inspection.inspect_file(str(path))
    assert result.facts['gpt_valid'] is False
    assert 'hw_firmware_type' not in result.properties


def test_summary_and_dict(corpus):
    result = inspection.inspect_file(str(corpus.path('qcow2_data_file')))
    assert result.failure_summary() == 'data_file (Image has data_file set)'
    data = result.to_dict()
    json.dumps(data)
    assert data['format'] == 'qcow2'
    assert data['disk_formats'] == ['qcow2']
    assert data['safe'] is False
    assert data['failures'] == ['data_file']
    assert data['virtual_size'] == images.VIRTUAL_SIZE
    ok = inspection.inspect_file(str(corpus.path('vmdk_sparse_lsilogic')))
    assert ok.failure_summary() == ''
    assert ok.to_dict()['properties']['hw_scsi_model'] == 'lsilogic'
    gpt = inspection.inspect_file(str(corpus.path('raw_gpt_blank')))
    assert gpt.to_dict()['disk_formats'] == ['gpt', 'raw']
    assert ok.properties_in(['bus']) == {'hw_disk_bus': 'scsi',
                                          'hw_scsi_model': 'lsilogic'}


def test_unreadable_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        inspection.inspect_file(str(tmp_path / 'missing'))
    with pytest.raises(exception.NotRegularFile) as err:
        inspection.inspect_file(str(tmp_path))
    assert err.value.kwargs['kind'] == 'directory'


def test_empty_and_garbage_files_do_not_raise(tmp_path):
    empty = tmp_path / 'empty'
    empty.write_bytes(b'')
    result = inspection.inspect_file(str(empty))
    assert (result.format, result.virtual_size, result.safe) == ('raw', 0,
                                                                 True)
    garbage = tmp_path / 'garbage'
    garbage.write_bytes(b'KDMV' + os.urandom(70000))
    result = inspection.inspect_file(str(garbage))
    assert not result.safe


# --- bootable ISOs, gpt, differencing vhdx, compressed containers ----------

@pytest.mark.parametrize('name', ['iso_hybrid_mbr', 'iso_hybrid_gpt'])
def test_bootable_iso_is_an_iso(corpus, name):
    path = corpus.path(name)
    # Really hybrid: format_inspector alone sees two formats.
    with pytest.raises(fi.ImageFormatError):
        fi.detect_file_format(str(path))
    table = subprocess.run(['sgdisk', '--print', str(path)],
                           capture_output=True, text=True).stdout
    assert 'Number  Start' in table
    result = inspection.inspect_file(str(path))
    assert (result.format, result.inspector_name, result.safe) == (
        'iso', 'iso', True)
    assert result.disk_formats == {'iso'}
    assert not result.accepts_declared('raw')
    # Facts, but no firmware property: the ISO boots either way.
    assert result.facts['matched_formats'] == ['gpt', 'iso']
    assert result.properties == {}


def test_iso_with_qcow2_in_system_area_stays_refused(corpus):
    result = inspection.inspect_file(str(corpus.path('qcow2_in_iso')))
    assert result.format == 'unknown'
    assert set(result.failures) == {'format_detection'}
    assert result.failures['format_detection'] == (
        'several formats match: iso, qcow2')
    assert result.disk_formats == frozenset()


def test_qcow2_in_hybrid_iso_stays_refused(corpus, tmp_path):
    # iso + gpt + qcow2 is not Glance's iso + gpt pair.
    path = tmp_path / 'q.iso'
    path.write_bytes(corpus.path('iso_hybrid_mbr').read_bytes())
    qcow = corpus.path('qcow2_v3').read_bytes()[:446]
    with open(path, 'r+b') as f:
        f.write(qcow)
    result = inspection.inspect_file(str(path))
    assert result.facts['matched_formats'] == ['gpt', 'iso', 'qcow2']
    assert set(result.failures) == {'format_detection'}


@pytest.mark.parametrize('name', ['raw_gpt_blank', 'raw_gpt_esp',
                                  'raw_gpt_no_esp'])
def test_valid_gpt_may_be_declared_gpt(corpus, name):
    result = inspection.inspect_file(str(corpus.path(name)))
    assert (result.format, result.inspector_name) == ('raw', 'gpt')
    assert result.disk_formats == {'raw', 'gpt'}
    assert result.accepts_declared('gpt') and result.accepts_declared('raw')
    assert not result.accepts_declared('qcow2')


def test_blank_gpt_is_sgdisks(corpus):
    verify = subprocess.run(['sgdisk', '--verify',
                             str(corpus.path('raw_gpt_blank'))],
                            check=True, capture_output=True, text=True)
    assert 'No problems found' in verify.stdout


def test_corrupt_or_absent_gpt_is_not_gpt(corpus, tmp_path):
    path = tmp_path / 'bad.raw'
    path.write_bytes(corpus.path('raw_gpt_esp').read_bytes())
    with open(path, 'r+b') as f:
        f.seek(1024 + 100)  # inside the partition entries: CRC breaks
        f.write(b'X')
    result = inspection.inspect_file(str(path))
    assert result.disk_formats == {'raw'}
    for name in ('raw_mbr', 'raw_plain'):
        result = inspection.inspect_file(str(corpus.path(name)))
        assert not result.accepts_declared('gpt')


def test_gpt_refusal_names_its_check(corpus):
    result = inspection.inspect_file(
        str(corpus.path('gpt_extra_mbr_partition')))
    assert result.inspector_name == 'gpt'
    assert set(result.failures) == {'mbr'}
    assert 'extra partitions' in result.failures['mbr']


def test_differencing_vhdx_is_a_backing_file(corpus):
    path = corpus.path('vhdx_differencing')
    result = inspection.inspect_file(str(path))
    assert result.format == 'vhdx'
    assert result.failures == {
        'backing_file': 'vhdx image is a differencing disk (it names a '
        'parent)'}
    # qemu-img itself refuses it, only with "Operation not supported".
    proc = subprocess.run(['qemu-img', 'info', '-f', 'vhdx', str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.endswith(': Operation not supported\n')
    plain = inspection.inspect_file(str(corpus.path('vhdx')))
    assert plain.facts['vhdx_has_parent'] is False
    assert plain.facts['vhdx_parent_locator'] is False


@pytest.mark.parametrize('name', sorted(images.COMPRESSED))
def test_compressed_container_is_named(corpus, name):
    entry = images.COMPRESSED[name]
    result = inspection.inspect_file(str(corpus.path(name)))
    assert result.format == 'raw' and result.safe
    assert result.facts['compression'] == entry.facts['compression']
    assert not result.accepts_declared('qcow2')


def test_no_compression_fact_for_plain_data(corpus):
    for name in ('raw_plain', 'raw_mbr', 'raw_gpt_esp', 'qcow2_v3', 'iso'):
        result = inspection.inspect_file(str(corpus.path(name)))
        assert 'compression' not in result.facts, name


# --- sizes: inspection alone cannot see expansion bombs ----------------------

@pytest.mark.parametrize('name', sorted(images.SIZE_GUARD))
def test_size_guard_images_pass_inspection(corpus, name):
    """The bombs are well-formed: only the mapping (qemu_img
    .mapped_data_bytes) shows what they expand to."""
    entry = images.SIZE_GUARD[name]
    path = corpus.path(name)
    result = inspection.inspect_file(str(path))
    assert result.safe
    assert result.virtual_size == entry.virtual_size
    if 'bomb' in name:
        assert result.allocated_size < entry.data_bytes // 10


# --- what is not a regular file --------------------------------------------

def _in_time(fn, seconds=5.0):
    """Run fn in a thread; fail (not hang) if it does not return in time."""
    out = {}

    def run():
        try:
            out['value'] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out['error'] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), 'inspect_file blocked'
    return out


@pytest.mark.timeout(30)
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    out = _in_time(lambda: inspection.inspect_file(str(fifo)))
    err = out['error']
    assert isinstance(err, exception.NotRegularFile)
    assert err.kwargs['kind'] == 'FIFO'
    assert str(err) == 'Cannot inspect %s: it is a FIFO, not a regular ' \
        'file' % fifo


@pytest.mark.timeout(30)
@pytest.mark.parametrize('path,kind', [('/dev/zero', 'character device'),
                                       ('/dev/null', 'character device')])
def test_device_is_refused_not_read_as_raw(path, kind):
    out = _in_time(lambda: inspection.inspect_file(path))
    assert isinstance(out['error'], exception.NotRegularFile)
    assert out['error'].kwargs['kind'] == kind


@pytest.mark.timeout(30)
def test_socket_is_refused(tmp_path):
    path = str(tmp_path / 'sock')
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        out = _in_time(lambda: inspection.inspect_file(path))
    assert isinstance(out['error'], exception.NotRegularFile)
    assert out['error'].kwargs['kind'] == 'socket'


def test_symlink_to_a_regular_file_is_inspected(corpus, tmp_path):
    link = tmp_path / 'link'
    link.symlink_to(corpus.path('qcow2_v3'))
    assert inspection.inspect_file(str(link)).format == 'qcow2'


def test_file_that_grows_while_read_is_reported(corpus, tmp_path):
    path = tmp_path / 'growing.raw'
    path.write_bytes(corpus.path('raw_gpt_esp').read_bytes())
    stop = threading.Event()

    def grow():
        with open(path, 'ab') as f:
            while not stop.is_set():
                f.write(b'x' * 512)
                f.flush()

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    try:
        seen = None
        deadline = time.monotonic() + 20
        while seen is None and time.monotonic() < deadline:
            try:
                inspection.inspect_file(str(path))
            except exception.FileChanged as exc:
                seen = exc
    finally:
        stop.set()
        writer.join()
    assert seen is not None, 'a growing file was never reported'
    assert str(seen) == ('Cannot inspect %s: it changed size while being '
                         'read' % path)
    # Once still, it inspects normally.
    assert inspection.inspect_file(str(path)).format == 'raw'
