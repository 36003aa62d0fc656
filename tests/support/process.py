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

"""The services the tests start, each in its own session: stopping one,
and what Keystone and Barbican (gunicorn on loopback) share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent


def stop_session(proc: subprocess.Popen[bytes] | None,
                 sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and everything in its process group: ``sig`` first
    (SIGTERM: a clean stop; SIGKILL: a crash), SIGKILL after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


class GunicornService:
    """A test service served on loopback by gunicorn in its own session.

    Subclasses set ``workdir``, ``port``, ``log_path`` (the service's own
    log, after ``gunicorn.log`` in :meth:`log_tail`) and ``_proc`` (None)
    in ``__init__``, and write ``start()``: its config, then
    :meth:`_serve` and :meth:`_wait_ready`.
    """

    #: How errors name the service ("keystone exited with ...").
    NAME = 'service'
    #: What start() raises when the service exits or does not answer.
    error: type[Exception] = RuntimeError

    workdir: Path
    port: int
    log_path: Path
    _proc: subprocess.Popen[bytes] | None

    def env(self) -> dict[str, str]:
        """The environment without ``OS_*``: this checkout importable, the
        venv's tools first, ``HOME`` in the workdir (nothing is written
        under the real one)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('OS_')}
        env.update({
            'PYTHONPATH': os.pathsep.join(
                filter(None, [str(REPO_ROOT), env.get('PYTHONPATH')])),
            'PATH': os.pathsep.join([str(BIN_DIR), env.get('PATH', '')]),
            'HOME': str(self.workdir),
        })
        return env

    def _serve(self, app: str, threads: int) -> None:
        """Start gunicorn (one worker) on ``app``, output in gunicorn.log."""
        out = open(self.workdir / 'gunicorn.log', 'ab')
        self._proc = subprocess.Popen(
            [str(BIN_DIR / 'gunicorn'), '--bind', '127.0.0.1:%d' % self.port,
             '--workers', '1', '--threads', str(threads), '--timeout', '120',
             '--no-control-socket', app],
            cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def _wait_ready(self, answers: Callable[[], bool], timeout: float,
                    interval: float) -> None:
        """Poll ``answers()`` every ``interval`` s until it is true; raise
        ``error`` (the log tail in it) if the process exits first or
        ``timeout`` s pass (then stop it)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise self.error('%s exited with %s:\n%s' % (
                    self.NAME, self._proc.returncode, self.log_tail()))
            if answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise self.error('%s did not answer:\n%s'
                                 % (self.NAME, self.log_tail()))
            time.sleep(interval)

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_session(proc)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.workdir / 'gunicorn.log', self.log_path):
            if path.exists():
                out.append('==> %s <==' % path)
                out.extend(path.read_text(errors='replace')
                           .splitlines()[-lines:])
        return '\n'.join(out)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
