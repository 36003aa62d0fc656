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

"""The properties every fuzz input must satisfy, without atheris.

The fuzz targets call :func:`check_inspection` and :func:`check_rules` on
each input; ``tests/unit/test_fuzz_regressions.py`` replays the saved inputs
through the very same functions.  A broken property raises
:class:`Violation` (an AssertionError, so pytest shows it as a failure and
libFuzzer saves the input as a crash).

Inspection (``inspect_file`` on the bytes in a memfd, as the plugins call
it):

1. a result, or one of the package's own exceptions: nothing else escapes;
2. ``bytes_read`` is what really went through ``os.pread`` (counted here,
   outside the core) and at most ``inspection.READ_BUDGET``;
3. it finishes within ``TIME_BOUND`` seconds;
4. the same bytes give the same result twice;
5. failure reasons a user reads are short and hold no host path or Python
   repr;
6. for a vhdx, ``vhdx_payload_bytes`` (the size guard's BAT reader) holds
   1-4 too, within ``VHDX_PAYLOAD_BUDGET``;
7. safe and of format F means ``format_inspector.detect_file_format`` also
   says F and its safety check passes.  Documented exceptions (the core
   adds to detection, it never relaxes it):

   * gpt: format_inspector names a GPT disk ``gpt``, Glance's format is
     ``raw`` (we compare the inspector's name);
   * a fixed VHD is raw data plus a footer at the end, which
     format_inspector (reading forwards) reports as raw;
   * a hybrid ISO (an ISO plus a partition table) is ``iso`` for us, as in
     Glance's location code, while ``detect_file_format`` raises "several
     formats"; then the ISO inspector's own safety check must pass;
   * raw is the fallback in both: nothing else matched;
   * oslo.utils 10.2's ``detect_file_format`` itself raises AttributeError
     (``VMDKInspector`` has no ``vmdktype``) on text that starts like a
     VMDK descriptor but is never parsed as one (found by this fuzzer;
     ``tests/unit/data/fuzz/inspection/vmdk-no-vmdktype``): Glance's own
     check fails there, so there is nothing to compare with.  Any other
     exception from it is a violation worth reporting upstream.

Rules (``injection_rules.load_rules`` with the bytes as the file, both as
YAML and as JSON): a RuleSet or a ``RulesError``; the error names its line
whenever the parser knows one, is short and holds no Python repr or class
name; within ``TIME_BOUND`` (alias bombs included); deterministic.
"""

from __future__ import annotations

import os
import re
import time

import yaml
from oslo_utils.imageutils import format_inspector as fi

from glance_imgplugins import exception
from glance_imgplugins import inspection
from glance_imgplugins import injection_rules

# Generous on two shared cores: inspection takes milliseconds, the rules
# loader a few on the largest seed.
TIME_BOUND = 2.0
# A failure reason or rules error longer than this is unreadable (and a sign
# of echoing input).
MAX_MESSAGE = 600

# What must not reach a user: a bytes repr, an object repr, a class name
# from a type() repr, a traceback, this harness's file path.
_LEAKS = re.compile(r"""(?<![\w'"])b['"]|<[\w.]+ object at|<class |Traceback"""
                    r"""|/proc/self/fd|bytearray\(|NoneType|\bdatetime\.""")


class Violation(AssertionError):
    """An input broke a property (libFuzzer saves it as a crash)."""


# A value the rules loader quotes from the file ('...', quotes escaped):
# the user's own text, which may hold anything, "b'" included.
_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'""")


def _clean(text: str, what: str, quoted_input: bool = False) -> None:
    if len(text) > MAX_MESSAGE:
        raise Violation('%s is %d characters long: %s...'
                        % (what, len(text), text[:200]))
    leak = _LEAKS.search(_QUOTED.sub("'...'", text) if quoted_input
                         else text)
    if leak:
        raise Violation('%s leaks %r: %s' % (what, leak.group(0), text))


