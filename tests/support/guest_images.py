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

"""Small guest disk images the guest-inspection tests build themselves.

Each is a directory tree (os-release of a distribution, an ELF binary, the
files that say qemu-guest-agent / cloud-init / zipl are installed) turned
into a real filesystem with ``mke2fs -d`` or ``mkfs.xfs -p`` (no mount,
no appliance: milliseconds, where ``virt-make-fs`` boots the libguestfs
appliance for ~15 s), optionally inside a GPT disk with an EFI System
Partition (vfat made by ``mkfs.vfat`` and filled by ``mcopy``).  Nothing is
downloaded.

The Windows guest is the exception: no host tool fills an NTFS filesystem
without mounting it, so ``guestfish`` (one appliance launch, ~15 s under
TCG) partitions the disk (MBR, type 0x07), makes the filesystem (mkntfs,
ntfs-3g) and uploads the tree: ``/Windows/System32`` with PE32+ headers as
``cmd.exe`` / ``ntoskrnl.exe`` (what ``file`` calls "PE32+ executable ...
x86-64", from which libguestfs takes the architecture) and the registry
hives ``config/SOFTWARE`` and ``config/SYSTEM``: an empty hive written here
(:func:`empty_hive`) into which ``hivexregedit --merge`` puts the keys
libguestfs reads (``Microsoft\\Windows NT\\CurrentVersion``, ``Select``,
``ControlSet001``).

Built Windows guests are kept between test runs (the layers run as separate
pytest invocations, each module building its own) in a private folder,
``$TMPDIR/imgplugins-guest-cache-<uid>/<key>/``, the key a hash of
everything the build reads: this file, the tree it uploads (hives included)
and the versions of guestfish and mkntfs; only the newest key is kept.  Each
caller still gets its own copy in its ``workdir``.  The disk's bytes differ
from one build to the next (the NTFS serial number and timestamps); nothing
the tests read does.
``IMGPLUGINS_GUEST_CACHE=off`` builds afresh every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import stat
import struct
import subprocess
import tempfile
from typing import Mapping

MiB = 1 << 20

# e_machine values of the ELF header (libguestfs reads the architecture of
# the guest's binaries).
EM_X86_64 = 62
EM_S390 = 22
EM_AARCH64 = 183


def elf_header(machine: int, big_endian: bool) -> bytes:
    """A 64-bit ELF executable header (and nothing else)."""
    order = '>' if big_endian else '<'
    ident = b'\x7fELF' + bytes([2, 2 if big_endian else 1, 1, 0]) + \
        b'\0' * 8
    rest = struct.pack(order + 'HHIQQQIHHHHHH', 2, machine, 1, 0x400000,
                       64, 0, 0, 64, 56, 0, 64, 0, 0)
    return ident + rest + b'\0' * 64


IMAGE_FILE_MACHINE_AMD64 = 0x8664


def pe_header(machine: int = IMAGE_FILE_MACHINE_AMD64) -> bytes:
    """A PE32+ console executable header (DOS stub pointer, COFF header,
    optional header; no sections, no code)."""
    dos = bytearray(64)
    dos[0:2] = b'MZ'
    struct.pack_into('<I', dos, 0x3c, len(dos))        # e_lfanew
    # Signature, machine, 0 sections, timestamp, no symbols, the size of
    # the optional header, characteristics (executable, large addresses).
    coff = struct.pack('<4sHHIIIHH', b'PE\0\0', machine, 0, 0, 0, 0, 240,
                       0x22)
    opt = bytearray(240)
    struct.pack_into('<H', opt, 0, 0x20b)              # PE32+
    struct.pack_into('<Q', opt, 24, 0x140000000)       # ImageBase
    struct.pack_into('<II', opt, 32, 0x1000, 0x200)    # alignments
    struct.pack_into('<HH', opt, 48, 6, 0)             # subsystem version
    struct.pack_into('<II', opt, 56, 0x1000, 0x200)    # image, headers
    struct.pack_into('<H', opt, 68, 3)                 # console subsystem
    struct.pack_into('<I', opt, 108, 16)               # data directories
    return bytes(dos) + coff + bytes(opt) + b'\0' * 64


def _checksum(header: bytes) -> int:
    """The regf header checksum: XOR of its first 127 dwords."""
    csum = 0
    for (word,) in struct.iter_unpack('<I', header[:0x1fc]):
        csum ^= word
    return csum


def empty_hive(name: str) -> bytes:
    """A valid registry hive with only its root key (what hivex opens and
    ``hivexregedit --merge`` can add to; hivex has no 'create').

    A 4 KiB regf header (version 1.3, root cell offset, hive-bins size,
    checksum) and one 4 KiB hbin holding the root nk cell (hive entry,
    no subkeys or values), the sk cell it names (a one-entry circular
    list; an empty self-relative security descriptor) and one free cell
    to the end of the bin.  Offsets in cells count from the first hbin.
    """
    page, root, sk_at = 0x1000, 0x20, 0x20 + 88
    nk = bytearray(88)
    # Size (negative: used), "nk", flags (hive entry, no delete, ASCII
    # name), timestamp, spare, parent, subkeys (stable, volatile), their
    # lists (none), values, value list (none), sk, class name (none).
    struct.pack_into('<i2sHQIIIIIIIIII', nk, 0, -len(nk), b'nk', 0x2c, 0, 0,
                     0, 0, 0, 0xffffffff, 0xffffffff, 0, 0xffffffff, sk_at,
                     0xffffffff)
    struct.pack_into('<HH', nk, 76, 4, 0)              # name length, class
    nk[80:84] = b'ROOT'
    # Self-relative (0x8000), no owner, group, SACL or DACL.
    sd = struct.pack('<BBHIIII', 1, 0, 0x8000, 0, 0, 0, 0)
    sk = bytearray(48)
    struct.pack_into('<i2sHIIII', sk, 0, -len(sk), b'sk', 0, sk_at, sk_at, 1,
                     len(sd))
    sk[24:24 + len(sd)] = sd
    cells = bytes(nk) + bytes(sk)
    free = page - 0x20 - len(cells)
    hbin = struct.pack('<4sII20s', b'hbin', 0, page, b'') + cells + \
        struct.pack('<i', free) + b'\0' * (free - 4)
    header = bytearray(0x1000)
    # Magic, sequence numbers (equal: cleanly written), timestamp, version
    # 1.3, primary file, direct format, root cell, bins size, clustering.
    struct.pack_into('<4sIIqIIIIIII', header, 0, b'regf', 1, 1, 0, 1, 3, 0, 1,
                     root, page, 1)
    encoded = name.encode('utf-16-le')[:64]
    header[0x30:0x30 + len(encoded)] = encoded
    struct.pack_into('<I', header, 0x1fc, _checksum(bytes(header)))
    return bytes(header) + hbin


#: Windows releases: ProductName, CurrentMajorVersionNumber,
#: CurrentMinorVersionNumber, CurrentBuildNumber, InstallationType.
WINDOWS = {
    'win2k19': ('Windows Server 2019 Standard', 10, 0, '17763', 'Server'),
}


def _software_reg(release: str) -> str:
    product, major, minor, build, variant = WINDOWS[release]
    return _reg('SOFTWARE', {
        'Microsoft': {},
        'Microsoft\\Windows NT': {},
        'Microsoft\\Windows NT\\CurrentVersion': {
            'ProductName': product,
            # The pre-Windows 10 value libguestfs falls back on, as
            # Windows 10 and later still carry it.
            'CurrentVersion': '6.3',
            'CurrentMajorVersionNumber': major,
            'CurrentMinorVersionNumber': minor,
            'CurrentBuildNumber': build,
            'InstallationType': variant}})


def _system_reg(hostname: str) -> str:
    return _reg('SYSTEM', {
        'Select': {'Current': 1, 'Default': 1, 'LastKnownGood': 1},
        'ControlSet001': {},
        'ControlSet001\\Control': {},
        'ControlSet001\\Services': {},
        'ControlSet001\\Services\\Tcpip': {},
        'ControlSet001\\Services\\Tcpip\\Parameters': {
            'Hostname': hostname},
        'MountedDevices': {}})


def _reg(hive: str, keys: Mapping[str, Mapping[str, str | int]]) -> str:
    """A .reg file (regedit 5 syntax) for ``hivexregedit --merge``: every
    key after its parent (merge creates one level at a time)."""
    lines = ['Windows Registry Editor Version 5.00', '']
    for key, values in keys.items():
        lines.append('[HKEY_LOCAL_MACHINE\\%s\\%s]' % (hive, key))
        for name, value in values.items():
            if isinstance(value, int):
                lines.append('"%s"=dword:%08x' % (name, value))
            else:
                lines.append('"%s"="%s"' % (name, value))
        lines.append('')
    return '\n'.join(lines)


def _hive(path: pathlib.Path, hive: str, reg: str) -> None:
    path.write_bytes(empty_hive(hive))
    regfile = path.with_suffix('.reg')
    regfile.write_text(reg)
    _run('hivexregedit', '--merge', str(path), '--prefix',
         'HKEY_LOCAL_MACHINE\\' + hive, str(regfile))
    regfile.unlink()


OS_RELEASE = {
    'debian12': ('debian', '12', 'Debian GNU/Linux 12 (bookworm)'),
    'ubuntu2204': ('ubuntu', '22.04', 'Ubuntu 22.04.4 LTS'),
    'fedora39': ('fedora', '39', 'Fedora Linux 39 (Server Edition)'),
    'sles15': ('sles', '15.5', 'SUSE Linux Enterprise Server 15 SP5'),
}


@dataclasses.dataclass(frozen=True)
class Guest:
    """One test guest: what goes in, and the properties inspection must
    derive from it (exactly)."""

    name: str
    release: str | None = 'debian12'
    machine: int = EM_X86_64
    big_endian: bool = False
    agent: bool = False
    cloud_init: bool = False
    zipl: bool = False
    esp_loader: bool = False
    corrupt: bool = False
    #: ext4 (mke2fs -d), xfs (mkfs.xfs -p with a protofile of the tree) or
    #: ntfs (a Windows layout; ``release`` is a key of WINDOWS).
    fs: str = 'ext4'
    expected: Mapping[str, str] = dataclasses.field(default_factory=dict)


GUESTS: dict[str, Guest] = {g.name: g for g in (
    Guest('debian12', agent=True, cloud_init=True, expected={
        'os_type': 'linux', 'os_distro': 'debian', 'os_version': '12',
        'hw_architecture': 'x86_64', 'architecture': 'x86_64',
        'hw_qemu_guest_agent': 'yes', 'img_cloud_init': 'yes'}),
    Guest('ubuntu2204_uefi', release='ubuntu2204', cloud_init=True,
          esp_loader=True, expected={
              'os_type': 'linux', 'os_distro': 'ubuntu',
              'os_version': '22.04', 'hw_architecture': 'x86_64',
              'architecture': 'x86_64', 'hw_firmware_type': 'uefi',
              'hw_machine_type': 'q35', 'img_cloud_init': 'yes'}),
    Guest('fedora39', release='fedora39', agent=True, fs='xfs', expected={
        'os_type': 'linux', 'os_distro': 'fedora', 'os_version': '39',
        'hw_architecture': 'x86_64', 'architecture': 'x86_64',
        'hw_qemu_guest_agent': 'yes', 'img_cloud_init': 'no'}),
    Guest('s390x_zipl', release='sles15', machine=EM_S390, big_endian=True,
          zipl=True, cloud_init=True, expected={
              'os_type': 'linux', 'os_distro': 'sles',
              'os_version': '15.5', 'hw_architecture': 's390x',
              'architecture': 's390x', 'img_cloud_init': 'yes'}),
    Guest('win2k19', release='win2k19', fs='ntfs', agent=True,
          cloud_init=True, expected={
              'os_type': 'windows', 'os_distro': 'windows',
              'hw_architecture': 'x86_64', 'architecture': 'x86_64',
              'hw_qemu_guest_agent': 'yes', 'img_cloud_init': 'yes'}),
    Guest('no_os', release=None),
    Guest('corrupt', corrupt=True),
)}


def _tree(guest: Guest, root: pathlib.Path) -> None:
    for d in ('etc', 'usr/bin', 'usr/sbin', 'var/lib', 'boot', 'tmp'):
        (root / d).mkdir(parents=True, exist_ok=True)
    if guest.fs == 'ext4':
        # A 4 GiB file (sparse: mke2fs -d keeps the hole; mkfs.xfs -p
        # would copy every byte) nothing may read.
        with open(root / 'var/huge.img', 'wb') as f:
            f.truncate(4 << 30)
    if guest.release is None:
        (root / 'data.txt').write_text('just data\n')
        return
    (root / 'bin').symlink_to('usr/bin')
    (root / 'sbin').symlink_to('usr/sbin')
    distro, version, pretty = OS_RELEASE[guest.release]
    (root / 'etc/os-release').write_text(
        'NAME="%s"\nPRETTY_NAME="%s"\nID=%s\nVERSION_ID="%s"\n'
        % (pretty.split(' ')[0], pretty, distro, version))
    if distro == 'debian':
        (root / 'etc/debian_version').write_text('%s.5\n' % version)
    # libguestfs counts a filesystem as a Linux root only with one of these.
    (root / 'etc/fstab').write_text('LABEL=root / %s defaults 0 1\n'
                                    % guest.fs)
    (root / 'etc/hosts').write_text('127.0.0.1 localhost\n')
    elf = elf_header(guest.machine, guest.big_endian)
    for binary in ('ls', 'sh', 'true'):
        (root / 'usr/bin' / binary).write_bytes(elf)
        (root / 'usr/bin' / binary).chmod(0o755)
    if guest.agent:
        (root / 'usr/bin/qemu-ga').write_bytes(elf)
    if guest.cloud_init:
        (root / 'usr/bin/cloud-init').write_text('#!/usr/bin/python3\n')
        (root / 'etc/cloud').mkdir()
        (root / 'etc/cloud/cloud.cfg').write_text('datasource_list: []\n')
    if guest.zipl:
        (root / 'etc/zipl.conf').write_text(
            '[defaultboot]\ndefault=linux\ntarget=/boot/zipl\n[linux]\n'
            'image=/boot/image\nparameters="root=LABEL=root"\n')
    # Hostile bits every guest carries: inspection must not follow them.
    (root / 'etc/loop1').symlink_to('loop2')
    (root / 'etc/loop2').symlink_to('loop1')


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def _ext4(tree: pathlib.Path, out: pathlib.Path, size: int) -> None:
    _run('mke2fs', '-q', '-F', '-t', 'ext4', '-L', 'root', '-d', str(tree),
         str(out), '%dK' % (size // 1024))


def _proto_lines(path: pathlib.Path, depth: int) -> list[str]:
    """mkfs.xfs protofile entries for the children of ``path``."""
    lines = []
    pad = ' ' * depth
    for child in sorted(path.iterdir()):
        if child.is_symlink():
            lines.append('%s%s l--777 0 0 %s' % (pad, child.name,
                                                 os.readlink(child)))
        elif child.is_dir():
            lines.append('%s%s d--755 0 0' % (pad, child.name))
            lines += _proto_lines(child, depth + 1)
            lines.append('%s$' % pad)
        else:
            mode = child.stat().st_mode & 0o777
            lines.append('%s%s ---%o 0 0 %s' % (pad, child.name, mode,
                                                child))
    return lines


def _xfs(tree: pathlib.Path, out: pathlib.Path, size: int) -> None:
    proto = out.with_suffix('.proto')
    proto.write_text('\n'.join(['/dev/null', '0 0', 'd--755 0 0']
                               + _proto_lines(tree, 1) + ['$', '']))
    with open(out, 'wb') as f:
        f.truncate(size)
    _run('mkfs.xfs', '-q', '-f', '-L', 'root', '-p', str(proto), str(out))


def _esp(out: pathlib.Path, size: int) -> None:
    _run('mkfs.vfat', '-C', '-n', 'ESP', str(out), str(size // 1024))
    loader = out.with_suffix('.efi')
    loader.write_bytes(b'MZ' + b'\0' * 510)  # a PE stub is enough to list
    for d in ('::/EFI', '::/EFI/BOOT', '::/EFI/ubuntu'):
        _run('mmd', '-i', str(out), d)
    _run('mcopy', '-i', str(out), str(loader), '::/EFI/BOOT/BOOTX64.EFI')
    _run('mcopy', '-i', str(out), str(loader), '::/EFI/ubuntu/shimx64.efi')


def _splice(disk: pathlib.Path, part: pathlib.Path, offset: int) -> None:
    _run('dd', 'if=%s' % part, 'of=%s' % disk, 'bs=1M',
         'seek=%d' % (offset // MiB), 'conv=notrunc,sparse', 'status=none')


def _windows_tree(guest: Guest, root: pathlib.Path) -> None:
    assert guest.release is not None
    system32 = root / 'Windows/System32'
    (system32 / 'config').mkdir(parents=True)
    (system32 / 'drivers').mkdir()
    for exe in ('cmd.exe', 'ntoskrnl.exe', 'drivers/viostor.sys'):
        (system32 / exe).write_bytes(pe_header())
    _hive(system32 / 'config/SOFTWARE', 'SOFTWARE',
          _software_reg(guest.release))
    _hive(system32 / 'config/SYSTEM', 'SYSTEM', _system_reg(guest.name))
    if guest.agent:
        (root / 'Program Files/Qemu-ga').mkdir(parents=True)
        (root / 'Program Files/Qemu-ga/qemu-ga.exe').write_bytes(
            pe_header())
    if guest.cloud_init:
        cbi = root / 'Program Files/Cloudbase Solutions/Cloudbase-Init'
        (cbi / 'conf').mkdir(parents=True)
        (cbi / 'conf/cloudbase-init.conf').write_text('[DEFAULT]\r\n')
    (root / 'pagefile.sys').write_bytes(b'')


def _guestfish_env() -> dict[str, str]:
    env = dict(os.environ, LIBGUESTFS_BACKEND='direct',
               LIBGUESTFS_BACKEND_SETTINGS='force_tcg', LC_ALL='C')
    for key in ('LIBGUESTFS_DEBUG', 'LIBGUESTFS_TRACE'):
        env.pop(key, None)
    return env


def _ntfs_disk(tree: pathlib.Path, out: pathlib.Path, size: int) -> None:
    """An MBR disk with one NTFS partition (type 0x07) holding ``tree``,
    made and filled by the libguestfs appliance (guestfish)."""
    with open(out, 'wb') as f:
        f.truncate(size)
    script = ['run', 'part-disk /dev/sda mbr', 'part-set-mbr-id /dev/sda 1 7',
              'part-set-bootable /dev/sda 1 true',
              'mkfs ntfs /dev/sda1 label:Windows', 'mount /dev/sda1 /']
    for path in sorted(tree.rglob('*')):
        inside = '"/%s"' % path.relative_to(tree).as_posix()
        if path.is_dir():
            script.append('mkdir-p %s' % inside)
        else:
            script.append('upload "%s" %s' % (path, inside))
    script += ['umount-all', 'shutdown']
    subprocess.run(['guestfish', '--rw', '--format=raw', '-a', str(out)],
                   input='\n'.join(script) + '\n', text=True, check=True,
                   capture_output=True, env=_guestfish_env(), timeout=300)


def _version(*command: str) -> str:
    try:
        return subprocess.run(list(command), capture_output=True, text=True,
                              timeout=60).stdout
    except OSError as exc:
        return str(exc)


def _cache_key(tree: pathlib.Path, size: int) -> str:
    """A hash of what the NTFS build reads: this file, ``tree`` (paths,
    kinds, contents), the disk size and the tools' versions."""
    digest = hashlib.sha256(pathlib.Path(__file__).read_bytes())
    digest.update(b'%d\0' % size)
    digest.update(_version('guestfish', '--version').encode())
    digest.update(_version('mkntfs', '--version').encode())
    for path in sorted(tree.rglob('*')):
        digest.update(path.relative_to(tree).as_posix().encode() + b'\0')
        digest.update(b'D\0' if path.is_dir() else path.read_bytes() + b'\0')
    return digest.hexdigest()[:32]


