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

"""``glance-imgplugins import|copy|watch`` against a real Glance 33 and a
real Keystone.

Three file stores: ``fast``, ``cheap`` and ``bad``.  ``bad`` is broken for
real when a test needs a failing store: its datadir is replaced by a regular
file, so glance_store's ``add()`` fails with ENOTDIR (root ignores file
modes, so a read-only folder would not fail).

The command authenticates as users of glanceclient do here:
``OS_IMAGE_URL`` + ``OS_AUTH_TOKEN`` (a real Keystone token), taken as
keystoneauth's ``admin_token`` plugin; ``test_osc_plugin.py`` covers
``--os-cloud`` and ``OS_*`` passwords through the real ``openstack``.
Progress goes to stderr, the result to stdout (``-f json`` parsed here).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.digest import md5
from tests.support.postgres import (  # noqa: F401 (fixture)
    Postgres,
    postgres,
    requires_postgres,
)
from tests.support.glance_server import (
    ADMIN_TOKEN, BIN_DIR, MEMBER_TOKEN, GlanceServer, free_port)

MiB = 1024 * 1024
CLI = str(BIN_DIR / 'glance-imgplugins')
STORES = {'fast': ('file', {}), 'cheap': ('file', {}), 'bad': ('file', {})}

pytestmark = requires_postgres


class _Web:
    """A loopback HTTP server for web-download; ``slow`` files trickle."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.stop_trickling = threading.Event()
        web = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                if not self.path.startswith('/slow/'):
                    return super().do_GET()
                data = (root / self.path[len('/slow/'):]).read_bytes()
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                for offset in range(0, len(data), 64 * 1024):
                    if web.stop_trickling.wait(0.5):
                        return
                    try:
                        self.wfile.write(data[offset:offset + 64 * 1024])
                    except OSError:
                        return

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1',
                                                       self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()

    def url(self, name: str, slow: bool = False) -> str:
        return 'http://127.0.0.1:%d/%s%s' % (self.port,
                                             'slow/' if slow else '', name)

    def close(self) -> None:
        self.stop_trickling.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope='module')
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Web]:
    server = _Web(tmp_path_factory.mktemp('web'))
    yield server
    server.close()


@pytest.fixture(scope='module')
def glance(glance_factory: Any, web: _Web,
           postgres: Postgres) -> GlanceServer:
    # Imports here overlap (Ctrl-C leaves one running): PostgreSQL, since
    # Glance 33 on sqlite has stalled under overlapping imports.
    return glance_factory(stores=STORES, default_store='fast',
                          allowed_ports=[web.port],
                          api_conf={'database': {
                              'connection': postgres.database('glance')}})


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / 'disk.raw'
    path.write_bytes(os.urandom(8 * MiB))
    return path


@contextlib.contextmanager
def broken(glance: GlanceServer, store: str = 'bad') -> Iterator[None]:
    path = glance.store_dir(store)
    shutil.rmtree(path)
    path.write_text('not a directory\n')
    try:
        yield
    finally:
        path.unlink()
        path.mkdir()


