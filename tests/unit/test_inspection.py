"""inspect_file on the real corpus: exact formats, facts and failures."""

import json
import os
import subprocess

import pytest
from oslo_utils.imageutils import format_inspector as fi

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
    assert data['safe'] is False
    assert data['failures'] == ['data_file']
    assert data['virtual_size'] == images.VIRTUAL_SIZE
    ok = inspection.inspect_file(str(corpus.path('vmdk_sparse_lsilogic')))
    assert ok.failure_summary() == ''
    assert ok.to_dict()['properties']['hw_scsi_model'] == 'lsilogic'
    assert ok.properties_in(['bus']) == {'hw_disk_bus': 'scsi',
                                          'hw_scsi_model': 'lsilogic'}


def test_unreadable_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        inspection.inspect_file(str(tmp_path / 'missing'))
    with pytest.raises(OSError):
        inspection.inspect_file(str(tmp_path))


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
