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

"""``format_conversion``: bring imported images into one safe format.

Replaces Glance's in-tree ``image_conversion``.  On the staged file, in
order (the first refusal wins and is what the user reads in the task
message):

1. the declared disk_format is one of ``allowed_input_formats``;
2. inspection (``glance_imgplugins.inspection``: header reads only) finds no
   failed safety check: backing file, data-file, vmdk extents/createType,
   unknown features, encryption, several formats at once, GPT/MBR oddities;
3. the detected format equals the declared disk_format (``gpt`` is a raw
   disk with a GPT; a bootable ISO whose other match is only a partition
   table is an ISO; compressed data is named as such);
4. an ISO declared as ISO is left untouched when ``preserve_iso``;
   a signed image (the four ``img_signature*`` properties) that would be
   converted is verified over the staged original (``signed_images =
   verify``, :mod:`glance_imgplugins.signature`) or refused (``refuse``)
   here, before any qemu-img call;
5. ``qemu-img info -f <format>`` (under limits) agrees on the format and
   sees no backing file or data-file; what it reports about the content is
   a named refusal;
6. the virtual size is within ``max_virtual_size``;
7. already in ``output_format``: nothing is converted or copied;
8. the bytes the conversion will write, counted from the image's mapping,
   are within ``max_converted_size`` and the staging free space less
   ``staging_reserve``;
9. ``qemu-img convert`` (under limits, with a timeout, stopped if staging
   space falls under the reserve) writes the output, reporting percent done
   in the task message;
10. the output is inspected again and must be exactly ``output_format`` and
    pass the same checks (a disk image hidden inside the guest data would
    surface here);
11. the output replaces the staged original under the image's own staging
    name, so Glance's own delete and housekeeping remove it; disk_format,
    virtual_size and size are set and the original format is kept in the
    ``img_original_disk_format`` property; a verified signature moves to
    ``img_original_signature*`` with ``img_original_sha256``, so Glance
    does not verify the converted bytes against it.

Where the staging filesystem supports it, qemu-img writes into an unnamed
file (``O_TMPFILE``) that only gets a name once it is complete: a killed API
process leaves no partial output behind.

Failures follow the contract of :mod:`glance_imgplugins.exception`: a
refused image goes back to ``queued`` with its staged data removed; a
limit, the configuration, qemu-img failing or the staging space leave it
``uploading`` with the staged data kept for ``glance image-import
--import-method glance-direct``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess
import threading
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units
from taskflow.patterns import linear_flow as lf

from glance_imgplugins import exception
from glance_imgplugins import inspection
from glance_imgplugins import qemu_img
from glance_imgplugins import signature
from glance_imgplugins.plugins import base

LOG = logging.getLogger(__name__)

GROUP = 'format_conversion'
PLUGIN = 'format_conversion'

#: Image property recording the disk_format the image was imported in.
ORIGINAL_FORMAT_PROPERTY = 'img_original_disk_format'

OUTPUT_FORMATS = ('raw', 'qcow2')
SIGNED_IMAGE_MODES = ('verify', 'refuse')
INPUT_FORMATS = ('raw', 'gpt', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi', 'iso')
#: Suffixes of the outputs this plugin ever wrote next to a staged image.
OUTPUT_SUFFIXES = tuple('.' + f for f in OUTPUT_FORMATS)

conversion_opts = [
    cfg.StrOpt('output_format',
               default='raw',
               choices=OUTPUT_FORMATS,
               help="""
The disk_format every imported image ends up in.

Possible values:
    * raw: sparse raw files (what Ceph RBD and most hypervisors want)
    * qcow2

Related options:
    * allowed_input_formats
    * preserve_iso
"""),
    cfg.ListOpt('allowed_input_formats',
                default=list(INPUT_FORMATS),
                help="""
The declared disk_formats this plugin accepts for import.

An image declared with any other disk_format is refused before its data is
read.  Formats Glance knows but this plugin cannot convert (ami, ari, aki,
ploop) are refused too.

Possible values:
    * A list drawn from: raw, qcow2, vmdk, vhd, vhdx, vdi, iso

Related options:
    * output_format
    * [image_format] vmdk_allowed_types (vmdk subtypes)
"""),
    cfg.IntOpt('max_virtual_size',
               default=units.Ti,
               min=0,
               help="""
Largest virtual size, in bytes, of an image this plugin converts.

