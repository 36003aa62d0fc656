"""What every import plugin of this package does at the Glance task edge.

Glance 33 shows a task's exception text to the user only when it is a
``glance.common.exception.UploadException``; anything else becomes "Task
failed due to Internal Error".  Plugins therefore run their work inside
:func:`task_edge`, which turns our named errors into an ``UploadException``
carrying the same text (and the original error, for the revert to classify).

Other helpers here:

* :func:`register_opts` / :class:`DeferredConfig`: option registration and
  reading that never raise from ``get_flow()``.  Glance loads plugins through
  stevedore, which *skips* (with a log line) a plugin whose ``get_flow``
  raises; an import would then silently go ahead without, say, conversion.
  A configuration problem must instead fail the task, with the reason.
* :func:`read_image`: a snapshot of the image read through the task's
  ``ImportActionWrapper`` (the only sanctioned way to touch the image).
* :class:`TaskMessage`: throttled, never-failing updates of the task message
  (what users read in ``GET /v2/images/{id}/tasks``).
* :func:`fail_import`: what a failing plugin's revert does to the image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from glance.common import exception as glance_exception
from oslo_config import cfg
from taskflow.types import failure as tf_failure

from glance_imgplugins import exception

LOG = logging.getLogger(__name__)

T = TypeVar('T')

#: Refusals where the image's content is at fault: running the import again
#: on the same bytes can only fail again, so keeping them staged helps nobody
#: (and in Glance 33 a queued image whose data is still staged can neither be
#: re-staged, "has data on staging", nor imported with glance-direct).
CONTENT_REFUSALS: tuple[type[exception.GlanceImgPluginsError], ...] = (
    exception.UnsafeImage,
    exception.FormatMismatch,
    exception.UnknownFormat,
)


class PluginTaskError(glance_exception.UploadException):
    """The ``UploadException`` a plugin task raises; Glance shows its text.

    ``cause`` keeps the error that was translated so the revert (which gets a
    taskflow ``Failure`` wrapping this exception) can tell a refused image
    from a failure worth retrying.
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
        return exc.msg
    # Unexpected: name the class only; the details (paths, tracebacks) are
    # for the operator's log, not for the image owner.
    return '%s failed unexpectedly (%s); see the Glance API log' % (
        plugin, type(exc).__name__)


@contextlib.contextmanager
def task_edge(plugin: str, image_id: str | None = None) -> Iterator[None]:
    """Run a plugin task's work, translating errors for Glance's task API."""
    try:
        yield
    except glance_exception.TaskAbortedError:
        # Another task stole the import lock: Glance's own handling applies.
        raise
    except glance_exception.UploadException:
        raise
    except exception.GlanceImgPluginsError as exc:
        LOG.warning('%s: image %s: %s', plugin, image_id, exc)
        raise PluginTaskError(str(exc), cause=exc) from exc
    except Exception as exc:
        LOG.exception('%s: image %s: unexpected error', plugin, image_id)
        raise PluginTaskError(user_message(plugin, exc), cause=exc) from exc


def failure_cause(result: Any) -> BaseException | None:
    """The original exception behind a revert's ``result``, if it failed.

    ``result`` is what taskflow passes to ``revert``: the task's own return
    value when a *later* task failed, or a ``Failure`` when this task did.
    """
    if not isinstance(result, tf_failure.Failure):
        return None
    exc = result.exception
    if exc is None:
        return None
    return getattr(exc, 'cause', None) or exc


def is_content_refusal(cause: BaseException | None) -> bool:
    return isinstance(cause, CONTENT_REFUSALS)


# --- configuration -----------------------------------------------------------

def register_opts(conf: cfg.ConfigOpts, group: str,
                  opts: Sequence[cfg.Opt]) -> Exception | None:
    """Register ``opts`` in ``group``; return the error instead of raising.

    Called at import time (so ``list_opts`` and the config generator see the
    options); a clash with another module's option of the same name is kept
    and reported when the task runs.
    """
    try:
        conf.register_opts(opts, group=group)
    except cfg.Error as exc:
        LOG.error('Cannot register options of [%s]: %s', group, exc)
        return exc
    return None


