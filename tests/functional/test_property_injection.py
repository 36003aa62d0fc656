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

"""property_injection inside a real Glance 33, driven by the real ``glance``
CLI, behind a real Keystone: an admin of one project and a member of
another import the same images; rules differ by role and by what
``image_introspection`` detected, and the exact resulting properties are
asserted.  The roles are Keystone's own role assignments, including a
custom role (``partner``) that implies ``member`` and ``image_curator``.

Pipeline: image_introspection (ours) -> image_conversion (Glance's own,
output raw) -> property_injection, so rules see the detected facts, the
final disk_format and the format the user declared.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import textwrap
import threading

import pytest

from tests.support import images
from tests.support import keystone as ks
from tests.support.glance_server import (
    ADMIN_TOKEN, BIN_DIR, MEMBER_TOKEN, free_port, parse_table)

RULES = """\
    rules:
      - name: provenance
        set:
          imported_by: "${user_id}@${project_id} via ${import_method}"
          img_source_format: "${original_disk_format}->${disk_format}"
      - name: admins
        match: {roles: admin}
        set: {support_tier: vendor}
      - name: members
        match: {roles: member}
        ignore_roles: [admin]
        protect: [support_tier]
        default: {support_tier: community}
        forbid: ["hw_firmware_*"]
      - name: curators
        match: {roles: image_curator}
        set:
          curated_by: "${project_id}"
          curator_roles: "${roles}"
      - name: lsi-to-virtio
        match:
          original_disk_format: vmdk
          facts: {vmware_adaptertype: lsiLogic}
        set: {hw_scsi_model: virtio-scsi}
    """

# Fields of every image, not properties.
CORE_FIELDS = frozenset([
    'id', 'name', 'status', 'visibility', 'protected', 'os_hidden',
    'checksum', 'os_hash_algo', 'os_hash_value', 'size', 'virtual_size',
    'disk_format', 'container_format', 'min_disk', 'min_ram', 'owner',
    'created_at', 'updated_at', 'tags', 'self', 'file', 'schema', 'stores',
    'locations', 'direct_url'])

VMDK = 'vmdk_stream_lsilogic'
QCOW2 = 'qcow2_v3'


def user_id(name: str) -> str:
    """Keystone's id of a test user (ids are generated, names are not)."""
    return ks.shared().user_id(name)


def properties(image: dict) -> dict:
    return {k: v for k, v in image.items()
            if k not in CORE_FIELDS and not k.startswith('os_glance')}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return images.Corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='module')
def glance(glance_factory, tmp_path_factory):
    rules = tmp_path_factory.mktemp('rules') / 'rules.yaml'
    rules.write_text(textwrap.dedent(RULES))
    return glance_factory(
        plugins=['image_introspection', 'image_conversion',
                 'property_injection'],
        import_conf={
            'image_conversion': {'output_format': 'raw'},
            # Admins are not skipped globally here: rules decide per role.
            'property_injection': {'rules_file': str(rules),
                                   'ignore_user_roles': ''}})


def import_image(glance, token, entry, *props):
    args = ['image-create-via-import', '--name', 'same-image',
            '--disk-format', images.ENTRIES[entry].format,
            '--container-format', 'bare', '--stores', 'fast',
            '--file', str(glance.corpus.path(entry))]
    for prop in props:
        args += ['--property', prop]
    out = glance.glance(*args, token=token)
    image_id = parse_table(out.stdout)['id']
    return image_id, glance.wait_for_import(image_id, token=token)


@pytest.fixture(scope='module', autouse=True)
def _attach_corpus(glance, corpus):
    glance.corpus = corpus


def test_admin_and_member_get_role_and_fact_dependent_properties(glance):
    detected = dict(images.ENTRIES[VMDK].properties)
    assert detected['vmware_adaptertype'] == 'lsiLogic'

    _id, admin = import_image(glance, ADMIN_TOKEN, VMDK)
    assert admin['status'] == 'active' and admin['disk_format'] == 'raw'
    assert properties(admin) == {
        **detected,
        'hw_scsi_model': 'virtio-scsi',          # rule beats the fact
        'imported_by': '%s@admin-project via glance-direct' % user_id(
            'admin'),
        'img_source_format': 'vmdk->raw',
        'support_tier': 'vendor'}

    # The member tries to pick a support tier: the protected key keeps the
    # rule's value.
    _id, member = import_image(glance, MEMBER_TOKEN, VMDK,
                               'support_tier=gold')
    assert member['status'] == 'active' and member['disk_format'] == 'raw'
    assert properties(member) == {
        **detected,
        'hw_scsi_model': 'virtio-scsi',
        'imported_by': '%s@demo-project via glance-direct' % user_id(
            'alice'),
        'img_source_format': 'vmdk->raw',
        'support_tier': 'community'}


def test_implied_role_from_keystone_matches_rules(glance):
    """dave holds only 'partner' in partner-project; Keystone puts the
    roles it implies (member, image_curator, and reader through member)
    in his token, and rules written for them apply."""
    _id, image = import_image(glance, 'dave', QCOW2, 'support_tier=gold')
    assert image['status'] == 'active' and image['owner'] == (
        'partner-project')
    assert properties(image) == {
        'imported_by': '%s@partner-project via glance-direct' % user_id(
            'dave'),
        'img_source_format': 'qcow2->raw',
        'support_tier': 'community',            # the member rule
        'curated_by': 'partner-project',        # the curator rule
        'curator_roles': 'image_curator,member,partner,reader'}


