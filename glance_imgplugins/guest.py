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

"""What is inside the image: guest OS facts, read offline with libguestfs.

The libguestfs appliance (a small VM) opens the image read-only; nothing is
ever mounted on the host and no guest code runs: files are only looked at
(``is_file``, ``ls``) by the appliance's daemon, chrooted into the guest's
filesystems.

Two halves:

* the **worker** (``python -m glance_imgplugins.guest WORKER ...``, see
  :func:`worker_main`) talks to libguestfs through its Python binding and
  prints one JSON report of raw facts on stdout;
* the **parent** (:func:`inspect_guest`) runs the worker through
  ``processutils.execute`` with ``ProcessLimits`` (address space, CPU time)
  in its own process group, kills the whole group (the worker and its qemu)
  at the wall-clock timeout, and turns the report into typed
  :class:`GuestFacts` and image properties (:func:`guest_properties`).

The appliance uses KVM when it works and TCG otherwise; with ``accel=auto``
the choice is made once per process (a KVM launch failure switches to TCG
for good) and logged.

No oslo.config here: the plugin passes :class:`Limits` from its options.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import importlib
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, ClassVar, Mapping, Sequence

from oslo_concurrency import processutils

from glance_imgplugins import exception

LOG = logging.getLogger(__name__)

ACCELS = ('auto', 'kvm', 'tcg')

#: libguestfs' architecture names -> Nova's (``hw_architecture``).
ARCHITECTURES: Mapping[str, str] = {
    'x86_64': 'x86_64', 'i386': 'i686', 'i486': 'i686', 'i586': 'i686',
    'i686': 'i686', 'aarch64': 'aarch64', 'armv7l': 'armv7l',
    's390x': 's390x', 's390': 's390', 'ppc64le': 'ppc64le',
    'ppc64': 'ppc64', 'riscv64': 'riscv64',
}
#: libguestfs distro names -> the ``os_distro`` values of Glance's metadefs
#: (libosinfo short names); a distro absent here keeps libguestfs' name.
DISTROS: Mapping[str, str] = {
    'archlinux': 'arch', 'redhat-based': 'rhel', 'opensuse': 'opensuse',
    'sles': 'sles', 'rhel': 'rhel', 'centos': 'centos', 'fedora': 'fedora',
    'debian': 'debian', 'ubuntu': 'ubuntu', 'rocky': 'rocky',
    'almalinux': 'almalinux', 'oraclelinux': 'ol', 'alpinelinux': 'alpine',
    'windows': 'windows', 'freebsd': 'freebsd', 'netbsd': 'netbsd',
    'openbsd': 'openbsd', 'gentoo': 'gentoo', 'mageia': 'mageia',
}
#: Distros whose libosinfo version is "MAJOR.MINOR" even when MINOR is 0
#: (ubuntu 22.04, sles 15.5 is "15.5" and 15 is "15"); others drop a 0.
_TWO_PART_VERSIONS = frozenset({'ubuntu'})
OS_TYPES = frozenset({'linux', 'windows'})
#: The properties guest inspection may set, in the order shown.
PROPERTIES: tuple[str, ...] = (
    'os_type', 'os_distro', 'os_version', 'hw_architecture', 'architecture',
    'hw_firmware_type', 'hw_machine_type', 'hw_qemu_guest_agent',
    'img_cloud_init')
#: The image property that records how guest inspection ended, set
#: whenever it is enabled (Glance replaces the task message at the end of a
#: successful import; the property stays).
OUTCOME_PROPERTY = 'img_guest_inspection'
#: Its values: facts found; the wall-clock limit was hit; no (single) OS
#: recognised; the appliance could not run or answer; the image was not
#: handed to the appliance (unsafe, or a format qemu is not given).
OUTCOMES: tuple[str, ...] = ('done', 'timeout', 'no-os', 'failed', 'skipped')

# Worker protocol version: a mismatched report is refused, never guessed.
_REPORT_VERSION = 1
_OSINFO_RE = re.compile(r'^([a-z]+)(\d+(?:\.\d+)?)$')
_NAME_RE = re.compile(r'^[A-Za-z0-9._+-]{1,64}$')
_ESP_GUID = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
_ESP_MBR_ID = 0xEF
# Where the tools live, per guest type (paths inside the guest).
_AGENT_FILES = {
    'linux': ('/usr/bin/qemu-ga', '/usr/sbin/qemu-ga', '/usr/libexec/qemu-ga',
              '/usr/local/bin/qemu-ga'),
    'windows': ('/Program Files/Qemu-ga/qemu-ga.exe',
                '/Program Files/QEMU Guest Agent/qemu-ga.exe'),
}
_CLOUD_INIT_FILES = {
    'linux': ('/usr/bin/cloud-init', '/usr/local/bin/cloud-init',
              '/etc/cloud/cloud.cfg'),
    'windows': ('/Program Files/Cloudbase Solutions/Cloudbase-Init',),
}
_ZIPL_FILES = ('/etc/zipl.conf', '/boot/zipl')
# Bounds on what the worker lists (hostile filesystems: huge directories).
_MAX_LIST = 256
_STDERR_TAIL = 2000
_ABS_PATH = re.compile(r"(?<![\w)\]])/[\w.+@%~-]+(?:/[\w.+@%~-]*)*")


# --- errors -----------------------------------------------------------------
#
# Not ImportFailure subclasses: by default a guest that gives no facts fails
# nothing.  When the operator requires the facts, the plugin raises the
# contract's own ContentRefused (``refused``) or Retryable with this text.

class GuestInspectionError(exception.GlanceImgPluginsError):
    """The appliance could not run or answer; retrying can help."""

    #: Whether the image's content is at fault (retrying cannot help).
    refused: ClassVar[bool] = False
    #: The :data:`OUTCOME_PROPERTY` value this failure records.
    outcome: ClassVar[str] = 'failed'
    msg_fmt = "Guest inspection failed: %(reason)s"


class GuestInspectionTimeout(GuestInspectionError):
    outcome = 'timeout'
    msg_fmt = ("Guest inspection did not finish within %(timeout)s seconds "
               "([image_introspection] guest_inspection_timeout)")


class NoGuestOS(GuestInspectionError):
    """The image holds no (single) OS libguestfs recognises."""

    refused = True
    outcome = 'no-os'
    msg_fmt = ("Guest inspection found no operating system in the image "
               "(%(reason)s)")


# --- limits and facts -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds of one inspection.

    ``memory_mb``: the appliance's RAM (``LIBGUESTFS_MEMSIZE``);
    ``address_space``: RLIMIT_AS of the worker and its qemu (qemu maps the
    guest RAM and, under TCG, a translation cache of up to 1 GiB);
    ``cpu_time``: RLIMIT_CPU seconds; ``timeout``: wall clock seconds for
    the whole run, appliance boot included.  ``python_exec``: the Python
    that runs the prlimit wrapper and the worker (``[wsgi]
    python_interpreter`` under uWSGI).
    """

    timeout: float = 180.0
    memory_mb: int = 768
    address_space: int = 8 << 30
    cpu_time: int = 600
    accel: str = 'auto'
    python_exec: str | None = None


