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

"""A real Glance 33 API for functional tests and for the demo.

Builds a config folder, syncs a sqlite database and runs ``glance.wsgi.api``
under gunicorn (or uWSGI) on a free loopback port, with multi-store file
backends (and any other driver a test names), the staging and tasks stores,
all three import methods, and our plugins listed in
``glance-image-import.conf``.

Identity is a real Keystone (``tests.support.keystone``): Glance runs the
``keystone`` paste flavor (keystonemiddleware ``auth_token``).  Tests name a
test user where a token is wanted: ``ADMIN_TOKEN`` and ``MEMBER_TOKEN`` (or
any name in ``keystone.USERS``) become that user's real token.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tests.support import keystone as ks
from tests.support import process

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent


class TestUser(str):
    """A test user's name that reads as a real Keystone token.

    ``str(user)`` (and ``'%s' % user``) is a valid token of the shared
    Keystone, so code that writes a token into a file or header keeps
    working; the harness resolves it wherever it takes ``token=``.
    """

    __test__ = False  # not a pytest test class

    @property
    def name(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return ks.shared().token(self.name)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


ADMIN_TOKEN = TestUser('admin')    # admin of admin-project
MEMBER_TOKEN = TestUser('alice')   # member of demo-project


def real_token(token: str | None, keystone: ks.Keystone | None = None
               ) -> str | None:
    """A token of ``keystone`` (default: the shared one) for a test user's
    name; anything else (a raw token, ``None``) unchanged."""
    if token is None:
        return None
    if isinstance(token, TestUser) or token in ks.USERS:
        return (keystone or ks.shared()).token(str.__str__(token))
    return token

StoreSpec = tuple[str, Mapping[str, Any]]

# Glance's own paste file, flavor ``keystone``, with one harness filter
# (``stacks``, diagnostics only) and no unauthenticated pipeline.
_PASTE_INI = """\
[composite:glance-api-keystone]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
keystone = cors http_proxy_to_wsgi versionnegotiation stacks authtoken context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {workdir}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:stacks]
paste.filter_factory = tests.support.glance_server:stacks_filter_factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = true

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""


def stacks_filter_factory(global_conf: Any, **local_conf: Any
                          ) -> Callable[[Any], Any]:
    """Paste filter that changes nothing: it lets the harness read every
    worker thread's stack from ``stacks-<pid>.txt`` after a SIGUSR1
    (see ``GlanceServer.stacks()``)."""
    stacks_dir = os.environ.get('IMGPLUGINS_STACKS_DIR')
    if stacks_dir:
        stacks_file = open(os.path.join(stacks_dir, 'stacks-%d.txt'
                                        % os.getpid()), 'w')
        faulthandler.register(signal.SIGUSR1, file=stacks_file,
                              all_threads=True)
    return lambda app: app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'True' if value else 'False'
    if isinstance(value, (list, tuple)):
        return ','.join(str(v) for v in value)
    if isinstance(value, dict):
        return ','.join('%s:%s' % kv for kv in value.items())
    return str(value)


