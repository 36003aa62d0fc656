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

"""What every import plugin of this package shares.

* :class:`PluginSpec` -- one per plugin: its option group and options, how
  its settings are loaded and checked.  ``opts.py`` (the sample config),
  ``glance-imgplugins check-config`` and the plugin itself read the same
  spec.
* :class:`ImportRequest` -- what Glance passes to ``get_flow()``, parsed
  once: task id and type, the action wrapper, the requested stores, the
  import method.
* :class:`PluginTask` -- the one task base: a stable task name, ``execute``
  through the one error edge (our exception hierarchy translated into the
  ``UploadException`` whose text Glance shows users), one revert policy
  (the failure contract of :mod:`glance_imgplugins.exception`), and a result
  line with the task id and elapsed time in the log.
* :class:`PropertyChanges` -- the extra properties a task set, recorded so
  that it can undo exactly them.

``get_flow()`` never raises: stevedore would drop a plugin whose
``get_flow`` fails and Glance would import the image without it.  Settings
are therefore read in ``execute()``, where a bad option fails the import
with ``[group] option: reason``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from glance.common import exception as glance_exception
from oslo_config import cfg
from oslo_log import log as logging
from taskflow import task
from taskflow.types import failure as tf_failure

from glance_imgplugins import exception

LOG = logging.getLogger(__name__)

#: Import methods whose own download task runs before the plugins and, on
#: revert, sets the image ``queued`` and removes the staged data itself.
#: Setting ``queued`` before it would make its revert fail ("queued to queued
#: is not allowed") and the user read "Internal Error".
DOWNLOAD_METHODS = ('web-download', 'glance-download')


# --- the plugin spec -------------------------------------------------------

def _option_reason(exc: BaseException) -> str:
    """oslo.config's error text without its ``LocationInfo(...)`` repr."""
    text = str(exc)
    marker = 'is not valid: '
    if marker in text:
        text = text.split(marker, 1)[1]
    # "Value for option x from LocationInfo(...) is not valid" variants.
    text = re.sub(r'LocationInfo\([^)]*\)\)?', 'the configuration', text)
    return text.strip() or 'invalid value'


@dataclasses.dataclass
class PluginSpec:
    """A plugin's options and settings, read by the plugin, ``opts.py`` and
    ``check-config`` alike."""

    name: str
    group: str
    opts: Sequence[cfg.Opt]
    #: Builds the plugin's settings from a ConfigOpts whose every option of
    #: ``group`` has already been read successfully; raises ConfigError.
    loader: Callable[[cfg.ConfigOpts], Any]
    #: Informational lines for check-config (e.g. the rules in effect).
    describer: Callable[[cfg.ConfigOpts], list[str]] | None = None
    registration_error: str | None = None

    def register(self, conf: cfg.ConfigOpts) -> None:
        """Register the options on ``conf``; a clash is kept and reported
        when the plugin runs, never raised (import time, ``get_flow``)."""
        for opt in self.opts:
            try:
                conf.register_opt(opt, group=self.group)
            except cfg.DuplicateOptError as exc:
                LOG.error('Cannot register [%s] %s: %s', self.group,
                          opt.dest, exc)
                if conf is cfg.CONF:
                    self.registration_error = (
                        '[%s] %s: another module registered a different '
                        'option of that name' % (self.group, opt.dest))

    def list_opts(self) -> list[tuple[str, list[cfg.Opt]]]:
        return [(self.group, list(self.opts))]

    def option_problems(self, conf: cfg.ConfigOpts) -> list[str]:
        """Every bad option of the group, each as ``[group] option:
        reason``."""
        self.register(conf)
        if self.registration_error and conf is cfg.CONF:
            return [self.registration_error]
        bad = []
        for opt in self.opts:
            try:
                getattr(conf[self.group], opt.dest)
            except (cfg.Error, ValueError) as exc:
                bad.append('[%s] %s: %s' % (self.group, opt.dest,
                                            _option_reason(exc)))
        return bad

    def problems(self, conf: cfg.ConfigOpts) -> list[str]:
        """The bad options, then what the loader finds wrong across
        options."""
        bad = self.option_problems(conf)
        if bad:
            return bad
        try:
            self.loader(conf)
        except exception.ConfigError as exc:
            if type(exc) is exception.ConfigError:
                return [exc.kwargs.get('reason') or str(exc)]
            return [str(exc)]
        except (cfg.Error, ValueError) as exc:
            return ['[%s] %s' % (self.group, _option_reason(exc))]
        return []

    def settings(self, conf: cfg.ConfigOpts) -> Any:
        """The settings; :class:`exception.ConfigError` names every bad
        option (or the loader's own ConfigError, e.g. a rules file's)."""
        bad = self.option_problems(conf)
        if bad:
            raise exception.ConfigError(reason='; '.join(bad))
        try:
            return self.loader(conf)
        except (cfg.Error, ValueError) as exc:
            raise exception.ConfigError(reason='[%s] %s' % (
                self.group, _option_reason(exc))) from None

    def check_config(self, conf: cfg.ConfigOpts) -> list[str]:
        return self.problems(conf)

    def describe(self, conf: cfg.ConfigOpts) -> list[str]:
        if self.describer is None or self.problems(conf):
            return []
        return self.describer(conf)


