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

"""What a multi-store import or copy is doing, from Image API snapshots.

A pure state machine: :class:`Watcher` is fed what ``GET /v2/images/{id}``
and ``GET /v2/images/{id}/tasks`` answered (plain JSON dicts, as Glance sends
them) and returns a :class:`Progress` the renderers draw.  No I/O here, so
the unit tests replay recorded Glance answers through it.

What Glance 33 tells a client, and so what this module can know:

* ``os_glance_importing_to_stores`` / ``os_glance_failed_import``: sorted,
  comma-joined store names.  Glance adds the requested stores to the first
  when the flow starts and moves each out when its copy ends.
* ``stores``: the stores holding an *active* location.  In the parallel mode
  (``max_parallel_stores > 1``) a store appears here while it is still
  listed as importing: ``stores`` wins.
* The import task's ``message`` is ``"Copied N MiB"`` for the store being
  written, updated at most once a minute and once at the end of each store
  (``CallbackIterator(min_interval=60)``); the parallel mode writes none.
  Our ``format_conversion`` plugin writes its conversion percent there.
* With allow-failure the image turns ``active`` after the first store, so
  the end is the task's end, not the image status.  When an import fails
  without allow-failure, Glance 33 may leave the image ``importing`` with
  stale tracking properties: the task status is the authority.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any, Iterable, Mapping, Sequence

MiB = 1024 * 1024

# Exit statuses of ``glance-imgplugins import`` / ``copy`` / ``watch``.
EXIT_OK = 0            # every requested store holds the image
EXIT_ERROR = 1         # nothing was imported: refused request, auth, input
EXIT_USAGE = 2         # bad command line (argparse's own status)
EXIT_PARTIAL = 3       # allow-failure: the image is usable, some stores failed
EXIT_FAILED = 4        # the import task failed: no usable image from it
EXIT_INTERRUPTED = 130  # Ctrl-C: we stopped watching, the import goes on

_COPIED_RE = re.compile(r'^Copied (\d+) MiB$')
# The conversion percent our format_conversion plugin reports:
# "Converting image from qcow2 to raw: 42% done, 12 s elapsed".
_PERCENT_RE = re.compile(r': (\d{1,3}(?:\.\d+)?)% done(?:,|$)')


class StoreState(str, enum.Enum):
    WAITING = 'waiting'
    IMPORTING = 'importing'
    DONE = 'done'
    FAILED = 'failed'


class Outcome(str, enum.Enum):
    SUCCESS = 'success'    # every store done
    PARTIAL = 'partial'    # task succeeded, some stores failed
    FAILED = 'failed'      # the task failed

    @property
    def exit_status(self) -> int:
        return {Outcome.SUCCESS: EXIT_OK, Outcome.PARTIAL: EXIT_PARTIAL,
                Outcome.FAILED: EXIT_FAILED}[self]


@dataclasses.dataclass(frozen=True)
class StoreProgress:
    name: str
    state: StoreState
    # Bytes known to be in (or written to) this store; None when unknown.
    bytes: int | None = None
    # Why a store failed or waits, in a few words ('' when nothing to add).
    detail: str = ''

    def as_dict(self) -> dict[str, Any]:
        return {'store': self.name, 'state': self.state.value,
                'bytes': self.bytes, 'detail': self.detail}


@dataclasses.dataclass(frozen=True)
class Progress:
    image_id: str
    image_status: str
    task_id: str | None
    task_status: str | None
    task_message: str
    phase: str              # staging, queued, converting, storing, finished
    conversion_percent: float | None
    stores: tuple[StoreProgress, ...]
    elapsed: float
    outcome: Outcome | None = None
    staged_bytes: int | None = None
    staging_total: int | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def store(self, name: str) -> StoreProgress:
        for store in self.stores:
            if store.name == name:
                return store
        raise KeyError(name)


def split_stores(value: Any) -> list[str]:
    """Glance's comma-joined store list (absent, '' or 'a,b') as a list."""
    if not value:
        return []
    return [s.strip() for s in str(value).split(',') if s.strip()]


def parse_copied_bytes(message: str | None) -> int | None:
    """Bytes from Glance's ``"Copied N MiB"`` task message, else None."""
    match = _COPIED_RE.match((message or '').strip())
    return int(match.group(1)) * MiB if match else None


