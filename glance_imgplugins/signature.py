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

"""Verify a signed image over the bytes the user uploaded, as Glance does.

Glance 33 verifies ``img_signature*`` images in ``glance/location.py``
(``ImageProxy.set_data``) over the bytes it writes to the store, i.e. after
the import plugins ran.  A converted image therefore always fails there.
:func:`verify_file` does the same verification earlier, over the staged
original, with the same pieces: cursive's properties, hash methods and key
types, the certificate fetched through castellan with the import's request
context, an X.509 certificate whose public key must match the key type.
Like Glance, it does not check the certificate's validity dates or its
chain by default; with a :class:`Trust` (``[format_conversion]
signature_certificate_validation``, as Nova's ``[glance]
enable_certificate_validation``) the certificate must be within its dates
and chain to one of the trusted CA certificates, checked with cursive's
``certificate_utils``.

:func:`verify_file` fetches the certificates from the key manager;
:func:`verify_file_with` takes them as loaded (``glance-imgplugins inspect
--signature``, offline).  Both build the verifier with
:func:`verifier_for` and read the file with the same loop.

Every failure is one of the package's named errors: a refusal of the
content (:class:`~glance_imgplugins.exception.SignatureRefused` and its
subclasses) or, when the key manager does not answer,
:class:`~glance_imgplugins.exception.KeyManagerUnavailable`.
"""

from __future__ import annotations

import binascii
import dataclasses
import datetime
import hashlib
from typing import Any, Mapping, Protocol, Sequence

from castellan.common import exception as castellan_exception
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cursive import certificate_utils
from cursive import exception as cursive_exception
from cursive import signature_utils
from oslo_config import cfg
from oslo_serialization import base64

from glance_imgplugins import exception

SIGNATURE = 'img_signature'
HASH_METHOD = 'img_signature_hash_method'
KEY_TYPE = 'img_signature_key_type'
CERT_UUID = 'img_signature_certificate_uuid'
#: The four properties Glance verifies an image by, in cursive's order.
PROPERTIES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERT_UUID)

#: Where each property goes once the original is verified and converted.
ORIGINAL = {name: name.replace('img_', 'img_original_', 1)
            for name in PROPERTIES}
#: sha256 (hex) of the verified original bytes.
ORIGINAL_SHA256 = 'img_original_sha256'

CHUNK = 1024 * 1024


class KeyManager(Protocol):
    """What is used of a castellan key manager."""

    def get(self, context: Any, managed_object_id: str) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Signature:
    """The four ``img_signature*`` properties of an image."""

    signature: str
    hash_method: str
    key_type: str
    certificate_uuid: str

    def properties(self) -> dict[str, str]:
        return dict(zip(PROPERTIES, (self.signature, self.hash_method,
                                     self.key_type, self.certificate_uuid),
                        strict=True))


def signature_of(properties: Mapping[str, Any]) -> Signature | None:
    """The image's signature, or None when Glance would not verify it.

    Glance verifies only when all four properties are present
    (``signature_utils.should_create_verifier``); so do we.
    """
    if not signature_utils.should_create_verifier(properties):
        return None
    return Signature(*(str(properties[name]) for name in PROPERTIES))


def supported_hash_methods() -> list[str]:
    return sorted(signature_utils.HASH_METHODS)


#: RSA-PSS mask generation functions cursive knows (it uses MGF1).
MASK_GEN_ALGORITHMS = sorted(signature_utils.MASK_GEN_ALGORITHMS)


def supported_key_types() -> list[str]:
    return sorted(signature_utils.SignatureKeyType.REGISTERED_TYPES)


