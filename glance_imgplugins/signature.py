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
Like Glance (and unlike Nova's ``[glance] enable_certificate_validation``)
it does not check the certificate's validity dates or its chain.

Every failure is one of the package's named errors: a refusal of the
content (:class:`~glance_imgplugins.exception.SignatureRefused` and its
subclasses) or, when the key manager does not answer,
:class:`~glance_imgplugins.exception.KeyManagerUnavailable`.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
from typing import Any, Mapping, Protocol

from castellan.common import exception as castellan_exception
from cryptography import exceptions as crypto_exceptions
from cryptography import x509
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


def supported_key_types() -> list[str]:
    return sorted(signature_utils.SignatureKeyType.REGISTERED_TYPES)


@dataclasses.dataclass(frozen=True)
class Verified:
    """What was verified: the signature and the original's sha256."""

    signature: Signature
    sha256: str
    size: int

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


def _certificate(key_manager: KeyManager, context: Any,
                 sig: Signature) -> x509.Certificate:
    uuid = sig.certificate_uuid
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


def make_verifier(sig: Signature, context: Any,
                  key_manager: KeyManager) -> Any:
    """cursive's verifier for ``sig``, every failure a named error.

    The cheap checks (encoding, hash method, key type) come first, so a
    typo is refused without asking the key manager.
    """
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
    public_key = _certificate(key_manager, context, sig).public_key()
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


def verify_file(path: str, sig: Signature, context: Any,
                key_manager: KeyManager, chunk_size: int = CHUNK
                ) -> Verified:
    """Verify ``sig`` over the file at ``path``; one read, sha256 too."""
    verifier = make_verifier(sig, context, key_manager)
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
    return Verified(signature=sig, sha256=digest.hexdigest(), size=size)


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
