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

"""The multi-store commands against a real local HTTP server that answers
what a broken or odd Image API answers.

``glance-imgplugins`` runs as users run it (the installed console script,
in a subprocess) with glanceclient's ``OS_IMAGE_URL`` + ``OS_AUTH_TOKEN``;
the server is Python's own ``http.server`` answering from a script: JSON
error bodies whose values are strings (``{"error": "boom"}``, on which
glanceclient itself raises ``AttributeError``), HTML pages, bodies that are
not JSON, a server that goes away mid-watch, one that answers 503 for a
while, and an import whose task stopped moving two hours ago.
"""

from __future__ import annotations

import datetime
import email.utils
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from glance_imgplugins.cmd import status
from glance_imgplugins.multistore import api

CLI = str(Path(sys.executable).parent / 'glance-imgplugins')
IMAGE = str(uuid.UUID(int=1))
TASK = str(uuid.UUID(int=2))

Answer = tuple[int, str, bytes]


def now_iso(delta: float = 0) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + \
        datetime.timedelta(seconds=delta)
    return moment.strftime('%Y-%m-%dT%H:%M:%SZ')


def image(status_: str = 'importing', **props: Any) -> dict[str, Any]:
    doc = {'id': IMAGE, 'name': 'web', 'status': status_, 'size': 1048576,
           'os_glance_importing_to_stores': 'fast,cheap',
           'os_glance_failed_import': '', 'stores': ''}
    doc.update(props)
    return doc


def task(status_: str = 'processing', updated: float = 0,
         message: str = '') -> dict[str, Any]:
    return {'id': TASK, 'type': 'api_image_import', 'status': status_,
            'message': message, 'created_at': now_iso(updated - 5),
            'updated_at': now_iso(updated),
            'input': {'backend': ['fast', 'cheap'],
                      'import_req': {'method': {'name': 'glance-direct'}}}}


def ok(doc: Any) -> Answer:
    return 200, 'application/json', json.dumps(doc).encode()


