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

"""``decompression`` first, then introspection and conversion, in a real
taskflow engine on archives made by the standard tools around images made
by qemu-img; the expected bytes are a plain ``qemu-img convert`` of the
uncompressed original."""

from __future__ import annotations

import pathlib
import re

import pytest
from glance.common import exception as glance_exception

from glance_imgplugins.plugins import decompression
from glance_imgplugins.plugins import format_conversion
from glance_imgplugins.plugins import image_introspection
from tests.flow.conftest import Boom, Import, Record, STORES, qemu_convert
from tests.support import archives
from tests.support.digest import sha256

PLUGINS = [decompression.get_flow, image_introspection.get_flow,
           format_conversion.get_flow]
FAILED = ','.join(sorted(STORES))
MiB = archives.MiB


@pytest.fixture(scope='module')
def work(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp('flow-archives')


@pytest.fixture(scope='module')
def qcow2(work):
    return archives.image(work, 'qcow2')


def staging_files(imp: Import) -> set[str]:
    return {p.name for p in imp.staged.parent.iterdir()}


def expected_raw(original: pathlib.Path, fmt: str,
                 scratch: pathlib.Path) -> str:
    return sha256(qemu_convert(original, fmt, scratch / 'expected.raw',
                               'raw'))


def test_qcow2_xz_ends_raw(staging, conf, qcow2, work, scratch):
    image, _ = qcow2
    packed = archives.compress(image, 'xz', work / 'disk.qcow2.xz')
    imp = Import(staging, packed, 'qcow2')
    Record.seen.clear()
    imp.run(PLUGINS, [Record()])
    assert Record.seen == ['file://%s' % imp.staged]
    assert sha256(imp.staged) == expected_raw(image, 'qcow2', scratch)
    got = imp.image
    assert got.disk_format == 'raw'
    assert got.extra_properties['img_original_compression'] == 'xz'
    assert got.extra_properties['img_original_disk_format'] == 'qcow2'
    assert got.virtual_size == 64 * MiB
    # The container is gone; nothing else is left in staging.
    assert staging_files(imp) == {imp.image_id}
    messages = [m for m in imp.task_repo.messages
                if m.startswith('Decompressing')]
    assert re.fullmatch(r'Decompressing the xz image: 0% done, \d+ s '
                        r'elapsed', messages[0]), messages
    assert re.fullmatch(r'Decompressing the xz image: 100% done, \d+ s '
                        r'elapsed', messages[-1]), messages


def test_tar_xz_with_disk_raw(staging, conf, work, scratch):
    raw = archives.raw_disk(work / 'tar-disk.raw')
    folder = work / 'tar'
    folder.mkdir(exist_ok=True)
    archives.copy(raw, folder / 'disk.raw')
    packed = archives.tar(work / 'disk.tar.xz', folder, 'disk.raw',
                          options=('-S', '-J'))
    imp = Import(staging, packed, 'raw')
    imp.run(PLUGINS)
    assert sha256(imp.staged) == sha256(raw)
    got = imp.image
    assert got.extra_properties['img_original_compression'] == 'tar+xz'
    assert got.size == 64 * MiB
    # Sparse all along: 3 MiB of data in a 64 MiB disk.
    assert imp.staged.stat().st_blocks * 512 <= 4 * MiB


def test_uncompressed_image_untouched(staging, conf, qcow2):
    raw = qcow2[1]
    imp = Import(staging, raw, 'raw')
    inode = imp.staged.stat().st_ino
    imp.run([decompression.get_flow])
    assert imp.staged.stat().st_ino == inode
    assert 'img_original_compression' not in imp.image.extra_properties
    assert not any(m.startswith('Decompressing')
                   for m in imp.task_repo.messages)


def test_earlier_output_is_removed(staging, conf, qcow2, work):
    packed = archives.compress(qcow2[0], 'zstd', work / 'again.qcow2.zst')
    imp = Import(staging, packed, 'qcow2')
    residue = imp.staged.with_name(imp.staged.name + '.decompressed')
    residue.write_bytes(b'left by a killed attempt')
    imp.run([decompression.get_flow])
    assert staging_files(imp) == {imp.image_id}
    assert sha256(imp.staged) == sha256(qcow2[0])


def assert_failed(imp: Import, message: str, status: str,
                  staged_kept: bool) -> None:
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS, [Record()])
    assert str(err.value) == message
    got = imp.image
    assert got.status == status
    assert got.extra_properties['os_glance_failed_import'] == FAILED
    assert got.extra_properties['os_glance_importing_to_stores'] == ''
    assert 'img_original_compression' not in got.extra_properties
    assert imp.staged.exists() is staged_kept
    assert not imp.staged.with_name(imp.staged.name +
                                    '.decompressed').exists()