@dataclasses.dataclass(frozen=True)
class Verified:
    """What was verified: the signature and the original's sha256."""

    signature: Signature
    sha256: str
    size: int
    #: The signing certificate's subject (RFC 4514) and SHA-256 fingerprint.
    subject: str = ''
    fingerprint: str = ''
    #: Whether its chain and dates were checked (a :class:`Trust` given).
    trusted: bool = False

    def moved_properties(self) -> dict[str, str]:
        """``img_original_signature*`` and ``img_original_sha256``."""
        moved = {ORIGINAL[k]: v
                 for k, v in self.signature.properties().items()}
        moved[ORIGINAL_SHA256] = self.sha256
        return moved


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a castellan error: its Barbican backend wraps
    the client's error without keeping the code."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        # barbicanclient's status_code, keystoneauth's http_status.
        code = getattr(seen, 'status_code', None) or getattr(
            seen, 'http_status', None)
        if isinstance(code, int):
            return code
        seen = seen.__cause__ or seen.__context__
    return None


@dataclasses.dataclass(frozen=True)
class Trust:
    """Certificate validation (``signature_certificate_validation``): the
    signing certificate must be within its validity dates and chain to one
    of these CA certificates (key manager ids, as Nova's ``[glance]
    default_trusted_certificate_ids``)."""

    certificate_ids: tuple[str, ...]


def _certificate(key_manager: KeyManager, context: Any,
                 uuid: str) -> x509.Certificate:
    try:
        cert = key_manager.get(context, uuid)
    except castellan_exception.ManagedObjectNotFoundError as exc:
        raise exception.SignatureCertificateRefused(
            certificate=uuid, reason='was not found in the key manager'
        ) from exc
    except castellan_exception.CastellanException as exc:
        # Unreachable, timed out, 5xx, access refused: retrying can help,
        # so the staged data is kept.
        if _http_status(exc) in (401, 403):
            raise exception.SignatureCertificateForbidden(
                certificate=uuid) from exc
        raise exception.KeyManagerUnavailable(certificate=uuid) from exc
    except ValueError as exc:
        # castellan's Barbican backend parses a "certificate" secret as PEM
        # and lets cryptography's ValueError through.
        raise exception.SignatureCertificateRefused(
            certificate=uuid,
            reason='is not a PEM-encoded X.509 certificate') from exc
    formats = signature_utils.CERTIFICATE_FORMATS
    if getattr(cert, 'format', None) not in formats:
        raise exception.SignatureCertificateRefused(
            certificate=uuid, reason='is not an X.509 certificate')
    try:
        return x509.load_der_x509_certificate(cert.get_encoded())
    except (ValueError, TypeError) as exc:
        raise exception.SignatureCertificateRefused(
            certificate=uuid, reason='is not a valid X.509 certificate'
        ) from exc


#: Where the trusted certificate ids are configured (for the messages).
TRUSTED_IDS = '[format_conversion] signature_trusted_certificate_ids'


def _trusted_certificates(key_manager: KeyManager, context: Any,
                          trust: Trust
                          ) -> list[tuple[str, x509.Certificate]]:
    """The trusted CA certificates, fetched with the importing user's
    context as Nova does.  One that cannot be used is the operator's to
    fix: retryable (the staged data is kept), never a content refusal."""
    if not trust.certificate_ids:
        raise exception.ConfigError(
            reason='%s: empty while signature_certificate_validation is on, '
                   'no certificate can be trusted' % TRUSTED_IDS)
    found = []
    for uuid in trust.certificate_ids:
        try:
            found.append((uuid, _certificate(key_manager, context, uuid)))
        except exception.SignatureCertificateForbidden as exc:
            raise exception.ConfigError(
                reason='%s: certificate %s cannot be read by the importing '
                       'user (give every project access to it)'
                       % (TRUSTED_IDS, uuid)) from exc
        except exception.SignatureCertificateRefused as exc:
            raise exception.ConfigError(reason='%s: certificate %s %s' % (
                TRUSTED_IDS, uuid, exc.kwargs['reason'])) from exc
    return found


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(
        '%Y-%m-%d %H:%M:%S UTC')