def _cache_root() -> pathlib.Path | None:
    """This user's cache folder (mode 0700), or None: switched off, or
    the folder is not a directory of ours."""
    if os.environ.get('IMGPLUGINS_GUEST_CACHE', '') == 'off':
        return None
    root = pathlib.Path(tempfile.gettempdir()) / (
        'imgplugins-guest-cache-%d' % os.getuid())
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = root.lstat()
    except OSError:
        return None
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid()
            or st.st_mode & 0o077):
        return None
    return root


def _copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    """``src`` to ``dst`` (holes kept), whole or not at all."""
    part = dst.with_name('.%s.%d.part' % (dst.name, os.getpid()))
    try:
        _run('cp', '--sparse=always', str(src), str(part))
        part.rename(dst)
    finally:
        part.unlink(missing_ok=True)


def _ntfs_guest(guest: Guest, workdir: pathlib.Path,
                out: pathlib.Path) -> None:
    tree = workdir / (guest.name + '.tree')
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    _windows_tree(guest, tree)
    size = 64 * MiB
    root = _cache_root()
    key = _cache_key(tree, size) if root else ''
    cached = root / key / out.name if root else None
    if cached is not None:
        try:
            _copy(cached, out)
            return
        except (OSError, subprocess.CalledProcessError):
            pass   # not built yet (or pruned meanwhile): build it
    disk = workdir / (guest.name + '.disk')
    _ntfs_disk(tree, disk, size)
    disk.rename(out)
    if root is None or cached is None:
        return
    # Keeping it is only a saving: a failure here fails no test.
    try:
        # Other keys are builds from another version of this file.
        for old in root.iterdir():
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
        cached.parent.mkdir(exist_ok=True)
        _copy(out, cached)
    except (OSError, subprocess.CalledProcessError):
        pass