@dataclasses.dataclass(frozen=True)
class GuestFacts:
    """What libguestfs found in one image with exactly one OS."""

    os_type: str
    distro: str | None
    major: int
    minor: int
    arch: str | None
    osinfo: str | None
    product_name: str | None
    uefi_loader: bool
    zipl: bool
    qemu_guest_agent: bool
    cloud_init: bool
    accel: str
    elapsed: float

    @property
    def os_distro(self) -> str | None:
        if not self.distro or self.distro == 'unknown':
            return None
        return DISTROS.get(self.distro, self.distro)

    @property
    def os_version(self) -> str | None:
        distro = self.os_distro
        if distro is None or distro == 'windows' or self.major <= 0:
            # Windows' NT version (10.0) is not a libosinfo version.
            return None
        # libguestfs' libosinfo id knows which distros count point releases
        # (debian12 for 12.5, rhel9.2, ubuntu22.04): its version wins.
        m = _OSINFO_RE.match(self.osinfo or '')
        if m and m.group(2).split('.')[0] == str(self.major):
            return m.group(2)
        if distro in _TWO_PART_VERSIONS:
            return '%d.%02d' % (self.major, self.minor)
        if self.minor:
            return '%d.%d' % (self.major, self.minor)
        return str(self.major)

    @property
    def hw_architecture(self) -> str | None:
        return ARCHITECTURES.get(self.arch or '')

    def summary(self) -> str:
        """One line for the log and the task message."""
        parts = [self.os_distro or self.os_type]
        if self.os_version:
            parts[0] += ' ' + self.os_version
        parts.append(self.hw_architecture or 'unknown architecture')
        if self.uefi_loader:
            parts.append('UEFI')
        if self.zipl:
            parts.append('zipl')
        return ', '.join(parts)