The virtual size is what the image expands to: a small qcow2 upload can
describe a disk of many TiB.  0 means no limit.

Possible values:
    * 0 (no limit)
    * A positive number of bytes (default 1 TiB)

Related options:
    * [DEFAULT] image_size_cap (limits the upload, not the virtual size)
"""),
    cfg.IntOpt('qemu_img_address_space',
               default=units.Gi,
               min=64 * units.Mi,
               help="""
Address space limit, in bytes, for every qemu-img process (info and convert).

Possible values:
    * A number of bytes, at least 64 MiB (default 1 GiB)

Related options:
    * qemu_img_info_cpu_time
    * convert_cpu_time
"""),
    cfg.IntOpt('qemu_img_info_cpu_time',
               default=8,
               min=1,
               help="""
CPU seconds ``qemu-img info`` may use on an uploaded image.

Reading an image's header takes a fraction of a second; a crafted header
that makes qemu-img spin is stopped here.

Possible values:
    * A positive number of seconds (default 8)

Related options:
    * qemu_img_info_timeout
"""),
    cfg.FloatOpt('qemu_img_info_timeout',
                 default=60.0,
                 min=1.0,
                 help="""
Wall-clock seconds after which ``qemu-img info`` is killed.

Possible values:
    * A positive number of seconds (default 60)

Related options:
    * qemu_img_info_cpu_time
"""),
    cfg.IntOpt('convert_cpu_time',
               default=3600,
               min=1,
               help="""
CPU seconds ``qemu-img convert`` may use for one image.

Possible values:
    * A positive number of seconds (default 3600)

Related options:
    * convert_timeout
"""),
    cfg.FloatOpt('convert_timeout',
                 default=3600.0,
                 min=1.0,
                 help="""
Wall-clock seconds after which ``qemu-img convert`` is killed and the
import fails (its staged data kept for a retry).

Possible values:
    * A positive number of seconds (default 3600)

Related options:
    * convert_cpu_time
    * max_virtual_size
"""),
    cfg.BoolOpt('preserve_iso',
                default=True,
                help="""
Leave images declared and detected as ISO untouched.

ISO images are booted as CD-ROMs; converting them to a disk format gains
nothing.

Possible values:
    * True: ISO images keep disk_format iso and their bytes (default)
    * False: ISO images are converted like raw disks

Related options:
    * output_format
"""),
    cfg.FloatOpt('progress_interval',
                 default=2.0,
                 min=0.0,
                 help="""
Seconds between updates of the import task's message while converting.

Users see the percentage done and the time elapsed in ``glance
image-tasks`` and ``GET /v2/images/{id}/tasks``; the message is refreshed
at this interval even while the percentage does not move (qemu-img reports
whole percents).  Each update is one database write.

Possible values:
    * A number of seconds (default 2); 0 updates on every percent, with
      the refresh every half second

Related options:
    * None
"""),
    cfg.IntOpt('staging_reserve',
               default=units.Gi,
               min=0,
               help="""
Bytes of the staging filesystem that a conversion must leave free.

Before converting, the bytes the conversion will write (every guest range
that holds data, read from the image's own mapping: a small upload whose
tables repeat one cluster counts in full) must fit the staging free space
less this reserve, or the import fails with both sizes named and the staged
data kept.  While qemu-img runs, a free space under the reserve (other
imports fill the same filesystem) stops the conversion and removes its
partial output.

Possible values:
    * A number of bytes (default 1 GiB); 0 disables the reserve

Related options:
    * max_converted_size
    * [os_glance_staging_store] filesystem_store_datadir
"""),
    cfg.IntOpt('max_converted_size',
               min=0,
               help="""
Largest amount of data, in bytes, one conversion may write.

Counted before converting, from the image's mapping (not from the upload's
size, which a crafted image can make tiny).

Possible values:
    * Unset: the value of max_virtual_size (default)
    * 0: no limit other than the staging space
    * A positive number of bytes

Related options:
    * max_virtual_size
    * staging_reserve
"""),
    cfg.StrOpt('signed_images',
               default='verify',
               choices=SIGNED_IMAGE_MODES,
               help="""
What to do with a signed image (``img_signature``,
``img_signature_hash_method``, ``img_signature_key_type`` and
``img_signature_certificate_uuid`` all set) that would be converted.

Glance verifies a signature over the bytes it stores, which after a
conversion are no longer the bytes that were signed.  Signed images that
need no conversion are never touched: Glance verifies them as usual.

