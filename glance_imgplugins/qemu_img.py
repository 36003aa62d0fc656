"""The only place qemu-img runs.

Every call goes through ``oslo_concurrency.processutils.execute`` with
``prlimit`` (address space and CPU time, CVE-2015-5162), a wall-clock timeout
that really kills the process (processutils only stops *waiting*), and an
explicit ``-f`` (qemu-img never probes a format: a guest-written header must
never choose the driver).  Failures are typed: ``QemuImgError`` carries
qemu-img's stderr, ``QemuImgTimeout`` the limit that was hit.

Progress of ``convert -p``: processutils reads the child's stdout with
``communicate()``, so reading the same pipe from another thread would race
with it.  Instead the ``on_execute`` hook swaps ``Popen.stdout`` for the read
end of a relay pipe before ``communicate()`` starts; a relay thread alone reads
qemu-img's real stdout, reports each ``(NN.NN/100%)`` to the callback, and
copies every byte on to the relay pipe, so processutils still gets the
complete output and nothing reads one pipe twice.

No oslo.config here: the plugins pass ``Limits`` from their options.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from oslo_concurrency import processutils
from oslo_utils import imageutils

from glance_imgplugins import exception

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

_PROGRESS_RE = re.compile(rb'\((\d{1,3}(?:\.\d+)?)/100%\)')


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img run."""

    address_space: int = 1 << 30   # bytes (ProcessLimits address_space)
    cpu_time: int = 30             # seconds (ProcessLimits cpu_time)
    timeout: float = 120.0         # wall clock seconds


def qemu_format(disk_format: str) -> str:
    """qemu-img's name for a Glance disk_format: vhd -> vpc, gpt/iso -> raw."""
    return _QEMU_FORMATS.get(disk_format, disk_format)


def _checked_format(action: str, disk_format: str) -> str:
    fmt = qemu_format(disk_format)
    if fmt not in ALLOWED_QEMU_FORMATS:
        raise exception.QemuImgError(
            action=action, reason='unsupported format %r' % disk_format)
    return fmt


class _Run:
    """State of one execute(): the process, its kill timer, the relay."""

    def __init__(self, timeout: float,
                 progress: Callable[[float], None] | None) -> None:
        self.timeout = timeout
        self.progress = progress
        self.timed_out = False
        self.last = -1.0
        self._timer: threading.Timer | None = None
        self._relay: threading.Thread | None = None

    # processutils hooks ----------------------------------------------------
    def started(self, proc: subprocess.Popen[Any]) -> None:
        self._timer = threading.Timer(self.timeout, self._kill, (proc,))
        self._timer.daemon = True
        self._timer.start()
        if self.progress is not None and proc.stdout is not None:
            real = proc.stdout
            read_fd, write_fd = os.pipe()
            proc.stdout = os.fdopen(read_fd, 'rb', 0)
            self._relay = threading.Thread(
                target=self._pump, args=(real, write_fd), daemon=True,
                name='qemu-img-progress')
            self._relay.start()

    def finished(self, proc: subprocess.Popen[Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._relay is not None:
            self._relay.join()

    # ----------------------------------------------------------------------
    def _kill(self, proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            self.timed_out = True
            proc.kill()

    def _pump(self, real: IO[bytes], write_fd: int) -> None:
        tail = b''
        try:
            while True:
                data = os.read(real.fileno(), 4096)
                if not data:
                    break
                os.write(write_fd, data)
                tail = (tail + data)[-64:]
                # Only complete "(x/100%)" groups; keep a partial one.
                matches = list(_PROGRESS_RE.finditer(tail))
                if matches:
                    self.report(float(matches[-1].group(1)))
                    tail = tail[matches[-1].end():]
        finally:
            os.close(write_fd)
            real.close()

    def report(self, percent: float) -> None:
        percent = min(max(percent, 0.0), 100.0)
        if percent <= self.last or self.progress is None:
            return
        self.last = percent
        try:
            self.progress(percent)
        except Exception:  # noqa: BLE001 - a callback must not stop qemu-img
            LOG.exception('qemu-img progress callback failed')


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


def _execute(action: str, args: list[str], limits: Limits,
             progress: Callable[[float], None] | None = None) -> str:
    run = _Run(limits.timeout, progress)
    prlimit = processutils.ProcessLimits(address_space=limits.address_space,
                                         cpu_time=limits.cpu_time)
    try:
        out, _err = processutils.execute(
            QEMU_IMG, *args, prlimit=prlimit,
            # The prlimit wrapper is "python -m oslo_concurrency.prlimit":
            # it must be this interpreter (a WSGI server's sys.executable
            # may be something else entirely).
            python_exec=sys.executable,
            on_execute=run.started, on_completion=run.finished,
            env_variables=_env())
    except processutils.ProcessExecutionError as exc:
        if run.timed_out:
            raise exception.QemuImgTimeout(action=action,
                                           timeout=limits.timeout) from exc
        code = exc.exit_code if isinstance(exc.exit_code, int) else 0
        stderr = (exc.stderr or '').strip()
        if code < 0:
            reason = _describe_signal(code, limits)
            if stderr:
                reason += ': ' + stderr
        else:
            reason = stderr or 'exit status %s' % exc.exit_code
        raise exception.QemuImgError(action=action, reason=reason) from exc
    except OSError as exc:
        raise exception.QemuImgError(action=action, reason=str(exc)) from exc
    return out


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


def info(path: str, disk_format: str,
         limits: Limits = Limits()) -> imageutils.QemuImgInfo:
    """``qemu-img info -f <fmt> --output=json`` under limits, parsed."""
    fmt = _checked_format('info', disk_format)
    out = _execute('info', ['info', '-f', fmt, '--output=json', path],
                   limits)
    try:
        return imageutils.QemuImgInfo(out, format='json')
    except ValueError as exc:
        raise exception.QemuImgError(
            action='info', reason='unparsable output: %s' % exc) from exc


def convert(src: str, src_format: str, dst: str, dst_format: str,
            limits: Limits = Limits(),
            progress: Callable[[float], None] | None = None,
            extra_args: tuple[str, ...] = ()) -> None:
    """``qemu-img convert`` src to dst under limits, reporting progress.

    ``progress`` gets increasing percentages (0..100, ending at 100 on
    success), called from a helper thread: keep it short.
    ``extra_args`` go before the file names (e.g. ``('-o',
    'subformat=streamOptimized')``); CONVERT_FLAGS are always given.
    """
    sfmt = _checked_format('convert', src_format)
    dfmt = _checked_format('convert', dst_format)
    args = ['convert', '-f', sfmt, '-O', dfmt, *CONVERT_FLAGS]
    if progress is not None:
        args.append('-p')
    args += [*extra_args, src, dst]
    run_progress: list[float] = []

    def relay(percent: float) -> None:
        run_progress.append(percent)
        if progress is not None:
            progress(percent)

    _execute('convert', args, limits, relay if progress else None)
    if progress is not None and (not run_progress or run_progress[-1] < 100):
        progress(100.0)