def parse_conversion_percent(message: str | None) -> float | None:
    """The percent our conversion plugin puts in the task message."""
    text = (message or '').strip()
    if not text or _COPIED_RE.match(text):
        return None
    match = _PERCENT_RE.search(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if 0 <= value <= 100 else None


def newest_task(tasks: Iterable[Mapping[str, Any]],
                ignore: Iterable[str] = ()) -> Mapping[str, Any] | None:
    """The newest import task not in ``ignore`` (tasks that were there
    before ours was created)."""
    skip = set(ignore)
    ours = [t for t in tasks if t.get('id') not in skip
            and t.get('type', 'api_image_import') == 'api_image_import']
    if not ours:
        return None
    return max(ours, key=lambda t: str(t.get('created_at') or ''))


class Watcher:
    """Folds snapshots of one image and its new import task into progress.

    ``stores`` is the ordered list of stores the request names; Glance
    writes them in that order when it writes one at a time.  Tasks listed
    in ``known_task_ids`` existed before ours and are ignored.
    ``image_id`` and ``method`` only label the output.
    """

    def __init__(self, image_id: str, stores: Sequence[str], *,
                 known_task_ids: Iterable[str] = (),
                 method: str = 'glance-direct') -> None:
        self.image_id = image_id
        self.order = list(stores)
        self.method = method
        self.known_task_ids = frozenset(known_task_ids)
        self.parallel = False
        # The store Glance is writing when one at a time, and the task
        # message when it became that store: an older "Copied N MiB"
        # belongs to the store before it.
        self._current: str | None = None
        self._message_at_switch = ''
        self._bytes: dict[str, int] = {}
        # Until Glance has built our flow, os_glance_failed_import still
        # lists the failures of the previous import (e.g. the very stores
        # --retry-failed copies to): it counts only after that.
        self._flow_started = False
        self._last: Progress | None = None

    @property
    def last(self) -> Progress | None:
        return self._last

    def staging(self, sent: int, total: int | None, elapsed: float
                ) -> Progress:
        """Progress while the CLI itself uploads the data to staging."""
        progress = Progress(
            image_id=self.image_id, image_status='uploading', task_id=None,
            task_status=None, task_message='', phase='staging',
            conversion_percent=None,
            stores=tuple(StoreProgress(s, StoreState.WAITING)
                         for s in self.order),
            elapsed=elapsed, staged_bytes=sent, staging_total=total)
        self._last = progress
        return progress

    def update(self, image: Mapping[str, Any],
               tasks: Sequence[Mapping[str, Any]], elapsed: float
               ) -> Progress:
        task = newest_task(tasks, self.known_task_ids)
        task_status = task.get('status') if task else None
        message = str((task or {}).get('message') or '')
        task_input = (task or {}).get('input') or {}
        backend = task_input.get('backend') if isinstance(
            task_input, Mapping) else None
        if isinstance(backend, list) and backend and all(
                isinstance(s, str) for s in backend):
            # Glance's own list (for --all-stores it is the resolved one).
            self.order = [s for s in self.order if s in backend] + [
                s for s in backend if s not in self.order]

        held = set(split_stores(image.get('stores')))
        importing = set(split_stores(
            image.get('os_glance_importing_to_stores')))
        ended = task_status in ('success', 'failure')
        if importing and task is not None:
            self._flow_started = True
        failed = set(split_stores(image.get('os_glance_failed_import')))
        if not (self._flow_started or ended):
            failed = set()
        size = image.get('size')
        size = size if isinstance(size, int) else None

        # Parallel mode shows itself when a store ends while one before it
        # in the order is still being imported.
        if not self.parallel:
            seen_pending = False
            for name in self.order:
                if name in importing and name not in held:
                    seen_pending = True
                elif seen_pending and (name in held or name in failed):
                    self.parallel = True
                    break

        percent = parse_conversion_percent(message)
        copied = parse_copied_bytes(message)
        if task is None or task_status == 'pending':
            phase = 'queued'
        elif ended:
            phase = 'finished'
        elif percent is not None and percent < 100:
            phase = 'converting'
        elif not self._flow_started:
            phase = 'queued'
        else:
            phase = 'storing'

        remaining = [s for s in self.order if s in importing
                     and s not in held and s not in failed]
        current = None
        if phase == 'storing' and remaining and not self.parallel:
            current = remaining[0]
        if current != self._current:
            self._current = current
            self._message_at_switch = message
        if (current is not None and copied is not None
                and message != self._message_at_switch):
            self._bytes[current] = copied

        result = []
        for name in self.order:
            if name in held:
                result.append(StoreProgress(name, StoreState.DONE, size))
            elif name in failed:
                result.append(StoreProgress(
                    name, StoreState.FAILED, None,
                    'Glance marked the store failed'))
            elif ended:
                if name in importing:
                    detail = ('import failed before this store finished'
                              if task_status == 'failure' else
                              'not written')
                elif task_status == 'failure':
                    detail = 'written, then rolled back'
                else:
                    detail = 'not in the image locations'
                result.append(StoreProgress(name, StoreState.FAILED, None,
                                            detail))
            elif self._flow_started and name not in importing:
                # Glance drops a store from the importing list only with
                # the same save that adds its location or marks it failed:
                # neither here means a revert removed what it wrote.
                result.append(StoreProgress(name, StoreState.FAILED, None,
                                            'written, then rolled back'))
            elif phase == 'storing' and (self.parallel or name == current):
                result.append(StoreProgress(name, StoreState.IMPORTING,
                                            self._bytes.get(name)))
            else:
                result.append(StoreProgress(name, StoreState.WAITING))

        outcome = None
        if ended:
            if task_status == 'failure':
                outcome = Outcome.FAILED
            elif all(s.state is StoreState.DONE for s in result):
                outcome = Outcome.SUCCESS
            elif any(s.state is StoreState.DONE for s in result) or (
                    self.method == 'copy-image'
                    and image.get('status') == 'active'):
                outcome = Outcome.PARTIAL
            else:
                outcome = Outcome.FAILED

        progress = Progress(
            image_id=self.image_id,
            image_status=str(image.get('status') or ''),
            task_id=task.get('id') if task else None,
            task_status=task_status, task_message=message, phase=phase,
            conversion_percent=percent, stores=tuple(result),
            elapsed=elapsed, outcome=outcome)
        self._last = progress
        return progress
