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

"""A real Barbican 23 (PyPI) for the signed-import tests.

sqlite (tables created at start), the ``simple_crypto`` plugin behind the
``store_crypto`` secret store, Keystone's ``auth_token`` middleware against
the shared test Keystone (``tests.support.keystone``), served on loopback by
gunicorn.  ``start()`` registers it as the ``key-manager`` service of
``RegionOne`` in the catalog, where castellan finds it; ``stop()`` and
``start()`` again keep the port (and so the catalog entry), which is how a
test takes the key manager away and brings it back.

:class:`Signer` makes what a user signing an image makes: an RSA key and a
self-signed X.509 certificate stored in Barbican as PEM, and the four
``img_signature*`` properties for a file.  For certificate validation, the
module fixtures ``authority`` and ``ca_uuid`` (a trusted CA, imported by the
modules that use them, which define ``barbican``) and :func:`issue_leaf`.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import keystone as ks
from tests.support import process

REPO_ROOT = process.REPO_ROOT
BIN_DIR = process.BIN_DIR

_PASTE_INI = """\
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican-api-keystone

[pipeline:barbican_version]
pipeline = request_id http_proxy_to_wsgi microversion versionapp

[pipeline:barbican-api-keystone]
pipeline = request_id http_proxy_to_wsgi authtoken context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:context]
paste.filter_factory = {middleware}.context:ContextMiddleware.factory

[filter:microversion]
paste.filter_factory = {middleware}.microversion:MicroversionMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""


class BarbicanError(RuntimeError):
    pass


def wsgi_app() -> Any:
    """gunicorn's application factory (``tests.support.barbican:wsgi_app()``).

    Barbican's own WSGI script reads a fixed ``/etc/barbican`` paste file
    and its config parses ``sys.argv``: use ours, hide gunicorn's args.
    """
    sys.argv = sys.argv[:1]
    from paste import deploy
    paste_ini = os.environ['IMGPLUGINS_BARBICAN_PASTE']
    return deploy.loadapp('config:%s' % paste_ini)


