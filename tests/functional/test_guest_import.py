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

"""Guest inspection through a real Glance 33 and the real ``glance`` CLI.

``guest_inspection = True`` with ``accel = auto``: on these machines
/dev/kvm opens but nested KVM cannot start the appliance, so the first
inspection also proves the switch to TCG (logged once).  Two imports, one
per Glance: the facts on an imported qcow2 guest, and the timeout path that
ends the import normally with ``img_guest_inspection=timeout`` on the active
image (the note itself is in the log: at the end Glance's store task
replaces the task message with its copy progress; the flow layer checks the
message itself).
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.support import guest_images as gi
from tests.support.glance_server import MEMBER_TOKEN, parse_table

PLUGINS = ['image_introspection', 'format_conversion']
STORES = ['cheap', 'fast']


@pytest.fixture(scope='module')
def guests(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp('guests')


def import_image(glance, path: pathlib.Path, disk_format: str
                 ) -> tuple[dict, str]:
    out = glance.glance(
        'image-create-via-import', '--name', path.name, '--disk-format',
        disk_format, '--container-format', 'bare', '--stores',
        ','.join(STORES), '--file', str(path), token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    image = glance.wait_for_import(image_id, timeout=400)
    return image, glance.last_task_message(image_id)


def test_guest_facts_appear_on_the_imported_image(glance_factory, guests):
    glance = glance_factory(plugins=PLUGINS, import_conf={
        'image_introspection': {'guest_inspection': True,
                                'guest_inspection_timeout': 300}})
    raw = gi.build(gi.GUESTS['fedora39'], guests)
    qcow2 = guests / 'fedora39.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(qcow2)], check=True)
    image, _message = import_image(glance, qcow2, 'qcow2')
    assert image['status'] == 'active'
    assert image['disk_format'] == 'raw'
    for key, value in gi.GUESTS['fedora39'].expected.items():
        assert image.get(key) == value, key
    assert image['img_guest_inspection'] == 'done'
    log = glance.log_path.read_text()
    # KVM or TCG decided once, and said so.
    assert log.count('Guest inspection: the libguestfs appliance will use')\
        == 1


def test_timeout_ends_the_import_normally_with_a_note(glance_factory,
                                                      guests):
    glance = glance_factory(plugins=PLUGINS, import_conf={
        'image_introspection': {'guest_inspection': True,
                                'guest_inspection_accel': 'tcg',
                                'guest_inspection_timeout': 10}})
    raw = gi.build(gi.GUESTS['debian12'], guests)
    image, _message = import_image(glance, raw, 'raw')
    assert image['status'] == 'active'
    assert sorted(image['stores'].split(',')) == STORES
    assert 'os_distro' not in image and 'img_cloud_init' not in image
    # The note was the task message until Glance's own store task replaced
    # it with its copy progress ("Copied 48 MiB"); the image property
    # keeps how guest inspection ended, and so does the log.
    assert image['img_guest_inspection'] == 'timeout'
    assert ('Guest inspection did not finish within 10 seconds '
            '([image_introspection] guest_inspection_timeout)'
            in glance.log_path.read_text())
