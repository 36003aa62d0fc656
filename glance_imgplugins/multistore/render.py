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

"""Drawing :class:`~.progress.Progress`: live lines, plain lines, JSON lines.

* :class:`LiveRenderer` (stdout is a terminal): one line per store plus a
  header line, redrawn in place on every poll.
* :class:`PlainRenderer` (pipes, logs): one timestamped line per change.
* :class:`JsonRenderer` (``--progress json``): one JSON object per line
  per change, remarks included, ending with an ``{"event": "result", ...}``
  document; see ``doc/source/multistore.rst`` for the schema.

The commands draw on stderr: stdout carries only the command's result,
formatted by cliff (``-f table|json|yaml|value``).  All three end with
:meth:`Renderer.finish` (or ``lost`` / ``stuck`` / ``interrupted``).  The
text helpers are pure functions so the tests check them without a
terminal.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, TextIO

from glance_imgplugins.multistore.progress import (
    MiB, Outcome, Progress, StoreProgress, StoreState)

_STATE_MARK = {StoreState.WAITING: '..', StoreState.IMPORTING: '>>',
               StoreState.DONE: 'ok', StoreState.FAILED: '!!'}


def format_bytes(value: int | None) -> str:
    if value is None:
        return '-'
    if value < MiB:
        return '%d B' % value
    if value < 1024 * MiB:
        return '%.1f MiB' % (value / MiB)
    return '%.2f GiB' % (value / (1024 * MiB))


def format_elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return '%d:%02d:%02d' % (hours, minutes, secs)
    return '%02d:%02d' % (minutes, secs)


def header_line(progress: Progress) -> str:
    parts = ['image %s' % progress.image_id, progress.image_status or '?']
    if progress.phase == 'staging':
        total = progress.staging_total
        sent = progress.staged_bytes or 0
        if total:
            parts.append('uploading to staging %d%% (%s of %s)' % (
                100 * sent // max(total, 1), format_bytes(sent),
                format_bytes(total)))
        else:
            parts.append('uploading to staging (%s)' % format_bytes(sent))
    elif progress.phase == 'converting':
        parts.append('converting %d%%' % int(progress.conversion_percent
                                             or 0))
    elif progress.phase == 'queued':
        parts.append('waiting for the import task')
    elif progress.phase == 'storing':
        parts.append('writing to stores')
    elif progress.outcome is not None:
        parts.append('task %s' % (progress.task_status or '?'))
    parts.append(format_elapsed(progress.elapsed))
    return '  '.join(parts)


def store_line(store: StoreProgress, name_width: int = 0) -> str:
    text = '  %s %-*s  %-9s' % (_STATE_MARK[store.state], name_width,
                                store.name, store.state.value)
    if store.bytes is not None:
        verb = 'stored' if store.state is StoreState.DONE else 'copied'
        text += '  %s %s' % (format_bytes(store.bytes), verb)
    if store.detail:
        text += '  (%s)' % store.detail
    return text.rstrip()


def live_lines(progress: Progress) -> list[str]:
    width = max((len(s.name) for s in progress.stores), default=0)
    return [header_line(progress)] + [store_line(s, width)
                                      for s in progress.stores]


def summary_table(progress: Progress) -> str:
    """The final table: store, outcome, bytes, detail."""
    rows = [('Store', 'Result', 'Size', 'Detail')]
    for store in progress.stores:
        rows.append((store.name, store.state.value,
                     format_bytes(store.bytes), store.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'
    out = [rule]
    for index, row in enumerate(rows):
        out.append('| ' + ' | '.join(
            cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + ' |')
        if index == 0:
            out.append(rule)
    out.append(rule)
    return '\n'.join(out)


def outcome_text(progress: Progress,
                 commands: str = 'glance-imgplugins ') -> str:
    done = [s.name for s in progress.stores if s.state is StoreState.DONE]
    failed = [s.name for s in progress.stores
              if s.state is StoreState.FAILED]
    if progress.outcome is Outcome.SUCCESS:
        return 'Image %s is in every requested store (%s) after %s.' % (
            progress.image_id, ', '.join(done),
            format_elapsed(progress.elapsed))
    if progress.outcome is Outcome.PARTIAL:
        return ('Image %s is %s in %s; failed in %s. Retry with: '
                '%scopy %s --retry-failed' % (
                    progress.image_id, progress.image_status,
                    ', '.join(done) or 'no new store', ', '.join(failed),
                    commands, progress.image_id))
    text = 'Import of image %s failed (task %s: %s); image status %s.' % (
        progress.image_id, progress.task_id or '?',
        progress.task_message or 'no message', progress.image_status)
    return text


def result_document(progress: Progress, **extra: Any) -> dict[str, Any]:
    """The ``--json`` final document (also the last JSON line)."""
    outcome = progress.outcome
    doc: dict[str, Any] = {
        'event': 'result',
        'image_id': progress.image_id,
        'task_id': progress.task_id,
        'task_status': progress.task_status,
        'task_message': progress.task_message,
        'image_status': progress.image_status,
        'outcome': outcome.value if outcome else None,
        'exit_status': outcome.exit_status if outcome else None,
        'elapsed': round(progress.elapsed, 2),
        'stores': [s.as_dict() for s in progress.stores],
    }
    doc.update(extra)
    return doc


class Renderer:
    """Interface shared by the three output styles."""

    def __init__(self, out: TextIO, err: TextIO,
                 commands: str = 'glance-imgplugins ') -> None:
        self.out = out
        self.err = err
        # How this front end spells its commands, for the hints printed.
        self.commands = commands

    def start(self, **info: Any) -> None:
        pass

    def update(self, progress: Progress) -> None:
        raise NotImplementedError

    def note(self, text: str) -> None:
        """A remark for people (never on stdout in JSON mode)."""
        self.out.write(text + '\n')
        self.out.flush()

    def finish(self, progress: Progress, **extra: Any) -> None:
        self.out.write(outcome_text(progress, self.commands) + '\n')
        self.out.flush()

    def interrupted(self, progress: Progress | None, resume: str) -> None:
        self.err.write('\nStopped watching; the import goes on in Glance.\n'
                       'Watch it again with: %s\n' % resume)
        self.err.flush()

    def lost(self, progress: Progress | None, message: str,
             resume: str) -> None:
        self.err.write(message + '\n')
        self.err.flush()

    def stuck(self, progress: Progress, message: str) -> None:
        self.err.write(message + '\n')
        self.err.flush()

    def error(self, message: str, exit_status: int) -> None:
        """The command failed before or while running (message only)."""


class LiveRenderer(Renderer):
    """Redraws the header and store lines in place (ANSI, terminals only)."""

    def __init__(self, out: TextIO, err: TextIO,
                 columns: int | None = None,
                 commands: str = 'glance-imgplugins ') -> None:
        super().__init__(out, err, commands)
        self._drawn = 0
        self._columns = columns

    def update(self, progress: Progress) -> None:
        lines = live_lines(progress)
        # A wrapped line would throw the cursor arithmetic off: cut it.
        columns = self._columns or shutil.get_terminal_size((100, 24)).columns
        width = (columns if columns > 20 else 100) - 1
        if self._drawn:
            # Back to the first line drawn, then rewrite every line.
            self.out.write('\x1b[%dF' % self._drawn)
        for line in lines:
            self.out.write('\x1b[2K' + line[:width] + '\n')
        self._drawn = len(lines)
        self.out.flush()

    def note(self, text: str) -> None:
        self._drawn = 0  # a note moves the block down: start a new one
        super().note(text)

    def interrupted(self, progress: Progress | None, resume: str) -> None:
        self._drawn = 0
        super().interrupted(progress, resume)

    def lost(self, progress: Progress | None, message: str,
             resume: str) -> None:
        self._drawn = 0
        super().lost(progress, message, resume)

    def stuck(self, progress: Progress, message: str) -> None:
        self._drawn = 0
        super().stuck(progress, message)


class PlainRenderer(Renderer):
    """A line for each change, prefixed with the elapsed time."""

    def __init__(self, out: TextIO, err: TextIO,
                 commands: str = 'glance-imgplugins ') -> None:
        super().__init__(out, err, commands)
        self._stores: dict[str, tuple[str, int | None, str]] = {}
        self._header: tuple[Any, ...] | None = None

    def _emit(self, progress: Progress, text: str) -> None:
        self.out.write('[%s] %s\n' % (format_elapsed(progress.elapsed), text))

    def update(self, progress: Progress) -> None:
        staged = None
        if progress.phase == 'staging' and progress.staging_total:
            staged = 10 * (progress.staged_bytes or 0) // max(
                progress.staging_total, 1)
        percent = progress.conversion_percent
        header = (progress.phase, progress.image_status,
                  None if percent is None else int(percent) // 10, staged)
        if header != self._header:
            self._header = header
            self._emit(progress, header_line(progress).rsplit('  ', 1)[0])
        for store in progress.stores:
            key = (store.state.value, store.bytes, store.detail)
            if self._stores.get(store.name) != key:
                self._stores[store.name] = key
                self._emit(progress, store_line(store).strip())
        self.out.flush()


class JsonRenderer(Renderer):
    """JSON lines: start, note, phase, staging, store, then result, lost,
    stuck, interrupted or error.  Nothing else is written to ``out``."""

    def __init__(self, out: TextIO, err: TextIO,
                 commands: str = 'glance-imgplugins ') -> None:
        super().__init__(out, err, commands)
        self._stores: dict[str, tuple[str, int | None, str]] = {}
        self._phase: tuple[Any, ...] | None = None
        self._staged: int | None = None

    def _event(self, doc: dict[str, Any]) -> None:
        self.out.write(json.dumps(doc, sort_keys=True) + '\n')
        self.out.flush()

    def start(self, **info: Any) -> None:
        self._event(dict(info, event='start'))

    def note(self, text: str) -> None:
        self._event({'event': 'note', 'message': text})

    def update(self, progress: Progress) -> None:
        elapsed = round(progress.elapsed, 2)
        if progress.phase == 'staging':
            decile = 10 * (progress.staged_bytes or 0) // max(
                progress.staging_total or 1, 1)
            if decile != self._staged:
                self._staged = decile
                self._event({'event': 'staging', 'elapsed': elapsed,
                             'bytes': progress.staged_bytes,
                             'total': progress.staging_total})
        phase = (progress.phase, progress.image_status, progress.task_id,
                 progress.task_status, progress.conversion_percent)
        if phase != self._phase:
            self._phase = phase
            self._event({'event': 'phase', 'elapsed': elapsed,
                         'phase': progress.phase,
                         'image_status': progress.image_status,
                         'task_id': progress.task_id,
                         'task_status': progress.task_status,
                         'conversion_percent': progress.conversion_percent})
        for store in progress.stores:
            key = (store.state.value, store.bytes, store.detail)
            if self._stores.get(store.name) != key:
                self._stores[store.name] = key
                self._event(dict(store.as_dict(), event='store',
                                 elapsed=elapsed))

    def finish(self, progress: Progress, **extra: Any) -> None:
        self._event(result_document(progress, **extra))

    def _ending(self, event: str, progress: Progress | None,
                **fields: Any) -> None:
        doc: dict[str, Any] = dict(fields, event=event)
        if progress is not None:
            doc.update(image_id=progress.image_id, task_id=progress.task_id,
                       elapsed=round(progress.elapsed, 2),
                       stores=[s.as_dict() for s in progress.stores])
        self._event(doc)

    def interrupted(self, progress: Progress | None, resume: str) -> None:
        self._ending('interrupted', progress, resume=resume,
                     message='Stopped watching; the import goes on in '
                             'Glance.')

    def lost(self, progress: Progress | None, message: str,
             resume: str) -> None:
        self._ending('lost', progress, resume=resume, message=message)

    def stuck(self, progress: Progress, message: str) -> None:
        self._ending('stuck', progress, message=message)

    def error(self, message: str, exit_status: int) -> None:
        self._event({'event': 'error', 'error': message,
                     'exit_status': exit_status})


class QuietRenderer(Renderer):
    """``--progress none``: only the result (and errors) are printed."""

    def update(self, progress: Progress) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def finish(self, progress: Progress, **extra: Any) -> None:
        pass


#: ``--progress`` choices.
STYLES = ('auto', 'live', 'plain', 'json', 'none')


def make_renderer(out: TextIO, err: TextIO, *, json_lines: bool = False,
                  live: bool | None = None, style: str = 'auto',
                  commands: str = 'glance-imgplugins ') -> Renderer:
    """``auto`` is ``live`` on a terminal, ``plain`` elsewhere."""
    if json_lines or style == 'json':
        return JsonRenderer(out, err, commands)
    if style == 'none':
        return QuietRenderer(out, err, commands)
    if style != 'auto':
        live = style == 'live'
    if live is None:
        live = bool(getattr(out, 'isatty', lambda: False)())
    if live:
        return LiveRenderer(out, err, commands=commands)
    return PlainRenderer(out, err, commands)
