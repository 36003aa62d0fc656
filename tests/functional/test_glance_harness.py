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

"""The harness runs the real Glance import pipeline our plugins join.

Glance's own in-tree ``image_conversion`` plugin is enabled here: if the
image ends raw, a plugin demonstrably ran inside the real pipeline.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.digest import sha256
from tests.support.glance_server import MEMBER_TOKEN, GlanceError, parse_table

MiB = 1024 * 1024


def make_qcow2(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / 'disk.raw'
    with open(raw, 'wb') as f:
        f.truncate(16 * MiB)
        for offset in (0, 5 * MiB, 15 * MiB):
            f.seek(offset)
            f.write(bytes(range(256)) * 256)
    qcow2 = tmp_path / 'disk.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(qcow2)], check=True)
    return raw, qcow2


@pytest.fixture(scope='module')
def glance(glance_factory):
    return glance_factory(plugins=['image_conversion'],
                          import_conf={'image_conversion':
                                       {'output_format': 'raw'}})


def test_intree_conversion_into_two_stores(glance, tmp_path):
    raw, qcow2 = make_qcow2(tmp_path)
    out = glance.glance('image-create-via-import', '--name', 'harness',
                        '--disk-format', 'qcow2', '--container-format',
                        'bare', '--stores', 'fast,cheap', '--file', str(qcow2),
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    image = glance.wait_for_import(image_id)

    assert image['status'] == 'active'
    assert image['disk_format'] == 'raw'
    assert sorted(image['stores'].split(',')) == ['cheap', 'fast']
    assert image.get('os_glance_importing_to_stores', '') == ''
    assert image.get('os_glance_failed_import', '') == ''
    stored = glance.stored_files(image_id)
    assert sorted(stored) == ['cheap', 'fast']
    for path in stored.values():
        assert sha256(path) == sha256(raw)
    # The CLI's and glanceclient's views agree with the API's.
    shown = glance.glance_json('image-show', image_id)
    assert shown['disk_format'] == 'raw'
    assert glance.client(MEMBER_TOKEN).images.get(image_id)['size'] == (
        raw.stat().st_size)
    assert not [line for line in glance.plugin_load_failures()
                if 'image_conversion' in line]


def test_check_config_guards_the_harness(glance_factory):
    """A misspelled plugin never reaches a running Glance."""
    with pytest.raises(GlanceError, match="'image_convertion' is not "
                       "provided by any installed package"):
        glance_factory(plugins=['image_convertion'])


def test_member_sees_own_image_admin_copy(glance, tmp_path):
    """copy-image (admin only) goes through the same harness."""
    raw, _qcow2 = make_qcow2(tmp_path)
    out = glance.glance('image-create-via-import', '--name', 'copyme',
                        '--disk-format', 'raw', '--container-format', 'bare',
                        '--stores', 'fast', '--file', str(raw),
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    assert glance.wait_for_import(image_id)['stores'] == 'fast'
    glance.glance('image-import', image_id, '--import-method', 'copy-image',
                  '--stores', 'cheap')
    image = glance.wait_for_import(image_id)
    assert sorted(image['stores'].split(',')) == ['cheap', 'fast']
    assert sha256(glance.stored_files(image_id)['cheap']) == sha256(raw)
