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

"""A real Keystone 30 for functional tests, Tempest and the demo.

sqlite, fernet tokens, ``keystone-manage bootstrap``, served on loopback by
gunicorn.  Then, through Keystone's own API as an operator would: the
``service`` project with Glance's service user, users with member, reader,
a custom role and a role they hold only through an implied role, and a
domain-scoped admin.  Projects get fixed ids (as ``bootstrap`` creates its
project, through Keystone's resource manager) so image owners read well.

One Keystone serves a whole test session (``shared()``): every Glance the
harness starts adds its own region with an ``image`` endpoint to the
catalog, so a password login (``OS_*`` or ``clouds.yaml``) finds that
Glance.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import process

REPO_ROOT = process.REPO_ROOT
BIN_DIR = process.BIN_DIR
DOMAIN = 'Default'
PASSWORD = 'secret-%s'  # % user name: every test user's password


@dataclass(frozen=True)
class User:
    """A test identity: a Keystone user and what its token is scoped to."""

    name: str
    project: str | None          # project id (ids are names here)
    roles: tuple[str, ...]       # roles assigned directly
    domain_scope: str | None = None

    @property
    def password(self) -> str:
        return PASSWORD % self.name


# Projects, by id (= name).  'admin-project' is the bootstrap project.
PROJECTS = ('admin-project', 'demo-project', 'partner-project', 'service')

# Custom roles; 'partner' implies 'member' and 'image_curator', so a partner
# uploads like a member and matches rules written for curators without ever
# being assigned either role.
CUSTOM_ROLES = ('partner', 'image_curator')
IMPLIED_ROLES = (('partner', 'member'), ('partner', 'image_curator'))

USERS = {u.name: u for u in (
    User('admin', 'admin-project', ('admin',)),
    User('alice', 'demo-project', ('member',)),
    User('bob', 'demo-project', ('reader',)),
    User('carol', 'admin-project', ('member',)),
    User('dave', 'partner-project', ('partner',)),
    # An admin of the domain, with no project: a domain-scoped token.
    User('dora', None, ('admin',), domain_scope=DOMAIN),
    User('glance', 'service', ('service',)),
)}

# Bootstrap makes admin imply manager, manager member, member reader.
_BOOTSTRAP_SEED = """\
import sys
from keystone.common import provider_api
from keystone.server import backends
from keystone import conf as kconf
kconf.configure()
kconf.CONF(args=[], project='keystone', default_config_files=[sys.argv[1]])
backends.load_backends()
api = provider_api.ProviderAPIs
# bootstrap finds this domain and the project named in --bootstrap-project-name
api.resource_api.create_domain('default', {
    'id': 'default', 'name': 'Default', 'enabled': True,
    'description': 'The default domain'})
for pid in sys.argv[2:]:
    api.resource_api.create_project(pid, {
        'id': pid, 'name': pid, 'domain_id': 'default', 'enabled': True,
        'description': 'glance-imgplugins test project'})
