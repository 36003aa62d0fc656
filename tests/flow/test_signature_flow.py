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

"""Signed images through ``format_conversion`` in a real taskflow engine,
verified by castellan against a real Barbican 23 behind the real Keystone,
with the importing user's token in the request context as Glance passes
it."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from castellan import options as castellan_options
from glance.common import exception as glance_exception
from oslo_config import cfg
from oslo_context import context as oslo_context

from glance_imgplugins import signature
from glance_imgplugins.plugins import format_conversion
from tests.flow.conftest import Boom, Import, Record, STORES, declared_format
from tests.support import barbican as bb
from tests.support.barbican import authority, ca_uuid  # noqa: F401 (fixture)
from tests.support.digest import sha256

PLUGINS = [format_conversion.get_flow]
FAILED = ','.join(sorted(STORES))
SIGNED = set(signature.PROPERTIES)
MOVED = {'img_original_signature', 'img_original_signature_hash_method',
         'img_original_signature_key_type',
         'img_original_signature_certificate_uuid', 'img_original_sha256'}


class SignedImport(Import):
    """An import whose request context carries alice's real token."""

    context: Any = None

    def kwargs(self) -> dict[str, Any]:
        kwargs = super().kwargs()
        kwargs['context'] = self.context
        return kwargs


@pytest.fixture(scope='module')
def barbican() -> bb.Barbican:
    castellan_options.set_defaults(cfg.CONF)
    return bb.shared()


@pytest.fixture(scope='module')
def signer() -> bb.Signer:
    return bb.Signer()


@pytest.fixture(scope='module')
def cert_uuid(barbican: bb.Barbican, signer: bb.Signer) -> str:
    return bb.store_certificate(barbican, 'alice', signer.pem())


@pytest.fixture
def key_manager_conf(conf, barbican):
    conf.config(group='key_manager', backend='barbican')
    conf.config(group='barbican', auth_endpoint=barbican.keystone.auth_url)
    return conf


@pytest.fixture
def signed_import(staging, corpus, key_manager_conf, barbican, signer,
                  cert_uuid):
    def make(name: str, tamper: bool = False, **kwargs: Any) -> SignedImport:
        path = corpus.path(name)
        props = signer.properties(path, cert_uuid)
        if tamper:
            props['img_signature'] = signer.sign(b'other bytes')
        imp = SignedImport(staging, path, declared_format(name, path),
                           properties=props, **kwargs)
        imp.context = oslo_context.RequestContext(
            auth_token=barbican.keystone.token('alice'),
            project_id='demo-project')
        return imp
    return make


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def test_signed_qcow2_verified_then_converted(signed_import, cert_uuid):
    imp = signed_import('qcow2_v3')
    original = sha256(imp.staged)
    props = dict(imp.image.extra_properties)
    Record.seen.clear()
    imp.run(PLUGINS, [Record()])
    image = imp.image
    extra = image.extra_properties
    assert image.disk_format == 'raw'
    # Glance would verify the converted bytes: the signature moved away.
    assert not SIGNED & set(dict(extra))
    assert {k: extra[k] for k in MOVED} == {
        'img_original_signature': props['img_signature'],
        'img_original_signature_hash_method': 'SHA-256',
        'img_original_signature_key_type': 'RSA-PSS',
        'img_original_signature_certificate_uuid': cert_uuid,
        'img_original_sha256': original,
    }
    assert extra['img_original_disk_format'] == 'qcow2'
    assert sha256(imp.staged) != original
    assert Record.seen == ['file://%s' % imp.staged]


def test_wrong_signature_refused_before_qemu_img(signed_import, cert_uuid):
    imp = signed_import('vmdk_stream_lsilogic', tamper=True)
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert str(err.value) == (
        'Image signature verification failed: the signature does not match '
        'the image data (certificate %s): refused' % cert_uuid)
    image = imp.image
    assert image.status == 'queued'
    assert image.disk_format == 'vmdk'
    assert not imp.staged.exists()
    assert SIGNED <= set(dict(image.extra_properties))
    assert not MOVED & set(dict(image.extra_properties))
    assert image.extra_properties['os_glance_failed_import'] == FAILED
    # Nothing ran qemu-img: no progress message was ever written.
    assert imp.task_repo.messages == []


def test_key_manager_down_keeps_the_data_then_retry_succeeds(
        signed_import, key_manager_conf, cert_uuid):
    port = _closed_port()
    key_manager_conf.config(group='barbican',
                            barbican_endpoint='http://127.0.0.1:%d' % port)
    imp = signed_import('qcow2_v2')
    original = sha256(imp.staged)
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert str(err.value) == (
        'Import failed: the key manager could not be reached to verify the '
        'image signature (certificate %s); try the import again later'
        % cert_uuid)
    assert imp.image.status == 'uploading'
    assert sha256(imp.staged) == original
    # The key manager is back (the catalog's endpoint again).
    cfg.CONF.clear_override('barbican_endpoint', group='barbican')
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert imp.image.extra_properties['img_original_sha256'] == original


