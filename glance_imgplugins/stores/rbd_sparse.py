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

"""``rbd_sparse``: glance_store's RBD driver with a sparse, pipelined add().

Operators enable it as ``enabled_backends = ceph:rbd_sparse`` and configure
the ``[ceph]`` section with every option of glance_store's ``rbd`` driver plus
the ``rbd_sparse_*`` options below.  Everything except ``add()`` and
``get()`` is upstream's: the location (``rbd://<fsid>/<pool>/<image>/snap``),
the object size, the protected ``snap`` snapshot, ``delete()``.  So an image
written here is read and deleted by the upstream driver and the other way
round, and Nova/Cinder clone it copy-on-write as before.

What ``get()`` does differently: it asks the cluster which extents of the
image hold data (``diff_iterate`` from the image's creation) and yields
zeros for the holes without reading them, in the same chunks as upstream
(``rbd_store_chunk_size``).  Copy-image and downloads of a mostly-empty
image then read only its data from Ceph.

What ``add()`` does differently, and why:

* It writes only the ranges holding non-zero bytes, tested at
  ``rbd_sparse_granularity`` (RBD images are thin: unwritten ranges read back
  as zeros and take no space; upstream writes every 8 MiB chunk unless the
  whole chunk is zero *and* ``rbd_thin_provisioning`` is on).  Adjacent
  non-zero blocks are coalesced into one write.
* Writes are asynchronous (``Image.aio_write``), at most
  ``rbd_sparse_writes_in_flight`` at a time.
* md5, the multihash and the signature verifier each run in their own thread,
  fed every byte in order, exactly as upstream feeds them; hashlib releases
  the GIL, so hashing no longer serialises with reading and writing.
* librados waits forever by default; ``rbd_sparse_client_timeout`` bounds
  every monitor and OSD operation, so a cluster that stops answering fails
  the write with :class:`glance_store.exceptions.TimeoutError`.
* Any failure removes the partial image (with "full try", so it also works
  when the pool quota is what failed the write).

No per-write state lives on the store object: Glance may run several
``add()`` calls on one store at once.
"""

from __future__ import annotations

import bisect
import collections
import errno
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from glance_store import capabilities
from glance_store import driver
from glance_store import exceptions
from glance_store._drivers import rbd as upstream
from glance_store.common import utils
from oslo_config import cfg
from oslo_utils import units

try:
    import rados
    import rbd
except ImportError:  # the driver then refuses to configure, like upstream
    rados = None
    rbd = None

LOG = logging.getLogger(__name__)

# glance_store loads ``<driver module>.StoreLocation``: the upstream class,
# so locations are byte-for-byte the upstream ones.
StoreLocation = upstream.StoreLocation

DEFAULT_GRANULARITY = 64 * units.Ki
MIN_GRANULARITY = 4 * units.Ki
_ZERO_PAGE = bytes(MIN_GRANULARITY)
OPT_GROUP = 'rbd_sparse_store'

_SPARSE_OPTS = [
    cfg.IntOpt('rbd_sparse_granularity',
               default=DEFAULT_GRANULARITY,
               min=MIN_GRANULARITY,
               help="""
Zero-detection granularity of an rbd_sparse store, in bytes.

The data is examined in blocks of this size, aligned to the image; a block
holding only zero bytes is not written at all (RBD images are thin and read
unwritten ranges back as zeros), adjacent non-zero blocks are written as one,
and the zero 4 KiB pages at both ends of such a write are left out.  Larger
blocks mean fewer, larger writes; smaller blocks skip zero ranges inside an
island of data too, at a little more CPU per byte.

Set it in the section of each rbd_sparse store (the name given in
``enabled_backends``), e.g. ``[ceph]`` for ``enabled_backends =
ceph:rbd_sparse``.

Possible values:
    * A power of two from 4096 up to the object size
      (``rbd_store_chunk_size`` MiB)

Related options:
    * rbd_store_chunk_size
"""),
    cfg.IntOpt('rbd_sparse_writes_in_flight',
               default=8, min=1, max=64,
               help="""
How many asynchronous writes one upload keeps in flight to the cluster.

More writes in flight hide network and OSD latency; each holds up to one
object (``rbd_store_chunk_size`` MiB) of memory until it completes.

Possible values:
    * An integer from 1 to 64

Related options:
    * rbd_store_chunk_size
"""),
    cfg.IntOpt('rbd_sparse_client_timeout',
               default=60, min=0,
               help="""
Seconds any single Ceph monitor or OSD operation may take
(rados_osd_op_timeout, rados_mon_op_timeout and client_mount_timeout of the
store's client).

By default librados waits forever, so an upload to a cluster that stopped
answering hangs the import and holds the image's import lock.  With this
bound the upload fails with a timeout error naming the store, and the partial
image is removed when the cluster allows it (an upload fails within about
twice this time: the write, then the cleanup).  0 keeps librados' default
(wait forever) or, if set, ``rados_connect_timeout``.

Possible values:
    * 0 (no bound) or a positive number of seconds

Related options:
    * rados_connect_timeout (still bounds the connection when set)
"""),
]


