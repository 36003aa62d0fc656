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

"""Signed images through a real Glance 33 behind the real Keystone and a
real Barbican 23 (``tests.support.barbican``), with ``format_conversion``
enabled and castellan's Barbican backend configured in ``glance-api.conf``.

The user (alice, member of demo-project) stores her certificate in Barbican
as PEM and creates images with the four ``img_signature*`` properties
through the real ``glance`` CLI (glance-direct).  Every task message is
asserted exactly.
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.support import barbican as bb
from tests.support.digest import sha256
from tests.support import images
from tests.support.glance_server import MEMBER_TOKEN, parse_table

STORES = ['cheap', 'fast']
SIGNED = ('img_signature', 'img_signature_hash_method',
          'img_signature_key_type', 'img_signature_certificate_uuid')


@pytest.fixture(scope='module')
def barbican() -> bb.Barbican:
    return bb.shared()


@pytest.fixture(scope='module')
def signer() -> bb.Signer:
    return bb.Signer()


@pytest.fixture(scope='module')
def cert_uuid(barbican, signer) -> str:
    return bb.store_certificate(barbican, 'alice', signer.pem())


@pytest.fixture(scope='module')
def glance(glance_factory, barbican):
    return glance_factory(plugins=['format_conversion'],
                          api_conf=barbican.glance_conf())


def _qcow2(directory: pathlib.Path, name: str = 'signed') -> pathlib.Path:
    raw = images.write_seed(directory / (name + '.raw'))
    out = directory / (name + '.qcow2')
    images.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw),
                    str(out))
    return out


def create_signed(glance, path: pathlib.Path, disk_format: str,
                  props: dict[str, str]) -> str:
    args = ['image-create-via-import', '--name', path.name,
            '--disk-format', disk_format, '--container-format', 'bare',
            '--stores', ','.join(STORES), '--file', str(path)]
    for key, value in props.items():
        args += ['--property', '%s=%s' % (key, value)]
    out = glance.glance(*args, token=MEMBER_TOKEN)
    return parse_table(out.stdout)['id']


def test_signed_qcow2_ends_active_raw(glance, signer, cert_uuid, tmp_path):
    disk = _qcow2(tmp_path)
    props = signer.properties(disk, cert_uuid)
    image_id = create_signed(glance, disk, 'qcow2', props)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == 'raw'
    for key in SIGNED:
        assert key not in image
    assert image['img_original_signature'] == props['img_signature']
    assert image['img_original_signature_hash_method'] == 'SHA-256'
    assert image['img_original_signature_key_type'] == 'RSA-PSS'
    assert image['img_original_signature_certificate_uuid'] == cert_uuid
    assert image['img_original_sha256'] == sha256(disk)
    assert image['img_original_disk_format'] == 'qcow2'
    stored = glance.stored_files(image_id)
    assert sorted(stored) == STORES
    expected = subprocess.run(
        ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', str(disk),
         str(tmp_path / 'expected.raw')], check=True)
    assert expected.returncode == 0
    for path in stored.values():
        assert sha256(path) == sha256(tmp_path / 'expected.raw')


def test_signed_raw_is_verified_by_glance(glance, signer, cert_uuid,
                                          tmp_path):
    raw = images.write_seed(tmp_path / 'signed.raw')
    props = signer.properties(raw, cert_uuid)
    image_id = create_signed(glance, raw, 'raw', props)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    for key, value in props.items():
        assert image[key] == value
    assert 'img_original_signature' not in image
    log = glance.log_path.read_text(errors='replace')
    assert 'Successfully verified signature for image %s' % image_id in log


def test_wrong_signature_is_refused_by_name(glance, signer, cert_uuid,
                                            tmp_path):
    disk = _qcow2(tmp_path)
    props = signer.properties(disk, cert_uuid)
    props['img_signature'] = signer.sign(b'something else')
    image_id = create_signed(glance, disk, 'qcow2', props)
    image = glance.wait_for_import(image_id)
    assert glance.last_task_message(image_id) == (
        'Image signature verification failed: the signature does not match '
        'the image data (certificate %s): refused' % cert_uuid)
    assert image['status'] == 'queued'
    assert image['disk_format'] == 'qcow2'
    assert image['os_glance_failed_import'] == ','.join(STORES)
    assert not glance.staged_path(image_id).exists()
    assert glance.stored_files(image_id) == {}


def test_non_pem_certificate_is_refused_by_name(glance, barbican, signer,
                                                tmp_path):
    der = bb.store_certificate(barbican, 'alice', signer.der())
    disk = _qcow2(tmp_path)
    image_id = create_signed(glance, disk, 'qcow2',
                             signer.properties(disk, der))
    image = glance.wait_for_import(image_id)
    assert glance.last_task_message(image_id) == (
        'Image signature verification failed: certificate %s is not a '
        'PEM-encoded X.509 certificate: refused' % der)
    assert image['status'] == 'queued'


def test_key_manager_down_then_retry(glance, barbican, signer, cert_uuid,
                                     tmp_path):
    disk = _qcow2(tmp_path)
    props = signer.properties(disk, cert_uuid)
    barbican.stop()
    try:
        image_id = create_signed(glance, disk, 'qcow2', props)
        image = glance.wait_for_import(image_id)
        assert glance.last_task_message(image_id) == (
            'Import failed: the key manager could not be reached to verify '
            'the image signature (certificate %s); try the import again '
            'later' % cert_uuid)
        assert image['status'] == 'uploading'
        assert sha256(glance.staged_path(image_id)) == sha256(disk)
    finally:
        barbican.start()
    glance.glance('image-import', '--import-method', 'glance-direct',
                  '--stores', ','.join(STORES), image_id, token=MEMBER_TOKEN)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == 'raw'
    assert image['img_original_sha256'] == sha256(disk)


def test_certificate_validation(glance, barbican, signer, cert_uuid,
                                tmp_path):
    """Restarts Glance with signature_certificate_validation and a CA from
    Barbican: a certificate it issued passes, the self-signed one that
    passed above is refused by name."""
    authority = bb.Signer('imgplugins functional CA', ca=True)
    ca_uuid = bb.store_certificate(barbican, 'alice', authority.pem(),
                                   name='trusted CA')
    leaf = bb.Signer('imgplugins functional leaf', issuer=authority)
    leaf_uuid = bb.store_certificate(barbican, 'alice', leaf.pem())
    glance.import_conf = {'format_conversion': {
        'signature_certificate_validation': 'True',
        'signature_trusted_certificate_ids': ca_uuid}}
    glance.restart()
    disk = _qcow2(tmp_path)
    image_id = create_signed(glance, disk, 'qcow2',
                             leaf.properties(disk, leaf_uuid))
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['img_original_signature_certificate_uuid'] == leaf_uuid
    assert image['img_original_sha256'] == sha256(disk)
    image_id = create_signed(glance, disk, 'qcow2',
                             signer.properties(disk, cert_uuid))
    image = glance.wait_for_import(image_id)
    assert glance.last_task_message(image_id) == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it does not chain to a trusted certificate authority: '
        'refused' % cert_uuid)
    assert image['status'] == 'queued'
    assert not glance.staged_path(image_id).exists()


def test_refuse_mode(glance, signer, cert_uuid, tmp_path):
    """Runs last: restarts Glance with signed_images = refuse."""
    glance.import_conf = {'format_conversion': {'signed_images': 'refuse'}}
    glance.restart()
    disk = _qcow2(tmp_path)
    image_id = create_signed(glance, disk, 'qcow2',
                             signer.properties(disk, cert_uuid))
    image = glance.wait_for_import(image_id)
    assert glance.last_task_message(image_id) == (
        'Image is signed and would have to be converted from qcow2 to raw, '
        'which changes the bytes that were signed: refused (upload the image '
        'as raw and sign that)')
    assert image['status'] == 'queued'
    # A signed raw image still goes through, verified by Glance.
    raw = images.write_seed(tmp_path / 'signed.raw')
    raw_id = create_signed(glance, raw, 'raw',
                           signer.properties(raw, cert_uuid))
    image = glance.wait_for_import(raw_id)
    assert image['status'] == 'active', glance.last_task_message(raw_id)
    assert image['img_signature_certificate_uuid'] == cert_uuid