def guest_properties(facts: GuestFacts) -> dict[str, str]:
    """The image properties ``facts`` imply (Nova's names and values)."""
    props: dict[str, str] = {}
    if facts.os_type in OS_TYPES:
        props['os_type'] = facts.os_type
    if facts.os_distro:
        props['os_distro'] = facts.os_distro
    if facts.os_version:
        props['os_version'] = facts.os_version
    arch = facts.hw_architecture
    if arch:
        props['hw_architecture'] = arch
        # The legacy name the scheduler's ImagePropertiesFilter still reads.
        props['architecture'] = arch
    if facts.uefi_loader:
        props['hw_firmware_type'] = 'uefi'
        if arch in (None, 'x86_64'):
            # UEFI on x86 needs q35; other architectures have their own.
            props['hw_machine_type'] = 'q35'
    if facts.qemu_guest_agent:
        props['hw_qemu_guest_agent'] = 'yes'
    props['img_cloud_init'] = 'yes' if facts.cloud_init else 'no'
    return props


def warnings(facts: GuestFacts) -> list[str]:
    """What the image owner should know (task message)."""
    out = []
    if not facts.cloud_init:
        out.append('no cloud-init found (instances will not get SSH keys or '
                   'user data)' if facts.os_type != 'windows' else
                   'no cloudbase-init found (instances will not get user '
                   'data)')
    if facts.hw_architecture is None:
        out.append('architecture not recognised')
    return out


# --- the report --------------------------------------------------------------

def _name(value: Any) -> str | None:
    """A short identifier from the report, or None (never guest prose)."""
    if isinstance(value, str) and _NAME_RE.match(value):
        return value
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value < 10000 else 0


def _text(value: Any, limit: int = 120) -> str | None:
    if not isinstance(value, str):
        return None
    clean = ''.join(c for c in value if c.isprintable())[:limit].strip()
    return clean or None


def parse_report(report: Any, accel: str = 'tcg',
                 elapsed: float = 0.0) -> GuestFacts:
    """:class:`GuestFacts` from a worker report (a decoded JSON object).

    Raises :class:`NoGuestOS` when the report has no OS or several (a
    multi-boot image has no one answer), :class:`GuestInspectionError`
    when the report is malformed.
    """
    if not isinstance(report, dict) or report.get('version') != \
            _REPORT_VERSION:
        raise GuestInspectionError(reason='unexpected worker report')
    roots = report.get('roots')
    if not isinstance(roots, list):
        raise GuestInspectionError(reason='unexpected worker report')
    if not roots:
        raise NoGuestOS(reason='no filesystem holds a recognisable OS')
    if len(roots) > 1:
        raise NoGuestOS(reason='%d operating systems found, no single '
                        'answer' % len(roots))
    root = roots[0]
    if not isinstance(root, dict):
        raise GuestInspectionError(reason='unexpected worker report')
    os_type = _name(root.get('type')) or 'unknown'
    return GuestFacts(
        os_type=os_type,
        distro=_name(root.get('distro')),
        major=_int(root.get('major')),
        minor=_int(root.get('minor')),
        arch=_name(root.get('arch')),
        osinfo=_name(root.get('osinfo')),
        product_name=_text(root.get('product_name')),
        uefi_loader=report.get('uefi_loader') is True,
        zipl=root.get('zipl') is True,
        qemu_guest_agent=root.get('qemu_guest_agent') is True,
        cloud_init=root.get('cloud_init') is True,
        accel=accel, elapsed=elapsed)


