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

"""Fixtures for the functional layer: a real Glance 33 per test module,
behind the session's real Keystone (``tests.support.keystone.shared()``)."""

from __future__ import annotations

import functools
import http.server
import pathlib
import threading
from typing import Any, Callable, Iterator

import pytest

from tests.support import keystone
from tests.support.glance_server import GlanceServer


@pytest.fixture(scope='module')
def glance_factory(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Callable[..., GlanceServer]]:
    """Start real Glance servers for a module; all are stopped after it."""
    servers: list[GlanceServer] = []

    def make(**kwargs: Any) -> GlanceServer:
        server = GlanceServer(tmp_path_factory.mktemp('glance'), **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope='module')
def http_dir(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[pathlib.Path, int]]:
    """A loopback web server for web-download, in a thread: the folder it
    serves and its port."""
    root = tmp_path_factory.mktemp('www')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(root))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    # On failure, show the end of each Glance log the test could reach.
    outcome = yield
    report = outcome.get_result()
    if report.when == 'call' and report.failed:
        factory = item.funcargs.get('glance_factory') if hasattr(
            item, 'funcargs') else None
        servers = getattr(factory, '__closure__', None) or ()
        for cell in servers:
            value = cell.cell_contents
            if isinstance(value, list):
                for server in value:
                    if isinstance(server, GlanceServer):
                        report.sections.append(
                            ('glance log %s' % server.url,
                             server.log_tail() + '\n' + server.stacks()))
        # A 401/403 is decided by Keystone: show its side too.
        if keystone._shared is not None:
            report.sections.append(('keystone log %s' % keystone._shared.url,
                                    keystone._shared.log_tail(20)))
