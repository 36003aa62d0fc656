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

"""Every input the fuzzers found (tests/unit/data/fuzz/) keeps its fix.

Each saved input goes through the fuzzers' own property checks
(``fuzz.checks``: no foreign exception, bytes read honest and within the
budget, time bound, deterministic, clean messages, format_inspector agrees);
the inputs behind a fix also get the verdict that fix gave.  The checks
themselves are shown to fail on a lying reader, a budget overrun and a
leaking message, so a passing run means something.
"""

import pathlib
import struct
import time

import pytest
from oslo_utils.imageutils import format_inspector as fi

from fuzz import checks
from glance_imgplugins import exception
from glance_imgplugins import inspection
from glance_imgplugins import injection_rules

DATA = pathlib.Path(__file__).parent / 'data' / 'fuzz'
INSPECTION = sorted((DATA / 'inspection').iterdir())
RULES = sorted((DATA / 'rules').iterdir())


@pytest.mark.parametrize('path', INSPECTION, ids=lambda p: p.name)
def test_inspection_input_keeps_every_property(path):
    checks.check_inspection(path.read_bytes())


@pytest.mark.parametrize('path', RULES, ids=lambda p: p.name)
def test_rules_input_keeps_every_property(path):
    checks.check_rules(path.read_bytes())


def _inspect(name):
    return checks.check_inspection((DATA / 'inspection' / name).read_bytes())


def test_createtype_without_closing_quote_is_malformed():
    # format_inspector took the rest of the descriptor as the createType:
    # the failure reason carried all of it (27 KiB in the fuzzer's input).
    result = _inspect('vmdk-createtype-no-closing-quote')
    assert result.facts['vmdk_create_type'] is None
    assert result.failures['vmdk_create_type'].startswith(
        'vmdk createType malformed is not allowed')


def test_truncated_luks_header_is_refused_not_a_crash():
    # LUKS magic, 140 bytes: format_inspector's header_items raised
    # struct.error.
    result = _inspect('luks-truncated-header')
    assert result.format == 'luks'
    assert set(result.failures) == {'encryption', 'format_detection'}
    assert result.failures['format_detection'] == (
        'luks header is truncated or corrupt')


def test_a_safety_check_that_crashes_refuses(monkeypatch):
    # format_inspector's checks parse headers too; one that raises
    # something else than its own errors makes the image unsafe.
    def check(self):
        raise struct.error('unpack requires a buffer of 168 bytes')

    monkeypatch.setattr(fi.RawFileInspector, 'safety_check', check)
    result = checks.check_inspection(b'\0' * 8192)
    assert result.failures == {
        'format_detection': 'the raw header cannot be parsed'}