def granularity_problem(granularity: int, chunk: int) -> str | None:
    """Why ``rbd_sparse_granularity`` cannot be used with objects of
    ``chunk`` bytes (None: it can)."""
    if granularity & (granularity - 1) or granularity > chunk:
        return ('rbd_sparse_granularity must be a power of two between %d '
                'and the object size (%d bytes), not %d'
                % (MIN_GRANULARITY, chunk, granularity))
    return None


def check_store_config(conf: cfg.ConfigOpts, group: str) -> list[str]:
    """Rules beyond the option types, for ``glance-imgplugins
    check-config`` (no connection to Ceph)."""
    section = conf[group]
    problem = granularity_problem(int(section.rbd_sparse_granularity),
                                  int(section.rbd_store_chunk_size) * units.Mi)
    return ['[%s] %s' % (group, problem)] if problem else []


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    """Options of this driver beyond upstream rbd's, for the sample config.

    Store options live in the operator-named section of each store; the
    sample shows them under a representative ``[rbd_sparse_store]`` group.
    (glance_store's own ``glance.multi_store`` namespace lists the full set,
    upstream rbd options included, under ``[rbd_sparse]``.)
    """
    return [(OPT_GROUP, list(_SPARSE_OPTS))]


class _WriteError(Exception):
    """An asynchronous write completed with a negative errno."""

    def __init__(self, ret: int, offset: int, length: int) -> None:
        self.errno = -ret
        super().__init__('write of %d bytes at offset %d failed: %s'
                         % (length, offset, errno.errorcode.get(-ret, ret)))


class _HashThread(threading.Thread):
    """Feeds every chunk, in order, to some hash updaters off the write path.

    Chunks are shared ``bytes`` (no copies); the bounded queue applies back
    pressure to the reader when hashing is the slowest stage.
    """

    def __init__(self, name: str, updaters: list[Callable[[bytes], Any]],
                 depth: int) -> None:
        super().__init__(name=name, daemon=True)
        self._updaters = updaters
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(chunk)

    def finish(self) -> None:
        """Wait until every chunk fed so far is hashed; re-raise its error."""
        self._queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                for update in self._updaters:
                    update(chunk)
            except BaseException as exc:  # re-raised in the caller's thread
                self.error = exc


def nonzero_runs(chunk: bytes, granularity: int,
                 zero_block: bytes) -> list[tuple[int, int]]:
    """(start, end) of the runs of ``chunk`` holding non-zero bytes.

    ``chunk`` is examined in ``granularity`` blocks from its start (so the
    caller keeps chunks aligned to the image); a run is a maximal sequence of
    blocks with at least one non-zero byte.  ``bytes.startswith`` compares
    in place with memcmp (about 30 GB/s here, stopping at the first non-zero
    byte); ``any()`` runs at 0.2 GB/s and memoryview comparisons at 0.5.

    Each run's ends are then trimmed of whole zero 4 KiB pages: a run keeps
    the few large writes of the configured granularity but stores no more
    than the data rounded to 4 KiB (an island's edges rarely fall on a
    64 KiB boundary).
    """
    runs: list[tuple[int, int]] = []
    size = len(chunk)
    start = -1
    pos = 0
    while pos < size:
        end = min(pos + granularity, size)
        if end - pos == granularity:
            block_zero = chunk.startswith(zero_block, pos)
        else:  # the image's last, short block
            block_zero = chunk.count(0, pos, end) == end - pos
        if block_zero:
            if start >= 0:
                runs.append(_trim(chunk, start, pos))
                start = -1
        elif start < 0:
            start = pos
        pos = end
    if start >= 0:
        runs.append(_trim(chunk, start, size))
    return runs