"""


class KeystoneError(RuntimeError):
    pass


def wsgi_app() -> Any:
    """gunicorn's application factory (``tests.support.keystone:wsgi_app()``).

    Keystone's WSGI entry parses ``sys.argv`` with oslo.config and refuses
    gunicorn's own arguments: hide them first.
    """
    sys.argv = sys.argv[:1]
    from keystone.server import wsgi
    return wsgi.initialize_public_application()


class Keystone(process.GunicornService):
    """One Keystone process and its sqlite database, keys and config."""

    NAME = 'keystone'
    error = KeystoneError

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = process.free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.auth_url = self.url + '/v3'
        self.conf_file = self.workdir / 'keystone.conf'
        self.log_path = self.workdir / 'keystone.log'
        self._proc: subprocess.Popen[bytes] | None = None
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._ids: dict[str, str] = {}

    # -- setup --------------------------------------------------------------

    def _manage(self, *args: str) -> None:
        proc = subprocess.run(
            [str(BIN_DIR / 'keystone-manage'), '--config-file',
             str(self.conf_file), *args], capture_output=True, text=True,
            env=self.env(), timeout=300)
        if proc.returncode != 0:
            raise KeystoneError('keystone-manage %s failed:\n%s%s' % (
                args[0], proc.stdout, proc.stderr))

    def env(self) -> dict[str, str]:
        env = super().env()
        env['OS_KEYSTONE_CONFIG_FILES'] = str(self.conf_file)
        return env

    def write_config(self) -> None:
        for sub in ('fernet-keys', 'credential-keys'):
            # Keystone warns on every token about readable key folders.
            (self.workdir / sub).mkdir(mode=0o700, parents=True,
                                       exist_ok=True)
        self.conf_file.write_text('\n'.join([
            '[DEFAULT]',
            'log_file = %s' % self.log_path,
            'use_stderr = False',
            '[database]',
            'connection = sqlite:///%s' % (self.workdir / 'keystone.sqlite'),
            '[token]',
            'provider = fernet',
            # Long enough for the whole test session and a kept demo.
            'expiration = 86400',
            '[fernet_tokens]',
            'key_repository = %s' % (self.workdir / 'fernet-keys'),
            '[credential]',
            'key_repository = %s' % (self.workdir / 'credential-keys'),
            '[cache]',
            'enabled = False',
            '[identity]',
            # The fewest bcrypt rounds: tests log in often, safety is moot.
            'password_hash_rounds = 4',
            '',
        ]))

    def start(self, timeout: float = 60) -> 'Keystone':
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._manage('db_sync')
        self._manage('fernet_setup', '--keystone-user', 'root',
                     '--keystone-group', 'root')
        self._manage('credential_setup', '--keystone-user', 'root',
                     '--keystone-group', 'root')
        seed = subprocess.run(
            [sys.executable, '-c', _BOOTSTRAP_SEED, str(self.conf_file),
             *PROJECTS], capture_output=True, text=True, env=self.env(),
            timeout=120)
        if seed.returncode != 0:
            raise KeystoneError('creating the projects failed:\n'
                                + seed.stderr[-3000:])
        self._manage('bootstrap', '--bootstrap-password',
                     USERS['admin'].password,
                     '--bootstrap-project-name', 'admin-project',
                     '--bootstrap-region-id', 'RegionOne',
                     '--bootstrap-admin-url', self.auth_url,
                     '--bootstrap-internal-url', self.auth_url,
                     '--bootstrap-public-url', self.auth_url)
        # One thread: sqlite takes one writer, and concurrent token
        # requests (Tempest's two workers) failed with "database is
        # locked" under load.
        self._serve('tests.support.keystone:wsgi_app()', threads=1)
        self._wait_ready(self._answers, timeout, interval=0.2)
        self._seed()
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.auth_url, timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _seed(self) -> None:
        """Users, roles, an implied role and assignments, via the API."""
        admin = self.admin_session()
        roles = {r['name']: r['id'] for r in self._get(admin, '/roles',
                                                       'roles')}
        for name in CUSTOM_ROLES:
            roles[name] = self._post(admin, '/roles', 'role',
                                     {'name': name})['id']
        for prior, implied in IMPLIED_ROLES:
            # What `openstack implied role create` sends.
            admin.put('/roles/%s/implies/%s' % (roles[prior],
                                                roles[implied]),
                      endpoint_filter=self._identity)
        users = {u['name']: u['id'] for u in self._get(admin, '/users',
                                                       'users')}
        for user in USERS.values():
            if user.name not in users:
                body: dict[str, Any] = {'name': user.name,
                                        'password': user.password,
                                        'domain_id': 'default'}
                if user.project:
                    body['default_project_id'] = user.project
                users[user.name] = self._post(admin, '/users', 'user',
                                              body)['id']
            target = ('/projects/%s' % user.project if user.project
                      else '/domains/default')
            for role in user.roles:
                admin.put('%s/users/%s/roles/%s' % (
                    target, users[user.name], roles[role]),
                    endpoint_filter=self._identity)
        self._ids = users
        self.role_ids = roles

    _identity = {'service_type': 'identity', 'interface': 'public'}

    def _get(self, sess: Any, path: str, key: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = sess.get(
            path, endpoint_filter=self._identity).json()[key]
        return result

    def _post(self, sess: Any, path: str, key: str,
              body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = sess.post(
            path, json={key: body}, endpoint_filter=self._identity
        ).json()[key]
        return result

    # -- identities ---------------------------------------------------------

    def user_id(self, name: str) -> str:
        return self._ids[name]

    def auth(self, name: str) -> Any:
        from keystoneauth1.identity import v3
        user = USERS[name]
        scope: dict[str, str] = (
            {'project_id': user.project} if user.project
            else {'domain_name': user.domain_scope or DOMAIN})
        return v3.Password(auth_url=self.auth_url, username=user.name,
                           password=user.password, user_domain_name=DOMAIN,
                           **scope)

    def session(self, name: str) -> Any:
        from keystoneauth1 import session
        return session.Session(auth=self.auth(name))

    def admin_session(self) -> Any:
        return self.session('admin')

    def token(self, name: str) -> str:
        """A real token for test user ``name`` (cached for the session)."""
        with self._lock:
            if name not in self._tokens:
                self._tokens[name] = self.session(name).get_token()
            return self._tokens[name]

    def add_image_endpoint(self, region: str, url: str) -> None:
        """Make ``url`` the image service of ``region`` in the catalog."""
        admin = self.admin_session()
        regions = {r['id'] for r in self._get(admin, '/regions', 'regions')}
        if region not in regions:
            self._post(admin, '/regions', 'region', {'id': region})
        services = [s for s in self._get(admin, '/services', 'services')
                    if s['type'] == 'image']
        service_id = services[0]['id'] if services else self._post(
            admin, '/services', 'service',
            {'type': 'image', 'name': 'glance'})['id']
        for endpoint in self._get(admin, '/endpoints?service_id=%s'
                                  % service_id, 'endpoints'):
            if endpoint['region_id'] == region:
                admin.delete('/endpoints/%s' % endpoint['id'],
                             endpoint_filter=self._identity)
        for interface in ('public', 'internal', 'admin'):
            self._post(admin, '/endpoints', 'endpoint', {
                'service_id': service_id, 'interface': interface,
                'region_id': region, 'url': url})

    def password_env(self, name: str, region: str) -> dict[str, str]:
        """``OS_*`` variables for a password login as ``name``."""
        user = USERS[name]
        env = {
            'OS_AUTH_URL': self.auth_url,
            'OS_AUTH_TYPE': 'password',
            'OS_IDENTITY_API_VERSION': '3',
            'OS_USERNAME': user.name,
            'OS_PASSWORD': user.password,
            'OS_USER_DOMAIN_NAME': DOMAIN,
            'OS_REGION_NAME': region,
            'OS_INTERFACE': 'public',
        }
        if user.project:
            env.update(OS_PROJECT_ID=user.project,
                       OS_PROJECT_DOMAIN_NAME=DOMAIN)
        else:
            env['OS_DOMAIN_NAME'] = user.domain_scope or DOMAIN
        return env

    def clouds_yaml(self, path: Path, region: str) -> Path:
        """A clouds.yaml with one cloud per test user, named after it."""
        lines = ['clouds:']
        for user in USERS.values():
            lines += ['  %s:' % user.name, '    auth_type: password',
                      '    region_name: %s' % region,
                      '    identity_api_version: 3', '    auth:',
                      '      auth_url: %s' % self.auth_url,
                      '      username: %s' % user.name,
                      '      password: %s' % user.password,
                      '      user_domain_name: %s' % DOMAIN]
            if user.project:
                lines += ['      project_id: %s' % user.project,
                          '      project_domain_name: %s' % DOMAIN]
            else:
                lines += ['      domain_name: %s' % (user.domain_scope
                                                     or DOMAIN)]
        path.write_text('\n'.join(lines) + '\n')
        return path

    def authtoken_conf(self) -> dict[str, str]:
        """Glance's ``[keystone_authtoken]`` section."""
        glance = USERS['glance']
        return {
            'www_authenticate_uri': self.auth_url,
            'auth_url': self.auth_url,
            'auth_type': 'password',
            'username': glance.name,
            'password': glance.password,
            'user_domain_name': DOMAIN,
            'project_name': 'service',
            'project_domain_name': DOMAIN,
        }


_shared: Keystone | None = None
_shared_lock = threading.Lock()


def shared() -> Keystone:
    """The Keystone of this process (started on first use, stopped at exit).

    Set ``IMGPLUGINS_KEYSTONE_DIR`` to keep its files somewhere known.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            kept = os.environ.get('IMGPLUGINS_KEYSTONE_DIR')
            workdir = kept or tempfile.mkdtemp(prefix='imgplugins-keystone-')
            keystone = Keystone(workdir)

            def stop() -> None:
                keystone.stop()
                if not kept:
                    shutil.rmtree(workdir, ignore_errors=True)

            atexit.register(stop)
            _shared = keystone.start()
        return _shared
