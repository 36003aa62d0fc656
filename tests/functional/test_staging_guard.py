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

"""Inspection that matches the bytes, through a real Glance 33.

Staging is a small tmpfs made by the test (96 MiB): an expansion bomb (a
qcow2 of a few hundred KiB mapping 1 GiB of data) is refused by name before
any conversion while a benign import next to it succeeds; a bootable
(hybrid) ISO and a blank GPT disk declared ``gpt`` end ``active``.
"""

from __future__ import annotations

import re
import subprocess
from typing import Iterator

import pytest

from tests.support import images
from tests.support.glance_server import MEMBER_TOKEN
from tests.support.glance_server import parse_table

MiB = images.MiB
STORES = ['cheap', 'fast']
PLUGINS = ['image_introspection', 'format_conversion']
RESERVE = 8 * MiB


@pytest.fixture(scope='module')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> images.Corpus:
    return images.Corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='module')
def glance(tmp_path_factory) -> Iterator[object]:
    from tests.support.glance_server import GlanceServer
    server = GlanceServer(
        tmp_path_factory.mktemp('glance-small-staging'), plugins=PLUGINS,
        import_conf={'format_conversion': {'staging_reserve': RESERVE}},
        # Glance knows gpt but does not list it by default.
        api_conf={'image_format': {'disk_formats': (
            'ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop,gpt')}})
    server.staging_dir.mkdir(parents=True)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=96m', 'tmpfs',
                    str(server.staging_dir)], check=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        subprocess.run(['umount', str(server.staging_dir)], check=False)


def create(glance, path, disk_format: str) -> str:
    out = glance.glance(
        'image-create-via-import', '--name', path.name, '--disk-format',
        disk_format, '--container-format', 'bare', '--stores',
        ','.join(STORES), '--file', str(path), token=MEMBER_TOKEN)
    return parse_table(out.stdout)['id']


def stage(glance, path, disk_format: str) -> str:
    out = glance.glance(
        'image-create', '--name', path.name, '--disk-format', disk_format,
        '--container-format', 'bare', token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    glance.glance('image-stage', '--file', str(path), image_id,
                  token=MEMBER_TOKEN)
    return image_id


def test_bomb_refused_while_a_benign_import_succeeds(glance, corpus):
    # Staged one after the other (Glance on sqlite answers concurrent
    # uploads with "database is locked"), then imported together: both
    # run at once in Glance.
    ids = {'bomb': stage(glance, corpus.path('qcow2_l2_repeat_bomb'),
                         'qcow2'),
           'benign': stage(glance, corpus.path('qcow2_full'), 'qcow2')}
    # The bomb's upload is tiny; what it maps is 1 GiB, over 10x staging.
    assert glance.staged_path(ids['bomb']).stat().st_size < 2 * MiB
    for image_id in (ids['benign'], ids['bomb']):
        glance.glance('image-import', '--import-method', 'glance-direct',
                      '--stores', ','.join(STORES), image_id,
                      token=MEMBER_TOKEN)
    refused = glance.wait_for_import(ids['bomb'])
    message = glance.last_task_message(ids['bomb'])
    match = re.fullmatch(
        r'Not enough space in the staging area for image %s: at least '
        r'(\d+) bytes needed, (\d+) available after the reserve'
        % ids['bomb'], message)
    assert match, message
    assert int(match.group(1)) > int(match.group(2))
    assert refused['status'] == 'uploading'
    assert glance.stored_files(ids['bomb']) == {}
    # Kept as uploaded (a few hundred KiB), nothing else of it in staging.
    assert [p.name for p in glance.staging_dir.glob(ids['bomb'] + '*')] \
        == [ids['bomb']]
    ok = glance.wait_for_import(ids['benign'])
    assert ok['status'] == 'active', glance.last_task_message(ids['benign'])
    assert ok['disk_format'] == 'raw'
    assert sorted(glance.stored_files(ids['benign'])) == STORES


@pytest.mark.parametrize('name, declared, final', [
    ('iso_hybrid_gpt', 'iso', 'iso'),
    ('iso_hybrid_mbr', 'iso', 'iso'),
    ('raw_gpt_blank', 'gpt', 'gpt'),
])
def test_bootable_iso_and_gpt_disk_end_active(glance, corpus, name,
                                              declared, final):
    image_id = create(glance, corpus.path(name), declared)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == final
    assert sorted(glance.stored_files(image_id)) == STORES
