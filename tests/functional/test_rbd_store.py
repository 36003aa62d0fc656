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

"""The ``rbd_sparse`` store against a real Ceph (memstore), through
glance_store's real multi-store API, the way Glance loads and calls it.

Upstream's ``rbd`` driver runs beside it on the same cluster: for interop
both ways, and as the reference for what "allocated" means without us.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from glance_store import exceptions as gs_exc
from glance_store import location as gs_location
from glance_store import multi_backend
from oslo_config import cfg

from glance_imgplugins.stores import rbd_sparse
from tests.support.stores import load_multi_stores
from tests.support.ceph_cluster import (  # noqa: F401 (fixture)
    CephCluster,
    CephError,
    ceph_cluster,
    missing_prerequisites,
)

KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 3  # rbd_sparse_client_timeout of the failure-test stores


# --- image data ----------------------------------------------------------

def islands(size: int, pieces: list[tuple[int, int]], seed: int = 7
            ) -> bytes:
    """``size`` zero bytes with random, non-zero-edged data at (off, len)."""
    rng = random.Random(seed)
    buf = bytearray(size)
    for off, length in pieces:
        data = bytearray(rng.randbytes(length))
        data[0] |= 1
        data[-1] |= 1  # so every island really ends where it says
        buf[off:off + length] = data
    return bytes(buf)


def nonzero_blocks(data: bytes, granularity: int) -> int:
    blocks = (data[i:i + granularity]
              for i in range(0, len(data), granularity))
    return sum(1 for block in blocks if block.count(0) != len(block))


# Islands from 4 KiB to 16 MiB; some unaligned, some crossing 8 MiB objects,
# one touching the very end of the image; object 5 (40-48 MiB) stays empty.
SIZE = 56 * MiB
PIECES = [
    (0, 4 * KiB),                     # first block
    (100 * KiB + 123, 5 * KiB),       # unaligned, straddles two 4K blocks
    (3 * MiB, 64 * KiB),
    (8 * MiB - 10 * KiB, 20 * KiB),   # crosses the first object boundary
    (12 * MiB + 7, 1 * MiB),
    (20 * MiB, 16 * MiB),             # 16 MiB spanning three objects
    (SIZE - 4 * KiB, 4 * KiB),        # last block
]
DATA = islands(SIZE, PIECES)
NONZERO = sum(length for _, length in PIECES)


class ShortReads(io.RawIOBase):
    """A file object returning at most ``step`` bytes per read(), as a socket
    would: the store must keep its blocks aligned to the image anyway."""

    def __init__(self, data: bytes, step: int = 100_003) -> None:
        self._buf = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._step:
            size = self._step
        return self._buf.read(size)


class PausingReader(io.BytesIO):
    """Runs ``action`` once, after ``after`` bytes were read (mid-upload)."""

    def __init__(self, data: bytes, after: int, action: Any) -> None:
        super().__init__(data)
        self._after = after
        self._action = action

    def read(self, size: int | None = -1) -> bytes:
        if self._action is not None and self.tell() >= self._after:
            action, self._action = self._action, None
            action()
        return super().read(size)


# --- stores through glance_store's multi-store API ---------------------------

class Stores:
    """A ConfigOpts of our own with several stores, loaded like Glance does."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    def store(self, name: str) -> Any:
        backend = self.conf.enabled_backends[name]
        return gs_location.SCHEME_TO_CLS_BACKEND_MAP[backend][name]['store']

    def add(self, name: str, data: bytes | io.IOBase, size: int | None = None,
            image_id: str | None = None, algo: str = 'sha512',
            verifier: Any = None) -> tuple[str, str, int, str, str, dict]:
        image_id = image_id or str(uuid.uuid4())
        stream = io.BytesIO(data) if isinstance(data, bytes) else data
        if size is None:
            size = len(data) if isinstance(data, bytes) else 0
        uri, written, md5, multihash, meta = (
            multi_backend.store_add_to_backend_with_multihash(
                image_id, stream, size, algo, self.store(name),
                verifier=verifier))
        return image_id, uri, written, md5, multihash, meta

    def location(self, name: str, uri: str) -> Any:
        return gs_location.get_location_from_uri_and_backend(
            uri, name, conf=self.conf)

    def read(self, name: str, uri: str) -> bytes:
        chunks, size = self.store(name).get(self.location(name, uri))
        data = b''.join(chunks)
        assert len(data) == size
        return data

    def delete(self, name: str, uri: str) -> None:
        self.store(name).delete(self.location(name, uri))


