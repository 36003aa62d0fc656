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

"""``glance_imgplugins.signature`` against a real Barbican (and Keystone),
castellan's own Barbican backend and real qemu-img images.

The cheap refusals (encoding, hash method, key type) are checked with the
key manager pointed at a closed port: had they asked it, they would read
"could not be reached".
"""

from __future__ import annotations

import hashlib
import pathlib
import socket

import pytest
from castellan import options as castellan_options
from cryptography.hazmat.primitives import hashes
from oslo_config import cfg
from oslo_context import context as oslo_context

from glance_imgplugins import exception
from glance_imgplugins import signature
from tests.support import barbican as bb
from tests.support import images
from tests.support.barbican import authority, ca_uuid  # noqa: F401 (fixture)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def _conf(auth_endpoint: str | None = None,
          barbican_endpoint: str | None = None) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conf([], project='test')
    castellan_options.set_defaults(conf, backend='barbican')
    if auth_endpoint:
        conf.set_override('auth_endpoint', auth_endpoint, group='barbican')
    if barbican_endpoint:
        conf.set_override('barbican_endpoint', barbican_endpoint,
                          group='barbican')
    return conf


@pytest.fixture(scope='module')
def barbican() -> bb.Barbican:
    return bb.shared()


@pytest.fixture(scope='module')
def signer() -> bb.Signer:
    return bb.Signer()


@pytest.fixture(scope='module')
def cert_uuid(barbican: bb.Barbican, signer: bb.Signer) -> str:
    return bb.store_certificate(barbican, 'alice', signer.pem())


@pytest.fixture(scope='module')
def context(barbican: bb.Barbican) -> oslo_context.RequestContext:
    # What Glance's request context gives castellan: alice's token.
    return oslo_context.RequestContext(
        auth_token=barbican.keystone.token('alice'),
        project_id='demo-project')


@pytest.fixture(scope='module')
def manager(barbican: bb.Barbican) -> signature.KeyManager:
    return signature.key_manager(_conf(barbican.keystone.auth_url))


@pytest.fixture(scope='module')
def unreachable() -> signature.KeyManager:
    port = _closed_port()
    return signature.key_manager(_conf(
        'http://127.0.0.1:%d/v3' % port, 'http://127.0.0.1:%d' % port))


@pytest.fixture
def qcow2(tmp_path: pathlib.Path) -> pathlib.Path:
    raw = images.write_seed(tmp_path / 'seed.raw')
    out = tmp_path / 'disk.qcow2'
    images.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw),
                    str(out))
    return out


def _sig(signer: bb.Signer, path: pathlib.Path, cert_uuid: str,
         **changes: str) -> signature.Signature:
    props = signer.properties(path, cert_uuid)
    props.update(changes)
    found = signature.signature_of(props)
    assert found is not None
    return found


def test_verifies_the_signed_bytes(qcow2, signer, cert_uuid, context,
                                   manager):
    sig = _sig(signer, qcow2, cert_uuid)
    verified = signature.verify_file(str(qcow2), sig, context, manager,
                                     chunk_size=65536)
    data = qcow2.read_bytes()
    assert verified.sha256 == hashlib.sha256(data).hexdigest()
    assert verified.size == len(data)
    assert verified.moved_properties() == {
        'img_original_signature': sig.signature,
        'img_original_signature_hash_method': 'SHA-256',
        'img_original_signature_key_type': 'RSA-PSS',
        'img_original_signature_certificate_uuid': cert_uuid,
        'img_original_sha256': verified.sha256,
    }


@pytest.mark.parametrize('hash_method', ['SHA-224', 'SHA-384', 'SHA-512'])
def test_every_glance_hash_method(qcow2, signer, cert_uuid, context,
                                  manager, hash_method):
    props = signer.properties(qcow2, cert_uuid, hash_method)
    sig = signature.signature_of(props)
    assert sig is not None
    signature.verify_file(str(qcow2), sig, context, manager)


def test_one_changed_byte_is_a_mismatch(qcow2, signer, cert_uuid, context,
                                        manager):
    sig = _sig(signer, qcow2, cert_uuid)
    data = bytearray(qcow2.read_bytes())
    data[-1] ^= 1
    qcow2.write_bytes(bytes(data))
    with pytest.raises(exception.SignatureMismatch) as err:
        signature.verify_file(str(qcow2), sig, context, manager)
    assert str(err.value) == (
        'Image signature verification failed: the signature does not match '
        'the image data (certificate %s): refused' % cert_uuid)
    assert err.value.status == 'queued' and not err.value.keep_staged


