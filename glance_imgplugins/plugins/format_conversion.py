"""``format_conversion``: bring imported images into one safe format.

Replaces Glance's in-tree ``image_conversion``.  On the staged file, in
order (the first refusal wins and is what the user reads in the task
message):

1. the declared disk_format is one of ``allowed_input_formats``;
2. inspection (``glance_imgplugins.inspection``: header reads only) finds no
   failed safety check: backing file, data-file, vmdk extents/createType,
   unknown features, encryption, several formats at once, GPT/MBR oddities;
3. the detected format equals the declared disk_format;
4. an ISO declared as ISO is left untouched when ``preserve_iso``;
5. ``qemu-img info -f <format>`` (under limits) agrees on the format and
   sees no backing file or data-file;
6. the virtual size is within ``max_virtual_size``;
7. already in ``output_format``: nothing is converted or copied;
8. the staging filesystem has room for the output (see
   :func:`estimate_output_bytes`);
9. ``qemu-img convert`` (under limits, with a timeout) writes
   ``<staged>.<format>``, reporting percent done in the task message;
10. the output is inspected again and must be exactly ``output_format`` and
    pass the same checks (a disk image hidden inside the guest data would
    surface here);
11. disk_format, virtual_size and size are set, the original format is kept
    in the ``img_original_disk_format`` property, and the staged original is
    removed; the output is what Glance then writes to the stores.

On failure the revert removes partial output, puts the original disk_format
back, marks every requested store failed and leaves the image either
``uploading`` with its staged data kept (glance-direct, when retrying can
help: a limit, the configuration, qemu-img failing or timing out, no space)
so ``glance image-import --import-method glance-direct`` retries without a
new upload, or ``queued`` with the staged data removed (the image's content
was refused, or it came by web-download, whose own revert removes it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from oslo_config import cfg
from oslo_utils import units
from taskflow.patterns import linear_flow as lf
from taskflow import task

from glance_imgplugins import exception
from glance_imgplugins import inspection
from glance_imgplugins import qemu_img
from glance_imgplugins.plugins import base

LOG = logging.getLogger(__name__)

GROUP = 'format_conversion'
PLUGIN = 'format_conversion'

#: Image property recording the disk_format the image was imported in.
ORIGINAL_FORMAT_PROPERTY = 'img_original_disk_format'

OUTPUT_FORMATS = ('raw', 'qcow2')
INPUT_FORMATS = ('raw', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi', 'iso')

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
]

_REGISTRATION_ERROR = base.register_opts(cfg.CONF, GROUP, conversion_opts)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, list(conversion_opts))]


@dataclasses.dataclass(frozen=True)
class Settings:
    output_format: str
    allowed_input_formats: tuple[str, ...]
    max_virtual_size: int
    info_limits: qemu_img.Limits
    convert_limits: qemu_img.Limits
    preserve_iso: bool
    progress_interval: float
    vmdk_allowed_types: tuple[str, ...]
    gpt_nonfatal: frozenset[str]


def _glance_image_format(conf: cfg.ConfigOpts) -> tuple[tuple[str, ...],
                                                        frozenset[str]]:
    """Glance's own [image_format] policy, which this plugin honours too."""
    try:
        group = conf.image_format
        return (tuple(group.vmdk_allowed_types),
                frozenset(group.gpt_safety_checks_nonfatal))
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return inspection.DEFAULT_VMDK_ALLOWED_TYPES, frozenset()


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    if _REGISTRATION_ERROR is not None:
        raise exception.ConfigError(reason=str(_REGISTRATION_ERROR))
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
        problems.append('[%s] allowed_input_formats is empty: every import '
                        'would be refused' % GROUP)
    output_format = group.output_format
    if output_format not in OUTPUT_FORMATS:
        problems.append('[%s] output_format %r is not one of %s' % (
            GROUP, output_format, ', '.join(OUTPUT_FORMATS)))
    if problems:
        raise exception.ConfigError(reason='; '.join(problems))
    vmdk_allowed, gpt_nonfatal = _glance_image_format(conf)
    address_space = group.qemu_img_address_space
    return Settings(
        output_format=output_format,
        allowed_input_formats=allowed,
        max_virtual_size=group.max_virtual_size,
        info_limits=qemu_img.Limits(address_space=address_space,
                                    cpu_time=group.qemu_img_info_cpu_time,
                                    timeout=group.qemu_img_info_timeout),
        convert_limits=qemu_img.Limits(address_space=address_space,
                                       cpu_time=group.convert_cpu_time,
                                       timeout=group.convert_timeout),
        preserve_iso=group.preserve_iso,
        progress_interval=group.progress_interval,
        vmdk_allowed_types=vmdk_allowed,
        gpt_nonfatal=gpt_nonfatal,
    )


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    return base.check_options(conf, GROUP, conversion_opts, load_settings)