def _vmdk_with_descriptor(filler, size=(1 << 20) - 1):
    """A sparse VMDK header whose descriptor (at sector 1) is ``size`` long."""
    header = struct.pack('<4sIIQQQQIQQ', b'KDMV', 1, 3, 32768, 128, 1,
                         -(-size // 512), 512, 0, 21).ljust(512, b'\0')
    text = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\n'
            b'parentCID=ffffffff\ncreateType="monolithicSparse"\n')
    return header + (text + filler * size)[:size] + b'\0' + bytes(4096)


def test_vmdk_descriptor_of_newlines_is_linear():
    # ddb.* lines were found with "^\s*ddb" (MULTILINE): quadratic in a
    # descriptor of newlines, 12 s for the saved 64 KiB one, about an hour
    # for the 1 MiB format_inspector allows.
    start = time.monotonic()
    result = _inspect('vmdk-descriptor-of-newlines')
    assert time.monotonic() - start < checks.TIME_BOUND
    assert result.format == 'vmdk'
    for filler in (b'\n', b' \n\t', b'ddb.a = \n'):
        checks.check_inspection(_vmdk_with_descriptor(filler))


def test_largest_descriptor_stays_within_the_read_budget():
    # The largest region format_inspector captures (a 1 MiB VMDK
    # descriptor) fits inspection.READ_BUDGET with room for the facts.
    result = checks.check_inspection(_vmdk_with_descriptor(b'#'))
    assert 1 << 20 < result.bytes_read <= inspection.READ_BUDGET


def _rules_error(name, fmt='yaml'):
    text = (DATA / 'rules' / name).read_text()
    with pytest.raises(exception.RulesError) as info:
        injection_rules.parse_rules(text, 'r.' + fmt, fmt)
    return info.value


def test_vmdk_text_never_parsed_is_raw_not_a_crash():
    # A VMDK-like descriptor with a non-ASCII byte: format_inspector's
    # VMDKInspector.format_match raised AttributeError (no vmdktype).
    result = _inspect('vmdk-no-vmdktype')
    assert result.format == 'raw'
    assert result.inspector_name == 'raw'


def test_timestamp_tag_pyyaml_crash_names_line():
    # PyYAML's timestamp constructor raised AttributeError on
    # ``!!timestamp 2001-12/14``.
    err = _rules_error('timestamp-tag-attributeerror.yaml')
    assert err.kwargs['line'] == 1
    assert 'cannot read this value as timestamp' in str(err)


def test_unknown_tag_quoted_as_user_text_not_a_repr():
    # PyYAML said: could not determine a constructor for the tag
    # "tag:yaml.org,2002:b'A!remove:" (a Python repr of the user's tag).
    err = _rules_error('tag-with-quote.yaml')
    assert err.kwargs['line'] == 1
    assert str(err).endswith(
        "YAML syntax error, column 1: unknown tag "
        "'tag:yaml.org,2002:b\\'A!remove:' (rules use no YAML tags)")
    err = _rules_error_text('rules: !custom [a]\n')
    assert str(err).endswith("unknown tag '!custom' (rules use no YAML "
                             "tags)")


def test_toplevel_scalar_names_line_and_no_class_name():
    # It said "file: expected a mapping, got str" without a line.
    err = _rules_error('toplevel-scalar.yaml')
    assert err.kwargs['line'] == 1
    assert str(err).endswith('file: expected a mapping, got a string')


def test_non_string_key_shown_without_repr():
    err = _rules_error_text('rules: []\n2001-12-14: x\n')
    assert "key '2001-12-14'" in str(err) and 'datetime' not in str(err)
    err = _rules_error_text('rules:\n  - name: r\n    set: {k: v}\n'
                            '    protect: [yes]\n')
    assert 'true is not a string: quote it' in str(err)


def test_long_key_is_cut_in_the_message():
    err = _rules_error_text('rules: []\n? %s\n: 1\n' % ('k' * 5000))
    assert len(str(err)) < checks.MAX_MESSAGE
    assert "'" + 'k' * 57 + "...'" in str(err)


def test_json_duplicate_key_names_line():
    err = _rules_error_text('{"rules": [],\n "rules": []}\n', 'json')
    assert err.kwargs['line'] == 2


def _rules_error_text(text, fmt='yaml'):
    with pytest.raises(exception.RulesError) as info:
        injection_rules.parse_rules(text, 'r.' + fmt, fmt)
    return info.value


@pytest.mark.parametrize('levels', [6, 9])
def test_alias_and_merge_bombs_are_bounded(levels):
    # Billion laughs: 9**levels elements if aliases were copied; merge keys
    # over aliases (PyYAML >= 6.0.2 merges each key once).
    lines = ['a0: &a0 {k: v}', 'l0: &l0 [x, x, x, x, x, x, x, x, x]']
    for i in range(1, levels + 1):
        lines.append('a%d: &a%d {<<: [%s]}'
                     % (i, i, ', '.join(['*a%d' % (i - 1)] * 9)))
        lines.append('l%d: &l%d [%s]'
                     % (i, i, ', '.join(['*l%d' % (i - 1)] * 9)))
    lines.append('rules: [{name: r, remove: *l%d}]' % levels)
    data = ('\n'.join(lines) + '\n').encode()
    start = time.monotonic()
    outcomes = checks.check_rules(data)
    assert time.monotonic() - start < 2 * checks.TIME_BOUND
    assert all(isinstance(o, str) for o in outcomes)


# --- the checks can fail -----------------------------------------------------

def test_check_catches_a_lying_reader(monkeypatch):
    real = inspection._Reader.read

    def read(self, offset, length):
        data = real(self, offset, length)
        self.bytes_read -= len(data) // 2
        return data

    monkeypatch.setattr(inspection._Reader, 'read', read)
    with pytest.raises(checks.Violation, match='bytes_read says'):
        checks.check_inspection(b'\0' * 8192)


def test_check_catches_a_budget_overrun(monkeypatch):
    monkeypatch.setattr(inspection, 'READ_BUDGET', 1024)
    with pytest.raises(checks.Violation, match='budget 1024'):
        checks.check_inspection(b'\0' * 8192)


def test_check_catches_a_foreign_exception(monkeypatch):
    def boom(*args, **kwargs):
        raise IndexError('index out of range')

    monkeypatch.setattr(inspection, '_vhd_footer', boom)
    with pytest.raises(checks.Violation, match='raised IndexError'):
        checks.check_inspection(b'\0' * 8192)


def test_check_catches_a_leaking_message():
    with pytest.raises(checks.Violation, match='leaks'):
        checks._clean("bad signature b'QFI\\xfb'", 'failure reason')
    # The user's own text, quoted by the rules loader, may hold anything;
    # a repr outside the quotes is still caught.
    checks._clean("unknown key 'protect:%b'", 'rules error', True)
    with pytest.raises(checks.Violation, match='leaks'):
        checks._clean("expected a string, got b'x'", 'rules error', True)
    with pytest.raises(checks.Violation, match='characters long'):
        checks._clean('x' * (checks.MAX_MESSAGE + 1), 'failure reason')