# --- KVM or TCG, decided once -----------------------------------------------
#
# With ``auto`` the decision is final only once an appliance has started (or
# failed to start) with KVM: /dev/kvm may open where KVM cannot run a guest
# (nested KVM: "failed to set MSR").  So it is said once, when final, and in
# one line: never "will use kvm" followed by "could not start with KVM".

_accel_lock = threading.Lock()
_auto_accel: str | None = None     # final
_auto_tentative: str | None = None  # kvm, until a launch confirms it


def _kvm_usable() -> bool:
    try:
        fd = os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def chosen_accel(requested: str) -> str:
    """``kvm`` or ``tcg`` to launch with for ``requested``.

    ``auto``: TCG, final and logged, when /dev/kvm is not usable; otherwise
    KVM on trial until :func:`_launched` hears how the first launch went.
    """
    global _auto_accel, _auto_tentative
    if requested in ('kvm', 'tcg'):
        return requested
    with _accel_lock:
        if _auto_accel is not None:
            return _auto_accel
        if _auto_tentative is None:
            if _kvm_usable():
                _auto_tentative = 'kvm'
            else:
                _auto_accel = 'tcg'
                LOG.info('Guest inspection: the libguestfs appliance will '
                         'use tcg (/dev/kvm is not usable)')
                return _auto_accel
        return _auto_tentative


def _launched(accel: str, started: bool) -> None:
    """How a launch with ``accel`` went, for the ``auto`` decision: the
    first KVM launch makes it final (and says so, once)."""
    global _auto_accel, _auto_tentative
    with _accel_lock:
        if _auto_accel is not None or _auto_tentative != accel:
            return
        _auto_tentative = None
        if started:
            _auto_accel = 'kvm'
            LOG.info('Guest inspection: the libguestfs appliance will use '
                     'kvm (it started with KVM)')
        else:
            _auto_accel = 'tcg'
            LOG.warning('Guest inspection: the libguestfs appliance will '
                        'use tcg (software emulation, slower): it could not '
                        'start with KVM although /dev/kvm opens')


def reset_accel() -> None:
    """Forget the auto decision (tests)."""
    global _auto_accel, _auto_tentative
    with _accel_lock:
        _auto_accel = _auto_tentative = None


# --- what must be installed --------------------------------------------------

def missing_parts() -> list[str]:
    """What this host lacks for guest inspection (empty: nothing), for
    ``check-config``."""
    missing = []
    binding = importlib.util.find_spec('guestfs') is not None or \
        os.path.exists('/usr/lib/python3/dist-packages/guestfs.py')
    if not binding:
        missing.append('the libguestfs Python binding (python3-guestfs)')
    kernels = sorted(glob.glob('/boot/vmlinuz-*'))
    if not kernels:
        missing.append('a kernel in /boot for the appliance '
                       '(linux-image-amd64)')
    elif not any(os.access(k, os.R_OK) for k in kernels):
        # Some distributions install kernels mode 0600: supermin, run as the
        # Glance user, cannot read them.
        missing.append('read access to a kernel in /boot for this user '
                       '(it is mode 0600)')
    return missing


# --- running the worker ------------------------------------------------------

def _scrub(text: str, names: Mapping[str, str]) -> str:
    for path in sorted(names, key=len, reverse=True):
        text = text.replace(path, names[path])
    return _ABS_PATH.sub('a file', text)


_PR_SET_PDEATHSIG = 1


def _new_session() -> None:
    # Own process group (the timeout kills qemu with the worker), and the
    # default SIGPIPE that processutils' own preexec would restore.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.setsid()
    # A Glance that dies mid-inspection takes the worker with it (the
    # setting survives the prlimit wrapper's exec; libguestfs' recovery
    # process then stops qemu).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _env(accel: str, limits: Limits) -> dict[str, str]:
    env = dict(os.environ)
    env['LC_ALL'] = 'C'
    env['LIBGUESTFS_BACKEND'] = 'direct'
    env['LIBGUESTFS_MEMSIZE'] = str(limits.memory_mb)
    if accel == 'tcg':
        env['LIBGUESTFS_BACKEND_SETTINGS'] = 'force_tcg'
    else:
        env.pop('LIBGUESTFS_BACKEND_SETTINGS', None)
    for key in ('LIBGUESTFS_DEBUG', 'LIBGUESTFS_TRACE'):
        env.pop(key, None)
    return env


