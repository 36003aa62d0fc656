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

"""Imports through a real Glance 33 with our two plugins enabled.

``image_import_plugins = ['image_introspection', 'format_conversion']``,
two file stores.  Every image goes in with the real ``glance`` CLI
(``image-create-via-import``, glance-direct or web-download); the bytes each
store holds are compared with a plain ``qemu-img convert`` of the original.
One Glance serves the whole module.
"""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest

from tests.support.digest import sha256
from tests.support import images
from tests.support.glance_server import MEMBER_TOKEN, parse_table

MiB = images.MiB
STORES = ['cheap', 'fast']
PLUGINS = ['image_introspection', 'format_conversion']
# A limit the corpus (16 MiB virtual) passes and the retry image exceeds.
LIMIT = 32 * MiB


def declared_format(name: str, path: pathlib.Path) -> str:
    entry = images.ENTRIES[name]
    if entry.format in ('raw', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi', 'iso'):
        return entry.format
    return {'.qcow2': 'qcow2', '.vmdk': 'vmdk', '.iso': 'iso'}.get(
        path.suffix, 'raw')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> images.Corpus:
    return images.Corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='module')
def glance(glance_factory, http_dir):
    return glance_factory(
        plugins=PLUGINS, allowed_ports=[http_dir[1]],
        import_conf={'format_conversion': {'max_virtual_size': LIMIT}})


def create_via_import(glance, path: pathlib.Path, disk_format: str,
                      *extra: str) -> str:
    args = ['image-create-via-import', '--name', path.name,
            '--disk-format', disk_format, '--container-format', 'bare',
            '--stores', ','.join(STORES), *extra]
    if '--uri' not in extra:
        args += ['--file', str(path)]
    out = glance.glance(*args, token=MEMBER_TOKEN)
    return parse_table(out.stdout)['id']


def import_all(glance, corpus, names: list[str]) -> dict[str, dict[str, Any]]:
    """Import every named corpus image; name -> outcome.

    One at a time: Glance on sqlite answers concurrent stagings with
    "database is locked" (HTTP 500).
    """
    def one(name: str) -> dict[str, Any]:
        path = corpus.path(name)
        image_id = create_via_import(glance, path,
                                     declared_format(name, path))
        image = glance.wait_for_import(image_id)
        return {'id': image_id, 'image': image, 'path': path,
                'message': glance.last_task_message(image_id)}
    return {name: one(name) for name in names}


def expected_bytes_sha(name: str, path: pathlib.Path,
                       scratch: pathlib.Path) -> str:
    entry = images.ENTRIES[name]
    if entry.format == 'iso':
        return sha256(path)  # left as it is
    out = scratch / (name + '.expected.raw')
    subprocess.run(['qemu-img', 'convert', '-f', entry.qemu_format, '-O',
                    'raw', str(path), str(out)], check=True)
    return sha256(out)


@pytest.fixture(scope='module')
def benign(glance, corpus):
    return import_all(glance, corpus, sorted(images.BENIGN))


@pytest.fixture(scope='module')
def hostile(glance, corpus):
    return import_all(glance, corpus, sorted(images.HOSTILE))


@pytest.mark.parametrize('name', sorted(images.BENIGN))
def test_benign_image_imports_raw_into_both_stores(glance, benign, name,
                                                   tmp_path):
    outcome = benign[name]
    image = outcome['image']
    entry = images.BENIGN[name]
    assert image['status'] == 'active', outcome['message']
    assert sorted(image['stores'].split(',')) == STORES
    assert image.get('os_glance_failed_import', '') == ''
    stored = glance.stored_files(outcome['id'])
    assert sorted(stored) == STORES
    expected = expected_bytes_sha(name, outcome['path'], tmp_path)
    for path in stored.values():
        assert sha256(path) == expected
    if entry.format == 'iso':
        assert image['disk_format'] == 'iso'
    else:
        assert image['disk_format'] == 'raw'
        assert image['virtual_size'] == stored['fast'].stat().st_size
    if entry.format in ('raw', 'iso'):
        assert 'img_original_disk_format' not in image
    else:
        assert image['img_original_disk_format'] == entry.format
    # Introspection's properties (vmware_*, hw_*) reached the image.
    for key, value in entry.properties.items():
        assert image[key] == value, key
    # Nothing left in staging.
    assert not list(glance.staging_dir.glob(outcome['id'] + '*'))


