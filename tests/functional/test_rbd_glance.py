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

"""``rbd_sparse`` inside a real Glance 33, on a real Ceph (bluestore).

Glance runs with ``enabled_backends = ceph:rbd_sparse, edge:rbd_sparse,
local:file`` (``ceph`` and ``edge`` on two Ceph clusters) and our
``image_introspection`` + ``format_conversion`` import plugins.  Every path
that writes a store is exercised with the real ``glance`` CLI: a plain
upload, an import of a qcow2 converted to raw into both stores, a
copy-image from the file store to Ceph, and a copy-image from one cluster
to the other (central -> edge: our hole-aware ``get()`` feeds Glance's
staging).  Each time the Ceph image must be sparse (the OSD's stored-bytes
counter) and read back bit-exact with ``glance image-download``.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import subprocess
from typing import Any

import pytest

from tests.support.digest import sha256
from tests.support.ceph_cluster import (  # noqa: F401 (fixture)
    CephCluster,
    ceph_bluestore_cluster,
    ceph_cluster,
)
from tests.support.glance_server import (
    ADMIN_TOKEN,
    MEMBER_TOKEN,
    GlanceServer,
    parse_table,
)

KiB = 1024
MiB = 1024 * KiB
VIRTUAL = 64 * MiB
# (offset, length) islands: 4 KiB to 3 MiB, one crossing an 8 MiB object.
ISLANDS = [(0, 4 * KiB), (5 * MiB + 100, 300 * KiB),
           (16 * MiB - 64 * KiB, 3 * MiB), (VIRTUAL - 64 * KiB, 64 * KiB)]
DATA_BYTES = sum(length for _, length in ISLANDS)
# Bound on what Ceph may hold: each island rounded out to 64 KiB blocks
# (both ends), plus the RBD header/id/directory objects.
BOUND = sum(length + 2 * 64 * KiB for _, length in ISLANDS) + 64 * KiB


@pytest.fixture(scope='module')
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp('img') / 'disk.raw'
    with open(path, 'wb') as f:
        f.truncate(VIRTUAL)
        for i, (offset, length) in enumerate(ISLANDS):
            f.seek(offset)
            f.write(hashlib.sha512(b'%d' % i).digest() * (length // 64)
                    + b'\xff' * (length % 64))
    return path


@pytest.fixture(scope='module')
def qcow2_image(raw_image: pathlib.Path) -> pathlib.Path:
    path = raw_image.with_suffix('.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw_image), str(path)], check=True)
    return path


@pytest.fixture(scope='module')
def glance(glance_factory: Any, ceph_bluestore_cluster: CephCluster,
           ceph_cluster: CephCluster) -> GlanceServer:
    ceph = ceph_bluestore_cluster
    server: GlanceServer = glance_factory(
        stores={'ceph': ('rbd_sparse', ceph.store_options(
                    'images', rbd_sparse_client_timeout=30)),
                'local': ('file', {}),
                'edge': ('rbd_sparse', ceph_cluster.store_options(
                    'images', rbd_sparse_client_timeout=30))},
        default_store='ceph',
        plugins=['image_introspection', 'format_conversion'])
    return server


def stored_delta(ceph: CephCluster, action: Any) -> tuple[int, Any]:
    _, before = ceph.stored_bytes()
    result = action()
    _, after = ceph.stored_bytes()
    return after - before, result


def download(glance: GlanceServer, image_id: str,
             out: pathlib.Path) -> str:
    glance.glance('image-download', '--file', str(out), image_id,
                  token=MEMBER_TOKEN)
    return sha256(out)


def check_in_ceph(ceph: CephCluster, image_id: str, size: int) -> None:
    assert image_id in ceph.rbd_ls('images')
    assert ceph.rbd_info('images', image_id)['size'] == size
    [snap] = ceph.rbd_snaps('images', image_id)
    assert snap['name'] == 'snap' and snap['protected'] == 'true'


def test_plain_upload_is_sparse_and_reads_back(
        glance: GlanceServer, ceph_bluestore_cluster: CephCluster,
        raw_image: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ceph = ceph_bluestore_cluster

    def upload() -> str:
        out = glance.glance('image-create', '--name', 'plain',
                            '--disk-format', 'raw', '--container-format',
                            'bare', '--store', 'ceph',
                            '--file', str(raw_image), token=MEMBER_TOKEN)
        return parse_table(out.stdout)['id']

    stored, image_id = stored_delta(ceph, upload)
    image = glance.image(image_id)
    assert image['status'] == 'active' and image['stores'] == 'ceph'
    assert image['size'] == VIRTUAL
    assert image['checksum'] == hashlib.md5(
        raw_image.read_bytes()).hexdigest()
    check_in_ceph(ceph, image_id, VIRTUAL)
    assert DATA_BYTES <= stored <= BOUND, stored
    assert download(glance, image_id, tmp_path / 'out') == sha256(raw_image)


def test_qcow2_import_converted_into_ceph_and_file(
        glance: GlanceServer, ceph_bluestore_cluster: CephCluster,
        raw_image: pathlib.Path, qcow2_image: pathlib.Path,
        tmp_path: pathlib.Path) -> None:
    ceph = ceph_bluestore_cluster

    def import_() -> dict[str, Any]:
        out = glance.glance('image-create-via-import', '--name', 'qcow',
                            '--disk-format', 'qcow2', '--container-format',
                            'bare', '--stores', 'ceph,local',
                            '--file', str(qcow2_image), token=MEMBER_TOKEN)
        return glance.wait_for_import(parse_table(out.stdout)['id'])

    stored, image = stored_delta(ceph, import_)
    image_id = image['id']
    assert image['status'] == 'active', glance.last_task_message(image_id)
    # format_conversion ran: the image is raw now, in both stores
    assert image['disk_format'] == 'raw'
    assert sorted(image['stores'].split(',')) == ['ceph', 'local']
    assert image['size'] == VIRTUAL
    check_in_ceph(ceph, image_id, VIRTUAL)
    assert DATA_BYTES <= stored <= BOUND, stored
    assert sha256(glance.stored_files(image_id)['local']) == sha256(raw_image)
    # read it from Ceph alone: drop the file copy first
    glance.glance('stores-delete', '--store', 'local', image_id)
    assert glance.image(image_id)['stores'] == 'ceph'
    assert download(glance, image_id, tmp_path / 'out') == sha256(raw_image)


def test_copy_image_from_file_store_to_ceph(
        glance: GlanceServer, ceph_bluestore_cluster: CephCluster,
        raw_image: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ceph = ceph_bluestore_cluster
    out = glance.glance('image-create-via-import', '--name', 'copy',
                        '--disk-format', 'raw', '--container-format', 'bare',
                        '--stores', 'local', '--file', str(raw_image),
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    assert glance.wait_for_import(image_id)['stores'] == 'local'
    assert image_id not in ceph.rbd_ls('images')

    def copy() -> dict[str, Any]:
        glance.glance('image-import', '--import-method', 'copy-image',
                      '--stores', 'ceph', image_id, token=ADMIN_TOKEN)
        return glance.wait_for_import(image_id)

    stored, image = stored_delta(ceph, copy)
    assert sorted(image['stores'].split(',')) == ['ceph', 'local'], (
        glance.last_task_message(image_id))
    check_in_ceph(ceph, image_id, VIRTUAL)
    assert DATA_BYTES <= stored <= BOUND, stored
    glance.glance('stores-delete', '--store', 'local', image_id)
    assert download(glance, image_id, tmp_path / 'out') == sha256(raw_image)
    # deleting the image removes the RBD image and its snapshot
    glance.glance('image-delete', image_id, token=MEMBER_TOKEN)
    assert image_id not in ceph.rbd_ls('images')


def test_copy_image_central_to_edge_reads_only_the_data(
        glance: GlanceServer, ceph_bluestore_cluster: CephCluster,
        ceph_cluster: CephCluster, raw_image: pathlib.Path,
        tmp_path: pathlib.Path) -> None:
    central, edge = ceph_bluestore_cluster, ceph_cluster
    out = glance.glance('image-create-via-import', '--name', 'dcn',
                        '--disk-format', 'raw', '--container-format', 'bare',
                        '--stores', 'ceph', '--file', str(raw_image),
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    assert glance.wait_for_import(image_id)['stores'] == 'ceph'
    assert image_id not in edge.rbd_ls('images')

    glance.glance('image-import', '--import-method', 'copy-image',
                  '--stores', 'edge', image_id, token=ADMIN_TOKEN)
    image = glance.wait_for_import(image_id)
    assert sorted(image['stores'].split(',')) == ['ceph', 'edge'], (
        glance.last_task_message(image_id))
    check_in_ceph(edge, image_id, VIRTUAL)
    assert image['checksum'] == hashlib.md5(
        raw_image.read_bytes()).hexdigest()
    # Our get() on the central store read only the objects holding data
    # (four islands touch four of the eight 8 MiB objects) and said so.
    [line] = [ln for ln in glance.log_path.read_text().splitlines()
              if 'Store ceph: read image %s:' % image_id in ln]
    served, read = (int(w) for w in re.findall(r'(\d+) bytes served, '
                                               r'(\d+) read', line)[0])
    assert served == VIRTUAL
    assert DATA_BYTES <= read <= 4 * 8 * MiB, line
    # bit-exact from the edge alone
    glance.glance('stores-delete', '--store', 'ceph', image_id)
    assert glance.image(image_id)['stores'] == 'edge'
    assert download(glance, image_id, tmp_path / 'out') == sha256(raw_image)
    glance.glance('image-delete', image_id, token=MEMBER_TOKEN)
    assert image_id not in edge.rbd_ls('images')
    assert image_id not in central.rbd_ls('images')


def test_stores_info(glance: GlanceServer) -> None:
    stores = {s['id']: s for s in glance.request(
        'GET', '/v2/info/stores')['stores']}
    assert set(stores) == {'ceph', 'edge', 'local'}
    assert stores['ceph'].get('default') == 'true'
    # Known Glance 33 limitation (documented in doc/source/rbd_sparse.rst):
    # the detail view looks store types up in a fixed table and fails on any
    # type it does not know.  Pinned here so a fixed Glance is noticed.
    with pytest.raises(Exception) as info:
        glance.request('GET', '/v2/info/stores/detail')
    assert getattr(info.value, 'code', None) == 500
