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

"""Starting an import or copy, and watching it until Glance is done.

The API side of the multi-store commands (``openstack image multistore
import|copy|watch`` and ``glance-imgplugins import|copy|watch``): the calls
go to the Image API through :class:`.api.Api`; what the answers mean is
decided by :mod:`.progress`, how it looks by :mod:`.render`.  Every method
returns a :class:`Result`; the command turns it into output and an exit
status (:mod:`glance_imgplugins.cmd.status`).

Watching survives the API going away for a while: a poll that cannot reach
the API (or gets 502/503/504) is retried with a doubling delay for
``retry_for`` seconds, then the command gives up with ``LOST`` and the
``watch`` command that resumes.  A task that stopped moving is reported as
``STUCK`` by Glance's own import-lock rule (see :func:`stale_after`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

from glance_imgplugins import exception
from glance_imgplugins.cmd import status as st
from glance_imgplugins.multistore import progress as prog
from glance_imgplugins.multistore.api import (
    TRANSIENT_STATUSES, Api, CountingReader)
from glance_imgplugins.multistore.render import Renderer

Clock = Callable[[], float]

#: Glance 33 busts an import lock whose task was last updated this long ago
#: (glance/api/v2/images.py _enforce_import_lock); twice that when pending.
IMPORT_LOCK_EXPIRY = 3600.0


@dataclasses.dataclass
class ImportRequest:
    name: str | None
    disk_format: str
    container_format: str
    properties: dict[str, str]
    stores: list[str] | None          # None with all_stores
    all_stores: bool
    allow_failure: bool
    file: str | None = None
    uri: str | None = None
    wait: bool = True


@dataclasses.dataclass
class Result:
    """What a command ends with: its exit status and what it last saw."""

    status: int
    # success, partial, failed, started, lost, stuck, interrupted
    outcome: str
    image_id: str
    progress: prog.Progress | None = None
    method: str = ''
    message: str = ''

    def as_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            'id': self.image_id,
            'outcome': self.outcome,
            'exit_status': self.status,
            'method': self.method,
            'status': p.image_status if p else '',
            'task_id': p.task_id if p else None,
            'task_status': p.task_status if p else None,
            'task_message': p.task_message if p else '',
            'stores': [s.as_dict() for s in p.stores] if p else [],
            'elapsed': round(p.elapsed, 2) if p else 0.0,
            'message': self.message,
        }


def writable_stores(stores: Sequence[Mapping[str, Any]]) -> list[str]:
    """Store ids Glance's ``all_stores`` would use, in its order."""
    return [str(s['id']) for s in stores
            if str(s.get('read-only', '')).lower() != 'true']


def check_stores(wanted: Sequence[str], available: Sequence[str]) -> None:
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise exception.UnknownStores(stores=','.join(unknown),
                                      enabled=','.join(available) or 'none')


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def stale_after(task_status: str | None, override: float | None) -> float:
    """Seconds without a task update after which an import is stuck."""
    if override is not None:
        return override
    return IMPORT_LOCK_EXPIRY * (2 if task_status == 'pending' else 1)


def stuck_for(image: Mapping[str, Any], task: Mapping[str, Any] | None,
              now: datetime.datetime, override: float | None
              ) -> float | None:
    """Seconds the task has not moved, when that makes the import stuck.

    Only a running task (pending/processing) of an image still importing
    (status ``importing``, or stores still listed as importing for a copy)
    can be stuck; Glance itself lets the next import take the lock then.
    """
    if task is None or task.get('status') not in ('pending', 'processing'):
        return None
    if image.get('status') != 'importing' and not prog.split_stores(
            image.get('os_glance_importing_to_stores')):
        return None
    updated = _parse_time(task.get('updated_at') or task.get('created_at'))
    if updated is None:
        return None
    age = (now - updated).total_seconds()
    return age if age >= stale_after(str(task.get('status')), override) \
        else None


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes >= 60:
        return '%d h %02d min' % divmod(minutes, 60)
    if minutes:
        return '%d min' % minutes
    return '%d s' % int(seconds)