class _Killer:
    """Kills the worker's process group at the wall-clock timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.timed_out = False
        self._proc: subprocess.Popen[Any] | None = None
        self._timer: threading.Timer | None = None

    def started(self, proc: subprocess.Popen[Any]) -> None:
        self._proc = proc
        self._timer = threading.Timer(self.timeout, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def finished(self, proc: subprocess.Popen[Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._killpg()  # nothing of the run may outlive it

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.timed_out = True
        self._killpg()

    def _killpg(self) -> None:
        if self._proc is None:
            return
        # qemu runs in a process group of its own (libguestfs) but in the
        # worker's session: kill the whole session.
        for pid in [self._proc.pid] + _session_members(self._proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (read from /proc)."""
    members = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry, 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces.
        fields = stat[stat.rfind(b')') + 2:].split()
        if len(fields) > 3 and fields[3] == str(sid).encode():
            members.append(int(entry))
    return members


def _run_worker(path: str, qemu_format: str, accel: str, limits: Limits,
                timeout: float, name: str) -> tuple[Any, bool]:
    """(report, launch_failed) from one worker run."""
    killer = _Killer(timeout)
    python = limits.python_exec or sys.executable
    prlimit = processutils.ProcessLimits(address_space=limits.address_space,
                                         cpu_time=limits.cpu_time)
    names = {path: name}
    try:
        out, _err = processutils.execute(
            python, '-m', 'glance_imgplugins.guest', 'WORKER', qemu_format,
            path, prlimit=prlimit, python_exec=python,
            on_execute=killer.started, on_completion=killer.finished,
            preexec_fn=_new_session, env_variables=_env(accel, limits))
    except processutils.ProcessExecutionError as exc:
        if killer.timed_out:
            raise GuestInspectionTimeout(timeout=int(limits.timeout)) \
                from None
        stderr = (exc.stderr or '')[-_STDERR_TAIL:]
        if "No module named 'oslo_concurrency" in stderr:
            raise GuestInspectionError(
                reason='the Python interpreter that runs the prlimit wrapper '
                'has no oslo_concurrency module (see [wsgi] '
                'python_interpreter)') from None
        report = _last_json(exc.stdout or '')
        if report is not None:
            return report, _launch_failed(report)
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        reason = _scrub(lines[-1], names) if lines else \
            'exit status %s' % exc.exit_code
        raise GuestInspectionError(reason=reason[:300]) from None
    except OSError as exc:
        raise GuestInspectionError(reason='cannot run the worker: %s' % (
            exc.strerror or 'error')) from None
    report = _last_json(out)
    if report is None:
        raise GuestInspectionError(reason='no report from the worker')
    return report, _launch_failed(report)


def _last_json(out: str) -> Any:
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith('{'):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _launch_failed(report: Any) -> bool:
    return isinstance(report, dict) and report.get('error_phase') == 'launch'


def _report_error(report: Any, names: Mapping[str, str]) -> str | None:
    if isinstance(report, dict) and isinstance(report.get('error'), str):
        return _scrub(report['error'], names)[:300]
    return None


