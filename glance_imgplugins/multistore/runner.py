"""Starting an import or copy through glanceclient, and watching it.

The API side of ``glance-imgplugins import`` / ``copy`` / ``watch``: every
call goes to the real Image API v2 through python-glanceclient; what the
answers mean is decided by :mod:`.progress`, how it looks by :mod:`.render`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, BinaryIO, Callable, Sequence, TextIO

from glance_imgplugins import exception
from glance_imgplugins.multistore import progress as prog
from glance_imgplugins.multistore.render import Renderer

Clock = Callable[[], float]


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


class Api:
    """The few Image API calls the CLI makes, as raw JSON."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _call(self, action: str, func: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
        from glanceclient import exc as gexc
        try:
            return func(*args, **kwargs)
        except gexc.HTTPException as err:
            reason = getattr(err, 'details', None) or str(err)
            raise exception.ImageApiError(
                action=action, reason='HTTP %s: %s' % (
                    getattr(err, 'code', '?'), _clean(reason))) from err
        except exception.GlanceImgPluginsError:
            raise
        except (gexc.BaseException, OSError) as err:
            raise exception.ApiConnectionError(reason='%s: %s' % (
                type(err).__name__, err)) from err
        except Exception as err:
            # keystoneauth failures (no catalog entry, bad credentials...)
            if type(err).__module__.startswith('keystoneauth1'):
                raise exception.ApiConnectionError(reason='%s: %s' % (
                    type(err).__name__, err)) from err
            raise

    def get(self, path: str, action: str) -> Any:
        _resp, body = self._call(action, self.client.http_client.get, path)
        return body

    def image(self, image_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.get('/v2/images/%s' % image_id,
                                        'show image %s' % image_id)
        return body

    def tasks(self, image_id: str) -> list[dict[str, Any]]:
        body = self.get('/v2/images/%s/tasks' % image_id,
                        'list the tasks of image %s' % image_id)
        return list(body.get('tasks') or [])

    def stores(self) -> list[dict[str, Any]]:
        body = self.get('/v2/info/stores', 'list stores')
        return list(body.get('stores') or [])

    def create(self, req: ImportRequest) -> str:
        fields: dict[str, Any] = dict(req.properties)
        fields.update(disk_format=req.disk_format,
                      container_format=req.container_format)
        if req.name is not None:
            fields['name'] = req.name
        image = self._call('create the image', self.client.images.create,
                           **fields)
        return str(image['id'])

    def stage(self, image_id: str, data: Any, size: int | None) -> None:
        self._call('stage the image data', self.client.images.stage,
                   image_id, data, size)

    def start_import(self, image_id: str, method: str, *,
                     stores: Sequence[str] | None, all_stores: bool,
                     allow_failure: bool, uri: str | None = None) -> None:
        self._call('start the %s import' % method,
                   self.client.images.image_import, image_id, method,
                   uri=uri, stores=list(stores) if stores else None,
                   all_stores=all_stores or None,
                   allow_failure=allow_failure)


def _clean(text: str) -> str:
    # glanceclient hands back the server's HTML error page body.
    text = ' '.join(str(text).replace('<br />', ' ').split())
    for tag in ('<html>', '</html>', '<head>', '</head>', '<body>',
                '</body>', '<h1>', '</h1>', '<title>', '</title>'):
        text = text.replace(tag, ' ')
    return ' '.join(text.split())


def writable_stores(stores: Sequence[dict[str, Any]]) -> list[str]:
    """Store ids Glance's ``all_stores`` would use, in its order."""
    return [s['id'] for s in stores
            if str(s.get('read-only', '')).lower() != 'true']


def check_stores(wanted: Sequence[str], available: Sequence[str]) -> None:
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise exception.UnknownStores(stores=','.join(unknown),
                                      enabled=','.join(available) or 'none')


class _CountingReader:
    """A file wrapper that reports how much glanceclient has read."""

    def __init__(self, f: BinaryIO, report: Callable[[int], None]) -> None:
        self._f = f
        self._report = report
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size)
        self.sent += len(chunk)
        self._report(self.sent)
        return chunk


