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

"""Compressed images through a real Glance 33.

``image_import_plugins = ['decompression', 'image_introspection',
'format_conversion']``, two file stores.  Archives are made by the standard
tools around images made by qemu-img, imported with the real ``glance``
CLI (glance-direct and web-download from loopback); what each store holds
is compared with a plain ``qemu-img convert`` of the uncompressed original.
"""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest

from tests.support import archives
from tests.support.digest import sha256
from tests.support.glance_server import MEMBER_TOKEN, parse_table

MiB = archives.MiB
STORES = ['cheap', 'fast']
PLUGINS = ['decompression', 'image_introspection', 'format_conversion']
CAP = 1024 * MiB


@pytest.fixture(scope='module')
def glance(glance_factory, http_dir):
    return glance_factory(
        plugins=PLUGINS, allowed_ports=[http_dir[1]],
        import_conf={'decompression': {'max_decompressed_size': CAP}})


@pytest.fixture(scope='module')
def work(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp('archives')


@pytest.fixture(scope='module')
def cases(work) -> dict[str, tuple[pathlib.Path, str, pathlib.Path, str]]:
    """name -> (archive, declared disk_format, uncompressed original, its
    qemu-img format, expected container)."""
    qcow2, _ = archives.image(work, 'qcow2', 'q')
    raw = archives.raw_disk(work / 'r.raw')
    folder = work / 'tar'
    folder.mkdir()
    archives.copy(raw, folder / 'disk.raw')
    zipped, _ = archives.image(work, 'qcow2', 'z')
    return {
        'qcow2.xz': (archives.compress(qcow2, 'xz', work / 'disk.qcow2.xz'),
                     'qcow2', qcow2, 'xz'),
        'raw.gz': (archives.compress(raw, 'gzip', work / 'disk.raw.gz'),
                   'raw', raw, 'gzip'),
        'tar.xz': (archives.tar(work / 'disk.tar.xz', folder, 'disk.raw',
                                options=('-S', '-J')),
                   'raw', raw, 'tar+xz'),
        'zip': (archives.zip_(work / 'disk.zip', zipped.parent, zipped.name),
                'qcow2', zipped, 'zip'),
    }


def expected_raw(original: pathlib.Path, fmt: str,
                 scratch: pathlib.Path) -> str:
    out = scratch / (original.name + '.expected.raw')
    subprocess.run(['qemu-img', 'convert', '-f', fmt, '-O', 'raw',
                    str(original), str(out)], check=True)
    return sha256(out)


def create_via_import(glance, path: pathlib.Path, disk_format: str,
                      *extra: str) -> str:
    args = ['image-create-via-import', '--name', path.name,
            '--disk-format', disk_format, '--container-format', 'bare',
            '--stores', ','.join(STORES), *extra]
    if '--uri' not in extra:
        args += ['--file', str(path)]
    out = glance.glance(*args, token=MEMBER_TOKEN)
    return parse_table(out.stdout)['id']


def web_download(glance, http_dir, source: pathlib.Path,
                 disk_format: str) -> str:
    root, port = http_dir
    (root / source.name).write_bytes(source.read_bytes())
    return create_via_import(
        glance, source, disk_format, '--import-method', 'web-download',
        '--uri', 'http://127.0.0.1:%d/%s' % (port, source.name))


@pytest.fixture(scope='module')
def imported(glance, http_dir, cases) -> dict[tuple[str, str], Any]:
    """(case, method) -> (image id, image); one import at a time (Glance
    on sqlite answers concurrent stagings with "database is locked")."""
    out = {}
    for name, (path, declared, _orig, _container) in cases.items():
        for method in ('glance-direct', 'web-download'):
            if method == 'glance-direct':
                image_id = create_via_import(glance, path, declared)
            else:
                image_id = web_download(glance, http_dir, path, declared)
            out[name, method] = (image_id, glance.wait_for_import(image_id))
    return out


@pytest.mark.parametrize('method', ['glance-direct', 'web-download'])
@pytest.mark.parametrize('name', ['qcow2.xz', 'raw.gz', 'tar.xz', 'zip'])
def test_compressed_image_imports_raw(glance, imported, cases, name, method,
                                      tmp_path):
    image_id, image = imported[name, method]
    _path, declared, original, container = cases[name]
    message = glance.last_task_message(image_id)
    assert image['status'] == 'active', message
    assert image['disk_format'] == 'raw'
    assert image['img_original_compression'] == container
    if declared == 'raw':
        assert 'img_original_disk_format' not in image
    else:
        assert image['img_original_disk_format'] == declared
    assert image['virtual_size'] == 64 * MiB
    stored = glance.stored_files(image_id)
    assert sorted(stored) == STORES
    expected = expected_raw(original, declared, tmp_path)
    for path in stored.values():
        assert sha256(path) == expected
    # Neither the container nor any output is left in staging.
    assert not list(glance.staging_dir.glob(image_id + '*'))


def stage(glance, path: pathlib.Path, disk_format: str) -> str:
    out = glance.glance('image-create', '--name', path.name, '--disk-format',
                        disk_format, '--container-format', 'bare',
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    glance.glance('image-stage', '--file', str(path), image_id,
                  token=MEMBER_TOKEN)
    return image_id


def test_bomb_refused_while_a_benign_import_succeeds(glance, work, cases,
                                                     tmp_path):
    bomb = archives.bzip2_zero_bomb(work, tib=1)
    path, declared, original, _ = cases['qcow2.xz']
    bomb_id = stage(glance, bomb, 'raw')
    benign_id = stage(glance, path, declared)
    # Both imports run in Glance at the same time.
    for image_id in (bomb_id, benign_id):
        glance.glance('image-import', '--import-method', 'glance-direct',
                      '--stores', ','.join(STORES), image_id,
                      token=MEMBER_TOKEN)
    bomb_image = glance.wait_for_import(bomb_id)
    benign = glance.wait_for_import(benign_id)

    assert benign['status'] == 'active', glance.last_task_message(benign_id)
    expected = expected_raw(original, declared, tmp_path)
    for stored in glance.stored_files(benign_id).values():
        assert sha256(stored) == expected

    # 1 TiB of zeros in under 1 MB: the ratio cap is the first bound.
    assert glance.last_task_message(bomb_id) == (
        'The bzip2 data decompresses to more than %d bytes ([decompression] '
        'max_ratio 200 x the compressed size): not imported'
        % (200 * bomb.stat().st_size))
    # A bound the operator can raise: staged container kept for a retry.
    assert bomb_image['status'] == 'uploading'
    assert glance.stored_files(bomb_id) == {}
    assert sorted(bomb_image['os_glance_failed_import'].split(',')) == STORES
    assert sha256(glance.staged_path(bomb_id)) == sha256(bomb)
    assert [p.name for p in glance.staging_dir.glob(bomb_id + '*')] == [
        bomb_id]


def test_bad_archive_refused_and_removed(glance, work, cases):
    _p, _d, original, _ = cases['qcow2.xz']
    inner = archives.compress(original, 'gzip', work / 'inner.qcow2.gz')
    nested = archives.compress(inner, 'xz', work / 'nested.qcow2.gz.xz')
    image_id = create_via_import(glance, nested, 'qcow2')
    image = glance.wait_for_import(image_id)
    assert glance.last_task_message(image_id) == (
        'xz archive refused: the decompressed data is itself a gzip archive '
        '(one level of compression or archive only)')
    assert image['status'] == 'queued'
    assert glance.stored_files(image_id) == {}
    assert not list(glance.staging_dir.glob(image_id + '*'))
