"""``glance-imgplugins import``/``copy``/``watch`` against a real Glance 33.

Three file stores: ``fast``, ``cheap`` and ``bad``.  ``bad`` is broken for
real when a test needs a failing store: its datadir is replaced by a regular
file, so glance_store's ``add()`` fails with ENOTDIR (root ignores file
modes, so a read-only folder would not fail).
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


@pytest.fixture(scope='module')
def web_root(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Path, int]]:
    """A loopback HTTP server for web-download (--uri)."""
    root = tmp_path_factory.mktemp('web')
    port = free_port()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope='module')
def glance(glance_factory: Any, web_root: tuple[Path, int],
           postgres: Postgres) -> GlanceServer:
    # Imports here overlap (Ctrl-C leaves one running): PostgreSQL, since
    # Glance 33 on sqlite has stalled under overlapping imports.
    return glance_factory(stores=STORES, default_store='fast',
                          allowed_ports=[web_root[1]],
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


def created_id(proc: subprocess.CompletedProcess[str]) -> str:
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith('Created image '):
            return line.split()[2]
    raise AssertionError('no image created:\n%s\n%s' % (proc.stdout,
                                                         proc.stderr))


def json_events(proc: subprocess.CompletedProcess[str]
                ) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def assert_data(glance: GlanceServer, image_id: str, source: Path,
                stores: list[str]) -> None:
    stored = glance.stored_files(image_id)
    assert sorted(stored) == sorted(stores)
    for path in stored.values():
        assert md5(path) == md5(source)


# --- import ------------------------------------------------------------------

def test_import_all_stores_plain_output(glance: GlanceServer,
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

    # Not a terminal: plain lines, no cursor movement.
    assert '\x1b' not in proc.stdout
    lines = proc.stdout.splitlines()
    for store in ('fast', 'cheap', 'bad'):
        assert any(line.endswith('ok %s  done       8.0 MiB stored' % store)
                   for line in lines), proc.stdout
    assert any(line.startswith('[00:00] image %s  uploading  uploading to '
                               'staging' % image_id) for line in lines)
    table = [line for line in lines if line.startswith('| ')]
    assert table[0].split('|')[1].strip() == 'Store'
    assert [row.split('|')[2].strip() for row in table[1:]] == ['done'] * 3
    assert lines[-1].startswith('Image %s is in every requested store'
                                % image_id)


def test_allow_failure_then_retry_failed(glance: GlanceServer,
                                         image_file: Path) -> None:
    with broken(glance):
        proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
                   '--stores', 'fast,bad,cheap')
    assert proc.returncode == 3, proc.stdout + proc.stderr
    image_id = created_id(proc)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active'
    assert image['os_glance_failed_import'] == 'bad'
    assert image['os_glance_importing_to_stores'] == ''
    assert_data(glance, image_id, image_file, ['cheap', 'fast'])
    rows = {row.split('|')[1].strip(): [c.strip() for c in
                                        row.split('|')[2:-1]]
            for row in proc.stdout.splitlines() if row.startswith('| ')}
    assert rows['bad'] == ['failed', '-', 'Glance marked the store failed']
    assert rows['fast'] == rows['cheap'] == ['done', '8.0 MiB', '']
    assert ('Retry with: glance-imgplugins copy %s --retry-failed'
            % image_id) in proc.stdout

    # The store works again: --retry-failed copies to exactly that store.
    proc = cli(glance, 'copy', image_id, '--retry-failed')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = glance.wait_for_import(image_id)
    assert image['os_glance_failed_import'] == ''
    assert sorted(image['stores'].split(',')) == ['bad', 'cheap', 'fast']
    assert_data(glance, image_id, image_file, ['bad', 'cheap', 'fast'])
    table = [line for line in proc.stdout.splitlines()
             if line.startswith('| ')]
    assert [row.split('|')[1].strip() for row in table[1:]] == ['bad']

    # Nothing left to retry.
    proc = cli(glance, 'copy', image_id, '--retry-failed')
    assert proc.returncode == 0
    assert 'has no failed store to retry' in proc.stdout


def test_no_allow_failure_fails_the_import(glance: GlanceServer,
                                           image_file: Path) -> None:
    with broken(glance):
        proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
                   '--stores', 'fast,bad,cheap', '--no-allow-failure',
                   '--json')
    assert proc.returncode == 4, proc.stdout + proc.stderr
    events = json_events(proc)
    assert events[0]['allow_failure'] is False
    result = events[-1]
    assert result['event'] == 'result' and result['outcome'] == 'failed'
    image_id = result['image_id']
    tasks = glance.tasks(image_id)
    assert tasks[0]['status'] == 'failure'
    assert result['task_id'] == tasks[0]['id']
    # No store keeps data; the image is not usable (Glance 33 leaves it
    # "importing" on this path, with cheap still listed as importing).
    assert glance.stored_files(image_id) == {}
    image = glance.image(image_id)
    assert image['status'] != 'active'
    assert image.get('stores') is None
    assert {s['store']: s['detail'] for s in result['stores']} == {
        'fast': 'written, then rolled back',
        'bad': 'Glance marked the store failed',
        'cheap': 'import failed before this store finished'}


def test_web_download_uri(glance: GlanceServer, image_file: Path,
                          web_root: tuple[Path, int]) -> None:
    root, port = web_root
    shutil.copy(image_file, root / 'disk.raw')
    proc = cli(glance, 'import', '--uri',
               'http://127.0.0.1:%d/disk.raw' % port, '--disk-format', 'raw',
               '--stores', 'fast,cheap', '--json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = json_events(proc)
    assert events[0]['method'] == 'web-download'
    image_id = events[-1]['image_id']
    assert_data(glance, image_id, image_file, ['cheap', 'fast'])


# --- copy --------------------------------------------------------------------

def test_copy_json_lines(glance: GlanceServer, image_file: Path) -> None:
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--stores', 'fast', token=MEMBER_TOKEN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image_id = created_id(proc)
    before = {t['id'] for t in glance.tasks(image_id)}

    proc = cli(glance, 'copy', image_id, '--stores', 'cheap', '--json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = json_events(proc)  # every stdout line is JSON
    assert events[0] == {'event': 'start', 'method': 'copy-image',
                         'stores': ['cheap'], 'all_stores': False,
                         'allow_failure': True, 'image_id': image_id}
    states = [e['state'] for e in events if e['event'] == 'store']
    assert states[0] == 'waiting' and states[-1] == 'done'
    result = events[-1]
    assert result['outcome'] == 'success' and result['exit_status'] == 0
    assert result['task_id'] not in before
    assert result['stores'] == [{'store': 'cheap', 'state': 'done',
                                 'bytes': 8 * MiB, 'detail': ''}]
    assert_data(glance, image_id, image_file, ['cheap', 'fast'])

    # Already there: refused before asking Glance.
    proc = cli(glance, 'copy', image_id, '--stores', 'cheap')
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
    assert 'already in every store' in proc.stdout
    assert len(glance.tasks(image_id)) == len(tasks)


def test_copy_needs_admin(glance: GlanceServer, image_file: Path) -> None:
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--stores', 'fast', token=MEMBER_TOKEN)
    image_id = created_id(proc)
    proc = cli(glance, 'copy', image_id, '--stores', 'cheap',
               token=MEMBER_TOKEN)
    assert proc.returncode == 1
    assert 'HTTP 403' in proc.stderr
    assert glance.image(image_id)['stores'] == 'fast'


# --- errors and usage --------------------------------------------------------

def test_errors_before_anything_starts(glance: GlanceServer,
                                       image_file: Path,
                                       tmp_path: Path) -> None:
    count = len(glance.request('GET', '/v2/images')['images'])
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--stores', 'fast,nowhere')
    assert proc.returncode == 1
    assert ('Unknown store(s) nowhere (stores here: fast,cheap,bad)'
            in proc.stderr)
    proc = cli(glance, 'import', str(tmp_path / 'missing.raw'),
               '--disk-format', 'raw', '--stores', 'fast', '--json')
    assert proc.returncode == 1
    error = json_events(proc)[-1]
    assert error['event'] == 'error' and 'missing.raw' in error['error']
    assert len(glance.request('GET', '/v2/images')['images']) == count

    proc = cli(glance, 'copy', '00000000-0000-0000-0000-000000000000',
               '--all-stores')
    assert proc.returncode == 1 and 'HTTP 404' in proc.stderr
    # Usage errors are argparse's status 2.
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw')
    assert proc.returncode == 2
    proc = cli(glance, 'copy', 'x', '--stores', 'a', '--retry-failed')
    assert proc.returncode == 2


def test_unreachable_api(glance: GlanceServer, image_file: Path) -> None:
    env = glance.env()
    env['OS_IMAGE_URL'] = 'http://127.0.0.1:%d' % free_port()
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--stores', 'fast', env=env)
    assert proc.returncode == 1
    assert 'Cannot reach the Image API' in proc.stderr


def test_clouds_yaml_through_keystoneauth(glance: GlanceServer,
                                          image_file: Path,
                                          tmp_path: Path) -> None:
    """No OS_IMAGE_URL: openstack.config + a keystoneauth session."""
    clouds = tmp_path / 'clouds.yaml'
    clouds.write_text(
        'clouds:\n  edge-admin:\n    auth_type: admin_token\n'
        '    auth:\n      endpoint: %s\n      token: "%s"\n'
        % (glance.url, ADMIN_TOKEN))
    env = glance.env()
    del env['OS_IMAGE_URL'], env['OS_AUTH_TOKEN']
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds), OS_CLOUD='edge-admin')
    proc = cli(glance, 'import', str(image_file), '--disk-format', 'raw',
               '--stores', 'cheap', env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    image = glance.image(created_id(proc))
    assert image['stores'] == 'cheap' and image['owner'] == 'admin-project'


# --- terminals and Ctrl-C ----------------------------------------------------

def test_live_output_on_a_terminal(glance: GlanceServer,
                                   image_file: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([CLI, 'import', str(image_file), '--disk-format',
                             'raw', '--stores', 'fast,cheap', '--interval',
                             '0.2'], env=glance.env(), stdout=slave,
                            stderr=slave, stdin=subprocess.DEVNULL)
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
    assert proc.wait(timeout=60) == 0
    text = output.decode()
    # Each redraw goes back over the header and the two store lines.
    assert '\x1b[3F' in text and '\x1b[2K' in text
    assert 'ok fast   done' in text and 'ok cheap  done' in text


def test_ctrl_c_stops_watching_only(glance: GlanceServer,
                                    image_file: Path) -> None:
    proc = subprocess.Popen([CLI, 'import', str(image_file), '--disk-format',
                             'raw', '--stores', 'fast,cheap', '--json',
                             '--interval', '3'], env=glance.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]['event'] == 'phase' and \
                events[-1]['phase'] != 'staging':
            break  # polling has started; it now sleeps 3 s
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    events += [json.loads(line) for line in out.splitlines()]
    image_id = events[-1]['image_id']
    assert events[-1]['event'] == 'interrupted'
    assert events[-1]['resume'] == 'glance-imgplugins watch %s' % image_id
    assert 'the import goes on in Glance' in err

    # The import finished without us; watch picks the task up again.
    image = glance.wait_for_import(image_id)
    assert sorted(image['stores'].split(',')) == ['cheap', 'fast']
    proc2 = cli(glance, 'watch', image_id)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    rows = [line for line in proc2.stdout.splitlines()
            if line.startswith('| ')]
    assert [r.split('|')[1].strip() for r in rows[1:]] == ['fast', 'cheap']
