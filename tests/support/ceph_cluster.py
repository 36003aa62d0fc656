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

"""A real one-monitor, one-OSD Ceph cluster on 127.0.0.1, started for tests.

Everything lives under one working folder (config, mon and OSD data, pid
files, admin sockets, logs) and every port is picked free at start, so several
clusters (e.g. ``central`` and ``edge``) can run side by side and beside other
people's.  There is no mgr and no cephx: RBD I/O needs neither.  Daemons are
stopped by the pids they wrote, after checking ``/proc/PID/cmdline`` names our
config file, and every CLI call is wrapped in ``timeout`` because some ``ceph``
commands hang forever without a mgr.

Usage::

    cluster = CephCluster(tmpdir, name='central')   # memstore, 1 GiB
    cluster.start()
    cluster.create_pool('images')
    opts = cluster.store_options('images')   # glance_store [<store>] options
    ...
    cluster.stop()

``objectstore='bluestore'`` puts the OSD on a sparse file of
``bluestore_bytes`` (for benchmarks over ~1 GiB: memstore keeps about twice
the stored bytes in RAM and may not give it back).

Pytest fixtures are at the end of this module; import them into a test module
(``from tests.support.ceph_cluster import ceph_cluster  # noqa: F401``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

CEPH_BINARIES = ('ceph-mon', 'ceph-osd', 'ceph', 'rbd', 'rados',
                 'monmaptool', 'ceph-authtool')
_GiB = 1024 ** 3


class CephError(RuntimeError):
    """A Ceph daemon or CLI call failed; the message holds its output."""


def missing_prerequisites() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    absent = [b for b in CEPH_BINARIES if shutil.which(b) is None]
    if absent:
        return ('Ceph binaries not installed: %s (install ceph-mon ceph-osd '
                'ceph-common, see bindep.txt profile "ceph")'
                % ', '.join(absent))
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError as exc:
        return ('Python rados/rbd bindings not importable (%s): run '
                'tools/setup-env.sh to link python3-rados/python3-rbd into '
                'the venv' % exc)
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def _free_port_range(count: int) -> int:
    """First port of ``count`` consecutive free ports (random base)."""
    import random
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        if all(_port_is_free(p) for p in range(base, base + count)):
            return base
    raise CephError('no %d consecutive free ports found' % count)


class CephCluster:
    """One mon + one OSD on 127.0.0.1 in ``workdir``; see the module doc."""

    # The OSD binds a handful of ports (public, cluster, heartbeats front and
    # back, over msgr v2); leave room for restarts.
    _OSD_PORTS = 16

    def __init__(self, workdir: str | os.PathLike[str], name: str = 'ceph',
                 objectstore: str = 'memstore',
                 memstore_bytes: int = 1 * _GiB,
                 bluestore_bytes: int = 8 * _GiB,
                 cli_timeout: float = 30.0) -> None:
        if objectstore not in ('memstore', 'bluestore'):
            raise ValueError('objectstore must be memstore or bluestore')
        self.name = name
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.objectstore = objectstore
        self.memstore_bytes = memstore_bytes
        self.bluestore_bytes = bluestore_bytes
        self.cli_timeout = cli_timeout
        self.conf_path = os.path.join(self.workdir, 'ceph.conf')
        self.fsid = str(uuid.uuid4())
        self.mon_port = 0
        self.osd_uuid = str(uuid.uuid4())
        self.osd_id: int | None = None
        self._last_up_from = -1
        self.pools: list[str] = []
        self._dirs = {k: os.path.join(self.workdir, k)
                      for k in ('mon', 'osd', 'run', 'log')}

    # --- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 60.0) -> CephCluster:
        """Create and start the cluster; return when RBD I/O works."""
        reason = missing_prerequisites()
        if reason:
            raise CephError(reason)
        for path in self._dirs.values():
            os.makedirs(path, exist_ok=True)
        deadline = time.monotonic() + timeout
        self._write_conf()
        self._mkfs_mon()
        self._start_daemon('mon', 'a')
        self._wait(lambda: self._cli_ok('ceph', 'mon', 'stat'), deadline,
                   'monitor answering')
        self.osd_id = int(self.ceph('osd', 'new', self.osd_uuid).strip())
        os.makedirs(os.path.join(self._dirs['osd'], 'osd.%d' % self.osd_id),
                    exist_ok=True)
        self._run(['ceph-osd', '-c', self.conf_path, '-i', str(self.osd_id),
                   '--mkfs', '--osd-uuid', self.osd_uuid], timeout=120)
        self.start_osd()
        return self

    def stop(self) -> None:
        """Stop both daemons (by pid); keep the folder for post-mortems."""
        for kind, ident in (('osd', str(self.osd_id)), ('mon', 'a')):
            if kind == 'osd' and self.osd_id is None:
                continue
            self._kill(kind, ident)

    def destroy(self) -> None:
        """Stop and remove the working folder."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CephCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- simulating trouble -------------------------------------------------

    def stop_osd(self) -> None:
        """Stop the OSD: I/O to the cluster then hangs until clients time out.

        With memstore the stored data is gone for good once the OSD stops
        (the next start is an empty OSD); use :meth:`pause_osd` to make a
        memstore cluster stop answering and come back intact, or bluestore.
        """
        self._kill('osd', str(self.osd_id))

    def start_osd(self, wait: bool = True) -> None:
        """(Re)start the OSD; wait until the monitor has it up again."""
        self._last_up_from = self._osd_up_from()
        self._start_daemon('osd', str(self.osd_id))
        if wait:
            self._wait(self._osd_is_up, time.monotonic() + 60, 'OSD up')

    def pause_osd(self) -> None:
        """Freeze the OSD (SIGSTOP): the cluster stops answering I/O."""
        os.kill(self._pid('osd', str(self.osd_id)), signal.SIGSTOP)

    def resume_osd(self) -> None:
        os.kill(self._pid('osd', str(self.osd_id)), signal.SIGCONT)

    # --- pools and images ---------------------------------------------------

    def create_pool(self, name: str, pg_num: int = 8) -> str:
        self.ceph('osd', 'pool', 'create', name, str(pg_num), str(pg_num))
        self.ceph('osd', 'pool', 'set', name, 'size', '1',
                  '--yes-i-really-mean-it')
        self.run_cli('rbd', 'pool', 'init', name)
        # A real write proves PGs are active (no mgr to ask).
        self.run_cli('rados', '-p', name, 'put', '.ready', '/dev/null')
        self.run_cli('rados', '-p', name, 'rm', '.ready')
        self.pools.append(name)
        return name

    def set_pool_quota(self, pool: str, max_bytes: int) -> None:
        """0 removes the quota.  The mon applies it on its next tick."""
        self.ceph('osd', 'pool', 'set-quota', pool, 'max_bytes',
                  str(max_bytes))

    def set_full(self, full: bool, timeout: float = 30.0) -> None:
        """Make the cluster full (or not) and wait until clients see it.

        Pool quotas need a mgr (it feeds the monitor pool statistics), which
        this cluster does not run; a tiny full ratio makes the OSD report
        itself full, the way a site that ran out of disk does.
        """
        # Keep nearfull < backfillfull < full at every step.
        steps = ([('set-nearfull-ratio', '0.0005'),
                  ('set-backfillfull-ratio', '0.0008'),
                  ('set-full-ratio', '0.001')] if full else
                 [('set-full-ratio', '0.95'),
                  ('set-backfillfull-ratio', '0.90'),
                  ('set-nearfull-ratio', '0.85')])
        for cmd, value in steps:
            self.ceph('osd', cmd, value)

        def flagged() -> bool:
            dump = json.loads(self.ceph('osd', 'dump', '--format', 'json'))
            flags = {f for p in dump.get('pools', [])
                     for f in p.get('flags_names', '').split(',')}
            return ('full' in flags) == full

        self._wait(flagged, time.monotonic() + timeout,
                   'pools flagged %sfull' % ('' if full else 'not '))

    def rbd_ls(self, pool: str) -> list[str]:
        out = self.run_cli('rbd', 'ls', '--format', 'json', pool)
        return sorted(json.loads(out or '[]'))

    def rbd_du(self, pool: str, image: str) -> int:
        """Bytes ``rbd diff`` reports for ``pool/image``.

        Without the fast-diff feature librbd learns extents per object: an
        object counts from 0 to its last written byte.  Use
        :meth:`stored_bytes` (bluestore) for what was really written.
        """
        return sum(length for _, length in self.rbd_extents(pool, image))

    def rbd_extents(self, pool: str, image: str) -> list[tuple[int, int]]:
        """(offset, length) of every extent ``rbd diff`` reports, in order.

        Per object (see :meth:`rbd_du`); an object never written is absent.
        """
        out = self.run_cli('rbd', 'diff', '--format', 'json',
                           '%s/%s' % (pool, image))
        return [(int(e['offset']), int(e['length']))
                for e in json.loads(out or '[]')
                if e.get('exists', 'true') in (True, 'true')]

    def osd_perf(self) -> dict[str, Any]:
        """The OSD's performance counters (``perf dump`` on its socket)."""
        sock = os.path.join(self._dirs['run'], 'osd.%s.asok' % self.osd_id)
        perf: dict[str, Any] = json.loads(self._run(
            ['ceph', '--admin-daemon', sock, 'perf', 'dump'],
            timeout=self.cli_timeout))
        return perf

    def stored_bytes(self) -> tuple[int, int]:
        """(stored, allocated) data bytes in the OSD: bluestore only.

        This is the ground truth for sparseness: without fast-diff, ``rbd du``
        and ``rbd diff`` report whole objects (up to the last written byte),
        not what was written.  Allocation units are 4 KiB (see the conf).
        """
        if self.objectstore != 'bluestore':
            raise CephError('stored_bytes() needs objectstore=bluestore '
                            '(memstore keeps no allocation counters)')
        counters = self.osd_perf()['bluestore']
        return (int(counters['bluestore_stored']),
                int(counters['bluestore_allocated']))

    def rbd_info(self, pool: str, image: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.run_cli(
            'rbd', 'info', '--format', 'json', '%s/%s' % (pool, image)))
        return info

    def rbd_snaps(self, pool: str, image: str) -> list[dict[str, Any]]:
        snaps: list[dict[str, Any]] = json.loads(self.run_cli(
            'rbd', 'snap', 'ls', '--format', 'json', '%s/%s' % (pool, image)))
        return snaps

    def store_options(self, pool: str, user: str = 'admin',
                      **extra: Any) -> dict[str, Any]:
        """``[<store>]`` options of a glance_store rbd or rbd_sparse store."""
        opts: dict[str, Any] = {
            'rbd_store_pool': pool,
            'rbd_store_ceph_conf': self.conf_path,
            'rbd_store_user': user,
            'rbd_store_chunk_size': 8,
        }
        opts.update(extra)
        return opts

    # --- CLI ----------------------------------------------------------------

    def ceph(self, *args: str) -> str:
        return self.run_cli('ceph', *args)

    def run_cli(self, tool: str, *args: str, timeout: float | None = None
                ) -> str:
        """Run a Ceph CLI against this cluster (bounded by ``timeout``)."""
        return self._run([tool, '-c', self.conf_path, *args],
                         timeout=timeout or self.cli_timeout)

    def _cli_ok(self, *cmd: str) -> bool:
        try:
            self.run_cli(*cmd, timeout=5)
        except CephError:
            return False
        return True

    def _run(self, cmd: list[str], timeout: float) -> str:
        # `timeout` (coreutils) kills the tool itself; Python's own timeout
        # is only the last resort.
        full = ['timeout', '-k', '5', str(int(timeout))] + cmd
        try:
            proc = subprocess.run(full, capture_output=True, text=True,
                                  timeout=timeout + 10,
                                  env=self._env(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CephError('%s: timed out after %ss' % (' '.join(cmd),
                                                           timeout)) from exc
        if proc.returncode != 0:
            what = ('timed out after %ss' % timeout
                    if proc.returncode == 124 else
                    'exit %d' % proc.returncode)
            raise CephError('%s: %s: %s%s' % (' '.join(cmd), what,
                                              proc.stderr.strip()[-2000:],
                                              proc.stdout.strip()[-500:]))
        return proc.stdout

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env['CEPH_CONF'] = self.conf_path
        env.pop('CEPH_ARGS', None)
        return env

    # --- internals ----------------------------------------------------------

    def _write_conf(self) -> None:
        self.mon_port = _free_port_range(1)
        osd_base = _free_port_range(self._OSD_PORTS)
        d = self._dirs
        store = ['osd objectstore = %s' % self.objectstore]
        if self.objectstore == 'memstore':
            store += ['memstore device bytes = %d' % self.memstore_bytes,
                      # sparse pages, so unwritten ranges cost no RAM
                      'memstore page set = true']
        else:
            store += ['bluestore block path = %s' % os.path.join(d['osd'],
                                                                 'block'),
                      'bluestore block create = true',
                      'bluestore block size = %d' % self.bluestore_bytes,
                      'bluestore block db create = false',
                      'bluestore block wal create = false',
                      # 4 KiB allocation units whatever the backing device,
                      # so stored/allocated bytes measure sparseness finely
                      'bluestore min alloc size = 4096',
                      'bluestore min alloc size hdd = 4096',
                      'bluestore min alloc size ssd = 4096',
                      'bluestore prefer deferred size = 0',
                      'bluestore fsck on mkfs = false',
                      'bluestore fsck on mount = false',
                      'osd memory target = 1073741824',
                      'bluestore cache autotune = false',
                      'bluestore cache size = 268435456']
        conf = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv4 = true
ms bind port min = {osd_min}
ms bind port max = {osd_max}
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
run dir = {run}
pid file = {run}/$type.$id.pid
log file = {log}/$name.log
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon mgr mkfs grace = 31536000
mon data avail warn = 1
mon data avail crit = 0
paxos propose interval = 0.1
paxos min wait = 0.01
mon osd report timeout = 300
osd pool default flag nodelete = false
rbd default features = 1

[mon]
mon data = {mon}/$name
admin socket = {run}/$name.asok

[osd]
osd data = {osd}/$name
admin socket = {run}/$name.asok
{store}
osd max object name len = 256
osd max object namespace len = 64
osd op num shards = 2
osd op num threads per shard = 1
osd heartbeat grace = 60
# a client that vanished (or a frozen OSD's clients) stops blocking
# `rbd rm` after 10 s instead of 30
osd client watch timeout = 10

[client]
admin socket =
log file = {log}/client.log
""".format(fsid=self.fsid, mon_port=self.mon_port, osd_min=osd_base,
           osd_max=osd_base + self._OSD_PORTS - 1, run=d['run'], log=d['log'],
           mon=d['mon'], osd=d['osd'], store='\n'.join(store))
        with open(self.conf_path, 'w') as f:
            f.write(conf)

    def _mkfs_mon(self) -> None:
        monmap = os.path.join(self.workdir, 'monmap')
        keyring = os.path.join(self.workdir, 'mon.keyring')
        self._run(['monmaptool', '--create', '--clobber', '--fsid', self.fsid,
                   '--addv', 'a', '[v2:127.0.0.1:%d]' % self.mon_port, monmap],
                  timeout=30)
        self._run(['ceph-authtool', '--create-keyring', keyring, '--gen-key',
                   '-n', 'mon.', '--cap', 'mon', 'allow *'], timeout=30)
        self._run(['ceph-mon', '-c', self.conf_path, '-i', 'a', '--mkfs',
                   '--monmap', monmap, '--keyring', keyring], timeout=60)

    def _start_daemon(self, kind: str, ident: str) -> None:
        # The daemon forks into the background and writes its pid file.
        pidfile = self._pidfile(kind, ident)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        self._run(['ceph-%s' % kind, '-c', self.conf_path, '-i', ident],
                  timeout=60)
        self._wait(lambda: self._pid_or_none(kind, ident) is not None,
                   time.monotonic() + 30,
                   'ceph-%s.%s pid file' % (kind, ident))

    def _pidfile(self, kind: str, ident: str) -> str:
        return os.path.join(self._dirs['run'], '%s.%s.pid' % (kind, ident))

    def _pid_or_none(self, kind: str, ident: str) -> int | None:
        """The daemon's pid if it is alive and really ours."""
        try:
            with open(self._pidfile(kind, ident)) as f:
                pid = int(f.read().strip())
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                cmdline = f.read().split(b'\0')
        except (OSError, ValueError):
            return None
        if self.conf_path.encode() not in cmdline:
            return None  # pid reused by someone else's process
        return pid

    def _pid(self, kind: str, ident: str) -> int:
        pid = self._pid_or_none(kind, ident)
        if pid is None:
            raise CephError('ceph-%s.%s of %s is not running'
                            % (kind, ident, self.name))
        return pid

    def _kill(self, kind: str, ident: str, timeout: float = 20.0) -> None:
        pid = self._pid_or_none(kind, ident)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a paused daemon cannot exit
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not os.path.exists('/proc/%d' % pid) or _is_zombie(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _osd_up_from(self) -> int:
        """The osdmap epoch the OSD came up at (-1 while down/unknown)."""
        try:
            dump = json.loads(self.run_cli('ceph', 'osd', 'dump', '--format',
                                           'json', timeout=5))
        except (CephError, ValueError):
            return -1
        for o in dump.get('osds', []):
            if o.get('osd') == self.osd_id and o.get('up') == 1:
                return int(o.get('up_from', 0))
        return -1

    def _osd_is_up(self) -> bool:
        # After a restart the monitor still shows the old instance as up
        # until the new one boots: wait for a newer up_from epoch.
        return self._osd_up_from() > self._last_up_from

    def _wait(self, predicate: Any, deadline: float, what: str) -> None:
        delay = 0.05
        while True:
            if predicate():
                return
            if time.monotonic() > deadline:
                raise CephError('cluster %s: timed out waiting for %s (logs '
                                'in %s)' % (self.name, what,
                                            self._dirs['log']))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _is_zombie(pid: int) -> bool:
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except (OSError, IndexError):
        return True


# --- pytest fixtures -------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the module is usable without pytest
    pytest = None  # type: ignore[assignment]


if pytest is not None:
    @pytest.fixture(scope='session')
    def ceph_cluster(tmp_path_factory: Any) -> Iterator[CephCluster]:
        """A memstore cluster for the whole session, with pool ``images``."""
        reason = missing_prerequisites()
        if reason:
            pytest.skip('CEPH TESTS SKIPPED: ' + reason)
        cluster = CephCluster(tmp_path_factory.mktemp('ceph-central'),
                              name='central', memstore_bytes=2 * _GiB)
        try:
            cluster.start()
            cluster.create_pool('images')
            yield cluster
        finally:
            cluster.stop()

    @pytest.fixture(scope='session')
    def ceph_bluestore_cluster(tmp_path_factory: Any
                               ) -> Iterator[CephCluster]:
        """A bluestore cluster (sparse 4 GiB file) with pool ``images``: its
        OSD counters measure the bytes really stored (``stored_bytes()``)."""
        reason = missing_prerequisites()
        if reason:
            pytest.skip('CEPH TESTS SKIPPED: ' + reason)
        cluster = CephCluster(tmp_path_factory.mktemp('ceph-bluestore'),
                              name='bluestore', objectstore='bluestore',
                              bluestore_bytes=4 * _GiB)
        try:
            cluster.start()
            cluster.create_pool('images')
            yield cluster
        finally:
            cluster.stop()
