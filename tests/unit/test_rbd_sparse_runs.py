"""Which ranges ``rbd_sparse`` writes: blocks at the granularity, ends
trimmed to 4 KiB pages."""

from __future__ import annotations

import pytest

from glance_imgplugins.stores.rbd_sparse import nonzero_runs

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
