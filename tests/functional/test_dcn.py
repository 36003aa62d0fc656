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

"""A real edge (DCN) deployment: Glance, a file store, two Ceph clusters.

Glance 33 under gunicorn with two workers on a PostgreSQL database (sqlite
answers "database is locked" to two processes importing at once),
``image_introspection`` and ``format_conversion`` enabled, and three stores:

* ``local``: a file store (the central site's disk),
* ``central``: ``rbd_sparse`` on the central Ceph cluster (memstore),
* ``edge``: ``rbd_sparse`` on an independent edge cluster (bluestore, so
  its OSD can be stopped and started again with its data intact).

Every scenario runs with ``[image_import_opts] max_parallel_stores`` 1
(Glance writes the stores one by one) and 3 (all at once), each with its
own Glance and its own pools, and ends by checking the tracking properties
and the bytes in every store against the image converted here by qemu-img.

The edge outage: one import (web-download) is under way, Glance holding
half of the download, when the edge OSD is stopped; two more imports start
while it is down.  The stores run with ``rbd_sparse_client_timeout = 5``,
so the edge fails within a bound (about 5 s) while the other stores
succeed.  The OSD stops before any byte is written to the edge: stopping it
in the middle of an RBD write would leave a partial image that nobody can
remove until the cluster is back (rbd_sparse logs the ``rbd rm`` to run).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.digest import md5 as md5_file
from tests.support import images
from tests.support.ceph_cluster import CephCluster, missing_prerequisites
from tests.support.postgres import (  # noqa: F401 (fixture)
    Postgres,
    postgres,
    requires_postgres,
)
from tests.support.glance_server import (
    ADMIN_TOKEN, BIN_DIR, MEMBER_TOKEN, GlanceServer)

MiB = 1024 * 1024
GiB = 1024 * MiB
CLI = str(BIN_DIR / 'glance-imgplugins')
EDGE_TIMEOUT = 5          # rbd_sparse_client_timeout of the Ceph stores
ALL = ['local', 'central', 'edge']
VMDK = 'vmdk_stream_lsilogic'

pytestmark = [
    pytest.mark.skipif(
        missing_prerequisites() is not None,
        reason='CEPH TESTS SKIPPED: %s' % missing_prerequisites()),
    requires_postgres,
]


# --- the deployment ----------------------------------------------------------

class Site:
    """One Glance of the DCN deployment and what the tests learnt so far."""

    def __init__(self, glance: GlanceServer, central: CephCluster,
                 edge: CephCluster, pool: str, source: Path,
                 expected: Path) -> None:
        self.glance = glance
        self.clusters = {'central': central, 'edge': edge}
        self.pool = pool
        self.source = source          # the vmdk users upload
        self.expected = expected      # what it must become: raw, by qemu-img
        self.expected_md5 = md5_file(expected)
        self.state: dict[str, Any] = {}
        self.web: GatedWeb | None = None

    def find(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The image called ``name``, once it exists."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.glance.request(
                'GET', '/v2/images?name=%s' % name)['images']
            if found:
                return dict(found[0])
            assert time.monotonic() < deadline, 'no image %s' % name
            time.sleep(0.2)

    # -- reading every store ----------------------------------------------

    def rbd_names(self, store: str) -> list[str]:
        return self.clusters[store].rbd_ls(self.pool)

    def held_by(self, image_id: str) -> list[str]:
        """Stores that really hold data for the image (not what Glance
        says: the file store's folder and the pools themselves)."""
        held = []
        if (self.glance.store_dir('local') / image_id).exists():
            held.append('local')
        for store in ('central', 'edge'):
            if image_id in self.rbd_names(store):
                held.append(store)
        return held

    def md5_in(self, store: str, image_id: str) -> str:
        if store == 'local':
            return md5_file(self.glance.store_dir('local') / image_id)
        return rbd_md5(self.clusters[store], self.pool, image_id)

    def assert_data(self, image_id: str, stores: list[str],
                    md5: str | None = None) -> None:
        assert sorted(self.held_by(image_id)) == sorted(stores)
        for store in stores:
            assert self.md5_in(store, image_id) == (md5 or self.expected_md5)

    def staged(self) -> list[str]:
        return sorted(p.name for p in self.glance.staging_dir.iterdir())

    # -- the CLI ------------------------------------------------------------

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [CLI, *args, '--progress', 'json', '--interval', '0.3'],
            env=self.glance.env(ADMIN_TOKEN), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def cli(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        return finish(self.popen(*args), timeout)


def finish(proc: subprocess.Popen[str], timeout: float = 120
           ) -> dict[str, Any]:
    """Wait for a ``--progress json`` CLI run (JSON lines on stderr); its
    result document and exit status."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError('CLI still running after %ss:\n%s\n%s'
                             % (timeout, out[-3000:], err[-3000:])) from None
    events = [json.loads(line) for line in err.splitlines()]
    assert events, out
    result = dict(events[-1])
    result['returncode'] = proc.returncode
    result['events'] = events
    return result


def rbd_md5(cluster: CephCluster, pool: str, name: str) -> str:
    """md5 of the RBD image's protected ``snap`` snapshot, read through
    librbd (holes read back as zeros, as a VM would see them)."""
    import rados
    import rbd

    digest = hashlib.md5()
    with rados.Rados(conffile=cluster.conf_path) as client:
        with client.open_ioctx(pool) as ioctx:
            with rbd.Image(ioctx, name, snapshot='snap',
                           read_only=True) as image:
                size = image.size()
                for offset in range(0, size, 8 * MiB):
                    digest.update(image.read(offset,
                                             min(8 * MiB, size - offset)))
    return digest.hexdigest()


@pytest.fixture(scope='module')
def clusters(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[CephCluster, CephCluster]]:
    central = CephCluster(tmp_path_factory.mktemp('ceph-central'),
                          name='central', memstore_bytes=1 * GiB)
    edge = CephCluster(tmp_path_factory.mktemp('ceph-edge'), name='edge',
                       objectstore='bluestore', bluestore_bytes=4 * GiB)
    try:
        central.start()
        edge.start()
        yield central, edge
    finally:
        edge.stop()
        central.stop()


@pytest.fixture(scope='module')
def vmdk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    corpus = images.Corpus(tmp_path_factory.mktemp('dcn-corpus'))
    source = corpus.path(VMDK)
    expected = source.with_suffix('.expected.raw')
    subprocess.run(['qemu-img', 'convert', '-f', 'vmdk', '-O', 'raw',
                    str(source), str(expected)], check=True)
    return source, expected


class GatedWeb:
    """A loopback web server for web-download that sends the first half of
    a file, then holds the rest until :meth:`release`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.halfway = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = (web.root / self.path.lstrip('/')).read_bytes()
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                half = len(data) // 2
                self.wfile.write(data[:half])
                self.wfile.flush()
                web.halfway.set()
                web._gate.wait(120)
                self.wfile.write(data[half:])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()

    def url(self, name: str) -> str:
        return 'http://127.0.0.1:%d/%s' % (self.port, name)

    def hold(self) -> None:
        self.halfway.clear()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope='module')
def web(vmdk: tuple[Path, Path]) -> Iterator[GatedWeb]:
    server = GatedWeb(vmdk[0].parent)
    yield server
    server.stop()


@pytest.fixture(scope='module', params=[1, 3],
                ids=['max_parallel_stores=1', 'max_parallel_stores=3'])
def site(request: pytest.FixtureRequest, glance_factory: Any,
         clusters: tuple[CephCluster, CephCluster],
         vmdk: tuple[Path, Path], postgres: Postgres,
         web: GatedWeb) -> Iterator[Site]:
    central, edge = clusters
    pool = 'images-p%d' % request.param
    central.create_pool(pool)
    edge.create_pool(pool)
    options = {'rbd_sparse_client_timeout': EDGE_TIMEOUT}
    glance = glance_factory(
        stores={'local': ('file', {}),
                'central': ('rbd_sparse', central.store_options(
                    pool, **options)),
                'edge': ('rbd_sparse', edge.store_options(pool, **options))},
        default_store='local',
        plugins=['image_introspection', 'format_conversion'],
        import_conf={'format_conversion': {'output_format': 'raw'}},
        workers=2, max_parallel_stores=request.param,
        allowed_ports=[web.port],
        api_conf={'database': {'connection': postgres.database(
            'glance_p%d' % request.param)}})
    site = Site(glance, central, edge, pool, *vmdk)
    site.web = web
    yield site
    glance.stop()


def assert_tracking(image: dict[str, Any], *, status: str,
                    stores: list[str] | None, failed: list[str]) -> None:
    assert image['status'] == status
    assert image.get('os_glance_importing_to_stores', '') == ''
    assert sorted(filter(None, image.get('os_glance_failed_import', '')
                         .split(','))) == sorted(failed)
    if stores is None:
        assert image.get('stores') is None
    else:
        assert sorted(image['stores'].split(',')) == sorted(stores)


# --- scenarios ---------------------------------------------------------------

def test_import_to_all_three_stores(site: Site) -> None:
    result = site.cli('import', str(site.source), '--name', 'dcn-full',
                      '--disk-format', 'vmdk', '--all-stores')
    assert result['returncode'] == 0, result
    assert result['outcome'] == 'success'
    assert [(s['store'], s['state']) for s in result['stores']] == [
        (s, 'done') for s in ALL]
    image_id = result['image_id']
    image = site.glance.image(image_id)
    assert_tracking(image, status='active', stores=ALL, failed=[])
    # Both plugins ran: introspection's properties, conversion to raw.
    for key, value in images.ENTRIES[VMDK].properties.items():
        assert image[key] == value
    assert image['disk_format'] == 'raw'
    assert image['size'] == site.expected.stat().st_size
    assert image['checksum'] == site.expected_md5
    site.assert_data(image_id, ALL)
    assert site.staged() == []
    site.state['full'] = image_id


def _edge_outage(site: Site) -> dict[str, dict[str, Any]]:
    """Once per site: the edge OSD down while three imports run at once,
    two with allow-failure and one without."""
    if 'outage' in site.state:
        return site.state['outage']  # type: ignore[no-any-return]
    edge, web = site.clusters['edge'], site.web
    assert web is not None
    procs = {}
    web.hold()
    try:
        # allow-b is under way: Glance is downloading it (half received).
        procs['allow-b'] = site.popen(
            'import', '--uri', web.url(site.source.name), '--name',
            'allow-b', '--disk-format', 'vmdk', '--all-stores')
        assert web.halfway.wait(60), 'Glance never started the download'
        under_way = site.find('allow-b')
        edge.stop_osd()
        started = time.monotonic()
        for name, extra in (('allow-a', ()),
                            ('must', ('--disallow-failure',))):
            procs[name] = site.popen('import', str(site.source), '--name',
                                     name, '--disk-format', 'vmdk',
                                     '--all-stores', *extra)
        web.release()
        results = {name: finish(proc) for name, proc in procs.items()}
        elapsed = time.monotonic() - started
    finally:
        web.release()
        edge.start_osd()
    for result in results.values():
        result['wall'] = elapsed
    results['allow-b']['status_at_outage'] = under_way['status']
    results['allow-b']['importing_at_outage'] = under_way.get(
        'os_glance_importing_to_stores')
    site.state['outage'] = results
    return results


def test_edge_down_with_allow_failure(site: Site) -> None:
    results = _edge_outage(site)
    for name in ('allow-a', 'allow-b'):
        result = results[name]
        assert result['returncode'] == 3, result
        assert result['outcome'] == 'partial'
        states = {s['store']: s['state'] for s in result['stores']}
        assert states == {'local': 'done', 'central': 'done',
                          'edge': 'failed'}
        image_id = result['image_id']
        assert_tracking(site.glance.image(image_id), status='active',
                        stores=['local', 'central'], failed=['edge'])
        # The failure came within the client timeout's bound, and nothing
        # reached the edge pool (checked with the edge back up).
        site.assert_data(image_id, ['local', 'central'])
    # allow-b was mid-way (Glance downloading it, the edge among its
    # stores) when the edge went down.
    assert results['allow-b']['status_at_outage'] == 'importing'
    assert results['allow-b']['importing_at_outage'] == 'central,edge,local'
    assert results['allow-b']['events'][0]['method'] == 'web-download'
    # Three imports, the edge failing after about EDGE_TIMEOUT seconds.
    assert results['allow-a']['wall'] < 3 * EDGE_TIMEOUT + 20
    site.state['partial'] = [results['allow-a']['image_id'],
                             results['allow-b']['image_id']]


def test_edge_down_without_allow_failure(site: Site) -> None:
    result = _edge_outage(site)['must']
    assert result['returncode'] == 4, result
    assert result['outcome'] == 'failed'
    assert {s['state'] for s in result['stores']} == {'failed'}
    image_id = result['image_id']
    image = site.glance.image(image_id)
    # A store failure is retryable: format_conversion's revert leaves the
    # image uploading with the converted data staged, so a glance-direct
    # import retries without a new upload; Glance rolled back what local
    # and central had received.
    assert image['status'] == 'uploading'
    assert image.get('stores') is None
    assert 'edge' in image['os_glance_failed_import'].split(',')
    assert image.get('os_glance_importing_to_stores', '') == ''
    assert site.held_by(image_id) == []
    assert site.staged() == [image_id]


def test_copy_to_edge_after_it_is_back(site: Site) -> None:
    image_id = site.state['partial'][0]
    result = site.cli('copy', image_id, '--store', 'edge')
    assert result['returncode'] == 0, result
    assert [(s['store'], s['state']) for s in result['stores']] == [
        ('edge', 'done')]
    assert_tracking(site.glance.image(image_id), status='active',
                    stores=ALL, failed=[])
    site.assert_data(image_id, ALL)


def test_retry_failed(site: Site) -> None:
    image_id = site.state['partial'][1]
    result = site.cli('copy', image_id, '--retry-failed')
    assert result['returncode'] == 0, result
    assert result['events'][0]['stores'] == ['edge']
    assert_tracking(site.glance.image(image_id), status='active',
                    stores=ALL, failed=[])
    site.assert_data(image_id, ALL)


def test_delete_from_one_store_and_copy_back(site: Site) -> None:
    image_id = site.state['full']
    site.glance.glance('stores-delete', image_id, '--store', 'central')
    assert_tracking(site.glance.image(image_id), status='active',
                    stores=['local', 'edge'], failed=[])
    site.assert_data(image_id, ['local', 'edge'])

    result = site.cli('copy', image_id, '--all-stores')
    assert result['returncode'] == 0, result
    assert result['events'][0]['stores'] == ['central']
    assert_tracking(site.glance.image(image_id), status='active',
                    stores=ALL, failed=[])
    site.assert_data(image_id, ALL)


def test_twenty_imports_at_once(site: Site, tmp_path: Path) -> None:
    """20 small raw images, two stores each, all started together."""
    pairs = [['local', 'central'], ['central', 'edge'], ['local', 'edge']]
    before = {s: set(site.rbd_names(s)) for s in ('central', 'edge')}
    files = []
    for i in range(20):
        path = tmp_path / ('load-%02d.raw' % i)
        with open(path, 'wb') as f:
            f.truncate(4 * MiB)
            f.seek((i % 4) * MiB)
            f.write(os.urandom(1 * MiB))
        files.append(path)
    client = site.glance.client(MEMBER_TOKEN)

    def start(i: int) -> str:
        image = client.images.create(name='load-%02d' % i,
                                     disk_format='raw',
                                     container_format='bare')
        with open(files[i], 'rb') as f:
            client.images.stage(image['id'], f, 4 * MiB)
        client.images.image_import(image['id'], 'glance-direct',
                                   stores=pairs[i % 3], allow_failure=False)
        return str(image['id'])

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(start, range(20)))
    for i, image_id in enumerate(ids):
        image = site.glance.wait_for_import(image_id, timeout=240)
        assert_tracking(image, status='active', stores=pairs[i % 3],
                        failed=[])
        assert image['checksum'] == md5_file(files[i])
        site.assert_data(image_id, pairs[i % 3], md5_file(files[i]))
    # Nothing of these stays staged (an earlier failed import's may).
    assert not [n for n in site.staged() if n.split('.')[0] in ids]
    expected = {s: before[s] | {image_id for i, image_id in enumerate(ids)
                                if s in pairs[i % 3]}
                for s in ('central', 'edge')}
    for store in ('central', 'edge'):
        assert set(site.rbd_names(store)) == expected[store]

    # Deleting them leaves nothing behind in any store.
    for image_id in ids:
        client.images.delete(image_id)
    for store in ('central', 'edge'):
        assert set(site.rbd_names(store)) == before[store]
    assert not any((site.glance.store_dir('local') / i).exists()
                   for i in ids)
