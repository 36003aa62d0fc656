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

"""A private PostgreSQL for Glance's database in functional tests.

Glance 33 on sqlite answers "database is locked" to two processes importing
at once, and a single worker has been seen to stall under overlapping
imports; tests that run imports side by side use this instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.glance_server import free_port

PG_BIN = sorted(glob.glob('/usr/lib/postgresql/*/bin'))

requires_postgres = pytest.mark.skipif(
    not PG_BIN, reason='PostgreSQL not installed (see bindep.txt, profile '
    'test)')


class Postgres:
    """A private PostgreSQL on 127.0.0.1 for Glance's database.

    PostgreSQL refuses to run as root: as root, the server runs as the
    ``postgres`` user in a folder it owns (under /tmp, which it can reach).
    """

    def __init__(self) -> None:
        self.bin = Path(PG_BIN[-1])
        self.dir = Path(tempfile.mkdtemp(prefix='glance-pg-'))
        self.data = self.dir / 'data'
        self.port = free_port()

    def _run(self, *cmd: str) -> None:
        prefix = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 \
            else []
        subprocess.run(prefix + list(cmd), check=True, capture_output=True,
                       cwd=self.dir, timeout=120)

    def start(self) -> 'Postgres':
        if os.geteuid() == 0:
            shutil.chown(self.dir, 'postgres', 'postgres')
        self._run(str(self.bin / 'initdb'), '-D', str(self.data), '-A',
                  'trust', '-U', 'glance', '-E', 'UTF8', '--no-sync')
        # Durability is not what the tests are about: no fsync.
        self._run(str(self.bin / 'pg_ctl'), '-D', str(self.data), '-l',
                  str(self.dir / 'postgres.log'), '-w', '-t', '60', '-o',
                  '-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off '
                  '-c synchronous_commit=off -c full_page_writes=off'
                  % (self.port, self.dir), 'start')
        return self

    def database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URL."""
        self._run(str(self.bin / 'createdb'), '-h', '127.0.0.1', '-p',
                  str(self.port), '-U', 'glance', name)
        return 'postgresql+psycopg://glance@127.0.0.1:%d/%s' % (self.port,
                                                                 name)

    def stop(self) -> None:
        if (self.data / 'postmaster.pid').exists():
            self._run(str(self.bin / 'pg_ctl'), '-D', str(self.data), '-m',
                      'fast', '-w', 'stop')
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope='module')
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server.start()
    finally:
        server.stop()