class FakeApi:
    """A loopback HTTP server; ``route(method, path)`` picks each answer."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Callable[[], Answer]] = {}
        self.stopped = threading.Event()
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def _answer(self) -> None:
                if outer.stopped.is_set():
                    # Gone: drop kept-alive connections without a word.
                    self.close_connection = True
                    return
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split('?')[0]
                outer.requests.append((self.command, self.path))
                handler = outer.routes.get((self.command, path))
                code, ctype, body = handler() if handler else (
                    404, 'text/plain', b'no route')
                self.send_response(code)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def route(self, method: str, path: str,
              answer: Answer | Callable[[], Answer]) -> None:
        self.routes[(method, path)] = (
            answer if callable(answer) else (lambda: answer))

    def watchable(self, img: Callable[[], dict[str, Any]],
                  tasks: Callable[[], list[dict[str, Any]]]) -> None:
        self.route('GET', '/v2/images/%s' % IMAGE, lambda: ok(img()))
        self.route('GET', '/v2/images/%s/tasks' % IMAGE,
                   lambda: ok({'tasks': tasks()}))

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    server = FakeApi()
    yield server
    server.stop()


def env(url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    base.update(OS_IMAGE_URL=url, OS_AUTH_TOKEN='a-token',
                OS_CLIENT_CONFIG_FILE='/nonexistent/clouds.yaml')
    return base


def run(url: str, *args: str, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env(url), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    text = proc.stdout + proc.stderr
    for bad in ('Traceback', 'AttributeError', 'object at 0x',
                'HTTPConnectionPool', 'Exception'):
        assert bad not in text, text


# --- what the server said, in one line (pure) --------------------------------

@pytest.mark.parametrize('body, ctype, expected', [
    ('{"error": "boom"}', 'application/json', 'boom'),
    ('{"error": {"code": 401, "title": "Unauthorized", "message": '
     '"The request you have made requires authentication."}}',
     'application/json',
     'The request you have made requires authentication.'),
    ('{"message": "Service Unavailable", "code": 503}', 'application/json',
     'Service Unavailable'),
    ('["first", {"detail": "second"}]', 'application/json', 'first second'),
    ('{"error": 42}', 'application/json', '42'),
    ('{"error": null}', 'application/json', '{"error": null}'),
    ('not json {', 'application/json', 'not json {'),
    ('<html><head><title>404 Not Found</title></head><body><h1>404 Not '
     'Found</h1>No image found with ID x<br /><br /></body></html>',
     'text/html', 'No image found with ID x'),
    ('<html><body><h1>502 Bad Gateway</h1><hr><center>nginx</center>'
     '</body></html>', 'text/html', 'nginx'),
    ('', 'text/plain', ''),
])
def test_error_reason(body: str, ctype: str, expected: str) -> None:
    assert api.error_reason(body.encode(), ctype).endswith(expected)


def test_error_reason_is_short() -> None:
    assert len(api.error_reason(b'x' * 5000, 'text/plain')) == 300


# --- odd error bodies: a clean line, exit status 1 ---------------------------

@pytest.mark.parametrize('code', [401, 500, 503])
def test_string_valued_json_error(fake: FakeApi, code: int) -> None:
    fake.route('GET', '/v2/images/%s' % IMAGE,
               (code, 'application/json', b'{"error": "boom"}'))
    proc = run(fake.url, 'watch', IMAGE)
    assert proc.returncode == status.NOT_STARTED, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        'glance-imgplugins watch: error: Image API refused to show image '
        '%s: HTTP %d: boom' % (IMAGE, code))
    assert_clean(proc)


def test_html_error_page(fake: FakeApi) -> None:
    fake.route('GET', '/v2/info/stores', (
        500, 'text/html', b'<html><head><title>500 Internal Server Error'
        b'</title></head><body><h1>500 Internal Server Error</h1>The server '
        b'has either erred or is incapable of performing the requested '
        b'operation.<br /><br /></body></html>'))
    proc = run(fake.url, 'import', '--uri', 'http://example.com/x.raw',
               '--disk-format', 'raw', '--store', 'fast')
    assert proc.returncode == status.NOT_STARTED
    assert ('Image API refused to list stores: HTTP 500: The server has '
            'either erred or is incapable of performing the requested '
            'operation.') in proc.stderr
    assert_clean(proc)


def test_answer_that_is_not_json(fake: FakeApi) -> None:
    fake.route('GET', '/v2/info/stores', (200, 'application/json',
                                          b'<html>oops</html>'))
    proc = run(fake.url, 'import', '--uri', 'http://example.com/x.raw',
               '--disk-format', 'raw', '--all-stores')
    assert proc.returncode == status.NOT_STARTED
    assert 'list stores: the answer is not JSON: oops' in proc.stderr
    assert_clean(proc)


def test_api_down(fake: FakeApi) -> None:
    url = fake.url
    fake.stop()
    proc = run(url, 'copy', IMAGE, '--all-stores')
    assert proc.returncode == status.NOT_STARTED
    assert proc.stderr.strip().splitlines()[-1] == (
        'glance-imgplugins copy: error: Cannot reach the Image API: '
        '%s/v2/images/%s (Connection refused)' % (url, IMAGE))
    assert_clean(proc)


def test_keystone_down_and_bad_credentials(fake: FakeApi) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    base['OS_CLIENT_CONFIG_FILE'] = '/nonexistent/clouds.yaml'
    # Only an auth URL: osc-lib names what is missing.
    proc = subprocess.run([CLI, 'watch', IMAGE], capture_output=True,
                          text=True, env=dict(base, OS_AUTH_URL=fake.url),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == status.NOT_STARTED
    assert 'password' in proc.stderr.lower()
    assert_clean(proc)
    # A Keystone that answers 401 with a JSON body.
    fake.route('POST', '/v3/auth/tokens', (
        401, 'application/json', b'{"error": {"code": 401, "title": '
        b'"Unauthorized", "message": "The request you have made requires '
        b'authentication."}}'))
    creds = dict(base, OS_AUTH_URL=fake.url + '/v3', OS_USERNAME='u',
                 OS_PASSWORD='p', OS_PROJECT_NAME='p',
                 OS_USER_DOMAIN_NAME='Default',
                 OS_PROJECT_DOMAIN_NAME='Default',
                 OS_IDENTITY_API_VERSION='3')
    proc = subprocess.run([CLI, 'watch', IMAGE], capture_output=True,
                          text=True, env=creds, stdin=subprocess.DEVNULL)
    assert proc.returncode == status.NOT_STARTED
    assert proc.stderr.strip().splitlines()[-1] == (
        'Authentication failed: HTTP 401: The request you have made '
        'requires authentication.')
    assert_clean(proc)
    # Keystone down.
    url = fake.url
    fake.stop()
    proc = subprocess.run([CLI, 'watch', IMAGE], capture_output=True,
                          text=True, env=dict(creds, OS_AUTH_URL=url + '/v3'),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == status.NOT_STARTED
    assert proc.stderr.strip().splitlines()[-1] == (
        'Authentication failed: cannot reach the identity service: '
        '%s/v3/auth/tokens (Connection refused)' % url)
    assert_clean(proc)


def test_usage_error_is_2(fake: FakeApi) -> None:
    proc = run(fake.url, 'copy', IMAGE, '--store', 'a', '--retry-failed')
    assert proc.returncode == status.USAGE
    assert 'not allowed with argument' in proc.stderr
    proc = run(fake.url, 'watch', IMAGE, '--interval', '-1')
    assert proc.returncode == status.USAGE
    assert 'expected a positive number of seconds' in proc.stderr
    assert fake.requests == []


# --- watching: outcomes, lost contact, stuck imports -------------------------

def test_outcomes_and_their_statuses(fake: FakeApi) -> None:
    done = image('active', stores='fast,cheap',
                 os_glance_importing_to_stores='')
    fake.watchable(lambda: done, lambda: [task('success')])
    proc = run(fake.url, 'watch', IMAGE, '-f', 'json')
    assert proc.returncode == status.OK, proc.stderr
    result = json.loads(proc.stdout)
    assert result['outcome'] == 'success' and result['exit_status'] == 0
    assert [s['state'] for s in result['stores']] == ['done', 'done']

    partial = image('active', stores='fast', os_glance_importing_to_stores='',
                    os_glance_failed_import='cheap')
    fake.watchable(lambda: partial, lambda: [task('success')])
    fake.route('GET', '/v2/images', ok({'images': [partial]}))
    proc = run(fake.url, 'watch', 'web', '-f', 'value', '-c', 'outcome')
    assert proc.returncode == status.PARTIAL
    assert proc.stdout == 'partial\n'
    assert ('Retry with: glance-imgplugins copy %s --retry-failed' % IMAGE
            in proc.stderr)
    # "web" is a name: looked up with ?name=.
    assert ('GET', '/v2/images?name=web') in fake.requests

    fake.watchable(lambda: image('queued', os_glance_importing_to_stores=''),
                   lambda: [task('failure', message='Image refused')])
    proc = run(fake.url, 'watch', IMAGE)
    assert proc.returncode == status.FAILED
    assert 'Image refused' in proc.stdout
    assert_clean(proc)


def test_names_must_be_unique(fake: FakeApi) -> None:
    fake.route('GET', '/v2/images', ok({'images': [image(), image()]}))
    proc = run(fake.url, 'watch', 'web')
    assert proc.returncode == status.NOT_STARTED
    assert '2 images are named web: give the image ID' in proc.stderr
    fake.route('GET', '/v2/images', ok({'images': []}))
    proc = run(fake.url, 'watch', 'web')
    assert 'No image with name or ID web' in proc.stderr


def test_transient_errors_are_retried(fake: FakeApi) -> None:
    polls = [0]

    def img() -> dict[str, Any]:
        return image('active', stores='fast,cheap',
                     os_glance_importing_to_stores='')

    def tasks_answer() -> Answer:
        polls[0] += 1
        if 2 <= polls[0] <= 4:
            return 503, 'application/json', b'{"error": "restarting"}'
        return ok({'tasks': [task('processing' if polls[0] < 5
                                  else 'success')]})

    fake.route('GET', '/v2/images/%s' % IMAGE, lambda: ok(img()))
    fake.route('GET', '/v2/images/%s/tasks' % IMAGE, tasks_answer)
    started = time.monotonic()
    proc = run(fake.url, 'watch', IMAGE, '--interval', '0.1',
               '--retry-for', '30')
    assert proc.returncode == status.OK, proc.stderr
    retries = [line for line in proc.stderr.splitlines()
               if 'retrying in' in line]
    # Three failures, waits doubling: 1 s, 2 s, 4 s.
    assert [r.rsplit(' ', 2)[1] for r in retries] == ['1', '2', '4']
    assert 'HTTP 503: restarting' in retries[0]
    assert 'The Image API answers again.' in proc.stderr
    assert time.monotonic() - started >= 7
    assert_clean(proc)


def test_lost_contact_mid_watch(fake: FakeApi) -> None:
    polls = [0]

    def tasks() -> list[dict[str, Any]]:
        polls[0] += 1
        if polls[0] == 3:
            threading.Thread(target=fake.stop).start()
        return [task()]

    fake.watchable(image, tasks)
    proc = run(fake.url, 'watch', IMAGE, '--interval', '0.2',
               '--retry-for', '3', '-f', 'json')
    assert proc.returncode == status.LOST == 5, proc.stderr
    assert ('The import goes on in Glance; follow it again with: '
            'glance-imgplugins watch %s' % IMAGE) in proc.stderr
    assert 'Connection refused' in proc.stderr
    result = json.loads(proc.stdout)
    assert result['outcome'] == 'lost' and result['exit_status'] == 5
    assert result['task_status'] == 'processing'
    assert_clean(proc)


def test_stuck_by_glance_lock_expiry(fake: FakeApi) -> None:
    # Last updated 61 minutes ago, image still importing.
    fake.watchable(image, lambda: [task(updated=-61 * 60)])
    proc = run(fake.url, 'watch', IMAGE, '--progress', 'json')
    assert proc.returncode == status.STUCK == 6, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    stuck = events[-1]
    assert stuck['event'] == 'stuck' and stuck['task_id'] == TASK
    assert 'has not been updated for 1 h 01 min' in stuck['message']
    assert 'after 1 h 00 min' in stuck['message']
    assert 'owner can delete the image and import it again' in \
        stuck['message']


def test_pending_task_gets_twice_the_time(fake: FakeApi) -> None:
    polls = [0]

    def tasks() -> list[dict[str, Any]]:
        polls[0] += 1
        return [task('pending' if polls[0] < 3 else 'success',
                     updated=-90 * 60)]

    fake.watchable(lambda: image('importing') if polls[0] < 3 else image(
        'active', stores='fast,cheap', os_glance_importing_to_stores=''),
        tasks)
    proc = run(fake.url, 'watch', IMAGE, '--interval', '0.1')
    # 90 min is past 60 but not past 120: still waiting, then done.
    assert proc.returncode == status.OK, proc.stderr


def test_stale_after_option(fake: FakeApi) -> None:
    fake.watchable(image, lambda: [task(updated=-10)])
    proc = run(fake.url, 'watch', IMAGE, '--stale-after', '5', '-f',
               'value', '-c', 'outcome')
    assert proc.returncode == status.STUCK
    assert proc.stdout == 'stuck\n'
    assert 'has not been updated for 10 s' in proc.stderr


def test_server_clock_decides_staleness(fake: FakeApi) -> None:
    """Task times are the server's: its Date header is 'now', not ours."""
    handler_date = email.utils.formatdate(time.time() + 7200, usegmt=True)
    fake.watchable(image, lambda: [task(updated=0)])
    original = fake.server.RequestHandlerClass.date_time_string
    fake.server.RequestHandlerClass.date_time_string = (  # type: ignore
        lambda self, timestamp=None: handler_date)
    try:
        proc = run(fake.url, 'watch', IMAGE)
    finally:
        fake.server.RequestHandlerClass.date_time_string = original
    assert proc.returncode == status.STUCK, proc.stderr


def test_ctrl_c_prints_the_resume_command(fake: FakeApi) -> None:
    fake.watchable(image, lambda: [task()])
    proc = subprocess.Popen([CLI, 'watch', IMAGE, '--interval', '0.2',
                             '--progress', 'plain'], env=env(fake.url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while len(fake.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == status.INTERRUPTED == 130
    assert 'Stopped watching; the import goes on in Glance.' in err
    assert 'Watch it again with: glance-imgplugins watch %s' % IMAGE in err
    assert 'Traceback' not in out + err