def check_trust(certificate: x509.Certificate, name: str,
                trusted: Sequence[tuple[str, x509.Certificate]]) -> None:
    """Refuse ``certificate`` unless it is within its validity dates and
    chains to one of ``trusted`` (cursive's ``certificate_utils``: CA and
    key-usage extensions of the signers, their dates, path lengths)."""
    if not certificate_utils.is_within_valid_dates(certificate):
        now = datetime.datetime.now(datetime.timezone.utc)
        if now < certificate.not_valid_before_utc:
            reason = 'it is not valid before %s' % _when(
                certificate.not_valid_before_utc)
        else:
            reason = 'it expired on %s' % _when(
                certificate.not_valid_after_utc)
        raise exception.SignatureCertificateUntrusted(
            certificate=name, reason=reason)
    chain = certificate_utils.CertificateVerificationContext(
        list(trusted), enforce_valid_dates=True,
        enforce_signing_extensions=True, enforce_path_length=True)
    try:
        chain.update(certificate)
        chain.verify()
    except cursive_exception.SignatureVerificationError as exc:
        raise exception.SignatureCertificateUntrusted(
            certificate=name,
            reason='it does not chain to a trusted certificate authority'
        ) from exc


def _decoded(sig: Signature) -> tuple[bytes, Any]:
    """The cheap checks: the raw signature and cursive's key type."""
    try:
        raw_signature = base64.decode_as_bytes(sig.signature)
    except (TypeError, binascii.Error) as exc:
        raise exception.SignatureRefused(
            reason='img_signature is not base64-encoded data') from exc
    if not raw_signature:
        raise exception.SignatureRefused(reason='img_signature is empty')
    if sig.hash_method not in signature_utils.HASH_METHODS:
        raise exception.SignatureAlgorithmUnsupported(
            property=HASH_METHOD, value=sig.hash_method,
            supported=', '.join(supported_hash_methods()))
    key_type = signature_utils.SignatureKeyType.REGISTERED_TYPES.get(
        sig.key_type)
    if key_type is None:
        raise exception.SignatureAlgorithmUnsupported(
            property=KEY_TYPE, value=sig.key_type,
            supported=', '.join(supported_key_types()))
    return raw_signature, key_type


def verifier_for(sig: Signature, certificate: x509.Certificate,
                 trusted: Sequence[tuple[str, x509.Certificate]] | None = None
                 ) -> Any:
    """cursive's verifier for ``sig`` with ``certificate`` (named by
    ``sig.certificate_uuid`` in messages), after :func:`check_trust` when
    ``trusted`` is given; every failure a named error."""
    raw_signature, key_type = _decoded(sig)
    if trusted is not None:
        check_trust(certificate, sig.certificate_uuid, trusted)
    public_key = certificate.public_key()
    if not isinstance(public_key, key_type.public_key_type):
        raise exception.SignatureCertificateRefused(
            certificate=sig.certificate_uuid,
            reason='does not hold a key for img_signature_key_type %s'
            % sig.key_type)
    try:
        verifier = key_type.create_verifier(
            raw_signature, signature_utils.HASH_METHODS[sig.hash_method],
            public_key)
    except cursive_exception.SignatureVerificationError:
        verifier = None
    if verifier is None:
        raise exception.SignatureRefused(
            reason='no verifier can be built for img_signature_key_type %s'
            % sig.key_type)
    return verifier


def _fetch(sig: Signature, context: Any, key_manager: KeyManager,
           trust: Trust | None
           ) -> tuple[x509.Certificate,
                      list[tuple[str, x509.Certificate]] | None]:
    """The signing certificate (and the trusted ones) from the key
    manager.  The cheap checks (encoding, hash method, key type) come
    first, so a typo is refused without asking the key manager."""
    _decoded(sig)
    certificate = _certificate(key_manager, context, sig.certificate_uuid)
    trusted = None
    if trust is not None:
        trusted = _trusted_certificates(key_manager, context, trust)
    return certificate, trusted


