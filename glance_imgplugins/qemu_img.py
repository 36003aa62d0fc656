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

"""The only place qemu-img runs.

Every call goes through ``oslo_concurrency.processutils.execute`` with
``prlimit`` (address space and CPU time, CVE-2015-5162), a wall-clock timeout
that really kills the process (processutils only stops *waiting*), and an
explicit ``-f`` (qemu-img never probes a format: a guest-written header must
never choose the driver).

Failures are typed, and what users read never holds a host path:

* ``QemuImgRefused`` (a ContentRefused): qemu-img's driver rejected the
  image's *content* ("Active L1 table too large", "Image is not in qcow2
  format", ...), mapped to a named check (``CONTENT_CHECKS``);
* ``QemuImgTimeout`` / ``QemuImgError`` (Retryable): killed, timed out,
  cannot run, out of space, anything we cannot attribute to the content.

Every path qemu-img echoes is replaced by the caller's ``name`` (e.g. the
image id; default "the image") and any other absolute path by "a file".

Stdout of ``convert -p`` and ``map``: processutils reads the child's stdout
with ``communicate()``, so reading the same pipe from another thread would
race with it.  Instead the ``on_execute`` hook swaps ``Popen.stdout`` for the
read end of a relay pipe before ``communicate()`` starts; a relay thread alone
reads qemu-img's real stdout and hands each chunk to a consumer (the progress
parser, which forwards every byte so processutils still gets the complete
output; the map counter, which forwards nothing, so a map of millions of
extents never sits in memory).

No oslo.config here: the plugins pass ``Limits`` from their options.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

from oslo_concurrency import processutils
from oslo_utils import imageutils

from glance_imgplugins import exception
from glance_imgplugins import inspection

LOG = logging.getLogger(__name__)

QEMU_IMG = 'qemu-img'

# Flags for every convert, chosen by benchmarks/bench_qemu_img.py (numbers in
# doc/source/inspection.rst):
#   -W       out-of-order writes: the coroutines do not wait for each other
#   -m 16    16 parallel coroutines (qemu's maximum) instead of 8
#   -S 4k    detect zeroed 4 KiB runs and leave holes (sparse output)
# Cache flags (-t/-T none, O_DIRECT) were not faster here and fail on tmpfs.
CONVERT_FLAGS: tuple[str, ...] = ('-W', '-m', '16', '-S', '4k')

# Glance disk_format (or format_inspector name) -> qemu-img driver name.
_QEMU_FORMATS = {'vhd': 'vpc', 'gpt': 'raw', 'iso': 'raw'}
# Drivers we ever hand to qemu-img; anything else is refused before it runs.
ALLOWED_QEMU_FORMATS = frozenset(
    {'raw', 'qcow2', 'vmdk', 'vpc', 'vhdx', 'vdi', 'qed', 'luks'})

DEFAULT_NAME = 'the image'

_PROGRESS_RE = re.compile(rb'\((\d{1,3}(?:\.\d+)?)/100%\)')

# What qemu-img 7.2's drivers say about content they refuse (found by making
# such images, see tests/unit/test_qemu_img.py) -> the check it names.  First
# match wins; the reason users read is qemu-img's own sentence.
CONTENT_CHECKS: tuple[tuple[str, str], ...] = (
    (r'L1 table', 'l1_table'),
    (r'[Rr]eference count table|[Rr]efcount', 'refcount_table'),
    (r'[Ss]napshot', 'snapshot_table'),
    (r'[Uu]nsupported cluster size|[Ii]nvalid cluster size', 'cluster_size'),
    (r'[Uu]nsupported qcow2 (?:version|feature)|[Uu]nknown incompatible '
     r'feature', 'unknown_features'),
    (r'[Bb]acking file|[Dd]ifferencing|[Pp]arent', 'backing_file'),
    (r'[Dd]ata[ -_]file', 'data_file'),
    (r'[Ee]ncrypt|LUKS header|[Pp]assphrase', 'encryption'),
    (r'[Ii]mage is too big|[Ii]mage size too large|[Uu]nsupported VDI image '
     r'size|[Vv]irtual size', 'virtual_size'),
    (r'is not in \S+ format|[Ii]mage not in \S+ format|not in LUKS format|'
     r'[Nn]ot a VMDK|[Ii]nvalid VPC image|[Ii]nvalid VMDK image|'
     r'[Ii]nvalid VDI image', 'format_detection'),
    (r'header|[Hh]eader extension|[Ii]nvalid image', 'header'),
    (r'[Cc]orrupt', 'corrupt'),
)
# errno texts that, when qemu-img could not *open the source* with the
# format it was told, mean the driver refused the bytes (a vhdx with a
# parent gives only "Operation not supported", or "Invalid argument").
_CONTENT_ERRNOS = ('Invalid argument', 'Operation not supported',
                   'Not supported', 'Numerical result out of range',
                   'Value too large for defined data type', 'File too large')
# ...and those that never do, whatever the sentence before them ("Could not
# read qcow2 header: Input/output error" is a failing disk): retrying can
# help.
_MACHINERY_ERRNOS = ('No such file or directory', 'Permission denied',
                     'Input/output error', 'Cannot allocate memory',
                     'No space left on device', 'Disk quota exceeded',
                     'Resource temporarily unavailable', 'Too many open files',
                     'Read-only file system', 'Stale file handle')
_CONTENT_RES = tuple((re.compile(p), c) for p, c in CONTENT_CHECKS)
_OPEN_PREFIX = re.compile(r"^(?:[Cc]ould not open '[^']*': )+")
_REPEATED_OPEN = re.compile(r"([Cc]ould not open '[^']*': )\1+")
_NO_PRLIMIT = ("the Python interpreter that runs the prlimit wrapper has no "
               "oslo_concurrency module (see [wsgi] python_interpreter)")
# An absolute path left in a message (a backing file, a data file, an
# interpreter): never shown.
_ABS_PATH = re.compile(r"(?<![\w)\]])/[\w.+@%~-]+(?:/[\w.+@%~-]*)*")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img run.

    ``python_exec``: the interpreter that runs the prlimit wrapper
    (``python -m oslo_concurrency.prlimit``); under uWSGI ``sys.executable``
    is not the venv's python, so the plugins pass ``[wsgi]
    python_interpreter``.  None: ``sys.executable``.
    """

    address_space: int = 1 << 30   # bytes (ProcessLimits address_space)
    cpu_time: int = 30             # seconds (ProcessLimits cpu_time)
    timeout: float = 120.0         # wall clock seconds
    python_exec: str | None = None