def build(guest: Guest, workdir: pathlib.Path) -> pathlib.Path:
    """The raw disk image of ``guest`` in ``workdir`` (built once; the
    Windows guest copied from the cache when it was built before)."""
    out = workdir / (guest.name + '.raw')
    if out.exists():
        return out
    if guest.fs == 'ntfs':
        _ntfs_guest(guest, workdir, out)
        return out
    tree = workdir / (guest.name + '.tree')
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    _tree(guest, tree)
    root_fs = workdir / (guest.name + '.' + guest.fs)
    if guest.fs == 'xfs':
        _xfs(tree, root_fs, 300 * MiB)   # mkfs.xfs' minimum size
    else:
        _ext4(tree, root_fs, 48 * MiB)
    if guest.corrupt:
        # Zero the primary superblock and the group descriptors: no
        # filesystem is recognisable, nothing mounts.
        with open(root_fs, 'r+b') as f:
            f.seek(1024)
            f.write(b'\xde\xad' * 4096)
    if not guest.esp_loader:
        root_fs.rename(out)
        return out
    esp = workdir / (guest.name + '.esp')
    _esp(esp, 32 * MiB)
    disk = workdir / (guest.name + '.disk')
    with open(disk, 'wb') as f:
        f.truncate(84 * MiB)
    _run('sgdisk', '-n', '1:1M:+32M', '-t', '1:ef00', '-c', '1:ESP',
         '-n', '2:33M:+48M', '-t', '2:8300', str(disk))
    _splice(disk, esp, 1 * MiB)
    _splice(disk, root_fs, 33 * MiB)
    disk.rename(out)
    return out
