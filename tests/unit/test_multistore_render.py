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

"""The three output styles, fed by replays of recorded Glance answers."""

from __future__ import annotations

import io
import json
import re

from glance_imgplugins.multistore import render
from glance_imgplugins.multistore.progress import MiB, Watcher
from tests.unit.test_multistore_progress import (
    THREE, image_id, recording, replay)


def _replayed(name: str, stores: list[str] = THREE):
    snaps = recording(name)
    return snaps, replay(Watcher(image_id(snaps), stores), snaps)


def test_format_helpers() -> None:
    assert render.format_bytes(None) == '-'
    assert render.format_bytes(512) == '512 B'
    assert render.format_bytes(24 * MiB) == '24.0 MiB'
    assert render.format_bytes(3 * 1024 * MiB) == '3.00 GiB'
    assert render.format_elapsed(0) == '00:00'
    assert render.format_elapsed(75.9) == '01:15'
    assert render.format_elapsed(3725) == '1:02:05'


def test_live_lines_one_per_store() -> None:
    _snaps, seen = _replayed('serial_allow_failure')
    lines = render.live_lines(seen[2])
    assert len(lines) == 1 + len(THREE)
    assert 'writing to stores' in lines[0] and lines[0].endswith('00:01')
    assert re.match(r'^  ok fast \s+done\s+24\.0 MiB stored$', lines[1])
    assert re.match(r'^  !! bad  \s+failed\s+\(Glance marked the store '
                    r'failed\)$', lines[2])
    assert re.match(r'^  >> cheap\s+importing$', lines[3])


def test_live_renderer_redraws_in_place() -> None:
    _snaps, seen = _replayed('serial_allow_failure')
    out = io.StringIO()
    renderer = render.LiveRenderer(out, io.StringIO(), columns=60)
    renderer.update(seen[1])
    first = out.getvalue()
    assert '\x1b[' not in first.replace('\x1b[2K', '')
    renderer.update(seen[2])
    second = out.getvalue()[len(first):]
    # Back up over the 4 lines drawn, then rewrite each one cleared.
    assert second.startswith('\x1b[4F')
    assert second.count('\x1b[2K') == 4
    # Lines are cut to the terminal width so none wraps.
    assert max(len(line.replace('\x1b[2K', '').replace('\x1b[4F', ''))
               for line in second.splitlines()) == 59


def test_plain_renderer_prints_changes_only() -> None:
    snaps, seen = _replayed('serial_allow_failure')
    out = io.StringIO()
    renderer = render.PlainRenderer(out, io.StringIO())
    for progress in seen:
        renderer.update(progress)
        renderer.update(progress)  # a repeated poll prints nothing new
    renderer.finish(seen[-1])
    text = out.getvalue()
    assert '\x1b' not in text
    lines = text.splitlines()
    assert sum('fast  importing' in line for line in lines) == 1
    assert '[00:01] ok fast  done       24.0 MiB stored' in lines
    # The table is the command's result (cliff, on stdout), not progress.
    assert not any(line.startswith('|') for line in lines)
    assert lines[-1].startswith('Image %s is active in fast, cheap; failed '
                                'in bad. Retry with: glance-imgplugins copy'
                                % image_id(snaps))


def test_hints_use_the_front_end_spelling() -> None:
    _snaps, seen = _replayed('serial_allow_failure')
    out = io.StringIO()
    renderer = render.PlainRenderer(out, io.StringIO(),
                                    commands='openstack image multistore ')
    renderer.finish(seen[-1])
    assert ('Retry with: openstack image multistore copy %s --retry-failed'
            % seen[-1].image_id) in out.getvalue()


def test_json_renderer_events_and_result() -> None:
    snaps, seen = _replayed('serial_must_succeed')
    out = io.StringIO()
    renderer = render.JsonRenderer(out, io.StringIO())
    renderer.start(method='glance-direct', stores=THREE)
    for progress in seen:
        renderer.update(progress)
    renderer.finish(seen[-1], method='glance-direct')
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0] == {'event': 'start', 'method': 'glance-direct',
                         'stores': THREE}
    kinds = {e['event'] for e in events}
    assert kinds == {'start', 'phase', 'store', 'result'}
    fast = [e['state'] for e in events
            if e['event'] == 'store' and e['store'] == 'fast']
    assert fast == ['waiting', 'importing', 'done', 'failed']
    result = events[-1]
    assert result['event'] == 'result'
    assert result['outcome'] == 'failed' and result['exit_status'] == 4
    assert result['image_id'] == image_id(snaps)
    assert result['task_message'] == 'Task failed due to Internal Error'
    assert [s['state'] for s in result['stores']] == ['failed'] * 3


def test_json_mode_writes_only_json_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = render.JsonRenderer(out, err)
    renderer.note('Created image x')
    renderer.interrupted(None, 'glance-imgplugins watch x')
    renderer.lost(None, 'Lost contact', 'glance-imgplugins watch x')
    renderer.error('Cannot reach the Image API', 1)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events == [
        {'event': 'note', 'message': 'Created image x'},
        {'event': 'interrupted', 'resume': 'glance-imgplugins watch x',
         'message': 'Stopped watching; the import goes on in Glance.'},
        {'event': 'lost', 'resume': 'glance-imgplugins watch x',
         'message': 'Lost contact'},
        {'event': 'error', 'error': 'Cannot reach the Image API',
         'exit_status': 1}]
    assert err.getvalue() == ''


def test_summary_table_columns_line_up() -> None:
    _snaps, seen = _replayed('parallel_allow_failure')
    table = render.summary_table(seen[-1]).splitlines()
    assert len({len(line) for line in table}) == 1
    assert table[1].split('|')[1:-1] == [' Store ', ' Result ',
                                         ' Size     ', ' Detail' + ' ' * 25]


def test_make_renderer_picks_by_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(render.make_renderer(Tty(), io.StringIO()),
                      render.LiveRenderer)
    assert isinstance(render.make_renderer(io.StringIO(), io.StringIO()),
                      render.PlainRenderer)
    assert isinstance(render.make_renderer(Tty(), io.StringIO(),
                                           json_lines=True),
                      render.JsonRenderer)
    assert isinstance(render.make_renderer(io.StringIO(), io.StringIO(),
                                           style='live'),
                      render.LiveRenderer)
    assert isinstance(render.make_renderer(Tty(), io.StringIO(),
                                           style='plain'),
                      render.PlainRenderer)
    assert isinstance(render.make_renderer(Tty(), io.StringIO(),
                                           style='none'),
                      render.QuietRenderer)