Possible values:
    * verify: verify the signature over the staged original before
      converting, exactly as Glance would (certificate from the key
      manager, with the importing user's token); then move the four
      properties to ``img_original_signature*`` with
      ``img_original_sha256`` (default)
    * refuse: refuse the image, telling the user to upload it signed in
      ``output_format`` (for clouds where Nova verifies signatures when
      booting, ``[glance] verify_glance_signatures``)

Related options:
    * output_format
    * signature_certificate_validation
    * [key_manager] backend
    * [barbican] auth_endpoint, barbican_endpoint
"""),
    cfg.BoolOpt('signature_certificate_validation',
                default=False,
                help="""
Also validate the signing certificate of a signed image that is verified
before converting (``signed_images = verify``): it must be within its
validity dates and chain to one of ``signature_trusted_certificate_ids``
(cursive's certificate validation, as Nova's ``[glance]
enable_certificate_validation``).  Glance itself validates no certificate.
An expired, not yet valid or untrusted certificate is refused by name.

Possible values:
    * False: any certificate holding the right key type is accepted, as
      Glance does (default)
    * True: only certificates issued by a trusted certificate authority

Related options:
    * signature_trusted_certificate_ids
    * signed_images
"""),
    cfg.ListOpt('signature_trusted_certificate_ids',
                default=[],
                help="""
Key manager ids (Barbican secret UUIDs) of the CA certificates a signing
certificate must chain to when ``signature_certificate_validation`` is on,
as Nova's ``[glance] default_trusted_certificate_ids``.  They are read with
the importing user's token, so every project that imports signed images
must be able to read them (a Barbican ACL or a shared project).  Each must
be a CA certificate (basic constraints CA, key usage keyCertSign) within
its dates.

Possible values:
    * A comma-separated list of ids (default: empty; check-config reports
      an error when certificate validation is on and this is empty)

Related options:
    * signature_certificate_validation
"""),
]


@dataclasses.dataclass(frozen=True)
class Settings:
    output_format: str
    allowed_input_formats: tuple[str, ...]
    max_virtual_size: int
    max_converted_size: int
    staging_reserve: int
    info_limits: qemu_img.Limits
    convert_limits: qemu_img.Limits
    preserve_iso: bool
    progress_interval: float
    vmdk_allowed_types: tuple[str, ...]
    gpt_nonfatal: frozenset[str]
    signed_images: str = 'verify'
    #: Certificate validation (None: off, as Glance).
    signature_trust: signature.Trust | None = None


def _glance_image_format(conf: cfg.ConfigOpts) -> tuple[tuple[str, ...],
                                                        frozenset[str]]:
    """Glance's own [image_format] policy, which this plugin honours too."""
    try:
        group = conf.image_format
        return (tuple(group.vmdk_allowed_types),
                frozenset(group.gpt_safety_checks_nonfatal))
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return inspection.DEFAULT_VMDK_ALLOWED_TYPES, frozenset()


def python_interpreter(conf: cfg.ConfigOpts) -> str | None:
    """``[wsgi] python_interpreter``: the Python that runs the prlimit
    wrapper (under uWSGI ``sys.executable`` is not a usable one)."""
    try:
        value = conf.wsgi.python_interpreter
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return None
    return str(value) if value else None


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    group = conf[GROUP]
    allowed = tuple(f.strip() for f in group.allowed_input_formats
                    if f.strip())
    problems = []
    unknown = sorted(set(allowed) - set(INPUT_FORMATS))
    if unknown:
        problems.append(
            '[%s] allowed_input_formats: unknown format%s %s (known: %s)' % (
                GROUP, '' if len(unknown) == 1 else 's', ', '.join(unknown),
                ', '.join(INPUT_FORMATS)))
    if not allowed:
        problems.append('[%s] allowed_input_formats: empty, every import '
                        'would be refused' % GROUP)
    if problems:
        raise exception.ConfigError(reason='; '.join(problems))
    vmdk_allowed, gpt_nonfatal = _glance_image_format(conf)
    address_space = group.qemu_img_address_space
    python_exec = python_interpreter(conf)
    max_converted = group.max_converted_size
    if max_converted is None:
        max_converted = group.max_virtual_size
    return Settings(
        output_format=group.output_format,
        allowed_input_formats=allowed,
        max_virtual_size=group.max_virtual_size,
        max_converted_size=max_converted,
        staging_reserve=group.staging_reserve,
        info_limits=qemu_img.Limits(address_space=address_space,
                                    cpu_time=group.qemu_img_info_cpu_time,
                                    timeout=group.qemu_img_info_timeout,
                                    python_exec=python_exec),
        convert_limits=qemu_img.Limits(address_space=address_space,
                                       cpu_time=group.convert_cpu_time,
                                       timeout=group.convert_timeout,
                                       python_exec=python_exec),
        preserve_iso=group.preserve_iso,
        progress_interval=group.progress_interval,
        vmdk_allowed_types=vmdk_allowed,
        gpt_nonfatal=gpt_nonfatal,
        signed_images=group.signed_images,
        signature_trust=signature.Trust(
            tuple(group.signature_trusted_certificate_ids))
        if group.signature_certificate_validation else None,
    )


def _verifies_explicitly(conf: cfg.ConfigOpts) -> bool:
    location = conf.get_location('signed_images', GROUP)
    return (conf[GROUP].signed_images == 'verify' and location is not None
            and location.location is not cfg.Locations.opt_default)


class ConversionSpec(base.PluginSpec):
    """The spec, plus the key manager check when signature handling is
    turned on (``signed_images = verify`` set in the configuration; the
    key manager options are castellan's, in Glance's own groups)."""

    def check_config(self, conf: cfg.ConfigOpts) -> list[str]:
        problems = super().check_config(conf)
        validates = (conf[GROUP].signature_certificate_validation and
                     conf[GROUP].signed_images == 'verify')
        if problems or not (validates or _verifies_explicitly(conf)):
            return problems
        if validates and not conf[GROUP].signature_trusted_certificate_ids:
            problems.append(
                '[%s] signature_trusted_certificate_ids: empty while '
                'signature_certificate_validation is on: every signed image '
                'that needs converting would fail' % GROUP)
        return problems + signature.key_manager_problems(conf)


def describe_signatures(conf: cfg.ConfigOpts) -> list[str]:
    """check-config's line on signed images."""
    mode = conf[GROUP].signed_images
    if mode == 'refuse':
        return ['signed images that need converting are refused '
                '([%s] signed_images = refuse)' % GROUP]
    problems = signature.key_manager_problems(conf)
    if problems:
        # Only the default is in effect: a cloud without a key manager
        # has no signed images to verify, so this is not an error.
        return ['signed images that need converting are verified first, '
                'but the key manager is not configured (%s); set [%s] '
                'signed_images = verify to make this an error, or refuse'
                % ('; '.join(problems), GROUP)]
    trusted = conf[GROUP].signature_trusted_certificate_ids
    return ['signed images that need converting are verified first with '
            'the %s key manager%s' % (
                conf.key_manager.backend,
                ', their certificates validated against %d trusted '
                'certificate%s' % (len(trusted), '' if len(trusted) == 1
                                   else 's')
                if conf[GROUP].signature_certificate_validation else '')]


SPEC = ConversionSpec(name=PLUGIN, group=GROUP, opts=conversion_opts,
                      loader=load_settings, describer=describe_signatures)
SPEC.register(cfg.CONF)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return SPEC.list_opts()


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    return SPEC.check_config(conf)


def describe_config(conf: cfg.ConfigOpts) -> list[str]:
    """Informational lines for ``check-config``."""
    return SPEC.describe(conf)


# --- the checks, as plain functions of an inspection result -----------------

def fatal_failures(result: inspection.InspectionResult,
                   gpt_nonfatal: frozenset[str]) -> dict[str, str]:
    """The failures that refuse the image (Glance's GPT leniency applied)."""
    failures = dict(result.failures)
    if result.inspector_name == 'gpt':
        for name in gpt_nonfatal:
            failures.pop(name, None)
    return failures


def refuse_unsafe(result: inspection.InspectionResult,
                  gpt_nonfatal: frozenset[str]) -> None:
    failures = fatal_failures(result, gpt_nonfatal)
    if not failures:
        return
    summary = ', '.join('%s (%s)' % kv for kv in sorted(failures.items()))
    if result.format == 'unknown':
        raise exception.UnknownFormat(reason=summary)
    raise exception.UnsafeImage(format=result.format, checks=summary)


def detected_as(result: inspection.InspectionResult, declared: str) -> bool:
    """Whether the content is what the user declared (``gpt``: a raw disk
    whose GPT is valid)."""
    return result.accepts_declared(declared)


def refuse_mismatch(result: inspection.InspectionResult,
                    declared: str) -> None:
    if detected_as(result, declared):
        return
    container = result.facts.get('compression')
    if container and declared != 'raw':
        raise exception.CompressedImage(declared=declared,
                                        container=container)
    detected = result.format
    if declared == 'gpt' and detected == 'raw':
        detected = 'raw without a valid GPT'
    raise exception.FormatMismatch(declared=declared, detected=detected)


def output_metadata_bytes(virtual_size: int, output_format: str) -> int:
    """What the output format adds to the data: a qcow2 holds 8 bytes of L2
    table per 64 KiB cluster, refcounts and a header (under 0.02% of the
    virtual size plus 1 MiB); a raw file nothing."""
    if output_format == 'qcow2':
        return virtual_size // 4096 + units.Mi
    return 0


#: A module global, so a test can stand in for the filesystem.
free_bytes = base.free_bytes


def _qemu_source_format(disk_format: str) -> str:
    # An ISO converted anyway (preserve_iso False) and a gpt disk are read
    # as plain bytes.
    return 'raw' if disk_format in ('iso', 'gpt') else disk_format


def _data_file(info: Any) -> Any:
    spec = getattr(info, 'format_specific', None) or {}
    data = spec.get('data') if isinstance(spec, dict) else None
    return data.get('data-file') if isinstance(data, dict) else None


def remove_outputs(src: str) -> None:
    """Remove every output an earlier, killed attempt left for the image."""
    for suffix in OUTPUT_SUFFIXES:
        base.remove_file(src + suffix)


# --- where qemu-img writes -------------------------------------------------

_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_tmpfile_ok: dict[tuple[str, str], bool] = {}
_tmpfile_lock = threading.Lock()


class Output:
    """The conversion output: an unnamed ``O_TMPFILE`` in the staging
    folder when the filesystem and the process allow it (nothing survives a
    crash), else the named file ``<staged>.<format>``."""

    def __init__(self, src: str, fmt: str, python_exec: str | None) -> None:
        self.final = '%s.%s' % (src, fmt)
        self.fd: int | None = None
        folder = os.path.dirname(src) or '.'
        if _tmpfile_usable(folder, python_exec):
            self.fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o640)
            # The path qemu-img (a child process) opens: it reaches our fd.
            self.path = '/proc/%d/fd/%d' % (os.getpid(), self.fd)
        else:
            self.path = self.final

    def publish(self) -> str:
        """Give the finished output its name; return it."""
        if self.fd is not None:
            base.remove_file(self.final)
            libc = ctypes.CDLL(None, use_errno=True)
            # os.link cannot follow the /proc magic link (it calls link()).
            if libc.linkat(_AT_FDCWD, self.path.encode(), _AT_FDCWD,
                           self.final.encode(), _AT_SYMLINK_FOLLOW) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            self.close()
        return self.final

    def size(self) -> int:
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        return os.stat(self.final).st_size

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        if self.fd is not None:
            self.close()
        else:
            base.remove_file(self.final)