def qemu_format(disk_format: str) -> str:
    """qemu-img's name for a Glance disk_format: vhd -> vpc, gpt/iso -> raw."""
    return _QEMU_FORMATS.get(disk_format, disk_format)


def _checked_format(action: str, disk_format: str) -> str:
    fmt = qemu_format(disk_format)
    if fmt not in ALLOWED_QEMU_FORMATS:
        raise exception.QemuImgError(
            action=action, reason='unsupported format %s' % (
                _scrub(disk_format, {}) or 'none'))
    return fmt


def _scrub(text: str, names: dict[str, str]) -> str:
    """``text`` with every known path replaced by its name, others hidden."""
    for path in sorted(names, key=len, reverse=True):
        if path:
            text = text.replace(path, names[path])
    return _ABS_PATH.sub('a file', text)


def reduce_stderr(stderr: str, names: dict[str, str]) -> str:
    """qemu-img's stderr as one short sentence without host paths.

    ``names`` maps each path given to qemu-img to what users may read
    instead (the image id, "the output").  The ``qemu-img:`` prefixes go,
    the lines are joined with "; ".
    """
    lines = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith('qemu-img: '):
            line = line[len('qemu-img: '):]
        if line:
            lines.append(_REPEATED_OPEN.sub(r'\1', _scrub(line, names)))
    return '; '.join(lines)


def content_check(stderr: str, source: str) -> tuple[str, str] | None:
    """(check, reason) when qemu-img refused the content of ``source``.

    ``stderr`` is already scrubbed (``source`` is the name that replaced the
    source path).  Only errors about opening or reading the source count:
    an error about the output (ENOSPC, permissions) is never the content's.
    """
    for line in stderr.split('; '):
        opened = "ould not open '%s': " % source
        if opened not in line:
            continue
        reason = _OPEN_PREFIX.sub('', line).strip()
        if reason.endswith(_MACHINERY_ERRNOS):
            return None
        for regex, check in _CONTENT_RES:
            if regex.search(reason):
                return check, reason
        if reason in _CONTENT_ERRNOS:
            return 'header', reason
    return None