def test_another_key_is_a_mismatch(qcow2, signer, barbican, context,
                                   manager):
    other = bb.store_certificate(barbican, 'alice', bb.Signer().pem())
    sig = _sig(signer, qcow2, other)
    with pytest.raises(exception.SignatureMismatch):
        signature.verify_file(str(qcow2), sig, context, manager)


def test_unknown_certificate(qcow2, signer, context, manager):
    missing = '00000000-0000-4000-8000-000000000000'
    sig = _sig(signer, qcow2, missing)
    with pytest.raises(exception.SignatureCertificateRefused) as err:
        signature.verify_file(str(qcow2), sig, context, manager)
    assert str(err.value) == (
        'Image signature verification failed: certificate %s was not found '
        'in the key manager: refused' % missing)


def test_der_certificate_is_not_pem(qcow2, signer, barbican, context,
                                    manager):
    der = bb.store_certificate(barbican, 'alice', signer.der())
    sig = _sig(signer, qcow2, der)
    with pytest.raises(exception.SignatureCertificateRefused) as err:
        signature.verify_file(str(qcow2), sig, context, manager)
    assert str(err.value) == (
        'Image signature verification failed: certificate %s is not a '
        'PEM-encoded X.509 certificate: refused' % der)


def test_opaque_secret_is_not_a_certificate(qcow2, signer, barbican,
                                            context, manager):
    ref = barbican.client('alice').secrets.create(
        name='not a certificate', payload=b'opaque bytes').store()
    opaque = str(ref).rpartition('/')[2]
    sig = _sig(signer, qcow2, opaque)
    with pytest.raises(exception.SignatureCertificateRefused) as err:
        signature.verify_file(str(qcow2), sig, context, manager)
    assert str(err.value) == (
        'Image signature verification failed: certificate %s is not an '
        'X.509 certificate: refused' % opaque)


def test_key_type_must_match_the_certificate(qcow2, signer, cert_uuid,
                                             context, manager):
    sig = _sig(signer, qcow2, cert_uuid, img_signature_key_type='DSA')
    with pytest.raises(exception.SignatureCertificateRefused) as err:
        signature.verify_file(str(qcow2), sig, context, manager)
    assert str(err.value) == (
        'Image signature verification failed: certificate %s does not hold '
        'a key for img_signature_key_type DSA: refused' % cert_uuid)


def test_another_project_cannot_read_the_certificate(qcow2, signer,
                                                     cert_uuid, barbican,
                                                     manager):
    # dave's project does not own alice's secret: Barbican 23 answers 403.
    dave = oslo_context.RequestContext(
        auth_token=barbican.keystone.token('dave'),
        project_id='partner-project')
    sig = _sig(signer, qcow2, cert_uuid)
    with pytest.raises(exception.SignatureCertificateForbidden) as err:
        signature.verify_file(str(qcow2), sig, dave, manager)
    assert str(err.value) == (
        "Import failed: the key manager refused access to the image signing "
        "certificate %s for the importing user; give the image owner's "
        "project access to it and try the import again" % cert_uuid)
    assert err.value.status == 'uploading' and err.value.keep_staged


def test_key_manager_unreachable_is_retryable(qcow2, signer, cert_uuid,
                                              context, unreachable):
    sig = _sig(signer, qcow2, cert_uuid)
    with pytest.raises(exception.KeyManagerUnavailable) as err:
        signature.verify_file(str(qcow2), sig, context, unreachable)
    assert str(err.value) == (
        'Import failed: the key manager could not be reached to verify the '
        'image signature (certificate %s); try the import again later'
        % cert_uuid)
    assert err.value.status == 'uploading' and err.value.keep_staged


@pytest.mark.parametrize('changes,expected', [
    ({'img_signature': 'not base64!'},
     'Image signature verification failed: img_signature is not '
     'base64-encoded data: refused'),
    ({'img_signature': ''},
     'Image signature verification failed: img_signature is empty: '
     'refused'),
    ({'img_signature_hash_method': 'MD5'},
     'Image signature verification failed: img_signature_hash_method MD5 '
     'is not supported (supported: SHA-224, SHA-256, SHA-384, SHA-512): '
     'refused'),
    ({'img_signature_key_type': 'RSA'},
     'Image signature verification failed: img_signature_key_type RSA is '
     'not supported (supported: DSA, ECC_SECP384R1, ECC_SECP521R1, '
     'ECC_SECT409K1, ECC_SECT409R1, ECC_SECT571K1, ECC_SECT571R1, '
     'RSA-PSS): refused'),
])
def test_refused_before_asking_the_key_manager(qcow2, signer, context,
                                               unreachable, changes,
                                               expected):
    sig = _sig(signer, qcow2, 'any-certificate', **changes)
    with pytest.raises(exception.SignatureRefused) as err:
        signature.verify_file(str(qcow2), sig, context, unreachable)
    if 'key_type' in str(changes):
        # The curves offered depend on the OpenSSL build: check the shape.
        assert str(err.value).startswith(expected.split('(supported')[0])
        assert 'RSA-PSS' in str(err.value) and 'DSA' in str(err.value)
    else:
        assert str(err.value) == expected