def test_bad_archive_is_refused_queued(staging, conf, qcow2, work):
    two = archives.zip_(work / 'two.zip', work, qcow2[0].name,
                        qcow2[1].name)
    imp = Import(staging, two, 'qcow2')
    assert_failed(imp, 'zip archive refused: the zip archive holds 2 files '
                  '(only one is accepted)', 'queued', staged_kept=False)


def test_bomb_is_refused_with_the_bound_and_kept(staging, conf, work):
    conf.config(max_decompressed_size=128 * MiB, group='decompression')
    bomb = archives.bzip2_zero_bomb(work, tib=1)
    imp = Import(staging, bomb, 'raw')
    before = sha256(imp.staged)
    assert_failed(imp, 'The bzip2 data decompresses to more than 134217728 '
                  'bytes ([decompression] max_decompressed_size): not '
                  'imported', 'uploading', staged_kept=True)
    # The container itself is kept for a retry once the bound is raised.
    assert sha256(imp.staged) == before


def test_ratio_bound(staging, conf, work):
    conf.config(max_ratio=10.0, group='decompression')
    bomb = archives.gzip_data_bomb(work, gib=1)
    imp = Import(staging, bomb, 'raw')
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert '([decompression] max_ratio 10 x the compressed size)' in \
        str(err.value)
    assert err.value.msg.startswith('The gzip data decompresses to more '
                                    'than %d bytes' % (
                                        10 * bomb.stat().st_size))


def test_max_virtual_size_is_a_bound(staging, conf, qcow2, work):
    conf.config(max_virtual_size=16 * MiB, group='format_conversion')
    packed = archives.compress(qcow2[1], 'gzip', work / 'big.raw.gz')
    imp = Import(staging, packed, 'raw')
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert '([format_conversion] max_virtual_size)' in str(err.value)


def test_later_failure_keeps_the_decompressed_data(staging, conf, qcow2,
                                                   work, scratch):
    packed = archives.compress(qcow2[0], 'bzip2', work / 'later.qcow2.bz2')
    imp = Import(staging, packed, 'qcow2')
    with pytest.raises(RuntimeError, match='store exploded'):
        imp.run([decompression.get_flow], [Boom()])
    got = imp.image
    assert got.status == 'uploading'
    assert got.extra_properties['os_glance_failed_import'] == FAILED
    # What stays staged is the inner qcow2, the container recorded: a
    # glance-direct retry imports it without decompressing again.
    assert sha256(imp.staged) == sha256(qcow2[0])
    assert got.extra_properties['img_original_compression'] == 'bzip2'
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert imp.image.extra_properties['img_original_compression'] == 'bzip2'
    assert sha256(imp.staged) == expected_raw(qcow2[0], 'qcow2', scratch)


def test_web_download_failure_leaves_the_status_to_its_task(staging, conf,
                                                            qcow2, work):
    two = archives.zip_(work / 'two-web.zip', work, qcow2[0].name,
                        qcow2[1].name)
    imp = Import(staging, two, 'qcow2', import_method='web-download')
    with pytest.raises(glance_exception.UploadException):
        imp.run(PLUGINS)
    assert imp.image.status == 'importing'