def inspect_guest(path: str, qemu_format: str, limits: Limits = Limits(),
                  name: str = 'the image') -> GuestFacts:
    """The guest facts of the image at ``path`` (format ``qemu_format``,
    never probed).

    Raises :class:`GuestInspectionTimeout` past ``limits.timeout``,
    :class:`NoGuestOS` when no single OS is found (including unreadable
    filesystems), :class:`GuestInspectionError` when the appliance cannot
    run.  ``name`` replaces ``path`` in every message.
    """
    if limits.accel not in ACCELS:
        raise GuestInspectionError(reason='unknown accelerator %s' %
                                    (_name(limits.accel) or '?'))
    if not os.path.isfile(path):
        raise GuestInspectionError(reason='%s is not a regular file' % name)
    clock = _monotonic()
    accel = chosen_accel(limits.accel)
    names = {path: name}
    report, launch_failed = _run_worker(path, qemu_format, accel, limits,
                                        limits.timeout, name)
    if limits.accel == 'auto':
        _launched(accel, not launch_failed)
    if launch_failed and accel == 'kvm' and limits.accel == 'auto':
        accel = 'tcg'
        left = limits.timeout - (_monotonic() - clock)
        if left <= 1:
            raise GuestInspectionTimeout(timeout=int(limits.timeout))
        report, launch_failed = _run_worker(path, qemu_format, accel, limits,
                                            left, name)
    error = _report_error(report, names)
    if error is not None:
        if launch_failed:
            raise GuestInspectionError(reason='the appliance did not start '
                                        '(%s)' % error)
        raise NoGuestOS(reason=error)
    return parse_report(report, accel=accel,
                        elapsed=round(_monotonic() - clock, 1))


def _monotonic() -> float:
    return time.monotonic()


def inspect_file(path: str, limits: Limits = Limits(),
                 vmdk_allowed_types: Sequence[str] | None = None
                 ) -> dict[str, Any]:
    """Offline (``glance-imgplugins inspect --guest FILE``): the guest facts
    the plugin would set for ``path``, as a JSON-able dict.

    Keys: ``properties``, ``warnings``, ``guest`` (a summary), ``facts``,
    ``accel`` and ``elapsed_s`` on success; ``error`` and ``refused`` (the
    content is at fault) otherwise; ``outcome`` always (the
    :data:`OUTCOME_PROPERTY` value the plugin would record).  Header inspection
    decides the format and whether the file is safe to hand to qemu, as at
    import; unreadable input raises ``InspectionInputError`` / OSError like
    ``inspection.inspect_file``.
    """
    # Imported here: the worker process needs neither.
    from glance_imgplugins import inspection
    from glance_imgplugins import qemu_img

    allowed = tuple(vmdk_allowed_types or
                    inspection.DEFAULT_VMDK_ALLOWED_TYPES)
    result = inspection.inspect_file(path, vmdk_allowed_types=allowed)
    if not result.safe:
        return {'error': 'not inspected: the image is unsafe (%s)'
                % result.failure_summary(), 'outcome': 'skipped'}
    if result.format == 'unknown':
        return {'error': 'not inspected: unknown image format',
                'outcome': 'skipped'}
    try:
        facts = inspect_guest(path, qemu_img.qemu_format(result.format),
                              limits, name=os.path.basename(path))
    except GuestInspectionError as exc:
        return {'error': str(exc), 'refused': exc.refused,
                'outcome': exc.outcome}
    return {'guest': facts.summary(), 'properties': guest_properties(facts),
            'warnings': warnings(facts), 'accel': facts.accel,
            'elapsed_s': facts.elapsed, 'outcome': 'done',
            'facts': dataclasses.asdict(facts)}


# --- the worker (runs in its own process, under the limits) -----------------

def _import_guestfs() -> Any:
    try:
        return importlib.import_module('guestfs')
    except ImportError:
        # Debian ships the binding for its own CPython only; a venv of the
        # same version can load it from there (this process only).
        sys.path.append('/usr/lib/python3/dist-packages')
        return importlib.import_module('guestfs')


def _safe(call: Any, *args: Any, default: Any = None) -> Any:
    try:
        return call(*args)
    except RuntimeError:
        return default


def _any_file(g: Any, paths: Sequence[str]) -> bool:
    for path in paths:
        # case_sensitive_path: Windows (NTFS) paths are case-insensitive.
        real = _safe(g.case_sensitive_path, path, default=path)
        if _safe(g.exists, real, default=False):
            return True
    return False