class Barbican(process.GunicornService):
    """One Barbican API process, its sqlite database and config."""

    NAME = 'barbican'
    error = BarbicanError
    SERVICE_TYPE = 'key-manager'
    REGION = 'RegionOne'

    def __init__(self, workdir: Path | str,
                 keystone: ks.Keystone | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.keystone = keystone or ks.shared()
        self.port = process.free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        # oslo.config finds ~/.barbican/barbican.conf (HOME is workdir).
        self.conf_file = self.workdir / '.barbican' / 'barbican.conf'
        self.paste_file = self.workdir / 'barbican-api-paste.ini'
        self.log_path = self.workdir / 'barbican.log'
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = super().env()
        env['IMGPLUGINS_BARBICAN_PASTE'] = str(self.paste_file)
        return env

    def write_config(self) -> None:
        self.conf_file.parent.mkdir(parents=True, exist_ok=True)
        if self.conf_file.exists():
            return  # a restart keeps the KEK: stored secrets stay readable
        kek = base64.b64encode(secrets.token_bytes(32)).decode()
        auth = self.keystone.authtoken_conf()
        lines = [
            '[DEFAULT]',
            'log_file = %s' % self.log_path,
            'use_stderr = False',
            'host_href = %s' % self.url,
            'db_auto_create = True',
            '[database]',
            'connection = sqlite:///%s' % (self.workdir / 'barbican.sqlite'),
            '[secretstore]',
            'enabled_secretstore_plugins = store_crypto',
            '[crypto]',
            'enabled_crypto_plugins = simple_crypto',
            '[simple_crypto_plugin]',
            'kek = %s' % kek,
            '[keystone_authtoken]',
        ] + ['%s = %s' % kv for kv in sorted(auth.items())] + ['']
        self.conf_file.write_text('\n'.join(lines))
        self.paste_file.write_text(_PASTE_INI.format(
            middleware='barbican.api.middleware'))

    def start(self, timeout: float = 90) -> 'Barbican':
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._serve('tests.support.barbican:wsgi_app()', threads=4)
        self._wait_ready(self._answers, timeout, interval=0.3)
        self.register_endpoint()
        return self

    def _answers(self) -> bool:
        try:
            # /v1 answers 401 once the whole app (and its tables) is up.
            urllib.request.urlopen(self.url + '/v1/secrets', timeout=5)
            return True
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def register_endpoint(self) -> None:
        """Make this Barbican the key manager of RegionOne in the catalog."""
        admin = self.keystone.admin_session()
        ident = {'service_type': 'identity', 'interface': 'public'}
        services = [s for s in admin.get('/services', endpoint_filter=ident)
                    .json()['services'] if s['type'] == self.SERVICE_TYPE]
        if services:
            service_id = services[0]['id']
        else:
            service_id = admin.post('/services', endpoint_filter=ident, json={
                'service': {'type': self.SERVICE_TYPE, 'name': 'barbican'}}
            ).json()['service']['id']
        endpoints = admin.get('/endpoints?service_id=%s' % service_id,
                              endpoint_filter=ident).json()['endpoints']
        if any(e['url'] == self.url for e in endpoints):
            return
        for endpoint in endpoints:
            admin.delete('/endpoints/%s' % endpoint['id'],
                         endpoint_filter=ident)
        for interface in ('public', 'internal', 'admin'):
            admin.post('/endpoints', endpoint_filter=ident, json={
                'endpoint': {'service_id': service_id,
                             'interface': interface,
                             'region_id': self.REGION, 'url': self.url}})

    def client(self, user: str) -> Any:
        """A barbicanclient for test user ``user`` (its project's secrets)."""
        from barbicanclient import client
        return client.Client(session=self.keystone.session(user),
                             endpoint=self.url)

    def glance_conf(self) -> dict[str, dict[str, str]]:
        """What Glance's castellan needs (``glance-api.conf``)."""
        return {'key_manager': {'backend': 'barbican'},
                'barbican': {'auth_endpoint': self.keystone.auth_url}}


_shared: Barbican | None = None
_shared_lock = threading.Lock()


def shared() -> Barbican:
    """The Barbican of this process, behind the shared Keystone (started on
    first use, stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            workdir = tempfile.mkdtemp(prefix='imgplugins-barbican-')
            barbican = Barbican(workdir)

            def stop() -> None:
                barbican.stop()
                shutil.rmtree(workdir, ignore_errors=True)

            atexit.register(stop)
            _shared = barbican.start()
        return _shared


# --- signing, as a user does -------------------------------------------------

class Signer:
    """An RSA key and its certificate (PEM): self-signed, or issued by
    ``issuer`` (another Signer); ``ca`` makes it a certificate authority
    (basic constraints CA, key usage keyCertSign) that can issue others.
    ``valid_from`` / ``valid_until``: days from now (default -1, +30)."""

    def __init__(self, common_name: str = 'imgplugins test signer',
                 issuer: 'Signer | None' = None, ca: bool = False,
                 valid_from: int = -1, valid_until: int = 30) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
        self.key = rsa.generate_private_key(public_exponent=65537,
                                            key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                             common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(name)
                   .issuer_name(issuer.cert.subject if issuer else name)
                   .public_key(self.key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(
                       days=valid_from))
                   .not_valid_after(now + datetime.timedelta(
                       days=valid_until)))
        if ca:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=True, path_length=None),
                critical=True).add_extension(
                x509.KeyUsage(digital_signature=False,
                              content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=True,
                              crl_sign=True, encipher_only=False,
                              decipher_only=False), critical=True)
        self.cert = builder.sign(issuer.key if issuer else self.key,
                                 hashes.SHA256())

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return self.cert.public_bytes(serialization.Encoding.DER)

    def sign(self, data: bytes, hash_method: str = 'SHA-256') -> str:
        """base64 of the RSA-PSS signature (MGF1, maximum salt), as
        ``img_signature`` wants it."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        algo = {'SHA-224': hashes.SHA224(), 'SHA-256': hashes.SHA256(),
                'SHA-384': hashes.SHA384(),
                'SHA-512': hashes.SHA512()}[hash_method]
        sig = self.key.sign(data, padding.PSS(
            mgf=padding.MGF1(algo), salt_length=padding.PSS.MAX_LENGTH), algo)
        return base64.b64encode(sig).decode()

    def properties(self, path: Path | str, cert_uuid: str,
                   hash_method: str = 'SHA-256') -> dict[str, str]:
        return {
            'img_signature': self.sign(Path(path).read_bytes(), hash_method),
            'img_signature_hash_method': hash_method,
            'img_signature_key_type': 'RSA-PSS',
            'img_signature_certificate_uuid': cert_uuid,
        }


def store_certificate(barbican: Barbican, user: str, payload: bytes,
                      name: str = 'image signing certificate') -> str:
    """Store ``payload`` as a certificate secret of ``user``'s project, as
    ``openstack secret store --secret-type certificate`` does; its UUID."""
    secret = barbican.client(user).secrets.create(
        name=name, payload=payload, secret_type='certificate')
    ref = secret.store()
    return str(ref).rpartition('/')[2]


def issue_leaf(barbican: Barbican, issuer: Signer,
               common_name: str = 'imgplugins leaf', **validity: int
               ) -> tuple[Signer, str]:
    """A leaf certificate ``issuer`` signed (``valid_from`` /
    ``valid_until`` as :class:`Signer`), stored in alice's project; the
    signer and the certificate's UUID."""
    leaf = Signer(common_name, issuer=issuer, **validity)
    return leaf, store_certificate(barbican, 'alice', leaf.pem())


# --- fixtures (imported by name: "# noqa: F401 (fixture)") -----------------

@pytest.fixture(scope='module')
def authority() -> Signer:
    """A certificate authority, valid for a year."""
    return Signer('imgplugins test CA', ca=True, valid_until=365)


@pytest.fixture(scope='module')
def ca_uuid(barbican: Barbican, authority: Signer) -> str:
    """``authority`` stored in alice's project (the importing module's
    ``barbican``): what ``signature_trusted_certificate_ids`` lists."""
    return store_certificate(barbican, 'alice', authority.pem(),
                             name='trusted CA')