def cli(glance: GlanceServer, *args: str, token: str = ADMIN_TOKEN,
        env: dict[str, str] | None = None, timeout: float = 180
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args, '--interval', '0.2'],
                          env=env or glance.env(token), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The ``-f json`` result document on stdout."""
    try:
        return dict(json.loads(proc.stdout))
    except ValueError:
        raise AssertionError('no JSON result:\n%s\n%s' % (
            proc.stdout, proc.stderr)) from None


def created_id(proc: subprocess.CompletedProcess[str]) -> str:
    for line in proc.stderr.splitlines():
        if line.startswith('Created image '):
            return line.split()[2]
    raise AssertionError('no image created:\n%s\n%s' % (proc.stdout,
                                                         proc.stderr))


def json_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_data(glance: GlanceServer, image_id: str, source: Path,
                stores: list[str]) -> None:
    stored = glance.stored_files(image_id)
    assert sorted(stored) == sorted(stores)
    for path in stored.values():
        assert md5(path) == md5(source)


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    for bad in ('Traceback', 'object at 0x', 'HTTPConnectionPool'):
        assert bad not in proc.stdout + proc.stderr, proc.stderr


# --- import ------------------------------------------------------------------

def test_import_all_stores_plain_progress(glance: GlanceServer,
                                          image_file: Path) -> None:
    proc = cli(glance, 'import', str(image_file), '--name', 'everywhere',
               '--disk-format', 'raw', '--all-stores',
               '--property', 'os_distro=debian', '--property', 'note=a=b')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image_id = created_id(proc)
    image = glance.image(image_id)
    assert image['status'] == 'active'
    assert sorted(image['stores'].split(',')) == ['bad', 'cheap', 'fast']
    assert image['checksum'] == md5(image_file)
    assert (image['os_distro'], image['note']) == ('debian', 'a=b')
    assert_data(glance, image_id, image_file, ['bad', 'cheap', 'fast'])

    # stderr is not a terminal: plain lines, no cursor movement.
    assert '\x1b' not in proc.stderr
    lines = proc.stderr.splitlines()
    for store in ('fast', 'cheap', 'bad'):
        assert any(line.endswith('ok %s  done       8.0 MiB stored' % store)
                   for line in lines), proc.stderr
    assert any(line.startswith('[00:0') and 'uploading to staging' in line
               for line in lines)
    assert lines[-1].startswith('Image %s is in every requested store'
                                % image_id)
    # The result is cliff's table on stdout.
    assert '| outcome      | success ' in proc.stdout
    assert '| stores       | fast: done, 8.0 MiB ' in proc.stdout


def test_allow_failure_then_retry_failed(glance: GlanceServer,
                                         image_file: Path) -> None:
    with broken(glance):
        proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
                   '--store', 'fast', '--store', 'bad', '--store', 'cheap',
                   '-f', 'json')
    assert proc.returncode == 3, proc.stdout + proc.stderr
    doc = result(proc)
    image_id = doc['id']
    assert doc['outcome'] == 'partial' and doc['exit_status'] == 3
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active'
    assert image['os_glance_failed_import'] == 'bad'
    assert image['os_glance_importing_to_stores'] == ''
    assert_data(glance, image_id, image_file, ['cheap', 'fast'])
    stores = {s['store']: s for s in doc['stores']}
    assert stores['bad']['state'] == 'failed'
    assert stores['bad']['detail'] == 'Glance marked the store failed'
    assert stores['fast']['state'] == stores['cheap']['state'] == 'done'
    assert ('Retry with: glance-imgplugins copy %s --retry-failed'
            % image_id) in proc.stderr

    # The store works again: --retry-failed copies to exactly that store.
    proc = cli(glance, 'copy', image_id, '--retry-failed', '-f', 'json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = glance.wait_for_import(image_id)
    assert image['os_glance_failed_import'] == ''
    assert sorted(image['stores'].split(',')) == ['bad', 'cheap', 'fast']
    assert_data(glance, image_id, image_file, ['bad', 'cheap', 'fast'])
    assert [s['store'] for s in result(proc)['stores']] == ['bad']

    # Nothing left to retry.
    proc = cli(glance, 'copy', image_id, '--retry-failed')
    assert proc.returncode == 0
    assert 'has no failed store to retry' in proc.stderr


def test_disallow_failure_fails_the_import(glance: GlanceServer,
                                           image_file: Path) -> None:
    with broken(glance):
        proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
                   '--store', 'fast', '--store', 'bad', '--store', 'cheap',
                   '--disallow-failure', '--progress', 'json', '-f', 'json')
    assert proc.returncode == 4, proc.stdout + proc.stderr
    events = json_events(proc.stderr)  # every stderr line is JSON
    assert events[0]['allow_failure'] is False
    last = events[-1]
    assert last['event'] == 'result' and last['outcome'] == 'failed'
    doc = result(proc)
    image_id = doc['id']
    assert doc['outcome'] == 'failed' and doc['exit_status'] == 4
    tasks = glance.tasks(image_id)
    assert tasks[0]['status'] == 'failure'
    assert doc['task_id'] == last['task_id'] == tasks[0]['id']
    # No store keeps data; the image is not usable.
    assert glance.stored_files(image_id) == {}
    assert glance.image(image_id)['status'] != 'active'
    assert {s['store']: s['detail'] for s in doc['stores']} == {
        'fast': 'written, then rolled back',
        'bad': 'Glance marked the store failed',
        'cheap': 'import failed before this store finished'}


def test_web_download_no_wait_then_watch(glance: GlanceServer,
                                         image_file: Path,
                                         web: _Web) -> None:
    shutil.copy(image_file, web.root / 'disk.raw')
    proc = cli(glance, 'import', '--uri', web.url('disk.raw'),
               '--name', 'from-the-web', '--disk-format', 'raw',
               '--store', 'fast', '--store', 'cheap', '--no-wait',
               '-f', 'json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = result(proc)
    assert doc['outcome'] == 'started' and doc['method'] == 'web-download'
    image_id = doc['id']
    assert ('follow it with: glance-imgplugins watch %s' % image_id
            in proc.stderr)
    # By name, as users remember it.
    proc = cli(glance, 'watch', 'from-the-web', '-f', 'json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result(proc)['id'] == image_id
    assert_data(glance, image_id, image_file, ['cheap', 'fast'])


# --- copy --------------------------------------------------------------------

def test_copy(glance: GlanceServer, image_file: Path) -> None:
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--store', 'fast', '-f', 'value', '-c', 'id',
               token=MEMBER_TOKEN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image_id = proc.stdout.strip()
    before = {t['id'] for t in glance.tasks(image_id)}

    proc = cli(glance, 'copy', image_id, '--store', 'cheap', '-f', 'json',
               '--progress', 'json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = json_events(proc.stderr)
    assert events[0] == {'event': 'start', 'method': 'copy-image',
                         'stores': ['cheap'], 'all_stores': False,
                         'allow_failure': True, 'image_id': image_id}
    states = [e['state'] for e in events if e['event'] == 'store']
    # The first poll may already find Glance writing the store.
    assert states[0] in ('waiting', 'importing') and states[-1] == 'done'
    doc = result(proc)
    assert doc['outcome'] == 'success' and doc['exit_status'] == 0
    assert doc['task_id'] not in before
    assert doc['stores'] == [{'store': 'cheap', 'state': 'done',
                              'bytes': 8 * MiB, 'detail': ''}]
    assert_data(glance, image_id, image_file, ['cheap', 'fast'])

    # Already there: refused before asking Glance.
    proc = cli(glance, 'copy', image_id, '--store', 'cheap')
    assert proc.returncode == 1
    assert 'already in store(s) cheap' in proc.stderr

    # --all-stores copies only where it is missing.
    proc = cli(glance, 'copy', image_id, '--all-stores')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_data(glance, image_id, image_file, ['bad', 'cheap', 'fast'])
    tasks = glance.tasks(image_id)
    assert tasks[0]['input']['backend'] == ['bad']

    # Everywhere already: nothing is started.
    proc = cli(glance, 'copy', image_id, '--all-stores')
    assert proc.returncode == 0
    assert 'already in every store' in proc.stderr
    assert len(glance.tasks(image_id)) == len(tasks)


def test_copy_needs_admin(glance: GlanceServer, image_file: Path) -> None:
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--store', 'fast', token=MEMBER_TOKEN)
    image_id = created_id(proc)
    proc = cli(glance, 'copy', image_id, '--store', 'cheap',
               token=MEMBER_TOKEN)
    assert proc.returncode == 1
    assert 'HTTP 403' in proc.stderr
    assert_clean(proc)
    assert glance.image(image_id)['stores'] == 'fast'


# --- errors and usage --------------------------------------------------------

def test_errors_before_anything_starts(glance: GlanceServer,
                                       image_file: Path,
                                       tmp_path: Path) -> None:
    count = len(glance.request('GET', '/v2/images')['images'])
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--store', 'fast', '--store', 'nowhere')
    assert proc.returncode == 1
    assert ('Unknown store(s) nowhere (stores here: fast,cheap,bad)'
            in proc.stderr)
    proc = cli(glance, 'import', str(tmp_path / 'missing.raw'),
               '--disk-format', 'raw', '--store', 'fast', '--progress',
               'json')
    assert proc.returncode == 1
    error = json_events(proc.stderr.splitlines()[0])[-1]
    assert error['event'] == 'error' and 'missing.raw' in error['error']
    assert len(glance.request('GET', '/v2/images')['images']) == count

    proc = cli(glance, 'copy', '00000000-0000-0000-0000-000000000000',
               '--all-stores')
    assert proc.returncode == 1
    assert ('No image with name or ID 00000000-0000-0000-0000-000000000000'
            in proc.stderr)
    # Usage errors are argparse's status 2.
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw')
    assert proc.returncode == 2
    proc = cli(glance, 'copy', 'x', '--store', 'a', '--retry-failed')
    assert proc.returncode == 2
    assert_clean(proc)


def test_unreachable_api(glance: GlanceServer, image_file: Path) -> None:
    env = glance.env()
    env['OS_IMAGE_URL'] = 'http://127.0.0.1:%d' % free_port()
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--store', 'fast', env=env)
    assert proc.returncode == 1
    assert 'Cannot reach the Image API' in proc.stderr
    assert '(Connection refused)' in proc.stderr
    assert_clean(proc)


# --- terminals and Ctrl-C ----------------------------------------------------

def test_live_progress_on_a_terminal(glance: GlanceServer,
                                     image_file: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([CLI, 'import', str(image_file), '--disk-format',
                             'raw', '--store', 'fast', '--store', 'cheap',
                             '--interval', '0.2', '-f', 'value', '-c',
                             'outcome'], env=glance.env(),
                            stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    output = b''
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out == b'success\n'
    text = output.decode()
    # Each redraw goes back over the header and the two store lines.
    assert '\x1b[3F' in text and '\x1b[2K' in text
    assert 'ok fast   done' in text and 'ok cheap  done' in text


def test_ctrl_c_stops_watching_only(glance: GlanceServer,
                                    image_file: Path) -> None:
    proc = subprocess.Popen([CLI, 'import', str(image_file), '--disk-format',
                             'raw', '--store', 'fast', '--store', 'cheap',
                             '--progress', 'json', '--interval', '3'],
                            env=glance.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    events = []
    for line in proc.stderr:
        events.append(json.loads(line))
        if events[-1]['event'] == 'phase' and \
                events[-1]['phase'] != 'staging':
            break  # polling has started; it now sleeps 3 s
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    events += json_events(err)
    image_id = events[-1]['image_id']
    assert events[-1]['event'] == 'interrupted'
    assert events[-1]['resume'] == 'glance-imgplugins watch %s' % image_id
    assert 'Traceback' not in out + err

    # The import finished without us; watch picks the task up again.
    image = glance.wait_for_import(image_id)
    assert sorted(image['stores'].split(',')) == ['cheap', 'fast']
    proc2 = cli(glance, 'watch', image_id, '-f', 'json')
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert [s['store'] for s in result(proc2)['stores']] == ['fast', 'cheap']


# --- the API process dies mid-import -----------------------------------------

def _kill(glance: GlanceServer) -> None:
    """SIGKILL the whole server (master and workers), as a crash would."""
    assert glance._proc is not None
    glance.kill()


def test_api_killed_mid_import_lost_then_stuck(glance: GlanceServer,
                                               image_file: Path,
                                               web: _Web) -> None:
    shutil.copy(image_file, web.root / 'slow.raw')
    # web-download from a server that trickles 128 KiB/s: Glance is still
    # downloading when it is killed.
    proc = cli(glance, 'import', '--uri', web.url('slow.raw', slow=True),
               '--disk-format', 'raw', '--store', 'fast', '--store',
               'cheap', '--no-wait', '-f', 'value', '-c', 'id')
    assert proc.returncode == 0, proc.stderr
    image_id = proc.stdout.strip()
    deadline = time.monotonic() + 60
    while glance.image(image_id)['status'] != 'importing':
        assert time.monotonic() < deadline
        time.sleep(0.2)
    watcher = subprocess.Popen(
        [CLI, 'watch', image_id, '--interval', '0.3', '--retry-for', '4',
         '-f', 'json'], env=glance.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert watcher.stderr is not None
        # Kill once the watch is under way (its first progress line).
        first = watcher.stderr.readline()
        assert first.startswith('[00:0'), first
        _kill(glance)
        out, err = watcher.communicate(timeout=60)
        err = first + err
    finally:
        if watcher.poll() is None:
            watcher.kill()
        web.stop_trickling.set()
        glance.start()
    # Lost contact: a distinct status, and the command that resumes.
    assert watcher.returncode == 5, out + err
    assert 'retrying in' in err
    assert ('The import goes on in Glance; follow it again with: '
            'glance-imgplugins watch %s' % image_id) in err
    assert json.loads(out)['outcome'] == 'lost'
    assert 'Traceback' not in out + err

    # Glance is back, but nothing runs the task any more: stuck (with a
    # short threshold; by default Glance's own 60 min lock expiry).
    time.sleep(3)
    tasks = glance.tasks(image_id)
    assert tasks[0]['status'] == 'processing'
    assert glance.image(image_id)['status'] == 'importing'
    proc = cli(glance, 'watch', image_id, '--stale-after', '2', '-f',
               'json')
    assert proc.returncode == 6, proc.stdout + proc.stderr
    doc = result(proc)
    assert doc['outcome'] == 'stuck' and doc['task_id'] == tasks[0]['id']
    assert 'looks stuck' in doc['message']
    assert 'the owner can delete the image and import it again' in \
        doc['message']
    assert 'looks stuck' in proc.stderr
    glance.request('DELETE', '/v2/images/%s' % image_id)