def test_reader_cannot_import(glance):
    """bob reads demo-project: Glance refuses the upload before any rule
    runs."""
    out = glance.glance('image-create', '--name', 'reader',
                        '--disk-format', 'raw', '--container-format', 'bare',
                        token='bob', check=False)
    assert out.returncode != 0 and '403' in out.stderr, out.stderr


def test_facts_cannot_be_faked_by_the_user(glance):
    # A qcow2 whose owner claims an LSI adapter: introspection detected
    # nothing, so the fact-based rule does not fire.
    _id, image = import_image(glance, MEMBER_TOKEN, QCOW2,
                              'vmware_adaptertype=lsiLogic')
    assert image['status'] == 'active' and image['disk_format'] == 'raw'
    assert properties(image) == {
        'vmware_adaptertype': 'lsiLogic',
        'imported_by': '%s@demo-project via glance-direct' % user_id(
            'alice'),
        'img_source_format': 'qcow2->raw',
        'support_tier': 'community'}


def test_forbidden_key_fails_the_import_with_its_reason(glance):
    image_id, image = import_image(glance, MEMBER_TOKEN, QCOW2,
                                   'hw_firmware_type=uefi')
    task = glance.tasks(image_id, MEMBER_TOKEN)[0]
    assert task['status'] == 'failure'
    assert task['message'] == (
        'Property hw_firmware_type may not be set by users here (property '
        'injection rule members): refused')
    # Nothing stored; Glance's conversion revert (which runs after ours)
    # leaves the image queued, every store marked failed.
    assert image['status'] == 'queued'
    assert image.get('stores', '') == ''
    assert image['os_glance_failed_import'] == 'fast'
    assert glance.stored_files(image_id) == {}
    assert properties(image) == {'hw_firmware_type': 'uefi'}

    # The admin may set it (the rule ignores admins).
    _id, admin = import_image(glance, ADMIN_TOKEN, QCOW2,
                              'hw_firmware_type=uefi')
    assert admin['status'] == 'active'
    assert admin['hw_firmware_type'] == 'uefi'
    assert admin['support_tier'] == 'vendor'


def test_check_config_accepts_the_running_configuration(glance):
    out = subprocess.run(
        [str(BIN_DIR / 'glance-imgplugins'), 'check-config', '--config-dir',
         str(glance.conf_dir)], env=glance.env(), capture_output=True,
        text=True)
    assert ("OK     import plugin 'property_injection' "
            "(glance_imgplugins.plugins.property_injection:get_flow)"
            in out.stdout), out.stdout


def test_check_config_reports_a_broken_rules_file_with_its_line(tmp_path):
    rules = tmp_path / 'rules.yaml'
    rules.write_text('rules:\n  - name: a\n    set: {ok: "1"}\n'
                     '  - name: b\n    set:\n      os_glance_x: "1"\n')
    (tmp_path / 'glance-image-import.conf').write_text(
        "[image_import_opts]\nimage_import_plugins = ['property_injection']"
        "\n\n[property_injection]\nrules_file = %s\n" % rules)
    out = subprocess.run(
        [str(BIN_DIR / 'glance-imgplugins'), 'check-config', '--config-dir',
         str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert ("ERROR  import plugin 'property_injection': Property injection "
            "rules %s: line 6: rules[1] (b).set: key 'os_glance_x': keys "
            "starting os_glance are reserved to Glance" % rules
            in out.stdout), out.stdout


def test_forbidden_key_on_web_download_names_the_reason(glance_factory,
                                                       tmp_path):
    """web-download has its own revert; ours must not fight it, or the
    user reads "Internal Error" instead of the rule's reason."""
    (tmp_path / 'disk.raw').write_bytes(b'x' * 1024 * 1024)
    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', port), functools.partial(
            http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rules = tmp_path / 'rules.yaml'
    rules.write_text('version: 1\nrules:\n  - name: members\n'
                     '    forbid: [hw_firmware_type]\n')
    try:
        glance = glance_factory(
            plugins=['property_injection'], allowed_ports=[port],
            import_conf={'property_injection': {
                'rules_file': str(rules), 'ignore_user_roles': ''}})
        out = glance.glance(
            'image-create-via-import', '--name', 'wd', '--disk-format',
            'raw', '--container-format', 'bare', '--import-method',
            'web-download', '--uri', 'http://127.0.0.1:%d/disk.raw' % port,
            '--property', 'hw_firmware_type=uefi', token=MEMBER_TOKEN)
        image_id = parse_table(out.stdout)['id']
        image = glance.wait_for_import(image_id)
    finally:
        server.shutdown()
    assert image['status'] == 'queued'
    assert glance.stored_files(image_id) == {}
    assert glance.last_task_message(image_id) == (
        'Property hw_firmware_type may not be set by users here (property '
        'injection rule members): refused')