def test_only_all_four_properties_make_a_signed_image():
    full = {'img_signature': 'c2ln', 'img_signature_hash_method': 'SHA-256',
            'img_signature_key_type': 'RSA-PSS',
            'img_signature_certificate_uuid': 'u'}
    assert signature.signature_of(full) == signature.Signature(
        'c2ln', 'SHA-256', 'RSA-PSS', 'u')
    for name in full:
        partial = {k: v for k, v in full.items() if k != name}
        # Glance does not verify such an image either.
        assert signature.signature_of(partial) is None


def test_key_manager_problems():
    conf = _conf()
    [problem] = signature.key_manager_problems(conf)
    assert problem.startswith('[barbican] auth_endpoint: not set')
    assert signature.key_manager_problems(
        _conf('http://keystone.example/v3')) == []
    conf = _conf()
    conf.set_override('backend', 'nonexistent', group='key_manager')
    assert signature.key_manager_problems(conf) == [
        '[key_manager] backend: nonexistent cannot be loaded']


def _plugin_conf(**values: str) -> cfg.ConfigOpts:
    from glance_imgplugins.plugins import format_conversion
    conf = _conf()
    format_conversion.SPEC.register(conf)
    for name, value in values.items():
        conf.set_override(name, value, group='format_conversion')
    return conf


def test_check_config_needs_the_key_manager_when_verify_is_set():
    from glance_imgplugins.plugins import format_conversion
    conf = _plugin_conf(signed_images='verify')
    assert format_conversion.check_config(conf) == [
        '[barbican] auth_endpoint: not set (the default '
        'http://localhost/identity/v3 is a guess); signed images are '
        'verified with the certificate held in Barbican']
    conf.set_override('auth_endpoint', 'http://keystone.example/v3',
                      group='barbican')
    assert format_conversion.check_config(conf) == []
    assert format_conversion.describe_config(conf) == [
        'signed images that need converting are verified first with the '
        'barbican key manager']


def test_check_config_default_mode_only_describes():
    from glance_imgplugins.plugins import format_conversion
    conf = _plugin_conf()
    # A cloud without a key manager has no signed images: not an error.
    assert format_conversion.check_config(conf) == []
    [line] = format_conversion.describe_config(conf)
    assert line.startswith('signed images that need converting are '
                           'verified first, but the key manager is not '
                           'configured ([barbican] auth_endpoint: not set')


def test_check_config_refuse_mode_needs_no_key_manager():
    from glance_imgplugins.plugins import format_conversion
    conf = _plugin_conf(signed_images='refuse')
    assert format_conversion.check_config(conf) == []
    assert format_conversion.describe_config(conf) == [
        'signed images that need converting are refused '
        '([format_conversion] signed_images = refuse)']


# --- certificate validation (signature_certificate_validation) -------------

def _when(moment) -> str:
    return moment.strftime('%Y-%m-%d %H:%M:%S UTC')


def test_certificate_issued_by_a_trusted_ca(qcow2, barbican, authority,
                                            ca_uuid, context, manager):
    leaf, leaf_uuid = bb.issue_leaf(barbican, authority)
    sig = _sig(leaf, qcow2, leaf_uuid)
    verified = signature.verify_file(str(qcow2), sig, context, manager,
                                     trust=signature.Trust((ca_uuid,)))
    assert verified.trusted is True
    assert verified.subject == 'CN=imgplugins leaf'
    assert verified.fingerprint == leaf.cert.fingerprint(
        hashes.SHA256()).hex(':').upper()
    # Without validation (Glance's behaviour) the same passes, unchecked.
    assert signature.verify_file(str(qcow2), sig, context,
                                 manager).trusted is False


def test_self_signed_certificate_is_untrusted(qcow2, signer, cert_uuid,
                                              ca_uuid, context, manager):
    sig = _sig(signer, qcow2, cert_uuid)
    # Accepted without validation (the tests above), refused with it.
    with pytest.raises(exception.SignatureCertificateUntrusted) as err:
        signature.verify_file(str(qcow2), sig, context, manager,
                              trust=signature.Trust((ca_uuid,)))
    assert str(err.value) == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it does not chain to a trusted certificate authority: '
        'refused' % cert_uuid)
    assert err.value.status == 'queued' and not err.value.keep_staged