# --- the checks, as plain functions of an inspection result -----------------

def fatal_failures(result: inspection.InspectionResult,
                   gpt_nonfatal: frozenset[str]) -> dict[str, str]:
    """The failures that refuse the image (Glance's GPT leniency applied)."""
    failures = dict(result.failures)
    if result.inspector_name == 'gpt':
        for name in gpt_nonfatal:
            failures.pop(name, None)
    return failures


def refuse_unsafe(result: inspection.InspectionResult, declared: str,
                  gpt_nonfatal: frozenset[str]) -> None:
    failures = fatal_failures(result, gpt_nonfatal)
    if not failures:
        return
    if result.format == 'unknown':
        # The check's name first, as in every refusal.
        raise exception.UnknownFormat(reason=', '.join(
            '%s (%s)' % kv for kv in sorted(failures.items())))
    summary = ', '.join('%s (%s)' % kv for kv in sorted(failures.items()))
    raise exception.UnsafeImage(format=result.format, checks=summary)


def estimate_output_bytes(result: inspection.InspectionResult,
                          output_format: str) -> int:
    """Bytes the converted output will occupy on the staging filesystem.

    qemu-img writes only the guest data it reads (zeros become holes in a raw
    output, unallocated clusters in a qcow2 one), so the output holds at most
    the data the source holds, never more than the virtual size:

    * an uncompressed source stores every guest byte at least once, so its
      allocated size (``st_blocks``) bounds the data;
    * a compressed source (compressed qcow2 clusters, streamOptimized vmdk)
      can expand without a useful bound, and when the qcow2 cluster scan
      could not tell (tables beyond the inspection budget) compression is
      assumed: the estimate is then the virtual size;
    * a qcow2 output adds its metadata: 8 bytes of L2 table per 64 KiB
      cluster, refcounts, header: under 0.02% of the virtual size plus
      1 MiB.
    """
    virtual = max(result.virtual_size, 0)
    compressed = result.facts.get('compressed')
    if compressed is None and result.format in ('qcow2', 'vmdk'):
        compressed = result.facts.get('vmdk_create_type') != 'monolithicSparse'
    data = virtual if compressed else min(virtual, result.allocated_size)
    if output_format == 'qcow2':
        data += virtual // 4096 + units.Mi
    return data


def free_bytes(path: str) -> int:
    st = os.statvfs(os.path.dirname(path) or '.')
    return st.f_bavail * st.f_frsize


def _remove(path: str | None) -> None:
    if not path:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _qemu_source_format(disk_format: str) -> str:
    # An ISO converted anyway (preserve_iso False) is read as plain bytes.
    return 'raw' if disk_format == 'iso' else disk_format


def _data_file(info: Any) -> Any:
    spec = getattr(info, 'format_specific', None) or {}
    data = spec.get('data') if isinstance(spec, dict) else None
    return data.get('data-file') if isinstance(data, dict) else None


