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

"""The guest-inspection core on guest images built here, under TCG.

Each image is built once per module (``mke2fs -d``, milliseconds; the
Windows NTFS guest by guestfish, ~15 s, unless an earlier run left it in
``guest_images``' cache) and inspected once (~25 s under TCG); the mapping
from libguestfs' answers to Nova's properties is also checked on reports
written out here.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from glance_imgplugins import guest
from tests.support import guest_images as gi

# One launch each (25-75 s under TCG, by load; win2k19 one more to build
# when not cached).
# The other guests are inspected once elsewhere: s390x_zipl and no_os in the
# flow layer (all three plugins; required mode), fedora39 through a real
# Glance; win2k19 also in the flow layer.
REAL = ['debian12', 'ubuntu2204_uefi', 'win2k19', 'corrupt']
TCG = guest.Limits(accel='tcg', timeout=300)
CLI = pathlib.Path(sys.executable).parent / 'glance-imgplugins'


def processes() -> list[tuple[int, str, str]]:
    """(session id, command name, full command line) of every live process
    (zombies hold nothing; this container's init may reap them late)."""
    out = subprocess.run(['ps', '-ww', '-eo', 'sid=,stat=,comm=,args='],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        sid, stat, comm, args = (line.split(None, 3) + ['', '', ''])[:4]
        if not stat.startswith('Z'):
            rows.append((int(sid), comm, args))
    return rows


def worker_sessions(path: pathlib.Path) -> set[int]:
    # The worker leads its own session; qemu and its helpers are in it.
    return {sid for sid, _c, args in processes()
            if 'glance_imgplugins.guest WORKER raw %s' % path in args}


def session_alive(sids: set[int]) -> list[str]:
    return [comm for sid, comm, _a in processes() if sid in sids]


class SessionWatch:
    """Records the worker sessions of ``path`` while a call runs."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.sids: set[int] = set()
        self.qemu = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self.sids |= worker_sessions(self.path)
            if any(c.startswith('qemu-system') for c in
                   session_alive(self.sids)):
                self.qemu = True

    def __enter__(self) -> 'SessionWatch':
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp('guests')


#: What each real run of the command wrote on stderr, by guest name.
STDERR: dict[str, str] = {}


@pytest.fixture(scope='module')
def outcomes(workdir: pathlib.Path) -> dict[str, Any]:
    """name -> GuestFacts or the offline report's error, each image
    inspected once, by ``glance-imgplugins -v inspect --guest`` (header
    inspection picks the format, then the appliance); its stderr is kept
    in STDERR."""
    results: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in results:
            path = gi.build(gi.GUESTS[name], workdir)
            # The real command line (cliff, osc-lib's logging; -v shows
            # INFO too): glance-imgplugins inspect --guest.
            proc = subprocess.run(
                [str(CLI), '-v', 'inspect', '--guest', '-f', 'json',
                 str(path)], capture_output=True, text=True, timeout=400)
            assert proc.returncode == 0, proc.stderr
            STDERR[name] = proc.stderr
            out = json.loads(proc.stdout)['guest']
            if 'error' in out:
                assert str(path) not in out['error']
                results[name] = out
            else:
                assert out.pop('outcome') == 'done'
                assert out['properties'] == guest.guest_properties(
                    guest.GuestFacts(**out['facts']))
                results[name] = guest.GuestFacts(**out['facts'])
        return results[name]
    return get  # type: ignore[return-value]


@pytest.mark.parametrize('name', [n for n in REAL if gi.GUESTS[n].expected])
def test_real_guest_gets_exactly_its_properties(outcomes, name):
    facts = outcomes(name)
    assert isinstance(facts, guest.GuestFacts), facts
    # auto: KVM where it starts, TCG here (nested KVM fails).
    assert facts.accel in ('kvm', 'tcg')
    assert guest.guest_properties(facts) == dict(gi.GUESTS[name].expected)


def test_windows_guest_facts_from_its_registry(outcomes):
    """The NTFS guest: libguestfs finds %SYSTEMROOT% (System32, config,
    cmd.exe), the architecture from cmd.exe's PE32+ header, the product and
    version from the SOFTWARE hive, the control set from SYSTEM."""
    facts = outcomes('win2k19')
    assert isinstance(facts, guest.GuestFacts), facts
    assert (facts.os_type, facts.distro, facts.major, facts.minor,
            facts.arch, facts.osinfo, facts.product_name) == (
        'windows', 'windows', 10, 0, 'x86_64', 'win2k19',
        'Windows Server 2019 Standard')
    assert facts.qemu_guest_agent and facts.cloud_init
    assert not (facts.uefi_loader or facts.zipl)
    # NT 10.0 is Windows 10, 11 and Server 2016 to 2022 alike: no
    # os_version (the libosinfo id stays in the facts).
    assert facts.os_version is None
    assert facts.summary() == 'windows, x86_64'
    assert guest.warnings(facts) == []


def test_windows_builder_parts_are_what_the_tools_read(tmp_path):
    """No appliance: the PE header is what file(1) (libguestfs'
    file_architecture) calls PE32+ x86-64, and the hives hivex opens hold
    the merged keys."""
    exe = tmp_path / 'cmd.exe'
    exe.write_bytes(gi.pe_header())
    out = subprocess.run(['file', '-b', str(exe)], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith('PE32+ executable (console) x86-64')
    empty = tmp_path / 'EMPTY'
    empty.write_bytes(gi.empty_hive('EMPTY'))
    export = subprocess.run(['hivexregedit', '--export', str(empty), '\\'],
                            capture_output=True, text=True, check=True)
    assert export.stdout.split() == ['Windows', 'Registry', 'Editor',
                                     'Version', '5.00', '[\\]']
    hive = tmp_path / 'SOFTWARE'
    gi._hive(hive, 'SOFTWARE', gi._software_reg('win2k19'))
    export = subprocess.run(
        ['hivexregedit', '--export', '--prefix', 'HKLM\\SOFTWARE',
         str(hive), '\\Microsoft\\Windows NT\\CurrentVersion'],
        capture_output=True, text=True, check=True).stdout
    assert '"CurrentMajorVersionNumber"=dword:0000000a' in export
    assert '"CurrentMinorVersionNumber"=dword:00000000' in export
    # Strings are UTF-16LE REG_SZ, as Windows writes them.
    product = 'Windows Server 2019 Standard\0'.encode('utf-16-le')
    assert '"ProductName"=hex(1):%s' % ','.join(
        '%02x' % b for b in product) in export
    # A header whose checksum does not match is refused: hivex checks it.
    bad = bytearray(gi.empty_hive('BAD'))
    bad[0x1fc] ^= 1
    empty.write_bytes(bytes(bad))
    refused = subprocess.run(['hivexregedit', '--export', str(empty), '\\'],
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert 'Invalid argument' in refused.stderr   # hivex's EINVAL


def test_uefi_needs_an_esp_with_a_loader(outcomes):
    assert outcomes('ubuntu2204_uefi').uefi_loader is True
    assert outcomes('debian12').uefi_loader is False


def test_missing_cloud_init_is_a_warning(outcomes):
    notes = guest.warnings(guest.parse_report(report(cloud_init=False)))
    assert notes == ['no cloud-init found (instances will not get SSH keys '
                     'or user data)']
    assert guest.warnings(outcomes('debian12')) == []


def test_corrupt_filesystem_means_no_os(outcomes):
    out = outcomes('corrupt')
    assert out == {'error': 'Guest inspection found no operating system in '
                   'the image (no filesystem holds a recognisable OS)',
                   'refused': True,   # the bytes are at fault
                   'outcome': 'no-os'}


def test_timeout_kills_the_appliance(workdir):
    path = gi.build(gi.GUESTS['debian12'], workdir)
    started = time.monotonic()
    with SessionWatch(path) as watch, \
            pytest.raises(guest.GuestInspectionTimeout) as caught:
        guest.inspect_guest(str(path), 'raw',
                            guest.Limits(accel='tcg', timeout=8),
                            name='image-2')
    assert time.monotonic() - started < 20
    assert caught.value.refused is False
    assert caught.value.outcome == 'timeout'
    assert str(caught.value) == (
        'Guest inspection did not finish within 8 seconds '
        '([image_introspection] guest_inspection_timeout)')
    # Nothing of the run survives it, qemu included.
    assert watch.sids and watch.qemu
    time.sleep(0.5)
    assert session_alive(watch.sids) == []


def test_not_a_file_is_named_without_its_path(tmp_path):
    with pytest.raises(guest.GuestInspectionError) as caught:
        guest.inspect_guest(str(tmp_path), 'raw', TCG, name='image-3')
    assert str(caught.value) == ('Guest inspection failed: image-3 is not '
                                 'a regular file')
    assert caught.value.outcome == 'failed'


def test_unknown_accelerator(tmp_path):
    f = tmp_path / 'x'
    f.write_bytes(b'\0' * 512)
    with pytest.raises(guest.GuestInspectionError,
                       match='unknown accelerator xen'):
        guest.inspect_guest(str(f), 'raw', guest.Limits(accel='xen'))


def test_worker_usage_error():
    out = subprocess.run(
        [guest.sys.executable, '-m', 'glance_imgplugins.guest', 'nonsense'],
        capture_output=True, text=True)
    assert out.returncode == 2
    assert guest._last_json(out.stdout)['error'] == 'usage'


# --- the mapping, on reports as the worker writes them -----------------------

def report(**root: Any) -> dict[str, Any]:
    base = {'type': 'linux', 'distro': 'debian', 'major': 12, 'minor': 0,
            'arch': 'x86_64', 'osinfo': 'debian12', 'product_name': 'x',
            'qemu_guest_agent': False, 'cloud_init': True, 'zipl': False}
    base.update(root)
    return {'version': 1, 'roots': [base], 'uefi_loader': False}


@pytest.mark.parametrize('root, distro, version', [
    ({'distro': 'debian', 'major': 12, 'minor': 5, 'osinfo': 'debian12'},
     'debian', '12'),
    ({'distro': 'ubuntu', 'major': 22, 'minor': 4, 'osinfo': 'ubuntu22.04'},
     'ubuntu', '22.04'),
    ({'distro': 'ubuntu', 'major': 24, 'minor': 4, 'osinfo': None},
     'ubuntu', '24.04'),
    ({'distro': 'rhel', 'major': 9, 'minor': 2, 'osinfo': 'rhel9.2'},
     'rhel', '9.2'),
    ({'distro': 'centos', 'major': 8, 'minor': 0, 'osinfo': 'centos8'},
     'centos', '8'),
    ({'distro': 'fedora', 'major': 39, 'minor': 0, 'osinfo': 'fedora39'},
     'fedora', '39'),
    ({'distro': 'opensuse', 'major': 15, 'minor': 5,
      'osinfo': 'opensuse15.5'}, 'opensuse', '15.5'),
    ({'distro': 'sles', 'major': 15, 'minor': 5, 'osinfo': 'sles15sp5'},
     'sles', '15.5'),
    ({'distro': 'archlinux', 'major': 0, 'minor': 0, 'osinfo': None},
     'arch', None),
])
def test_libosinfo_names(root, distro, version):
    facts = guest.parse_report(report(**root))
    assert facts.os_distro == distro
    assert facts.os_version == version


def test_windows():
    facts = guest.parse_report(report(
        type='windows', distro='windows', major=10, minor=0,
        osinfo='win2k19', cloud_init=False, qemu_guest_agent=True))
    props = guest.guest_properties(facts)
    assert props == {'os_type': 'windows', 'os_distro': 'windows',
                     'hw_architecture': 'x86_64', 'architecture': 'x86_64',
                     'hw_qemu_guest_agent': 'yes', 'img_cloud_init': 'no'}
    assert guest.warnings(facts) == [
        'no cloudbase-init found (instances will not get user data)']


@pytest.mark.parametrize('arch, expected', [
    ('i386', 'i686'), ('aarch64', 'aarch64'), ('ppc64le', 'ppc64le'),
    ('s390x', 's390x'), ('x86_64', 'x86_64')])
def test_architectures(arch, expected):
    props = guest.guest_properties(guest.parse_report(report(arch=arch)))
    assert props['hw_architecture'] == props['architecture'] == expected


def test_unknown_architecture_sets_none_and_warns():
    facts = guest.parse_report(report(arch='unknown'))
    props = guest.guest_properties(facts)
    assert 'hw_architecture' not in props and 'architecture' not in props
    assert guest.warnings(facts) == ['architecture not recognised']


def test_uefi_on_aarch64_has_no_q35():
    rep = report(arch='aarch64')
    rep['uefi_loader'] = True
    props = guest.guest_properties(guest.parse_report(rep))
    assert props['hw_firmware_type'] == 'uefi'
    assert 'hw_machine_type' not in props


def test_several_operating_systems_are_no_answer():
    rep = report()
    rep['roots'] = rep['roots'] * 2
    with pytest.raises(guest.NoGuestOS, match='2 operating systems found'):
        guest.parse_report(rep)


@pytest.mark.parametrize('bad', [None, [], {'version': 2, 'roots': []},
                                 {'version': 1}, {'version': 1,
                                                  'roots': ['x']}])
def test_malformed_reports(bad):
    with pytest.raises(guest.GuestInspectionError,
                       match='unexpected worker report'):
        guest.parse_report(bad)


def test_guest_prose_never_becomes_a_value():
    facts = guest.parse_report(report(distro='deb ian; rm -rf /',
                                      arch='x86_64\n', osinfo='<x>'))
    assert facts.os_distro is None and facts.hw_architecture is None
    assert guest.guest_properties(facts) == {'os_type': 'linux',
                                             'img_cloud_init': 'yes'}


def test_offline_never_hands_an_unsafe_image_to_qemu(tmp_path):
    base = tmp_path / 'base.raw'
    base.write_bytes(b'\0' * 65536)
    top = tmp_path / 'top.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                    str(base), '-F', 'raw', str(top)], check=True)
    out = guest.inspect_file(str(top), TCG)
    assert out['outcome'] == 'skipped'
    assert out['error'].startswith('not inspected: the image is unsafe (')
    assert 'backing_file' in out['error']
    assert str(tmp_path) not in out['error']


def _accel_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == 'glance_imgplugins.guest']


@pytest.mark.parametrize('started', [True, False])
def test_auto_accelerator_is_decided_once_and_logged_once(caplog, started):
    guest.reset_accel()
    try:
        with caplog.at_level('INFO', logger='glance_imgplugins.guest'):
            first = guest.chosen_accel('auto')
            assert guest.chosen_accel('auto') == first
            assert first == ('kvm' if guest._kvm_usable() else 'tcg')
            if first == 'tcg':
                # No /dev/kvm: final at once, said once.
                assert _accel_lines(caplog) == [
                    'Guest inspection: the libguestfs appliance will use '
                    'tcg (/dev/kvm is not usable)']
                return
            # /dev/kvm opens: KVM on trial, nothing said until the first
            # launch says whether KVM runs the appliance.
            assert _accel_lines(caplog) == []
            guest._launched('kvm', started)
            guest._launched('kvm', not started)   # too late: final
            guest._launched('tcg', True)
            final = guest.chosen_accel('auto')
        assert final == ('kvm' if started else 'tcg')
        assert _accel_lines(caplog) == [
            'Guest inspection: the libguestfs appliance will use kvm (it '
            'started with KVM)' if started else
            'Guest inspection: the libguestfs appliance will use tcg '
            '(software emulation, slower): it could not start with KVM '
            'although /dev/kvm opens']
        assert guest.chosen_accel('kvm') == 'kvm'
        assert guest.chosen_accel('tcg') == 'tcg'
    finally:
        guest.reset_accel()


@pytest.mark.parametrize('name', ['debian12', 'corrupt'])
def test_cli_says_the_accelerator_once(outcomes, name):
    """``glance-imgplugins -v inspect --guest``: one line about KVM or
    TCG on stderr (cliff's console handler shows INFO with -v), naming
    the accelerator the run used."""
    outcomes(name)
    lines = [ln for ln in STDERR[name].splitlines()
             if ln.startswith('Guest inspection')]
    assert len(lines) == 1, STDERR[name]
    facts = outcomes('debian12')
    assert lines[0].startswith('Guest inspection: the libguestfs appliance '
                               'will use %s' % facts.accel)


def test_check_config_and_describe():
    from oslo_config import cfg

    from glance_imgplugins.plugins import image_introspection as ii
    conf = cfg.ConfigOpts()
    ii.SPEC.register(conf)
    conf([])
    assert ii.describe_config(conf) == ['guest inspection: off']
    conf.set_override('guest_inspection', True, group=ii.GROUP)
    conf.set_override('guest_inspection_timeout', 60, group=ii.GROUP)
    # This machine has libguestfs (bindep.txt): nothing missing.
    assert guest.missing_parts() == []
    assert ii.check_config(conf) == []
    assert ii.describe_config(conf) == [
        'guest inspection: on (accel auto, timeout 60 s, appliance memory '
        '768 MiB, never fails an import)']
    conf.set_override('guest_inspection_required', True, group=ii.GROUP)
    assert ii.describe_config(conf)[0].endswith('MiB, required)')


def test_a_dying_parent_takes_the_appliance_with_it(workdir):
    path = gi.build(gi.GUESTS['debian12'], workdir)
    code = ('import sys; from glance_imgplugins import guest; '
            'guest.inspect_guest(sys.argv[1], "raw", '
            'guest.Limits(accel="tcg", timeout=120))')
    parent = subprocess.Popen([guest.sys.executable, '-c', code, str(path)])
    deadline = time.monotonic() + 60
    # Until qemu itself runs the appliance.
    while True:
        sids = worker_sessions(path)
        if any(c.startswith('qemu-system') for c in session_alive(sids)):
            break
        assert time.monotonic() < deadline, 'the appliance never started'
        time.sleep(0.2)
    parent.kill()   # Glance killed mid-inspection
    parent.wait()
    deadline = time.monotonic() + 15
    while session_alive(sids):
        assert time.monotonic() < deadline, (
            'outlived Glance: %s' % session_alive(sids))
        time.sleep(0.2)