def load_stores(workdir: str, backends: dict[str, tuple[str, dict]]
                ) -> Stores:
    """Load the stores for real, as Glance does."""
    return Stores(load_multi_stores(workdir, backends))


@pytest.fixture(scope='module')
def stores(ceph_cluster: CephCluster, tmp_path_factory: Any) -> Stores:
    c = ceph_cluster
    return load_stores(str(tmp_path_factory.mktemp('stores')), {
        'sparse': ('rbd_sparse', c.store_options('images')),
        'sparse4k': ('rbd_sparse', c.store_options(
            'images', rbd_sparse_granularity=4096,
            rbd_sparse_writes_in_flight=2)),
        'upstream': ('rbd', c.store_options('images')),
        'upstream_thin': ('rbd', c.store_options(
            'images', rbd_thin_provisioning=True)),
        'badgran': ('rbd_sparse', c.store_options(
            'images', rbd_sparse_granularity=12288)),
    })


@pytest.fixture
def no_leftovers(ceph_cluster: CephCluster) -> Iterator[None]:
    before = ceph_cluster.rbd_ls('images')
    yield
    assert ceph_cluster.rbd_ls('images') == before


def image_name(uri: str) -> str:
    return uri.split('/')[-2]


# --- the driver as glance_store sees it ----------------------------------

def test_driver_registration_and_options(stores: Stores) -> None:
    store = stores.store('sparse')
    assert isinstance(store, rbd_sparse.Store)
    assert store.get_schemes() == ('rbd', 'rbd_sparse')
    # Upstream's and our options are read from the store's own section,
    # falling back to [backend_defaults] like every glance_store option.
    assert store.store_conf.rbd_store_pool == 'images'
    assert store.granularity == 64 * KiB and store.writes_in_flight == 8
    small = stores.store('sparse4k')
    assert small.granularity == 4096 and small.writes_in_flight == 2
    [(group, opts)] = rbd_sparse.list_opts()
    assert group == 'rbd_sparse_store'
    names = {o.name for o in opts}
    assert names == {'rbd_sparse_granularity', 'rbd_sparse_writes_in_flight',
                     'rbd_sparse_client_timeout'}
    for opt in opts:
        assert opt.help and 'Possible values' in opt.help
        assert 'Related options' in opt.help


def test_granularity_must_be_a_power_of_two(stores: Stores) -> None:
    # glance_store disables add() on a store that failed to configure.
    with pytest.raises(gs_exc.StoreAddDisabled):
        stores.add('badgran', b'x' * 4096)


def test_round_trip_layout_and_hashes(stores: Stores,
                                      ceph_cluster: CephCluster,
                                      no_leftovers: None) -> None:
    image_id, uri, written, md5, sha512, meta = stores.add('sparse', DATA)
    try:
        assert uri == 'rbd://%s/images/%s/snap' % (ceph_cluster.fsid, image_id)
        assert meta == {'store': 'sparse'}
        assert written == SIZE
        assert md5 == hashlib.md5(DATA).hexdigest()
        assert sha512 == hashlib.sha512(DATA).hexdigest()
        # upstream layout: 8 MiB objects, protected snapshot "snap"
        info = ceph_cluster.rbd_info('images', image_id)
        assert info['order'] == 23 and info['size'] == SIZE
        [snap] = ceph_cluster.rbd_snaps('images', image_id)
        assert snap['name'] == 'snap' and snap['protected'] == 'true'
        assert stores.read('sparse', uri) == DATA
        assert stores.store('sparse').get_size(
            stores.location('sparse', uri)) == SIZE
    finally:
        stores.delete('sparse', uri)
    assert image_id not in ceph_cluster.rbd_ls('images')
    with pytest.raises(gs_exc.NotFound):
        stores.store('sparse').get_size(stores.location('sparse', uri))