def check_options(conf: cfg.ConfigOpts, group: str,
                  opts: Sequence[cfg.Opt],
                  load_settings: Callable[[cfg.ConfigOpts], Any]
                  ) -> list[str]:
    """A plugin's ``check_config``: every bad option, then the settings.

    Each option is read on its own first, so every bad value is reported at
    once; only then are the settings built, for cross-option problems.
    """
    bad = []
    for opt in opts:
        try:
            getattr(conf[group], opt.dest)
        except (cfg.Error, ValueError) as exc:
            bad.append('[%s] %s: %s' % (group, opt.dest, exc))
    if bad:
        return bad
    try:
        load_settings(conf)
    except exception.ConfigError as exc:
        return [exc.kwargs.get('reason') or str(exc)]
    except (cfg.Error, ValueError) as exc:
        return ['[%s] %s' % (group, exc)]
    return []


@dataclasses.dataclass(frozen=True)
class DeferredConfig:
    """Settings read in ``get_flow()``, or the reason they could not be.

    ``value()`` raises :class:`exception.ConfigError` inside the task, where
    :func:`task_edge` turns it into the task's failure message.
    """

    settings: Any = None
    error: str | None = None

    @classmethod
    def load(cls, reader: Callable[[], T]) -> 'DeferredConfig':
        try:
            return cls(settings=reader())
        except exception.ConfigError as exc:
            return cls(error=exc.kwargs.get('reason') or str(exc))
        except (cfg.Error, ValueError, TypeError, KeyError) as exc:
            # oslo.config raises on access for values outside ``choices``,
            # out of bounds or of the wrong type.
            return cls(error=str(exc) or type(exc).__name__)

    def value(self) -> Any:
        if self.error is not None:
            raise exception.ConfigError(reason=self.error)
        return self.settings


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


#: Import methods whose own download task runs before the plugins and, on
#: revert, sets the image ``queued`` and removes the staged data itself.
#: Setting ``queued`` before it would make its revert fail ("queued to queued
#: is not allowed") and the user read "Internal Error".
DOWNLOAD_METHODS = ('web-download', 'glance-download')


def revert_status(import_method: str | None, retry: bool) -> str | None:
    """The status a failing plugin's revert gives the image (None: leave it
    to the download task's revert)."""
    if import_method in DOWNLOAD_METHODS:
        return None
    return 'uploading' if retry else 'queued'


def fail_import(action: Any, stores: Sequence[str | None], *,
                status: str | None = 'queued',
                restore: Mapping[str, Any] | None = None) -> None:
    """Put the image back after a failed import, inside ``with action``.

    Every requested store leaves "importing" and is listed as failed (none of
    the ``_ImportToStore`` tasks, which run after the plugins, wrote it).
    ``status`` is ``queued``, or ``uploading`` when the staged data was kept
    for a glance-direct retry (Glance 33 only imports an ``uploading`` image
    with glance-direct), or None to leave it (see :func:`revert_status`).
    ``restore`` resets attributes (e.g. the original disk_format); it is
    applied after the status, because moving to ``queued`` clears size and
    virtual_size.
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
                task = self.task_repo.get(self.task_id)
                if task is None or getattr(task, 'status', None) not in (
                        None, 'pending', 'processing'):
                    return False
                task.message = text
                self.task_repo.save(task)
            except Exception:
                LOG.warning('Could not update the message of task %s',
                            self.task_id, exc_info=True)
                return False
            self._last_save = now
            self._last_text = text
            return True


class PercentMessage:
    """"<label>: N% done, T s elapsed" in the task message while work runs.

    ``progress(percent)`` is called by the work (qemu-img reports whole
    percents only: on a large image one percent can take a minute), and a
    heartbeat thread refreshes the message every ``interval`` seconds
    meanwhile, so the message a user polls is never older than that.
    Use as a context manager around the work; ``done()`` forces 100%.
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