def test_refuse_mode(signed_import, conf):
    conf.config(group='format_conversion', signed_images='refuse')
    imp = signed_import('qcow2_v3')
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert str(err.value) == (
        'Image is signed and would have to be converted from qcow2 to raw, '
        'which changes the bytes that were signed: refused (upload the image '
        'as raw and sign that)')
    assert imp.image.status == 'queued'
    assert not imp.staged.exists()


@pytest.mark.parametrize('mode', ['verify', 'refuse'])
def test_signed_raw_is_left_to_glance(signed_import, conf, mode):
    conf.config(group='format_conversion', signed_images=mode)
    imp = signed_import('raw_plain')
    before = dict(imp.image.extra_properties)
    imp.run(PLUGINS)
    extra = imp.image.extra_properties
    assert {k: extra[k] for k in SIGNED} == {k: before[k] for k in SIGNED}
    assert not MOVED & set(dict(extra))


def test_unsigned_qcow2_needs_no_key_manager(make_import, conf):
    conf.config(group='barbican',
                barbican_endpoint='http://127.0.0.1:%d' % _closed_port())
    imp = make_import('qcow2_v3')
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert not MOVED & set(dict(imp.image.extra_properties))


def test_later_failure_keeps_the_converted_data_and_moved_signature(
        signed_import):
    imp = signed_import('qcow2_v3')
    with pytest.raises(RuntimeError, match='store exploded'):
        imp.run(PLUGINS, [Boom()])
    image = imp.image
    assert image.status == 'uploading'
    assert image.disk_format == 'raw'
    assert MOVED <= set(dict(image.extra_properties))
    assert not SIGNED & set(dict(image.extra_properties))
    # The retry imports the converted data as it is: nothing to verify.
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'


def test_later_failure_of_a_download_restores_the_signature(signed_import):
    imp = signed_import('qcow2_v3', import_method='web-download')
    signed = {k: imp.image.extra_properties[k] for k in SIGNED}
    with pytest.raises(RuntimeError, match='store exploded'):
        imp.run(PLUGINS, [Boom()])
    extra = imp.image.extra_properties
    assert imp.image.disk_format == 'qcow2'
    assert {k: extra[k] for k in SIGNED} == signed
    assert not MOVED & set(dict(extra))


# --- certificate validation (signature_certificate_validation) -------------

@pytest.fixture
def validating(conf, ca_uuid):
    conf.config(group='format_conversion',
                signature_certificate_validation=True,
                signature_trusted_certificate_ids=[ca_uuid])
    return conf


def _issued_import(signed_import, barbican, issuer, name='qcow2_v3',
                   **validity: int) -> tuple[SignedImport, str, bb.Signer]:
    """An import signed with a fresh leaf certificate ``issuer`` issued."""
    leaf, leaf_uuid = bb.issue_leaf(barbican, issuer, 'imgplugins flow leaf',
                                    **validity)
    imp = signed_import(name)
    imp.image.extra_properties.update(leaf.properties(imp.staged, leaf_uuid))
    return imp, leaf_uuid, leaf


def test_trusted_chain_verified_then_converted(validating, signed_import,
                                               barbican, authority):
    imp, leaf_uuid, leaf = _issued_import(signed_import, barbican, authority)
    original = sha256(imp.staged)
    imp.run(PLUGINS)
    extra = imp.image.extra_properties
    assert imp.image.disk_format == 'raw'
    assert extra['img_original_signature_certificate_uuid'] == leaf_uuid
    assert extra['img_original_sha256'] == original
    assert not SIGNED & set(dict(extra))


def _refused(imp: SignedImport) -> str:
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert imp.image.status == 'queued'
    assert not imp.staged.exists()
    assert imp.image.disk_format == 'qcow2'
    assert SIGNED <= set(dict(imp.image.extra_properties))
    assert imp.task_repo.messages == []      # qemu-img never ran
    return str(err.value)


def test_untrusted_leaf_refused(validating, signed_import, barbican):
    stranger = bb.Signer('someone else\'s CA', ca=True)
    imp, leaf_uuid, leaf = _issued_import(signed_import, barbican, stranger)
    assert _refused(imp) == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it does not chain to a trusted certificate authority: '
        'refused' % leaf_uuid)


def test_expired_leaf_refused(validating, signed_import, barbican,
                              authority):
    imp, leaf_uuid, leaf = _issued_import(signed_import, barbican, authority,
                                    valid_from=-30, valid_until=-1)
    assert _refused(imp) == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it expired on %s: refused' % (
            leaf_uuid, leaf.cert.not_valid_after_utc.strftime(
                '%Y-%m-%d %H:%M:%S UTC')))


def test_unreadable_trusted_id_keeps_the_data(validating, signed_import,
                                              barbican, authority):
    missing = '00000000-0000-4000-8000-000000000000'
    validating.config(group='format_conversion',
                      signature_trusted_certificate_ids=[missing])
    imp, _uuid, _leaf = _issued_import(signed_import, barbican, authority)
    original = sha256(imp.staged)
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert str(err.value) == (
        'Invalid configuration: [format_conversion] '
        'signature_trusted_certificate_ids: certificate %s was not found in '
        'the key manager' % missing)
    assert imp.image.status == 'uploading'
    assert sha256(imp.staged) == original