class MemFile:
    """One memfd, rewritten per input: a regular file that is never on disk.

    ``path`` (``/proc/self/fd/N``) is what ``inspect_file`` opens, so the
    plugins' one entry point is the one fuzzed.
    """

    def __init__(self) -> None:
        self.fd = os.memfd_create('fuzz-image', os.MFD_CLOEXEC)
        self.path = '/proc/self/fd/%d' % self.fd

    def write(self, data: bytes) -> str:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self.path

    def close(self) -> None:
        os.close(self.fd)


class _CountingPread:
    """Counts every byte os.pread returns while installed."""

    def __init__(self) -> None:
        self.total = 0
        self._real = os.pread

    def __call__(self, fd: int, length: int, offset: int) -> bytes:
        data = self._real(fd, length, offset)
        self.total += len(data)
        return data

    def __enter__(self) -> _CountingPread:
        os.pread = self
        return self

    def __exit__(self, *exc: object) -> None:
        os.pread = self._real


def _inspect_once(path: str) -> tuple[inspection.InspectionResult | None,
                                      str | None, int, float]:
    """(result, error text, bytes counted, seconds)."""
    with _CountingPread() as counter:
        start = time.monotonic()
        try:
            result = inspection.inspect_file(path)
            error = None
        except exception.GlanceImgPluginsError as exc:
            result, error = None, str(exc)
        except Exception as exc:
            raise Violation('inspect_file raised %s: %s'
                            % (type(exc).__name__, exc)) from exc
        elapsed = time.monotonic() - start
    return result, error, counter.total, elapsed


def check_inspection(data: bytes, memfile: MemFile | None = None
                     ) -> inspection.InspectionResult | None:
    """Inspect ``data`` and check every property; the result (None: error)."""
    own = memfile is None
    mf = memfile or MemFile()
    try:
        path = mf.write(data)
        result, error, counted, elapsed = _inspect_once(path)
        if elapsed > TIME_BOUND:
            raise Violation('inspection took %.2f s (bound %.1f s)'
                            % (elapsed, TIME_BOUND))
        again, error2, _, _ = _inspect_once(path)
        if error is not None:
            if error2 != error:
                raise Violation('not deterministic: %r then %r'
                                % (error, error2))
            _clean(error, 'error')
            return None
        assert result is not None
        if result.bytes_read != counted:
            raise Violation('bytes_read says %d, os.pread returned %d'
                            % (result.bytes_read, counted))
        if counted > inspection.READ_BUDGET:
            raise Violation('read %d bytes, budget %d'
                            % (counted, inspection.READ_BUDGET))
        if again is None or again.to_dict() != result.to_dict():
            raise Violation('not deterministic: %s then %s'
                            % (result.to_dict(),
                               again.to_dict() if again else error2))
        _clean(result.failure_summary(), 'failure reason')
        if result.safe:
            _oslo_agrees(path, result)
        if result.format == 'vhdx':
            _check_vhdx_payload(path)
        return result
    finally:
        if own:
            mf.close()


# vhdx_payload_bytes: two headers, the region and metadata tables (64 KiB
# each), at most 2047 items of 8 bytes, then the BAT.
VHDX_PAYLOAD_BUDGET = inspection.VHDX_BAT_BUDGET + 256 * 1024


def _check_vhdx_payload(path: str) -> None:
    """The BAT reader the size guard uses on a vhdx: same properties."""
    with _CountingPread() as counter:
        start = time.monotonic()
        try:
            payload = inspection.vhdx_payload_bytes(path)
        except Exception as exc:
            raise Violation('vhdx_payload_bytes raised %s: %s'
                            % (type(exc).__name__, exc)) from exc
        elapsed = time.monotonic() - start
    if elapsed > TIME_BOUND:
        raise Violation('vhdx_payload_bytes took %.2f s' % elapsed)
    if counter.total > VHDX_PAYLOAD_BUDGET:
        raise Violation('vhdx_payload_bytes read %d bytes, budget %d'
                        % (counter.total, VHDX_PAYLOAD_BUDGET))
    if payload is not None and payload < 0:
        raise Violation('vhdx_payload_bytes says %d' % payload)
    if payload != inspection.vhdx_payload_bytes(path):
        raise Violation('vhdx_payload_bytes is not deterministic')