# --- what Glance passes to get_flow() ----------------------------------------

@dataclasses.dataclass(frozen=True)
class ImportRequest:
    """The ``get_flow()`` keyword arguments a plugin task needs, parsed
    once and never raising."""

    task_id: str
    task_type: str
    image_id: str | None
    action_wrapper: Any
    task_repo: Any
    image_repo: Any
    context: Any
    stores: tuple[str, ...]
    import_method: str | None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> 'ImportRequest':
        method = None
        try:
            method = kwargs['import_req']['method']['name']
        except (KeyError, TypeError):
            pass
        wrapper = kwargs.get('action_wrapper')
        image_id = kwargs.get('image_id') or getattr(wrapper, 'image_id',
                                                     None)
        return cls(
            task_id=str(kwargs.get('task_id')),
            task_type=str(kwargs.get('task_type') or 'api_image_import'),
            image_id=str(image_id) if image_id else None,
            action_wrapper=wrapper,
            task_repo=kwargs.get('task_repo'),
            image_repo=kwargs.get('image_repo'),
            context=kwargs.get('context'),
            stores=tuple(s for s in (kwargs.get('backend') or []) if s),
            import_method=method if isinstance(method, str) else None)


# --- property changes ----------------------------------------------------

@dataclasses.dataclass
class PropertyChanges:
    """Extra properties a task set or removed, and what was there before
    (None: absent), so it can put back exactly what is still its own."""

    written: dict[str, str] = dataclasses.field(default_factory=dict)
    removed: set[str] = dataclasses.field(default_factory=set)
    previous: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.written or self.removed)

    def apply(self, action: Any, set_: Mapping[str, str] | None = None,
              remove: Iterable[str] = ()) -> None:
        """Set and remove properties inside ``with action``, recording."""
        current = action.image_extra_properties
        changed = {k: v for k, v in (set_ or {}).items()
                   if current.get(k) != v}
        for key in changed:
            self.previous.setdefault(key, current.get(key))
        if changed:
            action.set_image_extra_properties(changed)
            self.written.update(changed)
        for key in sorted(set(remove)):
            if key in current:
                self.previous.setdefault(key, current.get(key))
                action.pop_extra_property(key)
                self.removed.add(key)
                self.written.pop(key, None)

    def undo(self, action: Any) -> None:
        """Put back what the task changed, inside ``with action``; a key
        someone changed since is theirs now and is left alone."""
        current = action.image_extra_properties
        for key, old in self.previous.items():
            ours = (key not in current) if key in self.removed \
                else current.get(key) == self.written.get(key)
            if not ours:
                continue
            if old is None:
                if key in current:
                    action.pop_extra_property(key)
            else:
                action.set_image_extra_properties({key: old})

    def summary(self) -> str:
        parts = ['%s=%s' % kv for kv in sorted(self.written.items())]
        parts += ['-%s' % k for k in sorted(self.removed)]
        return ', '.join(parts) or 'no property changes'