def test_unknown_size_grows_and_trims(stores: Stores,
                                      ceph_cluster: CephCluster) -> None:
    image_id, uri, written, md5, sha512, _ = stores.add(
        'sparse', ShortReads(DATA), size=0, algo='sha256')
    try:
        assert written == SIZE
        assert ceph_cluster.rbd_info('images', image_id)['size'] == SIZE
        assert md5 == hashlib.md5(DATA).hexdigest()
        assert sha512 == hashlib.sha256(DATA).hexdigest()
        assert stores.read('sparse', uri) == DATA
    finally:
        stores.delete('sparse', uri)


def test_unknown_size_trailing_zeros_and_all_zero_image(
        stores: Stores, ceph_cluster: CephCluster) -> None:
    for data in (bytes(20 * MiB + 512), DATA[:5 * MiB] + bytes(30 * MiB)):
        image_id, uri, written, md5, _, _ = stores.add('sparse', data, size=0)
        try:
            assert written == len(data)
            assert ceph_cluster.rbd_info('images', image_id)['size'] == len(
                data)
            assert md5 == hashlib.md5(data).hexdigest()
            assert stores.read('sparse', uri) == data
        finally:
            stores.delete('sparse', uri)


def test_verifier_gets_every_byte(stores: Stores) -> None:
    # Any object with update() is a verifier to glance_store; a hash object
    # shows it saw exactly the logical stream, zeros included.
    verifier = hashlib.sha256()
    _, uri, *_ = stores.add('sparse', DATA, verifier=verifier)
    stores.delete('sparse', uri)
    assert verifier.hexdigest() == hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize('declared', [SIZE - 1, SIZE + 1])
def test_size_mismatch_is_refused_and_cleaned(
        stores: Stores, declared: int, no_leftovers: None) -> None:
    with pytest.raises(gs_exc.Invalid, match='Size (exceeds|mismatch)'):
        stores.add('sparse', DATA, size=declared)


def test_duplicate_keeps_the_first_image(stores: Stores) -> None:
    image_id, uri, *_ = stores.add('sparse', DATA[:9 * MiB])
    try:
        with pytest.raises(gs_exc.Duplicate):
            stores.add('sparse', b'other' * 1000, image_id=image_id)
        assert stores.read('sparse', uri) == DATA[:9 * MiB]
    finally:
        stores.delete('sparse', uri)


def test_reader_error_removes_partial_image(stores: Stores,
                                            no_leftovers: None) -> None:
    def boom() -> None:
        raise OSError('client went away')

    with pytest.raises(OSError, match='client went away'):
        stores.add('sparse', PausingReader(DATA, 24 * MiB, boom), size=SIZE)


@pytest.mark.parametrize('writer,reader', [('sparse', 'upstream'),
                                           ('upstream', 'sparse')])
def test_interop_with_upstream_rbd(stores: Stores, ceph_cluster: CephCluster,
                                   writer: str, reader: str) -> None:
    image_id, uri, _, md5, _, _ = stores.add(writer, DATA)
    # same location format whoever wrote it
    assert uri == 'rbd://%s/images/%s/snap' % (ceph_cluster.fsid, image_id)
    data = stores.read(reader, uri)
    assert hashlib.md5(data).hexdigest() == md5
    stores.delete(reader, uri)
    assert image_id not in ceph_cluster.rbd_ls('images')


