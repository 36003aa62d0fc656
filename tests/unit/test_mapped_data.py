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

"""qemu_img.mapped_data_bytes on real images: the bytes a conversion writes.

The expansion bombs store a few hundred KiB yet expand to their whole guest
size; the count must say so, and the conversion must really write that much
(checked on every bomb but the 1 GiB qcow2, to keep the run short).
"""

import os
import time

import pytest

from glance_imgplugins import exception
from glance_imgplugins import inspection
from glance_imgplugins import qemu_img
from tests.support import images

EXTENTS = len(images.DATA_EXTENTS) * images.EXTENT_SIZE  # 2 MiB of data


@pytest.mark.parametrize('name', sorted(images.SIZE_GUARD))
def test_size_guard_entries(corpus, name):
    entry = images.SIZE_GUARD[name]
    path = corpus.path(name)
    assert qemu_img.mapped_data_bytes(str(path), entry.format) \
        == entry.data_bytes
    # qemu-img reads the bombs without complaint: nothing else refuses them.
    assert qemu_img.info(str(path), entry.format).virtual_size \
        >= entry.data_bytes
    if 'bomb' in name:
        # What the pre-#10 guard trusted: a small fraction allocated.
        assert os.stat(path).st_blocks * 512 < entry.data_bytes // 10


@pytest.mark.parametrize('name', ['vdi_block_repeat_bomb',
                                  'vmdk_gt_repeat_bomb',
                                  'vhd_bat_repeat_bomb',
                                  'vhdx_bat_repeat_bomb', 'vhdx_sparse'])
def test_conversion_writes_what_was_counted(corpus, tmp_path, name):
    entry = images.ENTRIES[name]
    out = tmp_path / 'out.qcow2'
    qemu_img.convert(str(corpus.path(name)), entry.format, str(out),
                     'qcow2')
    # Every guest block that maps to data is written (qcow2 metadata on
    # top: well under 1 MiB here).
    written = os.stat(out).st_blocks * 512
    assert entry.data_bytes <= written < entry.data_bytes + images.MiB


def test_vhdx_payload_is_none_when_untrusted(corpus, tmp_path):
    assert inspection.vhdx_payload_bytes(
        str(corpus.path('vhdx_sparse'))) == 2 * images.MiB
    # A differencing disk, another format: unknown.
    assert inspection.vhdx_payload_bytes(
        str(corpus.path('vhdx_differencing'))) is None
    assert inspection.vhdx_payload_bytes(
        str(corpus.path('qcow2_v3'))) is None
    # A header naming a log to replay: the BAT on disk is not the one used.
    path = tmp_path / 'log.vhdx'
    path.write_bytes(corpus.path('vhdx_sparse').read_bytes())
    with open(path, 'r+b') as f:
        f.seek(64 * 1024 + 48)
        f.write(b'\x01' * 16)
    assert inspection.vhdx_payload_bytes(str(path)) is None


@pytest.mark.parametrize('name', ['qcow2_v2', 'qcow2_v3', 'qcow2_compressed',
                                  'qcow2_zstd', 'vmdk_sparse_ide',
                                  'vmdk_stream_ide', 'raw_mbr'])
def test_benign_images_count_their_data_exactly(corpus, name):
    entry = images.ENTRIES[name]
    # The MBR is data too: the file system's 4 KiB block that holds it.
    expected = EXTENTS + (4096 if name == 'raw_mbr' else 0)
    assert qemu_img.mapped_data_bytes(str(corpus.path(name)),
                                      entry.qemu_format) == expected


@pytest.mark.parametrize('name,low,high', [
    # vpc maps whole 2 MiB blocks; vdi 1 MiB blocks: the seed's four 512 KiB
    # extents sit in four blocks each.
    ('vpc_dynamic', EXTENTS, 4 * 2 * images.MiB),
    ('vdi', EXTENTS, 4 * images.MiB),
    # a fixed vhd is a raw file plus its footer sector.
    ('vpc_fixed', EXTENTS, EXTENTS + 8192),
    # a raw copy without holes (copyfile): every allocated byte.
    ('raw_plain', EXTENTS, images.VIRTUAL_SIZE),
    # qemu-made vhdx: 8 MiB blocks, both written (vhdx_sparse: 1 MiB ones).
    ('vhdx', images.VIRTUAL_SIZE, images.VIRTUAL_SIZE),
])
def test_block_formats_count_an_upper_bound(corpus, name, low, high):
    entry = images.ENTRIES[name]
    found = qemu_img.mapped_data_bytes(str(corpus.path(name)),
                                       entry.qemu_format
                                       if entry.format != 'vhd' else 'vhd')
    assert low <= found <= high


def test_holes_and_zero_clusters_count_nothing(tmp_path):
    path = tmp_path / 'z.qcow2'
    images.qemu_img('create', '-f', 'qcow2', str(path), '1T')
    assert qemu_img.mapped_data_bytes(str(path), 'qcow2') == 0
    images.qemu_img('create', '-f', 'qcow2', '-o', 'preallocation=metadata',
                    str(path), str(64 * images.MiB))
    assert qemu_img.mapped_data_bytes(str(path), 'qcow2') == 0


def test_stop_above_stops_early(corpus):
    path = str(corpus.path('qcow2_l2_repeat_bomb'))
    limit = 10 * images.MiB
    started = time.monotonic()
    found = qemu_img.mapped_data_bytes(path, 'qcow2', stop_above=limit)
    assert limit < found < images.GiB
    assert time.monotonic() - started < 5
    # Under the limit: the exact count.
    assert qemu_img.mapped_data_bytes(path, 'qcow2',
                                      stop_above=2 * images.GiB) \
        == images.GiB


def test_hostile_header_is_refused_by_map(corpus):
    with pytest.raises(exception.QemuImgRefused) as err:
        qemu_img.mapped_data_bytes(str(corpus.path('qcow2_l1_too_large')),
                                   'qcow2', name='img-9')
    assert err.value.kwargs['check'] == 'l1_table'


def test_map_under_limits(corpus):
    with pytest.raises(exception.QemuImgTimeout):
        # 16384 extents cannot be listed in a millisecond.
        qemu_img.mapped_data_bytes(str(corpus.path('qcow2_l2_repeat_bomb')),
                                   'qcow2',
                                   qemu_img.Limits(timeout=0.001))
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.mapped_data_bytes(str(corpus.path('qcow2_v3')), 'qcow2',
                                   qemu_img.Limits(
                                       address_space=16 * images.MiB))
    assert 'qemu-img map failed' in str(err.value)


def test_missing_file_names_the_image(tmp_path):
    with pytest.raises(exception.QemuImgError) as err:
        qemu_img.mapped_data_bytes(str(tmp_path / 'gone'), 'raw',
                                   name='img-3')
    assert str(tmp_path) not in str(err.value)
    assert 'img-3' in str(err.value)