class _Run:
    """State of one execute(): the process, its kill timer, the relay and
    the watchdog."""

    def __init__(self, limits: Limits,
                 consume: Callable[[bytes], bool] | None = None,
                 forward: bool = True,
                 check: Callable[[], None] | None = None,
                 check_interval: float = 1.0) -> None:
        self.timeout = limits.timeout
        self.consume = consume
        self.forward = forward
        self.check = check
        self.check_interval = check_interval
        self.timed_out = False
        self.stopped = False            # the consumer asked to stop early
        self.check_error: BaseException | None = None
        self.consume_error: BaseException | None = None
        self._proc: subprocess.Popen[Any] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._threads: list[threading.Thread] = []

    # processutils hooks ----------------------------------------------------
    def started(self, proc: subprocess.Popen[Any]) -> None:
        self._proc = proc
        self._timer = threading.Timer(self.timeout, self._kill_timeout)
        self._timer.daemon = True
        self._timer.start()
        if self.consume is not None and proc.stdout is not None:
            real = proc.stdout
            read_fd, write_fd = os.pipe()
            proc.stdout = os.fdopen(read_fd, 'rb', 0)
            self._spawn(self._pump, 'qemu-img-stdout', real, write_fd)
        if self.check is not None:
            self._spawn(self._watch, 'qemu-img-watchdog')

    def finished(self, proc: subprocess.Popen[Any]) -> None:
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()
        for thread in self._threads:
            thread.join()

    # ----------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], name: str,
               *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=name)
        self._threads.append(thread)
        thread.start()

    def _kill(self) -> bool:
        """Kill qemu-img if it still runs; True if it did."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return False
            proc.kill()
            return True

    def _kill_timeout(self) -> None:
        if self._kill():
            self.timed_out = True

    def _watch(self) -> None:
        assert self.check is not None
        while not self._done.wait(self.check_interval):
            try:
                self.check()
            except BaseException as exc:  # noqa: BLE001 - re-raised by convert
                self.check_error = exc
                self._kill()
                return

    def _pump(self, real: IO[bytes], write_fd: int) -> None:
        assert self.consume is not None
        try:
            while True:
                data = os.read(real.fileno(), 65536)
                if not data:
                    break
                if self.forward:
                    os.write(write_fd, data)
                if self.stopped or self.consume_error:
                    continue  # drain until qemu-img is gone
                try:
                    if not self.consume(data):
                        self.stopped = True
                        self._kill()
                except Exception as exc:  # noqa: BLE001 - raised by _execute
                    self.consume_error = exc
                    self._kill()
        finally:
            os.close(write_fd)
            real.close()


class _Progress:
    """Parses ``(NN.NN/100%)`` groups; reports increasing percentages."""

    def __init__(self, callback: Callable[[float], None]) -> None:
        self.callback = callback
        self.last = -1.0
        self._tail = b''

    def feed(self, data: bytes) -> bool:
        tail = (self._tail + data)[-64:]
        # Only complete "(x/100%)" groups; keep a partial one.
        matches = list(_PROGRESS_RE.finditer(tail))
        if matches:
            self.report(float(matches[-1].group(1)))
            tail = tail[matches[-1].end():]
        self._tail = tail
        return True

    def report(self, percent: float) -> None:
        percent = min(max(percent, 0.0), 100.0)
        if percent <= self.last:
            return
        self.last = percent
        try:
            self.callback(percent)
        except Exception:  # noqa: BLE001 - a callback must not stop qemu-img
            LOG.exception('qemu-img progress callback failed')


class _MapCounter:
    """Sums ``qemu-img map --output=json`` as it streams, one line each.

    qemu-img prints one extent per line (``[{ "start": 0, ...},``).  Every
    extent is a guest range, so a host cluster that many guest ranges point
    at is counted once per range: the bytes a conversion reads and writes.
    """

    MAX_LINE = 4096

    def __init__(self, stop_above: int | None) -> None:
        self.stop_above = stop_above
        self.data = 0
        self.end = 0
        self.extents = 0
        self._partial = b''

    def feed(self, data: bytes) -> bool:
        lines = (self._partial + data).split(b'\n')
        self._partial = lines.pop()
        if len(self._partial) > self.MAX_LINE:
            raise ValueError('map line longer than %d bytes' % self.MAX_LINE)
        for line in lines:
            self._line(line)
        return self.stop_above is None or self.data <= self.stop_above

    def finish(self) -> None:
        if self._partial.strip():
            self._line(self._partial)
            self._partial = b''

    def _line(self, line: bytes) -> None:
        text = line.strip().lstrip(b'[').rstrip(b',').rstrip(b']').strip()
        if not text:
            return
        extent = json.loads(text)
        if not isinstance(extent, dict):
            raise ValueError('map entry is not an object')
        start, length = extent.get('start'), extent.get('length')
        if not isinstance(start, int) or not isinstance(length, int) \
                or length < 0 or start != self.end:
            raise ValueError('map extents are not contiguous')
        self.end = start + length
        self.extents += 1
        # A range that reads as zeros is never written (-S 4k, holes).
        if extent.get('data') is True and extent.get('zero') is not True:
            self.data += length


def _describe_signal(code: int, limits: Limits) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = 'signal %d' % -code
    hint = {
        'SIGXCPU': ' (CPU time limit %d s)' % limits.cpu_time,
        'SIGKILL': ' (killed)',
        'SIGSEGV': ' (address space limit %d bytes?)' % limits.address_space,
        'SIGABRT': ' (address space limit %d bytes?)' % limits.address_space,
    }.get(name, '')
    return 'qemu-img was killed by %s%s' % (name, hint)


def _execute(action: str, args: list[str], limits: Limits, *,
             disk_format: str = '', names: dict[str, str] | None = None,
             source: str | None = None,
             consume: Callable[[bytes], bool] | None = None,
             forward: bool = True,
             check: Callable[[], None] | None = None,
             check_interval: float = 1.0) -> tuple[str, _Run]:
    """Run qemu-img ``args``; ``names`` maps paths in them to shown names,
    ``source`` is the shown name of the input whose content is judged."""
    names = names or {}
    run = _Run(limits, consume, forward, check, check_interval)
    prlimit = processutils.ProcessLimits(address_space=limits.address_space,
                                         cpu_time=limits.cpu_time)
    try:
        out, _err = processutils.execute(
            QEMU_IMG, *args, prlimit=prlimit,
            # The prlimit wrapper is "python -m oslo_concurrency.prlimit":
            # it must be an interpreter that has oslo.concurrency (under
            # uWSGI sys.executable is not).
            python_exec=limits.python_exec or sys.executable,
            on_execute=run.started, on_completion=run.finished,
            env_variables=_env())
    except processutils.ProcessExecutionError as exc:
        if run.check_error is not None:
            raise run.check_error from None
        if run.consume_error is not None:
            raise exception.QemuImgError(
                action=action, reason='unparsable output (%s)'
                % _scrub(str(run.consume_error), names)) from None
        if run.stopped:
            return '', run
        if run.timed_out:
            raise exception.QemuImgTimeout(action=action,
                                           timeout=limits.timeout) from None
        code = exc.exit_code if isinstance(exc.exit_code, int) else 0
        if "No module named 'oslo_concurrency" in (exc.stderr or ''):
            raise exception.QemuImgError(action=action, reason=_NO_PRLIMIT) \
                from None
        stderr = reduce_stderr(exc.stderr or '', names)
        if code < 0:
            reason = _describe_signal(code, limits)
            if stderr:
                reason += ': ' + stderr
            raise exception.QemuImgError(action=action,
                                         reason=reason) from None
        found = content_check(stderr, source) if source else None
        if found is not None:
            raise exception.QemuImgRefused(
                format=disk_format, check=found[0], reason=found[1]) from None
        raise exception.QemuImgError(
            action=action,
            reason=stderr or 'exit status %s' % exc.exit_code) from None
    except OSError as exc:
        # Cannot start the prlimit wrapper (python_exec): never its path.
        raise exception.QemuImgError(
            action=action, reason='cannot run qemu-img: %s' % (
                exc.strerror or _scrub(str(exc), names))) from None
    if run.check_error is not None:
        raise run.check_error
    if run.consume_error is not None:
        raise exception.QemuImgError(
            action=action, reason='unparsable output (%s)'
            % _scrub(str(run.consume_error), names))
    return out, run


def _env() -> dict[str, str]:
    # A stable, untranslated message language for the errors we relay.
    env = dict(os.environ)
    env['LC_ALL'] = 'C'
    # glibc reserves 64 MiB of address space per thread arena; qemu-img's
    # worker threads (compression, -m 16) then hit a 1 GiB RLIMIT_AS with
    # "qemu_thread_create: Resource temporarily unavailable" about half the
    # time.  Two arenas keep the limit meaningful and the convert working.
    env['MALLOC_ARENA_MAX'] = '2'
    return env


def info(path: str, disk_format: str, limits: Limits = Limits(),
         name: str = DEFAULT_NAME) -> imageutils.QemuImgInfo:
    """``qemu-img info -f <fmt> --output=json`` under limits, parsed.

    ``name`` replaces ``path`` in every message (e.g. the image id).
    Raises QemuImgRefused when qemu-img refuses the content, QemuImgTimeout
    or QemuImgError otherwise.
    """
    fmt = _checked_format('info', disk_format)
    out, _run = _execute('info', ['info', '-f', fmt, '--output=json', path],
                         limits, disk_format=disk_format,
                         names={path: name}, source=name)
    try:
        return imageutils.QemuImgInfo(out, format='json')
    except ValueError:
        raise exception.QemuImgError(
            action='info', reason='unparsable output') from None


def mapped_data_bytes(path: str, disk_format: str,
                      limits: Limits = Limits(), name: str = DEFAULT_NAME,
                      stop_above: int | None = None) -> int:
    """Bytes of guest data a conversion of ``path`` reads and writes.

    The sum of every guest range ``qemu-img map`` reports as data (and not
    as zeros), counted once per guest range: a qcow2 whose L2 entries all
    point at one cluster, or a vdi whose block map repeats one block, counts
    its whole expanded size, not the few host bytes it stores.  For vhdx
    qemu-img reports every range as data; the count is then taken from the
    BAT (``inspection.vhdx_payload_bytes``, after qemu-img opened the file
    and so validated its layout), or stays the virtual size (an upper
    bound) when the BAT cannot be trusted.  The output is parsed as it
    streams (bounded memory).

    ``stop_above``: stop qemu-img as soon as the count exceeds it and return
    the count so far (then a lower bound, still > stop_above): a guard only
    needs to know that a limit is crossed.
    """
    fmt = _checked_format('map', disk_format)
    counter = _MapCounter(stop_above)
    _out, run = _execute(
        'map', ['map', '-f', fmt, '--output=json', path], limits,
        disk_format=disk_format, names={path: name}, source=name,
        consume=counter.feed, forward=False)
    if not run.stopped:
        try:
            counter.finish()
        except ValueError as exc:
            raise exception.QemuImgError(
                action='map', reason='unparsable output (%s)' % exc) from None
    if fmt == 'vhdx':
        payload = inspection.vhdx_payload_bytes(path)
        if payload is not None:
            return min(counter.data, payload)
    return counter.data


def convert(src: str, src_format: str, dst: str, dst_format: str,
            limits: Limits = Limits(),
            progress: Callable[[float], None] | None = None,
            extra_args: Iterable[str] = (),
            name: str = DEFAULT_NAME,
            check: Callable[[], None] | None = None,
            check_interval: float = 1.0) -> None:
    """``qemu-img convert`` src to dst under limits, reporting progress.

    ``progress`` gets increasing percentages (0..100, ending at 100 on
    success), called from a helper thread: keep it short.
    ``extra_args`` go before the file names (e.g. ``('-o',
    'subformat=streamOptimized')``); CONVERT_FLAGS are always given.
    ``name`` replaces ``src`` in messages (``dst`` reads "the output").
    ``check`` is called every ``check_interval`` seconds from a helper
    thread while qemu-img runs; if it raises, qemu-img is killed and that
    exception is re-raised here (the partial output is the caller's to
    remove).
    """
    sfmt = _checked_format('convert', src_format)
    dfmt = _checked_format('convert', dst_format)
    args = ['convert', '-f', sfmt, '-O', dfmt, *CONVERT_FLAGS]
    if progress is not None:
        args.append('-p')
    args += [*extra_args, src, dst]
    parser = _Progress(progress) if progress is not None else None
    _execute('convert', args, limits, disk_format=src_format,
             names={src: name, dst: 'the output'}, source=name,
             consume=parser.feed if parser else None,
             check=check, check_interval=check_interval)
    if parser is not None and parser.last < 100:
        parser.report(100.0)