class _ConvertImage(task.Task):
    """Check, convert and re-check the staged image (see module doc)."""

    default_provides = 'file_path'

    def __init__(self, task_id: str, task_type: str, action_wrapper: Any,
                 stores: list[str | None], import_method: str | None,
                 task_repo: Any, config: base.DeferredConfig) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.action_wrapper = action_wrapper
        self.stores = list(stores or [])
        self.import_method = import_method
        self.task_repo = task_repo
        self.config = config
        # Set by execute, read by revert (same process, one import).
        self._dest_path: str | None = None
        self._original_format: str | None = None
        self._recorded_original = False
        super().__init__(
            name='%s-ImgPlugins-FormatConversion-%s' % (task_type, task_id))

    # -- execute --------------------------------------------------------------

    def execute(self, file_path: str) -> str:
        image_id = getattr(self.action_wrapper, 'image_id', None)
        with base.task_edge(PLUGIN, image_id):
            return self._execute(file_path, image_id)

    def _execute(self, file_path: str, image_id: str | None) -> str:
        settings: Settings = self.config.value()
        src = base.staged_path(file_path)
        image = base.read_image(self.action_wrapper)
        declared = image.disk_format or ''
        self._original_format = declared

        if declared not in settings.allowed_input_formats:
            raise exception.FormatNotAllowed(
                format=declared or 'none',
                allowed=', '.join(settings.allowed_input_formats))

        result = inspection.inspect_file(src, settings.vmdk_allowed_types)
        refuse_unsafe(result, declared, settings.gpt_nonfatal)
        if result.format != declared:
            raise exception.FormatMismatch(declared=declared,
                                           detected=result.format)
        if declared == 'iso' and settings.preserve_iso:
            LOG.info('%s: image %s is an ISO: left as it is', PLUGIN,
                     image_id)
            self._set_attributes(virtual_size=result.file_size)
            return file_path

        info = qemu_img.info(src, _qemu_source_format(declared),
                             settings.info_limits)
        expected = qemu_img.qemu_format(_qemu_source_format(declared))
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

        target = settings.output_format
        if declared == target:
            LOG.info('%s: image %s is already %s: not converted', PLUGIN,
                     image_id, target)
            self._set_attributes(virtual_size=virtual_size)
            return file_path

        dest = '%s.%s' % (src, target)
        needed = estimate_output_bytes(result, target)
        free = free_bytes(dest)
        if needed > free:
            raise exception.InsufficientSpace(
                path=os.path.dirname(dest), needed=needed, free=free)

        self._dest_path = dest
        _remove(dest)  # residue of an earlier, killed attempt
        message = base.TaskMessage(self.task_repo, self.task_id,
                                   settings.progress_interval)
        label = 'Converting image from %s to %s' % (declared, target)
        try:
            with base.PercentMessage(message, label,
                                     settings.progress_interval) as shown:
                qemu_img.convert(src, _qemu_source_format(declared), dest,
                                 target, settings.convert_limits,
                                 progress=shown.progress)
                shown.done()
        except BaseException:
            _remove(dest)
            raise

        out = inspection.inspect_file(dest, settings.vmdk_allowed_types)
        failures = fatal_failures(out, settings.gpt_nonfatal)
        # A raw copy of an ISO is still an ISO (preserve_iso False).
        accepted = {target, 'iso'} if declared == 'iso' else {target}
        if out.format not in accepted:
            failures['output_format'] = (
                'the converted data is detected as %s, not %s'
                % (out.format, target))
        if failures:
            _remove(dest)
            raise exception.UnsafeImage(
                format=declared,
                checks=', '.join('%s (%s)' % kv
                                 for kv in sorted(failures.items())))

        size = os.stat(dest).st_size
        with self.action_wrapper as action:
            action.set_image_attribute(disk_format=target,
                                       virtual_size=out.virtual_size,
                                       size=size)
            action.set_image_extra_properties(
                {ORIGINAL_FORMAT_PROPERTY: declared})
        self._recorded_original = True
        LOG.info('%s: image %s converted from %s to %s: %d bytes, %d '
                 'allocated', PLUGIN, image_id, declared, target, size,
                 out.allocated_size)
        # The stores are written from the output; the original is no longer
        # needed (and Glance deletes only the path we return).
        _remove(src)
        return 'file://' + dest

    def _set_attributes(self, **attrs: Any) -> None:
        with self.action_wrapper as action:
            action.set_image_attribute(**attrs)

    # -- revert ---------------------------------------------------------------

    def revert(self, result: Any, file_path: str | None = None,
               **kwargs: Any) -> None:
        try:
            self._revert(result, file_path)
        except Exception:
            # A raising revert would turn the user's reason into "Internal
            # Error"; log and let the rest of the flow revert.
            LOG.exception('%s: revert of task %s failed', PLUGIN,
                          self.task_id)

    def _revert(self, result: Any, file_path: str | None) -> None:
        src = base.staged_path(file_path) if file_path else None
        own_failure = not isinstance(result, str)
        cause = base.failure_cause(result)
        # Our output is of no use any more: a later task failed, or we did.
        _remove(self._dest_path)
        if own_failure and base.is_content_refusal(cause):
            # Retrying cannot help; keeping it would block a new upload.
            _remove(src)
        staged_kept = src is not None and os.path.exists(src)
        retry = staged_kept and self.import_method == 'glance-direct'

        with self.action_wrapper as action:
            restore: dict[str, Any] = {}
            if (self._original_format and
                    action.image_disk_format != self._original_format):
                restore['disk_format'] = self._original_format
            if retry and src:
                restore['size'] = os.stat(src).st_size
            base.fail_import(action, self.stores,
                             status=base.revert_status(self.import_method,
                                                       retry),
                             restore=restore)
            if self._recorded_original:
                action.pop_extra_property(ORIGINAL_FORMAT_PROPERTY)
        LOG.info('%s: image %s reverted (%s); staged data %s', PLUGIN,
                 self.action_wrapper.image_id,
                 'this task failed' if own_failure else 'a later task failed',
                 'kept for a glance-direct retry' if retry else
                 ('kept' if staged_kept else 'removed'))


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (a bad option fails the task)."""
    task_id = str(kwargs.get('task_id'))
    task_type = str(kwargs.get('task_type'))
    import_req = kwargs.get('import_req') or {}
    try:
        import_method = import_req['method']['name']
    except (KeyError, TypeError):
        import_method = None
    config = base.DeferredConfig.load(lambda: load_settings(cfg.CONF))
    return lf.Flow(task_type).add(
        _ConvertImage(task_id, task_type, kwargs.get('action_wrapper'),
                      kwargs.get('backend') or [], import_method,
                      kwargs.get('task_repo'), config))