class Runner:
    """Runs one command against the API, drawing with ``renderer``.

    ``commands`` is how users spell this front end's commands (for the
    hints printed: ``openstack image multistore `` or
    ``glance-imgplugins ``).
    """

    def __init__(self, api: Api, renderer: Renderer, *,
                 interval: float = 1.0, clock: Clock = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 record: TextIO | None = None, retry_for: float = 60.0,
                 stale_after: float | None = None,
                 commands: str = 'glance-imgplugins ') -> None:
        self.api = api
        self.renderer = renderer
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.record = record
        self.retry_for = retry_for
        self.stale_after = stale_after
        self.commands = commands
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def resume_hint(self, image_id: str) -> str:
        return '%swatch %s' % (self.commands, image_id)

    # -- watching -----------------------------------------------------------

    def _poll(self, image_id: str) -> tuple[dict[str, Any],
                                             list[dict[str, Any]]]:
        # Tasks first: when the task has ended, the image read after it is
        # at least as new.
        tasks = self.api.tasks(image_id)
        image = self.api.image(image_id)
        if self.record is not None:
            self.record.write(json.dumps({
                'elapsed': round(self.elapsed(), 3), 'image': image,
                'tasks': tasks}) + '\n')
            self.record.flush()
        return image, tasks

    def _now(self) -> datetime.datetime:
        # The server's clock: task times are the server's, and ours may be
        # off by more than a poll interval.
        return self.api.server_now or datetime.datetime.now(
            datetime.timezone.utc)

    def watch(self, watcher: prog.Watcher, method: str = '',
              **extra: Any) -> Result:
        """Poll until the import task ends, is stuck or is out of reach."""
        progress: prog.Progress | None = watcher.last
        failing_since: float | None = None
        delay = self.interval
        try:
            while True:
                try:
                    image, tasks = self._poll(watcher.image_id)
                except (exception.ApiConnectionError,
                        exception.ImageApiError) as err:
                    transient = isinstance(
                        err, exception.ApiConnectionError) or (
                        isinstance(err, exception.ImageApiError)
                        and err.http_status in TRANSIENT_STATUSES)
                    if not transient:
                        raise
                    now = self.clock()
                    if failing_since is None:
                        failing_since = now
                        delay = max(self.interval, 1.0)
                    if now - failing_since >= self.retry_for:
                        return self._lost(watcher, progress, method, err)
                    wait = min(delay, self.retry_for - (now - failing_since))
                    self.renderer.note('%s; retrying in %.0f s' % (
                        err, max(wait, 1)))
                    self.sleep(max(wait, 0.1))
                    delay = min(delay * 2, 30.0)
                    continue
                if failing_since is not None:
                    self.renderer.note('The Image API answers again.')
                    failing_since = None
                progress = watcher.update(image, tasks, self.elapsed())
                self.renderer.update(progress)
                if progress.outcome is not None:
                    self.renderer.finish(progress, method=method, **extra)
                    return Result(progress.outcome.exit_status,
                                  progress.outcome.value, watcher.image_id,
                                  progress, method)
                task = prog.newest_task(tasks, watcher.known_task_ids)
                age = stuck_for(image, task, self._now(), self.stale_after)
                if age is not None and task is not None:
                    return self._stuck(watcher, progress, method, image,
                                       task, age)
                self.sleep(self.interval)
        except KeyboardInterrupt:
            self.renderer.interrupted(progress,
                                      self.resume_hint(watcher.image_id))
            return Result(st.INTERRUPTED, 'interrupted', watcher.image_id,
                          progress, method,
                          'Stopped watching; the import goes on in Glance.')

    def _lost(self, watcher: prog.Watcher, progress: prog.Progress | None,
              method: str, err: Exception) -> Result:
        resume = self.resume_hint(watcher.image_id)
        message = ('Lost contact with the Image API for %s (%s). The import '
                   'goes on in Glance; follow it again with: %s' % (
                       _duration(self.retry_for), err, resume))
        self.renderer.lost(progress, message, resume)
        return Result(st.LOST, 'lost', watcher.image_id, progress, method,
                      message)

    def _stuck(self, watcher: prog.Watcher, progress: prog.Progress,
               method: str, image: Mapping[str, Any],
               task: Mapping[str, Any], age: float) -> Result:
        image_id = watcher.image_id
        if method == 'copy-image':
            todo = ('an admin can copy it again (%scopy %s --retry-failed '
                    'or --store ...), which takes the expired lock'
                    % (self.commands, image_id))
        else:
            todo = ('the owner can delete the image and import it again '
                    '(Glance accepts a new import of an image that is '
                    'still "importing" only after the lock expired, and '
                    'only by copy-image)')
        message = (
            'The import of image %s looks stuck: its task %s is %s but has '
            'not been updated for %s (Glance lets the next import take the '
            'lock after %s). The Glance API process running it has most '
            'likely stopped; an admin can find task %s in the API logs. '
            'To go on, %s.' % (
                image_id, task.get('id'), task.get('status'), _duration(age),
                _duration(stale_after(str(task.get('status')),
                                      self.stale_after)),
                task.get('id'), todo))
        self.renderer.stuck(progress, message)
        return Result(st.STUCK, 'stuck', image_id, progress, method, message)

    # -- import -------------------------------------------------------------

    def run_import(self, req: ImportRequest) -> Result:
        available = writable_stores(self.api.stores())
        if req.all_stores:
            targets = list(available)
        else:
            targets = list(req.stores or [])
            check_stores(targets, available)
        size = 0
        if req.file is not None:
            try:
                size = os.path.getsize(req.file)
                data = open(req.file, 'rb')
            except OSError as err:
                raise exception.ImageFileError(
                    path=req.file, reason=err.strerror or str(err)) from err
        method = 'glance-direct' if req.file is not None else 'web-download'
        self.renderer.start(method=method, stores=targets,
                            all_stores=req.all_stores,
                            allow_failure=req.allow_failure)
        fields: dict[str, Any] = dict(req.properties)
        fields.update(disk_format=req.disk_format,
                      container_format=req.container_format)
        if req.name is not None:
            fields['name'] = req.name
        image_id = self.api.create(fields)
        self.renderer.note('Created image %s' % image_id)
        watcher = prog.Watcher(image_id, targets, method=method)
        if req.file is not None:
            try:
                with data:
                    self._stage(watcher, data, size)
            except KeyboardInterrupt:
                message = ('Interrupted while uploading: image %s was not '
                           'imported. Delete it with: openstack image '
                           'delete %s' % (image_id, image_id))
                self.renderer.note(message)
                return Result(st.INTERRUPTED, 'interrupted', image_id,
                              watcher.last, method, message)
        # Explicit stores even for --all-stores: the set Glance would pick,
        # and the display order is then the order Glance writes them in.
        self.api.start_import(image_id, method, stores=targets,
                              allow_failure=req.allow_failure, uri=req.uri)
        if not req.wait:
            return self._started(image_id, method, targets)
        return self.watch(watcher, method=method,
                          allow_failure=req.allow_failure)

    def _started(self, image_id: str, method: str,
                 targets: Sequence[str]) -> Result:
        resume = self.resume_hint(image_id)
        message = 'Import started; follow it with: %s' % resume
        self.renderer.note(message)
        progress = prog.Progress(
            image_id=image_id, image_status='importing', task_id=None,
            task_status=None, task_message='', phase='queued',
            conversion_percent=None,
            stores=tuple(prog.StoreProgress(s, prog.StoreState.WAITING)
                         for s in targets),
            elapsed=self.elapsed())
        return Result(st.OK, 'started', image_id, progress, method, message)

    def _stage(self, watcher: prog.Watcher, data: Any, size: int) -> None:
        last = [0.0]

        def report(sent: int) -> None:
            now = self.clock()
            if now - last[0] >= 0.2 or sent == size:
                last[0] = now
                self.renderer.update(watcher.staging(sent, size,
                                                     self.elapsed()))

        self.renderer.update(watcher.staging(0, size, self.elapsed()))
        self.api.stage(watcher.image_id, CountingReader(data, size, report))

    # -- copy ---------------------------------------------------------------

    def run_copy(self, image_ref: str, *, stores: list[str] | None,
                 all_stores: bool, retry_failed: bool,
                 allow_failure: bool, wait: bool = True) -> Result:
        image = self.api.find_image(image_ref)
        image_id = str(image['id'])
        if image.get('status') != 'active':
            raise exception.ImageApiError(
                action='copy image %s' % image_id,
                reason='only active images can be copied (status is %s)'
                       % image.get('status'))
        held = prog.split_stores(image.get('stores'))
        available = writable_stores(self.api.stores())
        if retry_failed:
            failed = prog.split_stores(image.get('os_glance_failed_import'))
            targets = [s for s in failed if s not in held]
            if not targets:
                return self._nothing_to_do(
                    image, held, 'Image %s has no failed store to retry '
                    '(os_glance_failed_import is empty).' % image_id)
        elif all_stores:
            targets = [s for s in available if s not in held]
            if not targets:
                return self._nothing_to_do(
                    image, held, 'Image %s is already in every store.'
                    % image_id)
        else:
            targets = list(stores or [])
            check_stores(targets, available)
            already = [s for s in targets if s in held]
            if already:
                raise exception.ImageApiError(
                    action='copy image %s' % image_id,
                    reason='it is already in store(s) %s' % ','.join(already))
        known = [t['id'] for t in self.api.tasks(image_id)]
        self.renderer.start(method='copy-image', stores=targets,
                            all_stores=all_stores,
                            allow_failure=allow_failure, image_id=image_id)
        self.api.start_import(image_id, 'copy-image', stores=targets,
                              allow_failure=allow_failure)
        if not wait:
            return self._started(image_id, 'copy-image', targets)
        watcher = prog.Watcher(image_id, targets, known_task_ids=known,
                               method='copy-image')
        return self.watch(watcher, method='copy-image',
                          allow_failure=allow_failure)

    def _nothing_to_do(self, image: dict[str, Any], held: list[str],
                       note: str) -> Result:
        self.renderer.note(note)
        progress = prog.Progress(
            image_id=str(image['id']), image_status=str(image['status']),
            task_id=None, task_status=None, task_message='',
            phase='finished', conversion_percent=None,
            stores=tuple(prog.StoreProgress(s, prog.StoreState.DONE,
                                            image.get('size')) for s in held),
            elapsed=self.elapsed(), outcome=prog.Outcome.SUCCESS)
        self.renderer.finish(progress, method='copy-image')
        return Result(st.OK, 'success', str(image['id']), progress,
                      'copy-image', note)

    # -- watch --------------------------------------------------------------

    def run_watch(self, image_ref: str) -> Result:
        image = self.api.find_image(image_ref)
        image_id = str(image['id'])
        tasks = self.api.tasks(image_id)
        task = prog.newest_task(tasks)
        if task is None:
            raise exception.ImageApiError(
                action='watch image %s' % image_id,
                reason='it has no import task')
        task_input = task.get('input') or {}
        backend = task_input.get('backend')
        if isinstance(backend, list) and backend:
            stores = [str(s) for s in backend]
        else:
            stores = []
            for key in ('stores', 'os_glance_importing_to_stores',
                        'os_glance_failed_import'):
                stores += [s for s in prog.split_stores(image.get(key))
                           if s not in stores]
        method = str((task_input.get('import_req') or {})
                     .get('method', {}).get('name') or 'glance-direct')
        older = [t['id'] for t in tasks if t['id'] != task['id']]
        watcher = prog.Watcher(image_id, stores, known_task_ids=older,
                               method=method)
        return self.watch(watcher, method=method)