def _efi_loader(g: Any, fs: str) -> bool:
    """Whether filesystem ``fs`` (an ESP) holds an EFI loader:
    /EFI/<dir>/<name>.efi."""
    g.umount_all()
    if _safe(g.mount_ro, fs, '/', default=False) is False:
        return False
    try:
        top = [n for n in (_safe(g.ls, '/', default=[]) or [])[:_MAX_LIST]
               if n.lower() == 'efi']
        for efi in top:
            dirs = (_safe(g.ls, '/' + efi, default=[]) or [])[:_MAX_LIST]
            for sub in dirs:
                base = '/%s/%s' % (efi, sub)
                if not _safe(g.is_dir, base, default=False):
                    continue
                for entry in (_safe(g.ls, base, default=[]) or [])[:_MAX_LIST]:
                    if entry.lower().endswith('.efi') and _safe(
                            g.is_file, base + '/' + entry, default=False):
                        return True
        return False
    finally:
        g.umount_all()


def _esp_filesystems(g: Any) -> list[str]:
    out = []
    for part in (_safe(g.list_partitions, default=[]) or [])[:_MAX_LIST]:
        dev = _safe(g.part_to_dev, part)
        num = _safe(g.part_to_partnum, part)
        if dev is None or num is None:
            continue
        table = _safe(g.part_get_parttype, dev)
        if table == 'gpt':
            guid = _safe(g.part_get_gpt_type, dev, num) or ''
            if guid.upper() == _ESP_GUID:
                out.append(part)
        elif table == 'msdos':
            if _safe(g.part_get_mbr_id, dev, num) == _ESP_MBR_ID:
                out.append(part)
    return out


def _root_facts(g: Any, root: str) -> dict[str, Any]:
    facts: dict[str, Any] = {
        'type': _safe(g.inspect_get_type, root),
        'distro': _safe(g.inspect_get_distro, root),
        'major': _safe(g.inspect_get_major_version, root),
        'minor': _safe(g.inspect_get_minor_version, root),
        'arch': _safe(g.inspect_get_arch, root),
        'osinfo': _safe(g.inspect_get_osinfo, root),
        'product_name': _safe(g.inspect_get_product_name, root),
    }
    mounts = _safe(g.inspect_get_mountpoints, root, default={}) or {}
    g.umount_all()
    # Shortest mount point first, so / is there before /boot.
    for mp, dev in sorted(mounts.items(), key=lambda kv: len(kv[0])):
        _safe(g.mount_ro, dev, mp)
    kind = 'windows' if facts['type'] == 'windows' else 'linux'
    facts['qemu_guest_agent'] = _any_file(g, _AGENT_FILES[kind])
    facts['cloud_init'] = _any_file(g, _CLOUD_INIT_FILES[kind])
    facts['zipl'] = kind == 'linux' and _any_file(g, _ZIPL_FILES)
    g.umount_all()
    return facts


def worker_main(argv: Sequence[str]) -> int:
    """``WORKER <qemu format> <path>``: print one JSON report, exit 0.

    A failure prints a report with ``error`` and ``error_phase`` (launch
    or inspect) and exits 1.
    """
    report: dict[str, Any] = {'version': _REPORT_VERSION}
    if len(argv) != 3 or argv[0] != 'WORKER':
        print(json.dumps({'version': _REPORT_VERSION, 'error': 'usage',
                          'error_phase': 'launch'}))
        return 2
    qemu_format, path = argv[1], argv[2]
    phase = 'launch'
    try:
        guestfs = _import_guestfs()
        g = guestfs.GuestFS(python_return_dict=True)
        # readonly: qemu opens the image with an overlay; nothing is written.
        g.add_drive_opts(path, readonly=True, format=qemu_format)
        g.set_network(False)
        g.launch()
        phase = 'inspect'
        roots = g.inspect_os()
        report['roots'] = [_root_facts(g, r) for r in roots[:4]]
        report['uefi_loader'] = any(_efi_loader(g, fs)
                                    for fs in _esp_filesystems(g)[:4])
        g.shutdown()
        g.close()
    except ImportError:
        report.update(error='the libguestfs Python binding is not installed',
                      error_phase='launch')
    except RuntimeError as exc:
        # The first line says what failed; the rest is libguestfs' advice.
        text = str(exc).strip().splitlines()
        report.update(error=(text[0].rstrip('.') if text else
                             'libguestfs error')[:300], error_phase=phase)
    print(json.dumps(report))
    return 1 if 'error' in report else 0


if __name__ == '__main__':
    sys.exit(worker_main(sys.argv[1:]))