def _trim(chunk: bytes, start: int, end: int) -> tuple[int, int]:
    """Drop whole zero pages from both ends of a run (never all of it)."""
    if MIN_GRANULARITY >= end - start:
        return start, end
    # start is block-aligned, so pages from it stay page-aligned; the run
    # holds a non-zero byte, so neither loop can pass the other.
    while chunk.startswith(_ZERO_PAGE, start):
        start += MIN_GRANULARITY
    while end % MIN_GRANULARITY == 0 and chunk.startswith(
            _ZERO_PAGE, end - MIN_GRANULARITY, end):
        end -= MIN_GRANULARITY
    return start, end


def _read_full(image_file: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes (fewer only at EOF) so blocks stay image-aligned."""
    data = image_file.read(size)
    if not data or len(data) == size:
        return bytes(data) if not isinstance(data, bytes) else data
    parts = [bytes(data)]
    got = len(data)
    while got < size:
        more = image_file.read(size - got)
        if not more:
            break
        parts.append(bytes(more))
        got += len(more)
    return b''.join(parts)


# --- reads ---------------------------------------------------------------

# Extents are asked for this much of the image at a time: memory stays
# bounded on huge images while a mostly-empty image costs few round trips.
EXTENT_WINDOW = 1 * units.Gi


def merge_extents(extents: Iterable[tuple[int, int]]
                  ) -> list[tuple[int, int]]:
    """Sorted, disjoint (start, end) ranges covering (offset, length) pairs.

    ``diff_iterate`` may report extents out of order, touching, or (with a
    parent image) overlapping; zero-length ones are dropped.
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted((o, o + n) for o, n in extents if n > 0):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def data_pieces(start: int, end: int, extents: list[tuple[int, int]]
                ) -> list[tuple[int, int]]:
    """The parts of [start, end) inside the sorted, disjoint ``extents``."""
    first = bisect.bisect_right(extents, (start, math.inf)) - 1
    pieces: list[tuple[int, int]] = []
    for ext_start, ext_end in extents[max(first, 0):]:
        if ext_start >= end:
            break
        lo, hi = max(ext_start, start), min(ext_end, end)
        if lo < hi:
            pieces.append((lo, hi))
    return pieces


def read_range(offset: int, length: int | None, size: int
               ) -> tuple[int, int]:
    """(start, end) of a read of ``length`` bytes (None: to the end) at
    ``offset`` of an image of ``size`` bytes, clipped at the end like a
    file read; a negative offset or length is refused."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError('offset and length must not be negative '
                         '(offset %d, length %s)' % (offset, length))
    start = min(offset, size)
    end = size if length is None else min(size, offset + length)
    return start, max(start, end)


class Store(upstream.Store):
    """glance_store's RBD store with a sparse, pipelined, bounded add()."""

    OPTIONS = list(upstream._RBD_OPTS) + _SPARSE_OPTS

    def get_schemes(self) -> tuple[str, ...]:
        # glance_store's multi-store looks stores up by their *driver* name
        # used as a scheme ('rbd_sparse'); locations themselves stay rbd://.
        return ('rbd', 'rbd_sparse')

    def configure_add(self) -> None:
        # Read our options before upstream connects (it fetches the fsid),
        # so that connection is bounded by our timeout as well.
        try:
            granularity = int(self.store_conf.rbd_sparse_granularity)
            self.writes_in_flight = int(
                self.store_conf.rbd_sparse_writes_in_flight)
            self.client_timeout = int(
                self.store_conf.rbd_sparse_client_timeout)
        except cfg.ConfigFileValueError as e:
            raise exceptions.BadStoreConfiguration(
                store_name=self._name(), reason=str(e)) from e
        chunk = int(self.store_conf.rbd_store_chunk_size) * units.Mi
        problem = granularity_problem(granularity, chunk)
        if problem:
            raise exceptions.BadStoreConfiguration(
                store_name=self._name(), reason=problem)
        self.granularity = granularity
        super().configure_add()

    def _name(self) -> str:
        return self.backend_group or 'rbd_sparse'

    # --- connection -----------------------------------------------------

    def get_connection(self, conffile: str, rados_id: str) -> Any:
        """Upstream's connection, with every operation bounded in time."""
        return _Connection(self, conffile, rados_id)

    def _timeout_error(self, what: str) -> exceptions.TimeoutError:
        timeout = getattr(self, 'client_timeout', 0)
        msg = ('Store %s: the Ceph cluster did not answer %s within %ds '
               '(rbd_sparse_client_timeout)' % (self._name(), what, timeout))
        return exceptions.TimeoutError(message=msg, timeout=timeout)

    # --- get ------------------------------------------------------------

    @capabilities.check
    def get(self, location: Any, offset: int = 0,
            chunk_size: int | None = None,
            context: Any = None) -> tuple[SparseImageIterator, int]:
        """Read the image, skipping its holes; (chunk iterator, bytes).

        The store keeps upstream's capabilities (no random access), so
        glance_store refuses a non-zero ``offset`` or ``chunk_size`` with
        ``StoreRandomGetNotSupported`` before this runs, as for upstream;
        the reader itself reads such ranges as the filesystem store does.

        :param offset: where to start reading
        :param chunk_size: how many bytes to read (None or 0: to the end)
        :raises: ``glance_store.exceptions.NotFound`` if the image does not
                 exist, ``Invalid`` for a negative offset or length
        """
        loc = location.store_location
        size = self.get_size(location, context=context)
        # 0 means "not given" to glance_store's capability check as well.
        length = chunk_size or None
        try:
            start, end = read_range(offset, length, size)
        except ValueError as e:
            raise exceptions.Invalid(
                message='Store %s: cannot read image %s: %s'
                % (self._name(), loc.image, e)) from e
        return (SparseImageIterator(self, loc.pool or self.pool, loc.image,
                                    loc.snapshot, offset, length,
                                    self.READ_CHUNKSIZE), end - start)

    # --- add ------------------------------------------------------------

    @driver.back_compat_add
    @capabilities.check
    def add(self, image_id: str, image_file: BinaryIO, image_size: int,
            hashing_algo: str, context: Any = None,
            verifier: Any = None) -> tuple[str, int, str, str, dict[str, str]]:
        """Store the image sparsely; same contract and results as upstream.

        :returns: (location URI, bytes read, md5 hex, multihash hex,
                  location metadata)
        """
        # The same hashers as upstream, fed the same bytes in the same order.
        os_hash_value = utils.get_hasher(hashing_algo, False)
        checksum = utils.get_hasher('md5', False)
        image_name = str(image_id)
        with self.get_connection(conffile=self.conf_file,
                                 rados_id=self.user) as conn:
            fsid = conn.get_fsid() if hasattr(conn, 'get_fsid') else None
            with conn.open_ioctx(self.pool) as ioctx:
                # "Full try": on a full pool or cluster the OSD answers
                # ENOSPC/EDQUOT at once, instead of librados holding every
                # write (and the image's close and removal) back forever.
                ioctx.set_osdmap_full_try()
                order = int(math.log(self.WRITE_CHUNKSIZE, 2))
                LOG.debug('creating image %s with order %d and size %d',
                          image_name, order, image_size)
                try:
                    loc = self._create_image(fsid, conn, ioctx, image_name,
                                             image_size, order)
                except rbd.ImageExists as e:
                    raise exceptions.Duplicate(
                        message='RBD image %s already exists' % image_id
                    ) from e
                except rbd.Timeout as e:
                    raise self._timeout_error(
                        'creating image %s' % image_name) from e
                started = time.monotonic()
                try:
                    bytes_read, written = self._write_image(
                        ioctx, image_name, image_file, image_size,
                        [checksum.update], [os_hash_value.update],
                        [verifier.update] if verifier else [], loc.snapshot)
                except BaseException as exc:
                    self._discard(ioctx, image_name, conn)
                    translated = self._translate(exc, image_name, conn)
                    if translated is exc:
                        raise
                    raise translated from exc

        LOG.debug('Store %s: stored image %s: %d bytes read, %d written, '
                  'in %.2fs', self._name(), image_name, bytes_read, written,
                  time.monotonic() - started)
        # Add store backend information to location metadata
        metadata: dict[str, str] = {}
        if self.backend_group:
            metadata['store'] = self.backend_group
        return (loc.get_uri(), bytes_read, checksum.hexdigest(),
                os_hash_value.hexdigest(), metadata)

    def _write_image(self, ioctx: Any, image_name: str, image_file: BinaryIO,
                     image_size: int, *hashers_and_snap: Any
                     ) -> tuple[int, int]:
        """Write the stream into the image; return (bytes read, written).

        Everything here is local to this call: one upload's state never
        touches another's.
        """
        md5_updaters, hash_updaters, verify_updaters, snapshot = \
            hashers_and_snap
        chunk_size = self.WRITE_CHUNKSIZE
        granularity = self.granularity
        zero_block = bytes(granularity)
        max_in_flight = self.writes_in_flight
        threads = [_HashThread('rbd_sparse-%s' % n, u, depth=4)
                   for n, u in (('md5', md5_updaters),
                                ('multihash', hash_updaters),
                                ('verifier', verify_updaters)) if u]
        for t in threads:
            t.start()
        # (completion, offset, length) of each write in flight, oldest first
        in_flight: collections.deque[tuple[Any, int, int]] = (
            collections.deque())

        def reap_one() -> None:
            comp, offset, length = in_flight.popleft()
            comp.wait_for_complete_and_cb()
            ret = comp.get_return_value()
            if ret < 0:
                raise _WriteError(ret, offset, length)

        def drain() -> None:
            while in_flight:
                reap_one()

        finished = False
        try:
            with rbd.Image(ioctx, image_name) as image:
                try:
                    size = image_size
                    written = 0
                    resize_amount = chunk_size
                    offset = 0
                    while True:
                        chunk = _read_full(image_file, chunk_size)
                        if not chunk:
                            break
                        length = len(chunk)
                        end = offset + length
                        if image_size != 0 and end > image_size:
                            raise exceptions.Invalid(
                                'Size exceeds: expected %d bytes, got %d bytes'
                                % (image_size, end))
                        for t in threads:
                            t.feed(chunk)
                        runs = nonzero_runs(chunk, granularity, zero_block)
                        if image_size == 0 and runs and end > size:
                            # Unknown size: grow ahead, doubling up to 8 GiB
                            # steps like upstream (a thin resize is cheap).
                            drain()
                            while size < end:
                                resize_amount = min(resize_amount * 2,
                                                    8 * units.Gi)
                                size += resize_amount
                            image.resize(size)
                        for start, stop in runs:
                            data = (chunk if stop - start == length
                                    else chunk[start:stop])
                            while len(in_flight) >= max_in_flight:
                                reap_one()
                            comp = image.aio_write(data, offset + start,
                                                   _ignore_completion)
                            in_flight.append((comp, offset + start,
                                              stop - start))
                            written += stop - start
                        offset = end
                    drain()
                    for t in threads:
                        t.finish()
                    finished = True
                    if image_size != 0 and offset != image_size:
                        raise exceptions.Invalid(
                            'Size mismatch: expected %d bytes, got %d bytes'
                            % (image_size, offset))
                    if image_size == 0 and image.size() != offset:
                        image.resize(offset)
                    if snapshot:
                        image.create_snap(snapshot)
                        image.protect_snap(snapshot)
                    return offset, written
                finally:
                    # Never close the image under writes still in flight.
                    while in_flight:
                        comp, _, _ = in_flight.popleft()
                        comp.wait_for_complete_and_cb()
        finally:
            if not finished:
                for t in threads:
                    t.abandon()

    def _discard(self, ioctx: Any, image_name: str, conn: Any) -> None:
        """Remove a partial image; log (do not raise) if that fails too.

        On a full pool only the data is discarded (that frees the space):
        Ceph 16's ``rbd_remove`` first moves the image to the trash, a write
        the full pool refuses half-way, leaving an image nothing can open or
        remove.  The error log names the image to remove later.
        """
        full = self._pool_is_full(conn)
        try:
            with rbd.Image(ioctx, image_name) as image:
                if full:
                    image.discard(0, image.size())
                    LOG.error('Store %s: pool %s is full: discarded the data '
                              'of partial image %s but left the image; run '
                              '`rbd rm %s/%s` once there is space',
                              self._name(), self.pool, image_name, self.pool,
                              image_name)
                    return
                for snap in list(image.list_snaps()):
                    if image.is_protected_snap(snap['name']):
                        image.unprotect_snap(snap['name'])
                    image.remove_snap(snap['name'])
            ioctx.unset_osdmap_full_try()
            rbd.RBD().remove(ioctx, image_name)
        except rbd.ImageNotFound:
            return
        except Exception as exc:
            LOG.error('Store %s: could not remove partial image %s/%s after a '
                      'failed upload (%s); remove it by hand with `rbd rm`',
                      self._name(), self.pool, image_name, exc)

    def _pool_is_full(self, conn: Any) -> bool:
        """Whether the monitor flags our pool full (cluster or quota)."""
        try:
            ret, out, _ = conn.mon_command(
                json.dumps({'prefix': 'osd dump', 'format': 'json'}), b'',
                timeout=min(self.client_timeout or 10, 10))
            if ret == 0:
                for pool in json.loads(out).get('pools', []):
                    if pool.get('pool_name') == self.pool:
                        flags = pool.get('flags_names', '').split(',')
                        return 'full' in flags or 'full_quota' in flags
        except Exception as exc:  # only a better message is at stake
            LOG.debug('could not read the osd map: %s', exc)
        return False

    def _translate(self, exc: BaseException, image_name: str,
                   conn: Any) -> BaseException:
        """Upstream's exception types, with messages naming store and image."""
        if isinstance(exc, (exceptions.GlanceStoreException,
                            exceptions.BackendException)):
            return exc
        code = getattr(exc, 'errno', None)
        timed_out = isinstance(exc, rbd.Timeout) or code == errno.ETIMEDOUT
        # librados holds writes to a full pool back until they time out.
        full = timed_out and self._pool_is_full(conn)
        if timed_out and not full:
            return self._timeout_error('writing image %s' % image_name)
        if (full or isinstance(exc, (rbd.NoSpace, rbd.DiskQuotaExceeded))
                or code in (errno.ENOSPC, errno.EDQUOT)):
            msg = ('Store %s: failed to store image %s: insufficient space '
                   'available in pool %s (%s)'
                   % (self._name(), image_name, self.pool,
                      'pool flagged full' if full else exc))
            LOG.error(msg)
            return exceptions.StorageFull(message=msg)
        if isinstance(exc, rbd.IncompleteWriteError):
            return exceptions.Invalid(
                message='Store %s: failed to store image %s: %s'
                % (self._name(), image_name, exc))
        if isinstance(exc, _WriteError):
            return exceptions.BackendException(
                'Store %s: failed to store image %s: %s'
                % (self._name(), image_name, exc))
        LOG.error('Store %s: failed to store image %s: %s', self._name(),
                  image_name, exc)
        return exc


class SparseImageIterator:
    """An RBD image, chunk by chunk, holes yielded as zeros without reading.

    An iterable like upstream's ``ImageIterator``: the connection opens when
    iteration starts and closes when it ends or is abandoned.  Every chunk
    is ``chunk_size`` bytes (the last one the rest), counted from
    ``offset``.  Afterwards ``bytes_read`` tells what came from the cluster
    and ``bytes_served`` what was yielded.
    """

    def __init__(self, store: Store, pool: str, name: str,
                 snapshot: str | None, offset: int, length: int | None,
                 chunk_size: int) -> None:
        self.store = store
        self.pool = pool
        self.name = name
        self.snapshot = snapshot
        self.offset = offset
        self.length = length
        self.chunk_size = chunk_size
        self.bytes_read = 0
        self.bytes_served = 0

    def __iter__(self) -> Iterator[bytes]:
        store = self.store
        started = time.monotonic()
        try:
            with store.get_connection(conffile=store.conf_file,
                                      rados_id=store.user) as conn:
                with conn.open_ioctx(self.pool) as ioctx:
                    with rbd.Image(ioctx, self.name, snapshot=self.snapshot,
                                   read_only=True) as image:
                        yield from self._chunks(image)
        except rbd.ImageNotFound as e:
            raise exceptions.NotFound(
                message='RBD image %s does not exist' % self.name) from e
        except rbd.Timeout as e:
            raise store._timeout_error('reading image %s' % self.name) from e
        LOG.debug('Store %s: read image %s: %d bytes served, %d read from '
                  'the cluster, in %.2fs', store._name(), self.name,
                  self.bytes_served, self.bytes_read,
                  time.monotonic() - started)

    def _chunks(self, image: Any) -> Iterator[bytes]:
        start, end = read_range(self.offset, self.length, image.size())
        chunk_size = self.chunk_size
        # One zero chunk serves every hole (bytes are immutable).
        zeros = bytes(min(chunk_size, end - start))
        zero_view = memoryview(zeros)
        # Windows hold whole chunks, so chunks stay aligned to ``start``.
        window = max(1, EXTENT_WINDOW // chunk_size) * chunk_size
        pos = start
        while pos < end:
            window_end = min(end, pos + window)
            extents = self._extents(image, pos, window_end)
            while pos < window_end:
                stop = min(pos + chunk_size, window_end)
                pieces = data_pieces(pos, stop, extents)
                if not pieces:
                    chunk = zeros if stop - pos == len(zeros) else bytes(
                        zero_view[:stop - pos])
                elif pieces == [(pos, stop)]:
                    chunk = image.read(pos, stop - pos)
                else:
                    parts: list[bytes | memoryview] = []
                    at = pos
                    for lo, hi in pieces:
                        if lo > at:
                            parts.append(zero_view[:lo - at])
                        parts.append(image.read(lo, hi - lo))
                        at = hi
                    if at < stop:
                        parts.append(zero_view[:stop - at])
                    chunk = b''.join(parts)
                if len(chunk) != stop - pos:
                    raise exceptions.BackendException(
                        'Store %s: short read of image %s: %d bytes at '
                        'offset %d, expected %d' % (
                            self.store._name(), self.name, len(chunk), pos,
                            stop - pos))
                self.bytes_read += sum(hi - lo for lo, hi in pieces)
                self.bytes_served += len(chunk)
                pos = stop
                yield chunk

    @staticmethod
    def _extents(image: Any, start: int, end: int) -> list[tuple[int, int]]:
        """Allocated extents of [start, end): diff_iterate from creation
        (no snapshot to compare with), the parent's data included."""
        found: list[tuple[int, int]] = []

        def collect(offset: int, length: int, exists: bool) -> int:
            if exists:
                found.append((offset, length))
            return 0

        image.diff_iterate(start, end - start, None, collect,
                           include_parent=True, whole_object=False)
        return merge_extents(found)


def _ignore_completion(completion: Any) -> None:
    """aio_write wants a callback; we wait on the completions instead."""


class _Connection:
    """Context manager: a connected ``rados.Rados`` with bounded operations.

    Same error behaviour as upstream's ``get_connection``, plus
    ``rbd_sparse_client_timeout`` applied to every operation.
    """

    def __init__(self, store: Store, conffile: str, rados_id: str) -> None:
        self.store = store
        self.conffile = conffile
        self.rados_id = rados_id
        self.client: Any = None

    def __enter__(self) -> Any:
        store = self.store
        client = rados.Rados(conffile=self.conffile, rados_id=self.rados_id)
        connect_timeout = int(store.store_conf.rados_connect_timeout)
        op_timeout = int(store.store_conf.rbd_sparse_client_timeout)
        values = {}
        if connect_timeout >= 0:
            values = dict.fromkeys(('rados_osd_op_timeout',
                                    'rados_mon_op_timeout',
                                    'client_mount_timeout'), connect_timeout)
        if op_timeout > 0:
            values['rados_osd_op_timeout'] = op_timeout
            values['rados_mon_op_timeout'] = op_timeout
            if connect_timeout < 0:
                values['client_mount_timeout'] = op_timeout
        for key, value in values.items():
            client.conf_set(key, str(value))
        started = time.monotonic()
        try:
            client.connect()
        except (rados.Error, rados.ObjectNotFound) as e:
            client.shutdown()
            reason = ('Store %s: cannot connect to the Ceph cluster (%s, '
                      'after %.0fs)' % (store._name(), e,
                                        time.monotonic() - started))
            if store.backend_group and len(store.conf.enabled_backends) > 1:
                raise exceptions.BadStoreConfiguration(
                    store_name=store.backend_group, reason=reason) from e
            LOG.error(reason)
            raise exceptions.BackendException(reason) from e
        self.client = client
        return client

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.shutdown()
            self.client = None