def test_concurrent_adds_on_one_store(stores: Stores) -> None:
    # Glance runs stores (and uploads) in parallel threads on one object.
    images = [islands(SIZE // 2, [(i * MiB, (i + 1) * 700 * KiB)], seed=i)
              for i in range(4)]
    results: dict[int, Any] = {}

    def upload(i: int) -> None:
        results[i] = stores.add('sparse', images[i], size=0 if i % 2 else
                                len(images[i]))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, data in enumerate(images):
        _, uri, written, md5, _, _ = results[i]
        assert written == len(data)
        assert md5 == hashlib.md5(data).hexdigest()
        assert stores.read('sparse', uri) == data
        stores.delete('sparse', uri)


# --- failures on a second, disposable cluster --------------------------------

@pytest.fixture(scope='module')
def edge(tmp_path_factory: Any) -> Iterator[CephCluster]:
    """A second cluster beside the first, on bluestore (a sparse file): its
    counters tell the bytes really stored; also for quota and outage tests."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip('CEPH TESTS SKIPPED: ' + reason)
    cluster = CephCluster(tmp_path_factory.mktemp('ceph-edge'), name='edge',
                          objectstore='bluestore',
                          bluestore_bytes=4 * 1024 * MiB)
    try:
        cluster.start()
        cluster.create_pool('images')
        cluster.create_pool('tiny')
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope='module')
def edge_stores(edge: CephCluster, ceph_cluster: CephCluster,
                tmp_path_factory: Any) -> Stores:
    assert edge.fsid != ceph_cluster.fsid
    return load_stores(str(tmp_path_factory.mktemp('edge-stores')), {
        'edge': ('rbd_sparse', edge.store_options(
            'images', rbd_sparse_client_timeout=TIMEOUT)),
        'edge_tiny': ('rbd_sparse', edge.store_options(
            'tiny', rbd_sparse_client_timeout=TIMEOUT)),
        'edge4k': ('rbd_sparse', edge.store_options(
            'images', rbd_sparse_granularity=4096,
            rbd_sparse_writes_in_flight=2)),
        'edge_upstream': ('rbd', edge.store_options('images')),
        'edge_upstream_thin': ('rbd', edge.store_options(
            'images', rbd_thin_provisioning=True)),
    })


def stored_by_add(stores: Stores, cluster: CephCluster, name: str,
                  data: bytes | io.IOBase, size: int | None = None
                  ) -> tuple[int, str]:
    """Bytes the OSD allocated for one add(), and the image's URI."""
    _, before = cluster.stored_bytes()
    _, uri, *_ = stores.add(name, data, size=size)
    _, after = cluster.stored_bytes()
    return after - before, uri


# The RBD header, id and directory objects also take a few 4 KiB units.
METADATA_SLACK = 64 * KiB


@pytest.mark.parametrize('name,granularity,size', [
    ('edge', 64 * KiB, SIZE), ('edge4k', 4 * KiB, SIZE),
    ('edge', 64 * KiB, 0)])  # unknown size: resized as it goes
def test_allocation_is_the_data_rounded_to_granularity(
        edge_stores: Stores, edge: CephCluster, name: str,
        granularity: int, size: int) -> None:
    allocated, uri = stored_by_add(edge_stores, edge, name, ShortReads(DATA),
                                   size=size)
    try:
        bound = nonzero_blocks(DATA, granularity) * granularity
        assert NONZERO <= allocated <= bound + METADATA_SLACK
        assert edge_stores.read(name, uri) == DATA
    finally:
        edge_stores.delete(name, uri)


def test_upstream_stores_what_we_skip(edge_stores: Stores,
                                      edge: CephCluster) -> None:
    # The starting point, measured: upstream writes every chunk with
    # thin provisioning off, and every partly-used 8 MiB chunk with it on.
    allocated = {}
    for name in ('edge_upstream', 'edge_upstream_thin', 'edge'):
        allocated[name], uri = stored_by_add(edge_stores, edge, name, DATA)
        edge_stores.delete(name, uri)
    assert allocated['edge_upstream'] >= SIZE
    assert allocated['edge_upstream_thin'] >= 6 * 8 * MiB - 3 * MiB
    assert allocated['edge'] <= (nonzero_blocks(DATA, 64 * KiB) * 64 * KiB
                                 + METADATA_SLACK)
    assert allocated['edge'] * 2 < allocated['edge_upstream_thin']


def test_two_clusters_side_by_side(stores: Stores, edge_stores: Stores,
                                   edge: CephCluster,
                                   ceph_cluster: CephCluster) -> None:
    data = DATA[:10 * MiB]
    image_id, uri_edge, *_ = edge_stores.add('edge', data)
    try:
        assert uri_edge.startswith('rbd://%s/' % edge.fsid)
        assert image_id in edge.rbd_ls('images')
        assert image_id not in ceph_cluster.rbd_ls('images')
        assert edge_stores.read('edge', uri_edge) == data
    finally:
        edge_stores.delete('edge', uri_edge)


def test_cluster_full_mid_write_fails_fast_and_frees_space(
        edge_stores: Stores, edge: CephCluster,
        caplog: pytest.LogCaptureFixture) -> None:
    # A pool quota needs a mgr to be enforced; a full OSD is the same "no
    # space" condition.  The upload fails at once (not after the timeout)
    # with StorageFull, and the data already written is discarded.  The
    # empty image stays until there is space: Ceph 16 removes images through
    # the trash, a write a full pool refuses half-way.
    data = islands(40 * MiB, [(0, 40 * MiB)])
    _, before = edge.stored_bytes()
    filled_at: list[float] = []

    def fill_up() -> None:
        edge.set_full(True)
        filled_at.append(time.monotonic())

    try:
        with pytest.raises(gs_exc.StorageFull) as info:
            edge_stores.add('edge', PausingReader(data, 16 * MiB, fill_up))
        elapsed = time.monotonic() - filled_at[0]
        _, after = edge.stored_bytes()
    finally:
        edge.set_full(False)
    assert 'edge' in str(info.value) and 'space' in str(info.value)
    assert elapsed < TIMEOUT, elapsed
    assert after - before < 1 * MiB
    [leftover] = edge.rbd_ls('images')
    assert 'rbd rm images/%s' % leftover in caplog.text
    edge.run_cli('rbd', 'rm', 'images/%s' % leftover)
    assert edge.rbd_ls('images') == []


def test_unresponsive_cluster_fails_within_bound(edge_stores: Stores,
                                                 edge: CephCluster) -> None:
    data = islands(32 * MiB, [(0, 32 * MiB)])
    started = time.monotonic()
    try:
        with pytest.raises(gs_exc.TimeoutError) as info:
            edge_stores.add('edge', PausingReader(data, 16 * MiB,
                                                  edge.pause_osd))
        elapsed = time.monotonic() - started
    finally:
        edge.resume_osd()
    message = str(info.value)
    assert 'edge' in message and '%ds' % TIMEOUT in message
    # the write, then one cleanup attempt, each bounded by the timeout
    assert elapsed < 3 * TIMEOUT + 5, elapsed
    # The cleanup could not reach the frozen OSD: the image is logged for
    # removal; once the cluster answers again (and our stale watch expired)
    # it can be removed, and a new upload works.
    for leftover in edge.rbd_ls('images'):
        deadline = time.monotonic() + 30
        while True:
            try:
                edge.run_cli('rbd', 'rm', 'images/%s' % leftover)
                break
            except CephError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    _, uri, *_ = edge_stores.add('edge', data[:1 * MiB])
    edge_stores.delete('edge', uri)


# --- hole-aware reads ----------------------------------------------------

OBJ = 8 * MiB  # rbd_store_chunk_size: the object size and the read chunk


def patterned(size: int, ranges: list[tuple[int, int]]) -> bytes:
    """``size`` zeros with non-zero random bytes at each (start, end)."""
    rng = random.Random(size)
    buf = bytearray(size)
    for start, end in ranges:
        buf[start:end] = bytes(b | 1 for b in rng.randbytes(end - start))
    return bytes(buf)


# Holes at every alignment: first/last byte, on and across object
# boundaries, whole objects, nothing at all, everything.
READ_CASES = {
    'empty': patterned(3 * OBJ, []),
    'full': patterned(2 * OBJ + 12345, [(0, 2 * OBJ + 12345)]),
    'first_byte': patterned(3 * OBJ, [(0, 1)]),
    'last_byte': patterned(3 * OBJ, [(3 * OBJ - 1, 3 * OBJ)]),
    'last_byte_short_tail': patterned(2 * OBJ + 5, [(2 * OBJ + 4,
                                                     2 * OBJ + 5)]),
    'across_boundary': patterned(3 * OBJ, [(OBJ - 1, OBJ + 1)]),
    'whole_middle_object': patterned(3 * OBJ, [(OBJ, 2 * OBJ)]),
    'object_ends': patterned(3 * OBJ, [(OBJ - 4 * KiB, OBJ),
                                       (2 * OBJ, 2 * OBJ + 4 * KiB)]),
    'islands': DATA,
}


def sparse_get(stores: Stores, name: str, uri: str, **kwargs: Any
               ) -> tuple[list[bytes], int, Any]:
    chunks_iter, size = stores.store(name).get(stores.location(name, uri),
                                               **kwargs)
    return list(chunks_iter), size, chunks_iter


@pytest.fixture(scope='module')
def read_images(stores: Stores) -> Iterator[dict[str, str]]:
    uris = {case: stores.add('sparse', data)[1]
            for case, data in READ_CASES.items()}
    yield uris
    for uri in uris.values():
        stores.delete('sparse', uri)


@pytest.mark.parametrize('case', sorted(READ_CASES))
def test_get_is_bit_exact_and_skips_holes(
        stores: Stores, read_images: dict[str, str], case: str) -> None:
    data = READ_CASES[case]
    chunks, size, it = sparse_get(stores, 'sparse', read_images[case])
    assert size == len(data)
    assert b''.join(chunks) == data
    # upstream's chunking: object-sized chunks from the start, the last
    # one the rest
    assert [len(c) for c in chunks] == [
        min(OBJ, len(data) - o) for o in range(0, len(data), OBJ)]
    assert all(isinstance(c, bytes) for c in chunks)
    assert it.bytes_served == len(data)
    # Only objects holding data are read (Ceph reports an object's extent
    # up to its last written byte at most).
    objects_with_data = {o // OBJ for o in range(0, len(data), 4 * KiB)
                         if data[o:o + 4 * KiB].count(0) != len(
                             data[o:o + 4 * KiB])}
    assert it.bytes_read <= len(objects_with_data) * OBJ
    nonzero = len(data) - data.count(0)
    assert it.bytes_read >= nonzero
    if case == 'empty':
        assert it.bytes_read == 0
    if case == 'full':
        assert it.bytes_read == len(data)
    # upstream's get() of the same image reads the same bytes
    assert stores.read('upstream', read_images[case]) == data


@pytest.mark.parametrize('offset,length', [
    (0, None), (0, 1), (1, 10), (OBJ - 3, 6), (OBJ, OBJ),
    (100 * KiB + 120, 20 * MiB), (SIZE - 1, None), (SIZE - 1, 100),
    (SIZE, None), (SIZE + 5, 10), (5, 2 * SIZE), (12345, 0)])
def test_reader_offset_and_length(stores: Stores,
                                  read_images: dict[str, str],
                                  offset: int, length: int | None) -> None:
    # The store keeps upstream's capabilities, so glance_store refuses a
    # ranged get() before it runs (below); the reader still reads ranges
    # the way the filesystem store does, chunks counted from the offset.
    store = stores.store('sparse')
    loc = stores.location('sparse', read_images['islands']).store_location
    reader = rbd_sparse.SparseImageIterator(
        store, loc.pool, loc.image, loc.snapshot, offset, length, OBJ)
    chunks = list(reader)
    want = DATA[offset:] if length is None else DATA[offset:offset + length]
    assert b''.join(chunks) == want
    assert reader.bytes_served == len(want)
    assert [len(c) for c in chunks] == [
        min(OBJ, len(want) - o) for o in range(0, len(want), OBJ)]


@pytest.mark.parametrize('case,offset', [
    # chunks that start in a hole and end in data, and the other way round
    ('whole_middle_object', OBJ // 2), ('last_byte', OBJ // 2 + 1),
    ('object_ends', 3), ('first_byte', 1), ('empty', 12345),
    ('full', OBJ - 1)])
def test_reader_unaligned_chunks_over_holes(
        stores: Stores, read_images: dict[str, str], case: str,
        offset: int) -> None:
    data = READ_CASES[case]
    store = stores.store('sparse')
    loc = stores.location('sparse', read_images[case]).store_location
    reader = rbd_sparse.SparseImageIterator(
        store, loc.pool, loc.image, loc.snapshot, offset, None, OBJ)
    chunks = list(reader)
    assert b''.join(chunks) == data[offset:]
    assert [len(c) for c in chunks] == [
        min(OBJ, len(data) - o) for o in range(offset, len(data), OBJ)]


@pytest.mark.parametrize('kwargs', [{'offset': 1}, {'chunk_size': 10},
                                    {'offset': 5, 'chunk_size': 10}])
@pytest.mark.parametrize('name', ['sparse', 'upstream'])
def test_ranged_get_refused_as_upstream(stores: Stores,
                                        read_images: dict[str, str],
                                        name: str, kwargs: dict[str, int]
                                        ) -> None:
    # Same contract as upstream rbd: no random access (Glance answers an
    # HTTP range download with 400 for both drivers).
    with pytest.raises(gs_exc.StoreRandomGetNotSupported):
        stores.store(name).get(
            stores.location(name, read_images['islands']), **kwargs)


def test_get_with_zero_offset_and_length_reads_it_all(
        stores: Stores, read_images: dict[str, str]) -> None:
    # glance_store treats 0 as "not given"; so do we, like upstream.
    chunks, size, _ = sparse_get(stores, 'sparse', read_images['islands'],
                                 offset=0, chunk_size=0)
    assert size == SIZE and b''.join(chunks) == DATA


def test_get_reads_upstream_images_and_reports_missing_ones(
        stores: Stores, caplog: pytest.LogCaptureFixture) -> None:
    # Upstream thin-off writes every byte, zeros too: all of it is
    # allocated, so all of it is read, and still bit-exact.
    _, uri, *_ = stores.add('upstream', DATA[:2 * OBJ])
    try:
        with caplog.at_level('DEBUG', logger=rbd_sparse.LOG.name):
            chunks, size, it = sparse_get(stores, 'sparse', uri)
        assert b''.join(chunks) == DATA[:2 * OBJ] and size == 2 * OBJ
        assert it.bytes_read == 2 * OBJ
        assert ('Store sparse: read image %s: %d bytes served, %d read from '
                'the cluster' % (image_name(uri), 2 * OBJ, 2 * OBJ)
                ) in caplog.text
    finally:
        stores.delete('upstream', uri)
    with pytest.raises(gs_exc.NotFound):
        stores.store('sparse').get(stores.location('sparse', uri))


def test_abandoned_read_closes_cleanly(stores: Stores,
                                       read_images: dict[str, str]) -> None:
    # A client that stops a download half-way: the generator is closed,
    # its connection shut down, and a new read works.
    chunks_iter, _ = stores.store('sparse').get(
        stores.location('sparse', read_images['islands']))
    gen = iter(chunks_iter)
    assert next(gen) == DATA[:OBJ]
    gen.close()  # type: ignore[attr-defined]
    assert stores.read('sparse', read_images['islands']) == DATA