class Runner:
    """Runs one command against the API, drawing with ``renderer``."""

    def __init__(self, api: Api, renderer: Renderer, *,
                 interval: float = 1.0, clock: Clock = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 record: TextIO | None = None) -> None:
        self.api = api
        self.renderer = renderer
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.record = record
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    # -- watching -----------------------------------------------------------

    def watch(self, watcher: prog.Watcher, **extra: Any) -> int:
        """Poll until the import task ends; returns the exit status."""
        progress: prog.Progress | None = watcher.last
        try:
            while True:
                # Tasks first: when the task has ended, the image read
                # after it is at least as new.
                tasks = self.api.tasks(watcher.image_id)
                image = self.api.image(watcher.image_id)
                if self.record is not None:
                    self.record.write(json.dumps({
                        'elapsed': round(self.elapsed(), 3),
                        'image': image, 'tasks': tasks}) + '\n')
                    self.record.flush()
                progress = watcher.update(image, tasks, self.elapsed())
                self.renderer.update(progress)
                if progress.outcome is not None:
                    self.renderer.finish(progress, **extra)
                    return progress.outcome.exit_status
                self.sleep(self.interval)
        except KeyboardInterrupt:
            self.renderer.interrupted(
                progress, 'glance-imgplugins watch %s' % watcher.image_id)
            return prog.EXIT_INTERRUPTED

    # -- import -------------------------------------------------------------

    def run_import(self, req: ImportRequest) -> int:
        available = writable_stores(self.api.stores())
        if req.all_stores:
            targets = list(available)
        else:
            targets = list(req.stores or [])
            check_stores(targets, available)
        size = None
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
        image_id = self.api.create(req)
        self.renderer.note('Created image %s' % image_id)
        watcher = prog.Watcher(image_id, targets, method=method)
        try:
            if req.file is not None:
                with data:
                    self._stage(watcher, data, size)
        except KeyboardInterrupt:
            self.renderer.note(
                'Interrupted while uploading: image %s was not imported. '
                'Delete it with: glance image-delete %s' % (image_id,
                                                           image_id))
            return prog.EXIT_INTERRUPTED
        # Explicit stores even for --all-stores: the set Glance would pick,
        # and the display order is then the order Glance writes them in.
        self.api.start_import(image_id, method, stores=targets,
                              all_stores=False,
                              allow_failure=req.allow_failure, uri=req.uri)
        return self.watch(watcher, method=method,
                          allow_failure=req.allow_failure)

    def _stage(self, watcher: prog.Watcher, data: BinaryIO,
               size: int | None) -> None:
        last = [0.0]

        def report(sent: int) -> None:
            now = self.clock()
            if now - last[0] >= 0.2 or sent == size:
                last[0] = now
                self.renderer.update(watcher.staging(sent, size,
                                                     self.elapsed()))

        self.renderer.update(watcher.staging(0, size, self.elapsed()))
        self.api.stage(watcher.image_id, _CountingReader(data, report), size)

    # -- copy ---------------------------------------------------------------

    def run_copy(self, image_id: str, *, stores: list[str] | None,
                 all_stores: bool, retry_failed: bool,
                 allow_failure: bool) -> int:
        image = self.api.image(image_id)
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
                self.renderer.note('Image %s has no failed store to retry '
                                   '(os_glance_failed_import is empty).'
                                   % image_id)
                return self._nothing_to_do(image, held)
        elif all_stores:
            targets = [s for s in available if s not in held]
            if not targets:
                self.renderer.note('Image %s is already in every store.'
                                   % image_id)
                return self._nothing_to_do(image, held)
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
                              all_stores=False, allow_failure=allow_failure)
        watcher = prog.Watcher(image_id, targets, known_task_ids=known,
                               method='copy-image')
        return self.watch(watcher, method='copy-image',
                          allow_failure=allow_failure)

    def _nothing_to_do(self, image: dict[str, Any], held: list[str]) -> int:
        progress = prog.Progress(
            image_id=str(image['id']), image_status=str(image['status']),
            task_id=None, task_status=None, task_message='',
            phase='finished', conversion_percent=None,
            stores=tuple(prog.StoreProgress(s, prog.StoreState.DONE,
                                            image.get('size')) for s in held),
            elapsed=self.elapsed(), outcome=prog.Outcome.SUCCESS)
        self.renderer.finish(progress, method='copy-image')
        return prog.EXIT_OK

    # -- watch --------------------------------------------------------------

    def run_watch(self, image_id: str) -> int:
        image = self.api.image(image_id)
        tasks = self.api.tasks(image_id)
        task = prog.newest_task(tasks)
        if task is None:
            raise exception.ImageApiError(
                action='watch image %s' % image_id,
                reason='it has no import task')
        backend = (task.get('input') or {}).get('backend')
        if isinstance(backend, list) and backend:
            stores = [str(s) for s in backend]
        else:
            stores = []
            for key in ('stores', 'os_glance_importing_to_stores',
                        'os_glance_failed_import'):
                stores += [s for s in prog.split_stores(image.get(key))
                           if s not in stores]
        method = str(((task.get('input') or {}).get('import_req') or {})
                     .get('method', {}).get('name') or 'glance-direct')
        older = [t['id'] for t in tasks if t['id'] != task['id']]
        watcher = prog.Watcher(image_id, stores, known_task_ids=older,
                               method=method)
        return self.watch(watcher, method=method)