# --- the image ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageSnapshot:
    """What a plugin needs to know about the image, read in one go."""

    image_id: str
    status: str
    disk_format: str | None
    container_format: str | None
    size: int | None
    extra_properties: Mapping[str, str]


def read_image(action_wrapper: Any) -> ImageSnapshot:
    """Read the image through ``action_wrapper`` (checks the import lock)."""
    with action_wrapper as action:
        return ImageSnapshot(
            image_id=action.image_id,
            status=action.image_status,
            disk_format=action.image_disk_format,
            container_format=action.image_container_format,
            size=action.image_size,
            extra_properties=dict(action.image_extra_properties))


def staged_path(file_path: str) -> str:
    """The local path behind the ``file://`` URI Glance's flow passes on."""
    prefix = 'file://'
    if file_path.startswith(prefix):
        return file_path[len(prefix):]
    return file_path


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still put on ``path``'s
    filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def remove_file(path: str | None) -> None:
    if not path:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def revert_status(import_method: str | None, keep_staged: bool
                  ) -> str | None:
    """The status a failed import's image is given (None: leave it to the
    download task's revert)."""
    if import_method in DOWNLOAD_METHODS:
        return None
    return 'uploading' if keep_staged else 'queued'


def fail_import(action: Any, stores: Sequence[str | None], *,
                status: str | None = 'queued',
                restore: Mapping[str, Any] | None = None) -> None:
    """Put the image back after a failed import, inside ``with action``.

    Every requested store leaves "importing" and is listed as failed (none of
    the ``_ImportToStore`` tasks, which run after the plugins, wrote it).
    ``status`` is ``queued``, ``uploading`` (staged data kept: Glance 33
    imports an ``uploading`` image with glance-direct) or None.  ``restore``
    resets attributes (e.g. the original disk_format) after the status,
    because moving to ``queued`` clears size and virtual_size.
    """
    if status is not None and action.image_status != status:
        # Glance allows importing -> queued -> uploading, not importing ->
        # uploading directly.
        if status == 'uploading' and action.image_status != 'queued':
            action.set_image_attribute(status='queued')
        action.set_image_attribute(status=status)
    if restore:
        action.set_image_attribute(**dict(restore))
    names = [s for s in stores if s]
    if names:
        action.remove_importing_stores(names)
        action.add_failed_stores(names)


# --- the error edge ------------------------------------------------------