def test_expired_and_future_certificates(qcow2, barbican, authority,
                                         ca_uuid, context, manager):
    trust = signature.Trust((ca_uuid,))
    expired, expired_uuid = bb.issue_leaf(barbican, authority,
                                          valid_from=-30, valid_until=-1)
    with pytest.raises(exception.SignatureCertificateUntrusted) as err:
        signature.verify_file(str(qcow2), _sig(expired, qcow2, expired_uuid),
                              context, manager, trust=trust)
    assert str(err.value) == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it expired on %s: refused' % (
            expired_uuid, _when(expired.cert.not_valid_after_utc)))
    future, future_uuid = bb.issue_leaf(barbican, authority, valid_from=2,
                                        valid_until=30)
    with pytest.raises(exception.SignatureCertificateUntrusted) as err:
        signature.verify_file(str(qcow2), _sig(future, qcow2, future_uuid),
                              context, manager, trust=trust)
    assert str(err.value) == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it is not valid before %s: refused' % (
            future_uuid, _when(future.cert.not_valid_before_utc)))


def test_expired_ca_trusts_nothing(qcow2, barbican, context, manager):
    old_ca = bb.Signer('old CA', ca=True, valid_from=-60, valid_until=-1)
    old_ca_uuid = bb.store_certificate(barbican, 'alice', old_ca.pem())
    leaf, leaf_uuid = bb.issue_leaf(barbican, old_ca)
    with pytest.raises(exception.SignatureCertificateUntrusted,
                       match='does not chain to a trusted'):
        signature.verify_file(str(qcow2), _sig(leaf, qcow2, leaf_uuid),
                              context, manager,
                              trust=signature.Trust((old_ca_uuid,)))


def test_trusted_ids_the_operator_must_fix_are_retryable(
        qcow2, barbican, authority, context, manager):
    leaf, leaf_uuid = bb.issue_leaf(barbican, authority)
    sig = _sig(leaf, qcow2, leaf_uuid)
    missing = '00000000-0000-4000-8000-000000000000'
    with pytest.raises(exception.ConfigError) as err:
        signature.verify_file(str(qcow2), sig, context, manager,
                              trust=signature.Trust((missing,)))
    assert str(err.value) == (
        'Invalid configuration: [format_conversion] '
        'signature_trusted_certificate_ids: certificate %s was not found in '
        'the key manager' % missing)
    assert err.value.status == 'uploading' and err.value.keep_staged
    with pytest.raises(exception.ConfigError) as err:
        signature.verify_file(str(qcow2), sig, context, manager,
                              trust=signature.Trust(()))
    assert str(err.value) == (
        'Invalid configuration: [format_conversion] '
        'signature_trusted_certificate_ids: empty while '
        'signature_certificate_validation is on, no certificate can be '
        'trusted')


def test_trusted_certificate_behind_a_down_key_manager_is_retryable(
        qcow2, signer, context, unreachable):
    sig = _sig(signer, qcow2, 'leaf-id')
    with pytest.raises(exception.KeyManagerUnavailable):
        signature.verify_file(str(qcow2), sig, context, unreachable,
                              trust=signature.Trust(('ca-id',)))


def test_check_config_validation_needs_trusted_ids():
    from glance_imgplugins.plugins import format_conversion
    conf = _plugin_conf()
    conf.set_override('signature_certificate_validation', True,
                      group='format_conversion')
    # Validation on implies verification: the key manager is required.
    assert format_conversion.check_config(conf) == [
        '[format_conversion] signature_trusted_certificate_ids: empty while '
        'signature_certificate_validation is on: every signed image that '
        'needs converting would fail',
        '[barbican] auth_endpoint: not set (the default '
        'http://localhost/identity/v3 is a guess); signed images are '
        'verified with the certificate held in Barbican']
    conf.set_override('auth_endpoint', 'http://keystone.example/v3',
                      group='barbican')
    conf.set_override('signature_trusted_certificate_ids', ['ca-1', 'ca-2'],
                      group='format_conversion')
    assert format_conversion.check_config(conf) == []
    assert format_conversion.describe_config(conf) == [
        'signed images that need converting are verified first with the '
        'barbican key manager, their certificates validated against 2 '
        'trusted certificates']
    settings = format_conversion.load_settings(conf)
    assert settings.signature_trust == signature.Trust(('ca-1', 'ca-2'))
    # refuse: nothing is verified, nothing to validate.
    conf.set_override('signed_images', 'refuse', group='format_conversion')
    conf.set_override('signature_trusted_certificate_ids', [],
                      group='format_conversion')
    assert format_conversion.check_config(conf) == []