def make_verifier(sig: Signature, context: Any, key_manager: KeyManager,
                  trust: Trust | None = None) -> Any:
    """:func:`verifier_for` with the certificates from the key manager."""
    return verifier_for(sig, *_fetch(sig, context, key_manager, trust))


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as ``openssl x509 -fingerprint
    -sha256`` prints it."""
    return certificate.fingerprint(hashes.SHA256()).hex(':').upper()


def _read(path: str, sig: Signature, verifier: Any, chunk_size: int,
          certificate: x509.Certificate, trusted: bool) -> Verified:
    """Feed the file to ``verifier`` (one streamed read, sha256 too)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, 'rb') as src:
        while True:
            chunk = src.read(chunk_size)
            if not chunk:
                break
            verifier.update(chunk)
            digest.update(chunk)
            size += len(chunk)
    try:
        verifier.verify()
    except crypto_exceptions.InvalidSignature as exc:
        raise exception.SignatureMismatch(
            certificate=sig.certificate_uuid) from exc
    return Verified(signature=sig, sha256=digest.hexdigest(), size=size,
                    subject=certificate.subject.rfc4514_string(),
                    fingerprint=fingerprint(certificate), trusted=trusted)


def verify_file(path: str, sig: Signature, context: Any,
                key_manager: KeyManager, chunk_size: int = CHUNK,
                trust: Trust | None = None) -> Verified:
    """Verify ``sig`` over the file at ``path``, the certificates fetched
    from ``key_manager`` with ``context``; one read, sha256 too."""
    certificate, trusted = _fetch(sig, context, key_manager, trust)
    verifier = verifier_for(sig, certificate, trusted)
    return _read(path, sig, verifier, chunk_size, certificate,
                 trusted is not None)


def verify_file_with(path: str, sig: Signature,
                     certificate: x509.Certificate,
                     trusted: Sequence[tuple[str, x509.Certificate]] | None
                     = None, chunk_size: int = CHUNK) -> Verified:
    """Verify ``sig`` over the file at ``path`` with a certificate already
    loaded (offline); ``trusted``: check its dates and chain first."""
    verifier = verifier_for(sig, certificate, trusted)
    return _read(path, sig, verifier, chunk_size, certificate,
                 trusted is not None)


def load_certificate(data: bytes, name: str) -> x509.Certificate:
    """A PEM certificate file's content (what Barbican accepts); anything
    else is refused as the same secret in the key manager would be."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise exception.SignatureCertificateRefused(
            certificate=name,
            reason='is not a PEM-encoded X.509 certificate') from exc


# --- the key manager --------------------------------------------------------

def key_manager(conf: cfg.ConfigOpts) -> KeyManager:
    """castellan's key manager for ``conf`` (Glance uses ``cfg.CONF``)."""
    from castellan import key_manager as castellan_key_manager
    try:
        manager: KeyManager = castellan_key_manager.API(conf)
    except (ImportError, ValueError, RuntimeError, cfg.Error) as exc:
        raise exception.ConfigError(
            reason='[key_manager] backend: %s cannot be loaded'
            % _backend(conf)) from exc
    return manager


def _backend(conf: cfg.ConfigOpts) -> str:
    from castellan.key_manager import key_manager_opts
    conf.register_opts(key_manager_opts, group='key_manager')
    return str(conf.key_manager.backend)


def _explicit(conf: cfg.ConfigOpts, group: str, name: str) -> bool:
    location = conf.get_location(name, group)
    return location is not None and \
        location.location is not cfg.Locations.opt_default


def key_manager_problems(conf: cfg.ConfigOpts) -> list[str]:
    """What keeps the key manager from serving signed imports, as
    ``[group] option: reason`` (for ``check-config``)."""
    backend = _backend(conf)
    if backend not in ('barbican', 'vault'):
        try:
            key_manager(conf)
        except exception.ConfigError as exc:
            return [str(exc.kwargs['reason'])]
        return []
    from castellan import options as castellan_options
    # Registers the [barbican] and [vault] options; sets no value.
    castellan_options.set_defaults(conf)
    if backend == 'vault':
        if not _explicit(conf, 'vault', 'vault_url'):
            return ['[vault] vault_url: not set; signed images are verified '
                    'with the certificate held in Vault']
        return []
    if not _explicit(conf, 'barbican', 'auth_endpoint'):
        return ['[barbican] auth_endpoint: not set (the default %s is a '
                'guess); signed images are verified with the certificate '
                'held in Barbican' % conf.barbican.auth_endpoint]
    return []