def write_ini(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
    lines = []
    for section, options in sections.items():
        lines.append('[%s]' % section)
        lines.extend('%s = %s' % (k, _format_value(v))
                     for k, v in options.items())
        lines.append('')
    path.write_text('\n'.join(lines))


def merge(base: dict[str, dict[str, Any]],
          extra: Mapping[str, Mapping[str, Any]] | None) -> None:
    for section, options in (extra or {}).items():
        base.setdefault(section, {}).update(options)


class GlanceError(RuntimeError):
    pass


class GlanceServer:
    """One Glance API process and everything it needs, in ``workdir``."""

    def __init__(self, workdir: Path | str, *,
                 stores: Mapping[str, StoreSpec] | None = None,
                 default_store: str | None = None,
                 plugins: Iterable[str] = (),
                 import_conf: Mapping[str, Mapping[str, Any]] | None = None,
                 api_conf: Mapping[str, Mapping[str, Any]] | None = None,
                 workers: int = 1,
                 threads: int = 4,
                 max_parallel_stores: int | None = None,
                 allowed_ports: Iterable[int] = (),
                 check_config: bool = True,
                 server: str = 'gunicorn',
                 keystone: ks.Keystone | None = None,
                 region: str | None = None) -> None:
        if server not in ('gunicorn', 'uwsgi'):
            raise ValueError('server must be gunicorn or uwsgi, not %r'
                             % server)
        self.workdir = Path(workdir).resolve()
        self.stores = dict(stores or {'fast': ('file', {}),
                                      'cheap': ('file', {})})
        self.default_store = default_store or next(iter(self.stores))
        self.plugins = list(plugins)
        self.import_conf = import_conf
        self.api_conf = api_conf
        self.workers = workers
        self.threads = threads
        self.max_parallel_stores = max_parallel_stores
        self.allowed_ports = list(allowed_ports)
        self.check_config = check_config
        self.server = server
        self._keystone = keystone
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        # Each Glance is the image service of its own region in the shared
        # Keystone's catalog, so a password login finds this one.
        self.region = region or 'glance-%d' % self.port
        self.clouds_yaml = self.workdir / 'clouds.yaml'
        self.conf_dir = self.workdir / 'etc'
        self.log_path = self.workdir / 'glance-api.log'
        self.staging_dir = self.workdir / 'staging'
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def keystone(self) -> ks.Keystone:
        if self._keystone is None:
            self._keystone = ks.shared()
        return self._keystone

    # -- layout -------------------------------------------------------------

    def store_dir(self, name: str) -> Path:
        return self.workdir / 'stores' / name

    def write_config(self) -> None:
        for path in (self.conf_dir, self.staging_dir,
                     self.workdir / 'tasks'):
            path.mkdir(parents=True, exist_ok=True)
        api: dict[str, dict[str, Any]] = {
            'DEFAULT': {
                'enabled_backends': ', '.join(
                    '%s:%s' % (name, spec[0])
                    for name, spec in self.stores.items()),
                'enabled_import_methods':
                    '[glance-direct, web-download, copy-image]',
                'worker_self_reference_url': self.url,
                'public_endpoint': self.url,
                'log_file': str(self.log_path),
                'debug': True,
                'use_stderr': False,
            },
            'glance_store': {'default_backend': self.default_store},
            'os_glance_staging_store': {
                'filesystem_store_datadir': str(self.staging_dir)},
            'os_glance_tasks_store': {
                'filesystem_store_datadir': str(self.workdir / 'tasks')},
            'database': {'connection': 'sqlite:///%s' % (
                self.workdir / 'glance.sqlite')},
            'paste_deploy': {
                'flavor': 'keystone',
                'config_file': str(self.conf_dir / 'glance-api-paste.ini')},
            'keystone_authtoken': self.keystone.authtoken_conf(),
            # prlimit-wrapped qemu-img calls re-exec this interpreter.
            'wsgi': {'python_interpreter': str(BIN_DIR / 'python')},
            'import_filtering_opts': {
                # Bounded lists: the brackets are required.
                'allowed_hosts': '[127.0.0.1]',
                'allowed_ports': '[%s]' % ','.join(
                    str(p) for p in self.allowed_ports or (80, 443))},
            'oslo_concurrency': {'lock_path': str(self.workdir / 'locks')},
        }
        for name, (driver, options) in self.stores.items():
            section = dict(options)
            if driver == 'file':
                section.setdefault('filesystem_store_datadir',
                                   str(self.store_dir(name)))
                self.store_dir(name).mkdir(parents=True, exist_ok=True)
            section.setdefault('store_description', '%s (%s)' % (name, driver))
            api[name] = section
        merge(api, self.api_conf)
        write_ini(self.conf_dir / 'glance-api.conf', api)

        image_import: dict[str, dict[str, Any]] = {
            'image_import_opts': {
                'image_import_plugins':
                    '[%s]' % ', '.join("'%s'" % p for p in self.plugins)},
        }
        if self.max_parallel_stores is not None:
            image_import['image_import_opts']['max_parallel_stores'] = (
                self.max_parallel_stores)
        merge(image_import, self.import_conf)
        write_ini(self.conf_dir / 'glance-image-import.conf', image_import)
        (self.conf_dir / 'glance-api-paste.ini').write_text(
            _PASTE_INI.format(workdir=self.workdir))

    # -- life cycle ---------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('OS_')}
        env.update({
            'OS_GLANCE_CONFIG_DIR': str(self.conf_dir),
            'IMGPLUGINS_STACKS_DIR': str(self.workdir),
            # The diagnostics paste filter is imported from this checkout.
            'PYTHONPATH': os.pathsep.join(
                filter(None, [str(REPO_ROOT), env.get('PYTHONPATH')])),
            'PATH': os.pathsep.join([str(BIN_DIR), env.get('PATH', '')]),
        })
        return env

    def env(self, token: str | None = ADMIN_TOKEN) -> dict[str, str]:
        """Environment for a client: this Glance's URL and a real token of
        ``token`` (a test user's name), no other ``OS_*`` variable."""
        env = self._base_env()
        env['OS_IMAGE_URL'] = self.url
        resolved = real_token(token, self.keystone)
        if resolved:
            env['OS_AUTH_TOKEN'] = resolved
        return env

    def password_env(self, user: str = 'admin') -> dict[str, str]:
        """Environment for a password login as ``user`` through Keystone
        (``OS_AUTH_URL``, ``OS_USERNAME``, ``OS_PASSWORD``...): the client
        finds this Glance in the catalog, in ``self.region``."""
        env = self._base_env()
        env.update(self.keystone.password_env(str.__str__(user),
                                              self.region))
        return env

    def cloud_env(self, user: str = 'admin') -> dict[str, str]:
        """Environment for ``--os-cloud``/``OS_CLOUD``: ``self.clouds_yaml``
        holds one cloud per test user, named after it."""
        env = self._base_env()
        env.update(OS_CLIENT_CONFIG_FILE=str(self.clouds_yaml),
                   OS_CLOUD=str.__str__(user))
        return env

    def start(self, timeout: float = 60) -> 'GlanceServer':
        self.write_config()
        if self.check_config:
            # Glance silently skips a plugin it cannot load: refuse to run a
            # test against a configuration that would do that.
            check = subprocess.run(
                [str(BIN_DIR / 'glance-imgplugins'), 'check-config',
                 '--config-dir', str(self.conf_dir)],
                env=self.env(), capture_output=True, text=True)
            if check.returncode != 0:
                raise GlanceError('check-config failed:\n' + check.stdout
                                  + check.stderr)
        subprocess.run(
            [str(BIN_DIR / 'glance-manage'), '--config-file',
             str(self.conf_dir / 'glance-api.conf'), 'db_sync'],
            env=self._base_env(), check=True, capture_output=True)
        self.keystone.add_image_endpoint(self.region, self.url)
        self.keystone.clouds_yaml(self.clouds_yaml, self.region)
        server_log = open(self.server_log, 'ab')
        self._proc = subprocess.Popen(
            self._server_command(), cwd=self.workdir,
            env=self._base_env(), stdin=subprocess.DEVNULL,
            stdout=server_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        server_log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise GlanceError('glance-api exited with %s:\n%s' % (
                    self._proc.returncode, self.log_tail()))
            try:
                with urllib.request.urlopen(self.url + '/healthcheck',
                                            timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise GlanceError('glance-api did not become healthy:\n%s'
                          % self.log_tail())

    @property
    def server_log(self) -> Path:
        return self.workdir / ('%s.log' % self.server)

    def _server_command(self) -> list[str]:
        if self.server == 'gunicorn':
            return [str(BIN_DIR / 'gunicorn'),
                    '--bind', '127.0.0.1:%d' % self.port,
                    '--workers', str(self.workers),
                    '--threads', str(self.threads), '--timeout', '600',
                    '--no-control-socket',
                    '--pid', str(self.workdir / 'gunicorn.pid'),
                    'glance.wsgi.api:application']
        # As devstack runs Glance.  glanceclient stages with chunked
        # transfer encoding: without the chunked-input options uWSGI
        # answers 500 ("unable to receive chunked part").
        return [str(BIN_DIR / 'uwsgi'),
                '--http-socket', '127.0.0.1:%d' % self.port,
                '--module', 'glance.wsgi.api:application',
                '--master', '--processes', str(self.workers),
                '--threads', str(self.threads), '--enable-threads',
                '--lazy-apps', '--die-on-term', '--buffer-size', '65535',
                '--http-chunked-input', '--http-raw-body',
                '--chunked-input-limit', '10485760',
                '--add-header', 'Connection: close',
                '--harakiri', '600',
                '--pidfile', str(self.workdir / 'uwsgi.pid')]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # gunicorn runs in its own session: stop it and its workers by pgid.
        process.stop_session(proc)

    def kill(self) -> None:
        """SIGKILL the server and everything it runs (workers, qemu-img),
        as a crash or an OOM kill would; ``start()`` brings it back."""
        proc, self._proc = self._proc, None
        process.stop_session(proc, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> 'GlanceServer':
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stacks(self) -> str:
        """Every thread's stack in each gunicorn worker, for a hang."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return ''
        children = Path('/proc/%d/task/%d/children' % (proc.pid, proc.pid))
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            return ''
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        time.sleep(1)
        return '\n'.join(
            '==> stacks of worker %d <==\n%s' % (pid, path.read_text())
            for pid in pids
            for path in [self.workdir / ('stacks-%d.txt' % pid)]
            if path.exists())

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for path in (self.server_log, self.log_path):
            if path.exists():
                out.append('==> %s <==' % path)
                text = [line for line in
                        path.read_text(errors='replace').splitlines()
                        if ' DEBUG ' not in line]
                out.extend(text[-lines:])
        return '\n'.join(out)

    def plugin_load_failures(self) -> list[str]:
        """Log lines where Glance (stevedore) skipped a plugin or driver."""
        if not self.log_path.exists():
            return []
        return [line for line in self.log_path.read_text(
                errors='replace').splitlines() if 'Could not load' in line]

    # -- clients ------------------------------------------------------------

    def glance(self, *args: str, token: str = ADMIN_TOKEN,
               check: bool = True, timeout: float = 300,
               env: Mapping[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """Run the real ``glance`` CLI (stdin closed, as from a terminal)
        with ``token``'s real token, or with ``env`` (e.g.
        ``password_env('alice')``)."""
        cmd = [str(BIN_DIR / 'glance'), *args]
        # glanceclient refuses --file when stdin is a pipe: close it.
        proc = subprocess.run(
            ['bash', '-c', 'exec "$@" <&-', 'glance', *cmd],
            env=self.env(token) if env is None else env,
            capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise GlanceError('%s failed (%d):\n%s\n%s' % (
                ' '.join(args), proc.returncode, proc.stdout, proc.stderr))
        return proc

    def glance_json(self, *args: str, **kwargs: Any) -> Any:
        """``glance`` CLI output as a dict, via ``--os-image-api-version 2``
        table parsing (the CLI has no JSON output for most commands)."""
        out = self.glance(*args, **kwargs).stdout
        return parse_table(out)

    def client(self, token: str = ADMIN_TOKEN) -> Any:
        from glanceclient import client as gclient
        return gclient.Client('2', endpoint=self.url,
                              token=real_token(token, self.keystone))

    def request(self, method: str, path: str,
                token: str | None = ADMIN_TOKEN, body: Any = None) -> Any:
        """One API call; ``token=None`` sends none.  HTTP errors raise
        ``urllib.error.HTTPError``."""
        data = None if body is None else json.dumps(body).encode()
        headers = {'Content-Type': 'application/json'}
        resolved = real_token(token, self.keystone)
        if resolved:
            headers['X-Auth-Token'] = resolved
        req = urllib.request.Request(self.url + path, data=data,
                                     method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def image(self, image_id: str, token: str = ADMIN_TOKEN) -> dict[str, Any]:
        return self.request('GET', '/v2/images/%s' % image_id, token)

    def tasks(self, image_id: str, token: str = ADMIN_TOKEN
              ) -> list[dict[str, Any]]:
        """The image's import tasks, newest first."""
        tasks = self.request('GET', '/v2/images/%s/tasks' % image_id,
                             token)['tasks']
        return sorted(tasks, key=lambda t: t['created_at'], reverse=True)

    def wait_for_import(self, image_id: str, timeout: float = 180,
                        token: str = ADMIN_TOKEN) -> dict[str, Any]:
        """Wait until the import has finished in every store.

        With allow-failure Glance turns the image active after the first
        store, so status alone is not enough: the stores still importing
        must be empty and the newest task must have ended.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                image = self.image(image_id, token)
                tasks = self.tasks(image_id)
            except (urllib.error.URLError, TimeoutError) as exc:
                # A hung API: keep waiting until the deadline says why.
                image, tasks = {'status': 'unreachable (%s)' % exc}, []
            importing = image.get('os_glance_importing_to_stores', '')
            task_done = bool(tasks) and tasks[0]['status'] in (
                'success', 'failure')
            if (image['status'] not in ('importing', 'saving')
                    and not importing and task_done):
                return image
            if time.monotonic() > deadline:
                raise GlanceError('import of %s still running: %r\n%s\n%s'
                                  % (image_id, image, self.log_tail(),
                                     self.stacks()))
            time.sleep(0.5)

    def last_task_message(self, image_id: str) -> str:
        tasks = self.tasks(image_id)
        return tasks[0]['message'] if tasks else ''

    def stored_files(self, image_id: str) -> dict[str, Path]:
        """File-store name -> path, for each file store holding the image."""
        found = {}
        for name, (driver, _options) in self.stores.items():
            path = self.store_dir(name) / image_id
            if driver == 'file' and path.exists():
                found[name] = path
        return found

    def staged_path(self, image_id: str) -> Path:
        return self.staging_dir / image_id


def parse_table(text: str) -> dict[str, str]:
    """Parse glanceclient's two-column ``Property | Value`` table."""
    result: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.startswith('|'):
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|', 1)]
        if len(cells) != 2 or cells == ['Property', 'Value']:
            continue
        name, value = cells
        if name:
            key = name
            result[key] = value
        elif key is not None:
            # A wrapped value continues on the next row.
            result[key] += value
    return result