def _tmpfile_usable(folder: str, python_exec: str | None) -> bool:
    """Whether qemu-img can write into our ``O_TMPFILE`` here: the
    filesystem must support it (not NFS, say) and the child must be allowed
    to open our /proc fd (a process that changed uid is not dumpable)."""
    key = (os.path.realpath(folder), python_exec or '')
    with _tmpfile_lock:
        if key in _tmpfile_ok:
            return _tmpfile_ok[key]
        ok = False
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o640)
        except OSError:
            fd = None
        if fd is not None:
            try:
                probe = subprocess.run(
                    ['sh', '-c', ': >> "$1"', 'probe',
                     '/proc/%d/fd/%d' % (os.getpid(), fd)],
                    capture_output=True, timeout=10, check=False)
                ok = probe.returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            finally:
                os.close(fd)
        LOG.info('%s: conversion outputs in %s are %s', PLUGIN, folder,
                 'unnamed until complete (O_TMPFILE)' if ok else
                 'named files (O_TMPFILE not usable here)')
        _tmpfile_ok[key] = ok
        return ok


class ConvertImage(base.PluginTask):
    """Check, convert and re-check the staged image (see module doc)."""

    spec = SPEC
    label = 'FormatConversion'

    def __init__(self, request: base.ImportRequest,
                 conf: cfg.ConfigOpts | None = None) -> None:
        super().__init__(request, conf, provides='file_path')
        # Set by run, read by revert (same process, one import).
        self._original_format: str | None = None
        self._converted = False
        self._verified: signature.Verified | None = None

    # -- execute --------------------------------------------------------------

    def run(self, file_path: str | None, settings: Settings) -> str:
        image_id = self.request.image_id or 'the image'
        if not file_path:
            raise exception.ConversionFailed(reason='no staged data')
        src = base.staged_path(file_path)
        image = base.read_image(self.request.action_wrapper)
        declared = image.disk_format or ''
        self._original_format = declared

        if declared not in settings.allowed_input_formats:
            raise exception.FormatNotAllowed(
                format=declared or 'none',
                allowed=', '.join(settings.allowed_input_formats))

        result = inspection.inspect_file(src, settings.vmdk_allowed_types)
        refuse_unsafe(result, settings.gpt_nonfatal)
        refuse_mismatch(result, declared)
        if declared == 'iso' and settings.preserve_iso:
            LOG.info('%s: image %s is an ISO: left as it is', PLUGIN,
                     image_id)
            self._set_attributes(virtual_size=result.file_size)
            return file_path

        target = settings.output_format
        if not (declared == target or (declared == 'gpt' and
                                       target == 'raw')):
            self._check_signature(src, image, declared, settings)

        source_format = _qemu_source_format(declared)
        info = qemu_img.info(src, source_format, settings.info_limits,
                             name=image_id)
        expected = qemu_img.qemu_format(source_format)
        if info.file_format != expected:
            raise exception.FormatMismatch(
                declared=declared,
                detected='%s (according to qemu-img)' % info.file_format)
        if info.backing_file:
            raise exception.UnsafeImage(
                format=declared, checks='backing_file (qemu-img reports '
                'a backing file)')
        if _data_file(info):
            raise exception.UnsafeImage(
                format=declared, checks='data_file (qemu-img reports a '
                'data-file)')
        virtual_size = max(result.virtual_size, int(info.virtual_size or 0))
        if settings.max_virtual_size and \
                virtual_size > settings.max_virtual_size:
            raise exception.VirtualSizeTooLarge(
                virtual_size=virtual_size, limit=settings.max_virtual_size)

        if declared == target or (declared == 'gpt' and target == 'raw'):
            LOG.info('%s: image %s is already %s: not converted', PLUGIN,
                     image_id, target)
            self._set_attributes(virtual_size=virtual_size)
            return file_path

        folder = os.path.dirname(src) or '.'
        extra = output_metadata_bytes(virtual_size, target)
        available = free_bytes(folder) - settings.staging_reserve
        bound = available if not settings.max_converted_size else min(
            available, settings.max_converted_size)
        # qemu-img map stops once the bound is crossed: a bomb's mapping is
        # never walked to its end.
        needed = qemu_img.mapped_data_bytes(
            src, source_format, settings.info_limits, name=image_id,
            stop_above=max(bound - extra, 0)) + extra
        if settings.max_converted_size and \
                needed > settings.max_converted_size:
            raise exception.ConvertedSizeTooLarge(
                needed=needed, limit=settings.max_converted_size,
                option='[%s] max_converted_size' % GROUP)
        if needed > available:
            raise exception.InsufficientSpace(image=image_id, needed=needed,
                                              free=max(available, 0))

        remove_outputs(src)  # residue of an earlier, killed attempt
        output = Output(src, target, settings.convert_limits.python_exec)
        message = base.TaskMessage(self.request.task_repo,
                                   self.request.task_id,
                                   settings.progress_interval)
        label = 'Converting image from %s to %s' % (declared, target)

        def watch_space() -> None:
            if free_bytes(folder) < settings.staging_reserve:
                raise exception.StagingSpaceLow(
                    reserve=settings.staging_reserve,
                    option='[%s] staging_reserve' % GROUP)

        try:
            with base.PercentMessage(message, label,
                                     settings.progress_interval) as shown:
                qemu_img.convert(src, source_format, output.path, target,
                                 settings.convert_limits,
                                 progress=shown.progress, name=image_id,
                                 check=watch_space if
                                 settings.staging_reserve else None)
                shown.done()
            dest = output.publish()
        except BaseException:
            output.discard()
            raise

        try:
            out = inspection.inspect_file(dest, settings.vmdk_allowed_types)
        except BaseException:
            base.remove_file(dest)
            raise
        failures = fatal_failures(out, settings.gpt_nonfatal)
        # A raw copy of an ISO is still an ISO (preserve_iso False).
        accepted = {target, 'iso'} if declared == 'iso' else {target}
        if out.format not in accepted:
            failures['output_format'] = (
                'the converted data is detected as %s, not %s'
                % (out.format, target))
        if failures:
            base.remove_file(dest)
            raise exception.UnsafeImage(
                format=declared,
                checks=', '.join('%s (%s)' % kv
                                 for kv in sorted(failures.items())))

        size = os.stat(dest).st_size
        # The output takes the staged image's own name: Glance's image
        # delete and staging housekeeping then know it, and no second file
        # of the image stays in staging.
        os.replace(dest, src)
        self._converted = True
        with self.request.action_wrapper as action:
            action.set_image_attribute(disk_format=target,
                                       virtual_size=out.virtual_size,
                                       size=size)
            action.set_image_extra_properties(
                {ORIGINAL_FORMAT_PROPERTY: declared})
            if self._verified is not None:
                self._move_signature(action, self._verified)
        self._summary = 'converted from %s to %s: %d bytes, %d allocated' % (
            declared, target, size, out.allocated_size)
        return file_path

    def describe_result(self, result: Any) -> str:
        return getattr(self, '_summary', None) or 'left as it is'

    # -- signed images --------------------------------------------------------

    def _check_signature(self, src: str, image: base.ImageSnapshot,
                         declared: str, settings: Settings) -> None:
        """Verify (or refuse) a signed image that is about to be
        converted; an unsigned one passes."""
        sig = signature.signature_of(image.extra_properties)
        if sig is None:
            return
        if settings.signed_images == 'refuse':
            raise exception.SignedImageNeedsConversion(
                declared=declared, target=settings.output_format)
        verified = signature.verify_file(
            src, sig, self.request.context, signature.key_manager(self.conf),
            trust=settings.signature_trust)
        LOG.info('%s: image %s: signature verified over the %s original '
                 '(certificate %s, sha256 %s)', PLUGIN, image.image_id,
                 declared, sig.certificate_uuid, verified.sha256)
        self._verified = verified

    @staticmethod
    def _move_signature(action: Any, verified: signature.Verified) -> None:
        """Glance would verify the converted bytes against the original's
        signature: keep it under ``img_original_*`` instead."""
        action.set_image_extra_properties(verified.moved_properties())
        for name in signature.PROPERTIES:
            action.pop_extra_property(name)

    @staticmethod
    def _restore_signature(action: Any, verified: signature.Verified) -> None:
        action.set_image_extra_properties(verified.signature.properties())
        for name in verified.moved_properties():
            action.pop_extra_property(name)

    def _set_attributes(self, **attrs: Any) -> None:
        with self.request.action_wrapper as action:
            action.set_image_attribute(**attrs)

    # -- revert ---------------------------------------------------------------

    def cleanup(self, src: str | None) -> None:
        if src:
            remove_outputs(src)
            if self._converted:
                # Failed after the output replaced the original.
                base.remove_file(src)

    def restore_attributes(self, action: Any,
                           kept_src: str | None) -> dict[str, Any]:
        restore = super().restore_attributes(action, kept_src)
        if (self._original_format and
                action.image_disk_format != self._original_format):
            restore['disk_format'] = self._original_format
        return restore

    def undo(self, action: Any, result: Any, file_path: str | None) -> None:
        """A later task failed (a store, property_injection)."""
        src = base.staged_path(file_path) if file_path else None
        if src:
            remove_outputs(src)

        def forget() -> dict[str, Any]:
            # The image goes back to what the user declared.
            action.pop_extra_property(ORIGINAL_FORMAT_PROPERTY)
            if self._verified is not None:
                # The original comes back: so does its signature.
                self._restore_signature(action, self._verified)
            return self.restore_attributes(action, None)

        # Else the converted data stays staged under its own disk_format
        # (the original format recorded): a glance-direct retry imports it
        # without converting again.
        kept = self.fail_after_replacing(action, src, self._converted, forget)
        LOG.info('%s: image %s reverted after a later task failed; staged '
                 'data %s', PLUGIN, self.request.image_id,
                 ('kept (converted) for a retry' if self._converted else
                  'kept for a retry') if kept else 'not kept')


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (a bad option fails the task)."""
    request = base.ImportRequest.from_kwargs(kwargs)
    return lf.Flow(request.task_type).add(ConvertImage(request))