def test_vmdk_gets_the_vmware_properties(benign):
    image = benign['vmdk_stream_lsilogicsas']['image']
    assert image['vmware_disktype'] == 'streamOptimized'
    assert image['vmware_adaptertype'] == 'lsiLogicsas'
    assert image['hw_disk_bus'] == 'scsi'
    assert image['hw_scsi_model'] == 'lsisas1068'
    assert image['img_original_disk_format'] == 'vmdk'


@pytest.mark.parametrize('name', sorted(images.HOSTILE))
def test_hostile_image_never_reaches_a_store(glance, hostile, name):
    outcome = hostile[name]
    image = outcome['image']
    entry = images.HOSTILE[name]
    assert image['status'] == 'queued'
    assert image['disk_format'] == declared_format(name, outcome['path'])
    assert glance.stored_files(outcome['id']) == {}
    assert image.get('stores', '') in ('', None)
    assert sorted(image['os_glance_failed_import'].split(',')) == STORES
    message = outcome['message']
    assert message.endswith(': refused'), message
    for failure in entry.failures:
        assert failure in message, message
    # A refused image's staged data is removed: it can be staged again.
    assert not list(glance.staging_dir.glob(outcome['id'] + '*'))
    assert not any(k.startswith(('vmware_', 'hw_')) for k in image)


def test_hostile_image_can_be_staged_again(glance, hostile, corpus):
    image_id = hostile['qcow2_data_file']['id']
    good = corpus.path('qcow2_v3')
    glance.glance('image-stage', '--file', str(good), image_id,
                  token=MEMBER_TOKEN)
    glance.glance('image-import', '--import-method', 'glance-direct',
                  '--stores', ','.join(STORES), image_id, token=MEMBER_TOKEN)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active'
    assert image['disk_format'] == 'raw'


def web_download(glance, http_dir, source):
    """Serve ``source`` on loopback and have Glance download and import it."""
    root, port = http_dir
    (root / source.name).write_bytes(source.read_bytes())
    return create_via_import(
        glance, source, 'vmdk', '--import-method', 'web-download', '--uri',
        'http://127.0.0.1:%d/%s' % (port, source.name))


def test_web_download(glance, http_dir, corpus, tmp_path):
    source = corpus.path('vmdk_sparse_buslogic')
    image_id = web_download(glance, http_dir, source)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == 'raw'
    assert image['vmware_adaptertype'] == 'busLogic'
    expected = expected_bytes_sha('vmdk_sparse_buslogic', source, tmp_path)
    stored = glance.stored_files(image_id)
    assert sorted(stored) == STORES
    for path in stored.values():
        assert sha256(path) == expected


def test_web_download_hostile(glance, http_dir, corpus):
    image_id = web_download(glance, http_dir,
                            corpus.path('vmdk_extent_host_path'))
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'queued'
    assert glance.stored_files(image_id) == {}
    assert 'safety check descriptor' in glance.last_task_message(image_id)


def test_retry_after_a_limit_without_uploading_again(glance, tmp_path):
    """Runs last: it restarts Glance with a higher limit."""
    big = tmp_path / 'big.qcow2'
    raw = images.write_seed(tmp_path / 'big.raw', size=64 * MiB)
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(big)], check=True)
    image_id = create_via_import(glance, big, 'qcow2')
    image = glance.wait_for_import(image_id)
    message = glance.last_task_message(image_id)
    assert message == ('Image virtual size %d bytes exceeds the limit of %d '
                       'bytes ([format_conversion] max_virtual_size): not '
                       'imported' % (64 * MiB, LIMIT))
    # Kept staged, image back to "staged" so glance-direct can run again.
    assert image['status'] == 'uploading'
    assert image['disk_format'] == 'qcow2'
    staged = glance.staged_path(image_id)
    assert sha256(staged) == sha256(big)
    assert glance.stored_files(image_id) == {}

    glance.import_conf = {'format_conversion': {'max_virtual_size': 0}}
    glance.restart()
    glance.glance('image-import', '--import-method', 'glance-direct',
                  '--stores', ','.join(STORES), image_id, token=MEMBER_TOKEN)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == 'raw'
    for path in glance.stored_files(image_id).values():
        assert sha256(path) == sha256(raw)
