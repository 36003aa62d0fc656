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

"""Which ranges ``rbd_sparse`` writes (blocks at the granularity, ends
trimmed to 4 KiB pages) and which it reads (the allocated extents)."""

from __future__ import annotations

import pytest

from glance_imgplugins.stores.rbd_sparse import (
    data_pieces,
    merge_extents,
    nonzero_runs,
    read_range,
)

KiB = 1024
G = 64 * KiB


def chunk_with(size: int, *ranges: tuple[int, int]) -> bytes:
    data = bytearray(size)
    for start, end in ranges:
        data[start:end] = b'\x5a' * (end - start)
    return bytes(data)


@pytest.mark.parametrize('ranges, expected', [
    # nothing to write
    ((), []),
    # ten bytes inside one 64 KiB block: only their 4 KiB page
    (((70000, 70010),), [(69632, 73728)]),
    # an island across a block boundary: rounded out to pages, one write
    (((60000, 140000),), [(57344, 143360)]),
    # two islands in one block stay one write (zeros between are kept)
    (((0, 10), (60000, 60001)), [(0, 61440)]),
    # islands in blocks apart are two writes
    (((0, 1), (3 * G + 5, 3 * G + 6)), [(0, 4096), (3 * G, 3 * G + 4096)]),
])
def test_runs_are_blocks_trimmed_to_pages(ranges, expected):
    chunk = chunk_with(4 * G, *ranges)
    assert nonzero_runs(chunk, G, bytes(G)) == expected
    # Every non-zero byte is inside a run.
    covered = bytearray(len(chunk))
    for start, end in expected:
        covered[start:end] = chunk[start:end]
    assert bytes(covered) == chunk


def test_short_last_block_keeps_its_partial_page():
    size = 3 * G + 3000
    chunk = chunk_with(size, (size - 1, size))
    assert nonzero_runs(chunk, G, bytes(G)) == [(3 * G, size)]


def test_granularity_4k_is_exact_to_the_page():
    chunk = chunk_with(G, (5000, 5001), (20000, 30000))
    assert nonzero_runs(chunk, 4 * KiB, bytes(4 * KiB)) == [
        (4096, 8192), (16384, 32768)]


# --- the read side: which parts of a chunk are read from the cluster -------

@pytest.mark.parametrize('extents, expected', [
    ([], []),
    ([(10, 0)], []),                           # zero-length: dropped
    ([(20, 5), (0, 10)], [(0, 10), (20, 25)]),  # out of order
    ([(0, 10), (10, 5)], [(0, 15)]),           # touching: one
    ([(0, 10), (5, 2), (8, 10)], [(0, 18)]),   # overlapping (parent+child)
])
def test_merge_extents(extents, expected):
    assert merge_extents(extents) == expected


EXTENTS = [(0, 1), (100, 200), (4096, 8192)]


@pytest.mark.parametrize('start, end, expected', [
    (0, 50, [(0, 1)]),
    (1, 100, []),                        # a hole between extents
    (150, 5000, [(150, 200), (4096, 5000)]),
    (5000, 6000, [(5000, 6000)]),        # inside one extent
    (8192, 9000, []),                    # extent ends are exclusive
    (0, 9000, [(0, 1), (100, 200), (4096, 8192)]),
])
def test_data_pieces(start, end, expected):
    assert data_pieces(start, end, EXTENTS) == expected


@pytest.mark.parametrize('offset, length, size, expected', [
    (0, None, 100, (0, 100)),
    (10, 20, 100, (10, 30)),
    (90, 20, 100, (90, 100)),     # clipped at the end, like a file read
    (100, None, 100, (100, 100)),
    (150, 10, 100, (100, 100)),   # past the end: nothing
    (5, 0, 100, (5, 5)),
])
def test_read_range(offset, length, size, expected):
    assert read_range(offset, length, size) == expected


@pytest.mark.parametrize('offset, length', [(-1, None), (0, -1)])
def test_read_range_refuses_negative(offset, length):
    with pytest.raises(ValueError, match='must not be negative'):
        read_range(offset, length, 100)
