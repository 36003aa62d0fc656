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

"""The multi-store watcher replayed over answers recorded from a real Glance.

Every ``tests/unit/data/multistore/*.jsonl`` line is what Glance 33 answered
to ``GET /v2/images/{id}`` and ``GET /v2/images/{id}/tasks`` during a real
import or copy (``record.py`` beside them re-records them: one file store is
broken for real, its datadir replaced by a regular file).  Where a test
needs a message Glance only writes on long copies ("Copied N MiB" once a
minute) or our conversion plugin writes, it changes only the message of a
recorded snapshot, to the exact text the server-side code formats.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from glance_imgplugins.multistore import progress as prog
from glance_imgplugins.multistore.progress import (
    MiB, Outcome, StoreState, Watcher)

DATA = Path(__file__).parent / 'data' / 'multistore'
THREE = ['fast', 'bad', 'cheap']


def recording(name: str) -> list[dict[str, Any]]:
    with open(DATA / ('%s.jsonl' % name)) as f:
        return [json.loads(line) for line in f if line.strip()]


def replay(watcher: Watcher, snaps: list[dict[str, Any]]
           ) -> list[prog.Progress]:
    return [watcher.update(s['image'], s['tasks'], s['elapsed'])
            for s in snaps]


def states(progress: prog.Progress) -> dict[str, str]:
    return {s.name: s.state.value for s in progress.stores}


def image_id(snaps: list[dict[str, Any]]) -> str:
    return str(snaps[0]['image']['id'])


# --- message parsing ---------------------------------------------------------

@pytest.mark.parametrize('message, expected', [
    ('Copied 24 MiB', 24 * MiB),      # glance _ImportToStore._status_callback
    ('Copied 0 MiB', 0),
    ('', None),
    (None, None),
    ('Task failed due to Internal Error', None),
    ('Copied 24 MiB and more', None),
])
def test_copied_bytes(message: str | None, expected: int | None) -> None:
    assert prog.parse_copied_bytes(message) == expected


@pytest.mark.parametrize('message, expected', [
    # format_conversion's own wording (plugins/base.py PercentMessage).
    ('Converting image from qcow2 to raw: 0% done, 0 s elapsed', 0.0),
    ('Converting image from qcow2 to raw: 42% done, 12 s elapsed', 42.0),
    ('Converting image from vmdk to raw: 100% done, 95 s elapsed', 100.0),
    # ... and its earlier wording, without the elapsed time.
    ('Converting image from qcow2 to raw: 42% done', 42.0),
    ('Copied 24 MiB', None),
    ('Image refused: 50% of something', None),
    ('Converting image from qcow2 to raw: 420% done, 1 s elapsed', None),
])
def test_conversion_percent(message: str, expected: float | None) -> None:
    assert prog.parse_conversion_percent(message) == expected


def test_split_stores_handles_absent_and_empty() -> None:
    assert prog.split_stores(None) == []
    assert prog.split_stores('') == []
    assert prog.split_stores('bad,cheap,fast') == ['bad', 'cheap', 'fast']


def test_newest_task_skips_known_tasks() -> None:
    snaps = recording('copy_retry_failed')
    tasks = snaps[0]['tasks']
    assert len(tasks) == 2
    old = next(t for t in tasks if t['status'] == 'success')
    new = prog.newest_task(tasks, ignore=[old['id']])
    assert new is not None and new['status'] == 'processing'
    assert prog.newest_task(tasks, ignore=[t['id'] for t in tasks]) is None


# --- serial store writes (max_parallel_stores = 1) ---------------------------

def test_serial_allow_failure_replay() -> None:
    snaps = recording('serial_allow_failure')
    seen = replay(Watcher(image_id(snaps), THREE), snaps)

    # Staged, task pending: nothing is being written yet.
    assert seen[0].phase == 'queued'
    assert set(states(seen[0]).values()) == {'waiting'}
    # The flow started: Glance writes the stores one by one, in order.
    assert states(seen[1]) == {'fast': 'importing', 'bad': 'waiting',
                               'cheap': 'waiting'}
    # fast done (active after the first store), bad failed, cheap next.
    assert seen[2].image_status == 'active'
    assert states(seen[2]) == {'fast': 'done', 'bad': 'failed',
                               'cheap': 'importing'}
    assert seen[2].store('fast').bytes == 24 * MiB
    # "Copied 24 MiB" is fast's last report, not cheap's.
    assert seen[2].store('cheap').bytes is None
    assert all(p.outcome is None for p in seen[:-1])

    final = seen[-1]
    assert final.outcome is Outcome.PARTIAL
    assert final.outcome.exit_status == prog.EXIT_PARTIAL == 3
    assert states(final) == {'fast': 'done', 'bad': 'failed',
                             'cheap': 'done'}
    assert final.store('bad').detail == 'Glance marked the store failed'


def test_serial_must_succeed_failure_replay() -> None:
    snaps = recording('serial_must_succeed')
    seen = replay(Watcher(image_id(snaps), THREE), snaps)

    # Without allow-failure the image stays importing while fast is held.
    assert seen[2].image_status == 'importing'
    assert states(seen[2])['fast'] == 'done'
    final = seen[-1]
    assert final.outcome is Outcome.FAILED
    assert final.outcome.exit_status == prog.EXIT_FAILED == 4
    # Glance 33 leaves the image importing with cheap still "importing":
    # the failed task ends the watch, and every store is reported failed.
    assert final.image_status == 'importing'
    assert snaps[-1]['image']['os_glance_importing_to_stores'] == 'cheap'
    assert states(final) == {s: 'failed' for s in THREE}
    assert final.store('fast').detail == 'written, then rolled back'
    assert final.store('bad').detail == 'Glance marked the store failed'
    assert final.store('cheap').detail == (
        'import failed before this store finished')
    assert final.task_message == 'Task failed due to Internal Error'


# --- parallel store writes (max_parallel_stores = 3) -------------------------

def test_parallel_allow_failure_replay() -> None:
    snaps = recording('parallel_allow_failure')
    watcher = Watcher(image_id(snaps), THREE)
    seen = replay(watcher, snaps)

    # Parallel mode: fast and cheap are held while all three are still
    # listed as importing; "stores" wins, and the mode is recognised.
    mid = seen[2]
    assert snaps[2]['image']['os_glance_importing_to_stores'] == \
        'bad,cheap,fast'
    assert states(mid) == {'fast': 'done', 'bad': 'importing',
                           'cheap': 'done'}
    assert watcher.parallel
    final = seen[-1]
    assert final.outcome is Outcome.PARTIAL
    assert states(final) == {'fast': 'done', 'bad': 'failed',
                             'cheap': 'done'}


def test_parallel_must_succeed_failure_replay() -> None:
    snaps = recording('parallel_must_succeed')
    seen = replay(Watcher(image_id(snaps), THREE), snaps)
    final = seen[-1]
    # The parallel path records no failed store and leaves every store
    # "importing": only the task status tells the import failed.
    assert snaps[-1]['image']['os_glance_failed_import'] == ''
    assert final.outcome is Outcome.FAILED
    assert states(final) == {s: 'failed' for s in THREE}
    assert {s.detail for s in final.stores} == {
        'import failed before this store finished'}


# --- copy-image --------------------------------------------------------------

def test_copy_retry_failed_ignores_the_previous_failure() -> None:
    snaps = recording('copy_retry_failed')
    old = [t['id'] for t in snaps[0]['tasks'] if t['status'] == 'success']
    seen = replay(Watcher(image_id(snaps), ['bad'], known_task_ids=old,
                          method='copy-image'), snaps)
    # Before Glance builds the copy flow, os_glance_failed_import still
    # says bad (the failure being retried): not a new failure.
    assert snaps[0]['image']['os_glance_failed_import'] == 'bad'
    assert states(seen[0]) == {'bad': 'waiting'}
    assert states(seen[1]) == {'bad': 'importing'}
    final = seen[-1]
    assert final.outcome is Outcome.SUCCESS and final.outcome.exit_status == 0
    assert final.store('bad').bytes == 24 * MiB
    assert final.task_id not in old


def test_copy_without_known_tasks_would_follow_the_old_task() -> None:
    """Why known_task_ids matters: the older finished task would end the
    watch at once."""
    snaps = recording('copy_retry_failed')
    # Make the old task the newest one, as if ours had not appeared yet.
    snap = copy.deepcopy(snaps[0])
    snap['tasks'] = [t for t in snap['tasks'] if t['status'] == 'success']
    watcher = Watcher(image_id(snaps), ['bad'], method='copy-image')
    assert watcher.update(snap['image'], snap['tasks'], 0.1).finished
    watcher = Watcher(image_id(snaps), ['bad'], method='copy-image',
                      known_task_ids=[snap['tasks'][0]['id']])
    progress = watcher.update(snap['image'], snap['tasks'], 0.1)
    assert not progress.finished and progress.phase == 'queued'


# --- messages Glance writes only on long copies, and our conversion ----------

def _with_message(snap: dict[str, Any], message: str) -> dict[str, Any]:
    snap = copy.deepcopy(snap)
    snap['tasks'][0]['message'] = message
    return snap


def test_mid_store_copied_message_goes_to_the_store_being_written() -> None:
    snaps = recording('serial_allow_failure')
    watcher = Watcher(image_id(snaps), THREE)
    first = snaps[1]          # flow started, fast being written
    assert watcher.update(first['image'], first['tasks'], 1).store(
        'fast').bytes is None
    mid = _with_message(first, 'Copied 8 MiB')
    progress = watcher.update(mid['image'], mid['tasks'], 61)
    assert progress.store('fast').state is StoreState.IMPORTING
    assert progress.store('fast').bytes == 8 * MiB
    # fast ends; cheap starts while the message is still fast's last one.
    after = snaps[2]
    progress = watcher.update(after['image'], after['tasks'], 70)
    assert progress.store('fast').bytes == 24 * MiB
    assert progress.store('cheap').bytes is None
    later = _with_message(after, 'Copied 16 MiB')
    progress = watcher.update(later['image'], later['tasks'], 131)
    assert progress.store('cheap').bytes == 16 * MiB


def test_conversion_phase_keeps_every_store_waiting() -> None:
    snaps = recording('serial_allow_failure')
    watcher = Watcher(image_id(snaps), THREE)
    converting = _with_message(
        snaps[1], 'Converting image from qcow2 to raw: 42% done, 3 s elapsed')
    progress = watcher.update(converting['image'], converting['tasks'], 3)
    assert progress.phase == 'converting'
    assert progress.conversion_percent == 42.0
    assert set(states(progress).values()) == {'waiting'}
    # 100% done: conversion over, the first store is being written.
    done = _with_message(
        snaps[1], 'Converting image from qcow2 to raw: 100% done, 9 s elapsed')
    progress = watcher.update(done['image'], done['tasks'], 9)
    assert progress.phase == 'storing'
    assert states(progress)['fast'] == 'importing'


def test_task_input_backend_orders_the_stores() -> None:
    """With --all-stores the CLI may not know Glance's order: the task's
    input (admins see it) gives it."""
    snaps = recording('serial_allow_failure')
    assert snaps[1]['tasks'][0]['input']['backend'] == THREE
    watcher = Watcher(image_id(snaps), ['cheap'])
    progress = watcher.update(snaps[1]['image'], snaps[1]['tasks'], 1)
    assert [s.name for s in progress.stores] == ['cheap', 'fast', 'bad']


def test_staging_progress() -> None:
    watcher = Watcher('abc', THREE)
    progress = watcher.staging(12 * MiB, 24 * MiB, 0.5)
    assert progress.phase == 'staging'
    assert (progress.staged_bytes, progress.staging_total) == (
        12 * MiB, 24 * MiB)
    assert watcher.last is progress
    assert not progress.finished


def test_conversion_replay() -> None:
    """format_conversion (progress_interval 0) turning a qcow2 into raw,
    then Glance writing fast and cheap."""
    snaps = recording('serial_conversion')
    seen = replay(Watcher(image_id(snaps), ['fast', 'cheap']), snaps)
    converting = [p for p in seen if p.phase == 'converting']
    assert [p.conversion_percent for p in converting] == [0.0, 29.0, 45.0,
                                                          76.0]
    for progress in converting:
        assert states(progress) == {'fast': 'waiting', 'cheap': 'waiting'}
    # 100% done: the plugin set raw and the new size; fast is written.
    at_100 = next(p for p in seen if p.conversion_percent == 100.0)
    assert at_100.phase == 'storing'
    assert states(at_100) == {'fast': 'importing', 'cheap': 'waiting'}
    final = seen[-1]
    assert final.outcome is Outcome.SUCCESS
    assert [s.bytes for s in final.stores] == [512 * MiB, 512 * MiB]
    assert snaps[-1]['image']['disk_format'] == 'raw'