class PluginTaskError(glance_exception.UploadException):
    """The ``UploadException`` a plugin task raises; Glance shows its text.

    ``cause`` keeps the translated error so the revert (which gets a
    taskflow ``Failure`` wrapping this exception) applies its contract.
    """

    def __init__(self, message: str,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def user_message(plugin: str, exc: BaseException) -> str:
    """The text the image owner reads for ``exc`` raised in ``plugin``."""
    if isinstance(exc, exception.GlanceImgPluginsError):
        return str(exc)
    if isinstance(exc, glance_exception.UploadException):
        return str(exc.msg)
    # Unexpected: the details (paths, reprs, tracebacks) are for the
    # operator's log, not for the image owner.
    return '%s failed unexpectedly; see the Glance API log' % plugin


def failure_cause(result: Any) -> BaseException | None:
    """The original exception behind a revert's ``result``, if it failed."""
    if not isinstance(result, tf_failure.Failure):
        return None
    exc = result.exception
    if exc is None:
        return None
    return getattr(exc, 'cause', None) or exc


def keeps_staged(cause: BaseException | None) -> bool:
    """The contract: only a content refusal throws the staged data away."""
    if isinstance(cause, exception.ImportFailure):
        return cause.keep_staged
    return True


class PluginTask(task.Task):
    """The one base of every plugin task of this package.

    Subclasses set ``spec`` and ``label`` and implement :meth:`run`; they
    may override :meth:`undo` (a later task failed) and :meth:`cleanup`
    (this task failed: remove what it wrote).
    """

    spec: ClassVar[PluginSpec]
    #: CamelCase part of the task name, e.g. "FormatConversion".
    label: ClassVar[str]

    def __init__(self, request: ImportRequest,
                 conf: cfg.ConfigOpts | None = None,
                 provides: str | None = None) -> None:
        self.request = request
        self.conf = conf if conf is not None else cfg.CONF
        super().__init__(
            name='%s-ImgPlugins-%s-%s' % (request.task_type, self.label,
                                          request.task_id),
            provides=provides)

    @property
    def plugin(self) -> str:
        return self.spec.name

    # -- execute --------------------------------------------------------------

    def execute(self, file_path: str | None = None) -> Any:
        started = time.monotonic()
        image_id = self.request.image_id
        try:
            settings = self.spec.settings(self.conf)
            result = self.run(file_path, settings)
        except glance_exception.TaskAbortedError:
            # Another task took the import lock: Glance's handling applies.
            raise
        except exception.GlanceImgPluginsError as exc:
            LOG.warning('%s: image %s: task %s failed after %.1f s: %s',
                        self.plugin, image_id, self.request.task_id,
                        time.monotonic() - started, exc)
            raise PluginTaskError(str(exc), cause=exc) from exc
        except glance_exception.UploadException:
            raise
        except Exception as exc:
            LOG.exception('%s: image %s: task %s: unexpected error',
                          self.plugin, image_id, self.request.task_id)
            raise PluginTaskError(user_message(self.plugin, exc),
                                  cause=exc) from exc
        LOG.info('%s: image %s: task %s done in %.1f s: %s', self.plugin,
                 image_id, self.request.task_id,
                 time.monotonic() - started, self.describe_result(result))
        return result

    def run(self, file_path: str | None, settings: Any) -> Any:
        raise NotImplementedError

    def describe_result(self, result: Any) -> str:
        if isinstance(result, PropertyChanges):
            return result.summary()
        return str(result)

    # -- revert -------------------------------------------------------------

    def revert(self, result: Any, file_path: str | None = None,
               **kwargs: Any) -> None:
        try:
            if isinstance(result, tf_failure.Failure):
                self._revert_own_failure(result, file_path)
            else:
                with self.request.action_wrapper as action:
                    self.undo(action, result, file_path)
        except Exception:
            # A raising revert would turn the user's reason into "Internal
            # Error" and stop the other reverts.
            LOG.exception('%s: revert of task %s failed', self.plugin,
                          self.request.task_id)

    def _revert_own_failure(self, failure: tf_failure.Failure,
                            file_path: str | None) -> None:
        cause = failure_cause(failure)
        src = staged_path(file_path) if file_path else None
        self.cleanup(src)
        keep = keeps_staged(cause)
        if not keep:
            # Retrying cannot help; keeping the data would block a new
            # upload ("has data on staging").
            remove_file(src)
        # Without a path (not Glance's flow) the data is where Glance left
        # it: the contract alone decides.
        kept = os.path.exists(src) if src is not None else keep
        status = revert_status(self.request.import_method,
                               keep_staged=kept and keep)
        with self.request.action_wrapper as action:
            restore = self.restore_attributes(
                action, src if kept and src else None)
            fail_import(action, self.request.stores, status=status,
                        restore=restore)
        LOG.info('%s: image %s: import failed (%s); image %s, staged data '
                 '%s', self.plugin, self.request.image_id,
                 'content refused' if not keep else 'retryable',
                 status or 'left to the download task',
                 'kept for a retry' if kept and keep else 'removed')

    def cleanup(self, src: str | None) -> None:
        """This task failed: remove what it wrote (never the staged data)."""

    def restore_attributes(self, action: Any,
                           kept_src: str | None) -> dict[str, Any]:
        """Attributes to put back when this task failed."""
        if kept_src:
            return {'size': os.stat(kept_src).st_size}
        return {}

    def undo(self, action: Any, result: Any, file_path: str | None) -> None:
        """A later task failed: take back what :meth:`run` returned."""
        if isinstance(result, PropertyChanges):
            result.undo(action)

    def fail_after_replacing(self, action: Any, src: str | None,
                             replaced: bool,
                             forget: Callable[[], Mapping[str, Any]]
                             ) -> bool:
        """A later task failed after this task may have replaced the staged
        data with its output (``replaced``).  Where that data stays staged
        (glance-direct), the image keeps describing it, so a retry needs no
        second pass; where it is gone or the download task removes it,
        ``forget()`` takes back what described it and returns attributes to
        restore.  Returns whether the staged data is kept."""
        downloaded = self.request.import_method in DOWNLOAD_METHODS
        kept = src is not None and os.path.exists(src)
        restore: dict[str, Any] = {}
        if kept and src:
            restore['size'] = os.stat(src).st_size
        if replaced and (downloaded or not kept):
            restore.update(forget())
        fail_import(action, self.request.stores,
                    status=revert_status(self.request.import_method,
                                         keep_staged=kept),
                    restore=restore)
        return kept and not downloaded


# --- the task message ----------------------------------------------------

class TaskMessage:
    """Throttled updates of the import task's message; never raises.

    A failing save (database busy, task deleted) must not fail the work the
    message reports on, so errors are logged and the update dropped.
    """

    def __init__(self, task_repo: Any, task_id: str,
                 min_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.task_repo = task_repo
        self.task_id = task_id
        self.min_interval = min_interval
        self.clock = clock
        self._last_save: float | None = None
        self._last_text: str | None = None
        self._lock = threading.Lock()

    def update(self, text: str, force: bool = False) -> bool:
        """Save ``text`` as the task message unless it is the one saved last
        or (without ``force``) one was saved less than min_interval ago."""
        with self._lock:
            now = self.clock()
            if text == self._last_text:
                return False
            if (not force and self._last_save is not None
                    and now - self._last_save < self.min_interval):
                return False
            if self.task_repo is None:
                return False
            try:
                task_ = self.task_repo.get(self.task_id)
                if task_ is None or getattr(task_, 'status', None) not in (
                        None, 'pending', 'processing'):
                    return False
                task_.message = text
                self.task_repo.save(task_)
            except Exception:
                LOG.warning('Could not update the message of task %s',
                            self.task_id, exc_info=True)
                return False
            self._last_save = now
            self._last_text = text
            return True


class PercentMessage:
    """"<label>: N% done, T s elapsed" in the task message while work runs.

    ``progress(percent)`` is called by the work, and a heartbeat thread
    refreshes the message every ``interval`` seconds meanwhile, so the
    message a user polls is never older than that.  Use as a context manager
    around the work; ``done()`` forces 100%.
    """

    def __init__(self, message: TaskMessage, label: str, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.message = message
        self.label = label
        self.interval = max(interval, 0.5)
        self.clock = clock
        self.percent = 0.0
        self._start = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name='task-message-heartbeat')

    def text(self) -> str:
        return '%s: %d%% done, %d s elapsed' % (
            self.label, int(self.percent), self.clock() - self._start)

    def progress(self, percent: float) -> None:
        self.percent = percent
        self.message.update(self.text())

    def done(self) -> None:
        self.percent = 100.0
        self.message.update(self.text(), force=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.message.update(self.text())

    def __enter__(self) -> 'PercentMessage':
        self._start = self.clock()
        self.message.update(self.text(), force=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