def _oslo_agrees(path: str, result: inspection.InspectionResult) -> None:
    """A safe verdict of ours is never unsafe, nor another format, there."""
    hybrid = result.format == 'iso' and \
        result.facts.get('matched_formats') == ['gpt', 'iso']
    try:
        insp = fi.detect_file_format(path)
    except fi.ImageFormatError as exc:
        if not hybrid:
            raise Violation('we say safe %s, detect_file_format raises %s'
                            % (result.format, exc)) from exc
        insp = _iso_inspector(path)
    except AttributeError as exc:
        if 'vmdktype' in str(exc):
            return  # oslo.utils 10.2's own crash (see the module docstring)
        raise Violation('detect_file_format raised %s: %s'
                        % (type(exc).__name__, exc)) from exc
    if insp is None:
        raise Violation('we say safe %s, detect_file_format finds nothing'
                        % result.format)
    if insp.NAME != result.inspector_name:
        raise Violation('we say safe %s (inspector %s), detect_file_format '
                        'says %s' % (result.format, result.inspector_name,
                                     insp.NAME))
    fixed_vhd = result.format == 'vhd' and insp.NAME in ('raw', 'gpt')
    expected = 'raw' if insp.NAME == 'gpt' else insp.NAME
    if result.format != expected and not fixed_vhd:
        raise Violation('we say format %s for inspector %s'
                        % (result.format, insp.NAME))
    try:
        insp.safety_check()
    except (fi.SafetyCheckFailed, fi.ImageFormatError) as exc:
        raise Violation('we say safe %s, format_inspector says unsafe: %s'
                        % (result.format, exc)) from exc


def _iso_inspector(path: str) -> fi.FileInspector:
    """The ISO inspector alone, fed the whole file (a hybrid ISO)."""
    insp = fi.ISOInspector()
    with open(path, 'rb') as f:
        while chunk := f.read(inspection.CHUNK):
            insp.eat_chunk(chunk)
    insp.finish()
    if not insp.format_match:
        raise Violation('a hybrid ISO the ISO inspector does not match')
    return insp


# --- rules -------------------------------------------------------------------

def _load(name: str, data: bytes) -> tuple[object, str | None,
                                            int | None]:
    """(RuleSet or None, error text, error line)."""
    def opener(_path: str) -> str:
        return data.decode('utf-8')

    try:
        return injection_rules.load_rules(name, opener=opener), None, None
    except exception.RulesError as exc:
        return None, str(exc), exc.kwargs.get('line')
    except Exception as exc:
        raise Violation('load_rules(%s) raised %s: %s'
                        % (name, type(exc).__name__, exc)) from exc


# Reasons for which no parser can name a line: undecodable bytes, an empty
# document, a YAML error without a mark.
_NO_LINE = re.compile(r': (cannot read|file: empty|YAML error)')


def _json_lines_known(data: bytes) -> bool:
    """Whether the YAML re-read that gives JSON its lines succeeds."""
    try:
        yaml.load(data.decode('utf-8'),  # noqa: S506 - the safe loader
                  Loader=injection_rules._LineLoader)
    except Exception:  # noqa: BLE001 - any failure: no lines to give
        return False
    return True


def check_rules(data: bytes) -> list[object]:
    """Load ``data`` as YAML and as JSON; the two outcomes."""
    outcomes = []
    for name in ('fuzz.yaml', 'fuzz.json'):
        start = time.monotonic()
        rules, error, line = _load(name, data)
        elapsed = time.monotonic() - start
        if elapsed > TIME_BOUND:
            raise Violation('load_rules(%s) took %.2f s (bound %.1f s)'
                            % (name, elapsed, TIME_BOUND))
        if (rules, error, line) != _load(name, data):
            raise Violation('load_rules(%s) is not deterministic' % name)
        if error is not None:
            _clean(error, 'rules error', quoted_input=True)
            if line is None and not _NO_LINE.search(error) and (
                    name.endswith('.yaml') or _json_lines_known(data)):
                raise Violation('rules error without a line: %s' % error)
            if line is not None and 'line %d' % line not in error:
                raise Violation('rules error line %d not in its text: %s'
                                % (line, error))
        outcomes.append(rules if error is None else error)
    return outcomes
