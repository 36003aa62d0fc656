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

"""``image_introspection``: set image properties from what the image says.

Runs on the staged original, before ``format_conversion`` (list it first in
``[image_import_opts] image_import_plugins``), and sets the facts
``glance_imgplugins.inspection`` finds as image properties: ``vmware_*``
for vmdk images, ``hw_disk_bus``/``hw_scsi_model`` where the vmdk adapter
names the bus for certain, ``hw_firmware_type=uefi`` for a GPT disk with an
EFI System Partition.

It refuses nothing (refusing is ``format_conversion``'s job) and never fails
an import because of the image: a hostile or unreadable file only means no
properties.  A property already on the image is treated as the user's and is
left alone unless ``[image_introspection] override_user_properties``.  If
the import fails later, the revert takes back what this task set, so a
retry on different data starts clean.

With ``guest_inspection`` (off by default) it also looks inside the guest
(``glance_imgplugins.guest``: libguestfs, read-only, under limits) and sets
``os_type``, ``os_distro``, ``os_version``, ``hw_architecture`` /
``architecture``, ``hw_firmware_type`` / ``hw_machine_type`` (an ESP with an
EFI loader), ``hw_qemu_guest_agent`` and ``img_cloud_init``.  A timeout or an
image without an OS is logged and noted in the task message, and the import
goes on, unless ``guest_inspection_required``.  Whenever it is enabled,
``img_guest_inspection`` records how it ended (``guest.OUTCOMES``: done,
timeout, no-os, failed, skipped), since Glance replaces the task message at
the end of a successful import.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from taskflow.patterns import linear_flow as lf

from glance_imgplugins import exception
from glance_imgplugins import guest
from glance_imgplugins import inspection
from glance_imgplugins import qemu_img
from glance_imgplugins.plugins import base

LOG = logging.getLogger(__name__)

GROUP = 'image_introspection'
PLUGIN = 'image_introspection'

introspection_opts = [
    cfg.BoolOpt('override_user_properties',
                default=False,
                help="""
Let introspection replace image properties that are already set.

By default a property already present on the image (set by the user when
creating it, or by a plugin that ran earlier) is kept, and introspection only
adds the ones that are missing.

Possible values:
    * False: never overwrite an existing property (default)
    * True: the value read from the image wins

Related options:
    * property_families
"""),
    cfg.ListOpt('property_families',
                default=list(inspection.PROPERTY_FAMILIES),
                help="""
Which families of properties introspection sets.

Possible values:
    * vmware: vmware_disktype, vmware_adaptertype, vmware_hw_version
      (vmdk images)
    * bus: hw_disk_bus and hw_scsi_model, where the vmdk adapter type
      names them for certain
    * firmware: hw_firmware_type=uefi for a GPT disk with an EFI System
      Partition
    * An empty list sets nothing (the plugin then only logs what it found)

Related options:
    * override_user_properties
"""),
    cfg.BoolOpt('guest_inspection',
                default=False,
                help="""
Look inside the guest with libguestfs and set what it finds.

Sets os_type, os_distro, os_version (libosinfo names), hw_architecture and
architecture, hw_firmware_type=uefi with hw_machine_type=q35 (an EFI System
Partition holding an EFI loader), hw_qemu_guest_agent=yes and
img_cloud_init=yes|no.  The libguestfs appliance (a small VM) reads the
staged image read-only; nothing is mounted on the host and no guest code
runs.  It costs about 25 seconds per image without KVM (TCG), a few with
KVM, and needs libguestfs-tools and python3-guestfs installed.

Possible values:
    * False: header facts only (default)
    * True: also inspect the guest of every image inspection finds safe

Related options:
    * guest_inspection_timeout
    * guest_inspection_memory
    * guest_inspection_accel
    * guest_inspection_required
    * override_user_properties
"""),
    cfg.IntOpt('guest_inspection_timeout',
               default=180, min=10, max=3600,
               help="""
Wall-clock seconds a guest inspection may take, appliance boot included.

Past it the appliance (worker and qemu) is killed; the import goes on
without guest facts and the task message says so (unless
guest_inspection_required).

Possible values:
    * 10 to 3600 seconds (default 180; TCG needs about 25 s per image on
      an idle core)

Related options:
    * guest_inspection
    * guest_inspection_required
"""),
    cfg.IntOpt('guest_inspection_memory',
               default=768, min=256, max=8192,
               help="""
Memory of the libguestfs appliance, in MiB.

The worker and its qemu also run under an address-space limit of this
plus 3 GiB (qemu maps the guest memory and, under TCG, a translation
cache).

Possible values:
    * 256 to 8192 MiB (default 768)

Related options:
    * guest_inspection
"""),
    cfg.StrOpt('guest_inspection_accel',
               default='auto', choices=guest.ACCELS,
               help="""
How the libguestfs appliance runs.

Possible values:
    * auto: KVM when /dev/kvm is usable, TCG otherwise; a KVM launch failure
      (e.g. nested KVM) switches to TCG for the life of the process; the
      choice is logged once (default)
    * kvm: always KVM
    * tcg: always TCG (software emulation)

Related options:
    * guest_inspection
    * guest_inspection_timeout
"""),
    cfg.BoolOpt('guest_inspection_required',
                default=False,
                help="""
Fail the import when guest inspection cannot give facts.

Possible values:
    * False: a timeout, an appliance that does not start or an image without
      a recognisable OS is logged and noted in the task message; the import
      goes on (default)
    * True: no OS found refuses the image (queued, staged data removed); a
      timeout or an appliance failure fails the import with the staged data
      kept for a retry (uploading)

Related options:
    * guest_inspection
    * guest_inspection_timeout
"""),
]


@dataclasses.dataclass(frozen=True)
class Settings:
    override_user_properties: bool
    property_families: tuple[str, ...]
    vmdk_allowed_types: tuple[str, ...]
    guest_inspection: bool = False
    guest_limits: guest.Limits = guest.Limits()
    guest_inspection_required: bool = False


def _python_interpreter(conf: cfg.ConfigOpts) -> str | None:
    # The prlimit wrapper and the worker need the venv's Python (under
    # uWSGI sys.executable is not one).
    try:
        value = conf.wsgi.python_interpreter
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return None
    return str(value) if value else None


def _vmdk_allowed_types(conf: cfg.ConfigOpts) -> tuple[str, ...]:
    try:
        return tuple(conf.image_format.vmdk_allowed_types)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return inspection.DEFAULT_VMDK_ALLOWED_TYPES


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    group = conf[GROUP]
    families = [f.strip() for f in group.property_families if f.strip()]
    unknown = sorted(set(families) - set(inspection.PROPERTY_FAMILIES))
    if unknown:
        raise exception.ConfigError(
            reason='[%s] property_families: unknown famil%s %s (known: %s)'
            % (GROUP, 'y' if len(unknown) == 1 else 'ies', ', '.join(unknown),
               ', '.join(inspection.PROPERTY_FAMILIES)))
    timeout = group.guest_inspection_timeout
    limits = guest.Limits(
        timeout=float(timeout), memory_mb=group.guest_inspection_memory,
        address_space=(group.guest_inspection_memory + 3072) << 20,
        # Two busy qemu threads at most for the whole wall-clock budget.
        cpu_time=2 * timeout, accel=group.guest_inspection_accel,
        python_exec=_python_interpreter(conf))
    return Settings(override_user_properties=group.override_user_properties,
                    property_families=tuple(families),
                    vmdk_allowed_types=_vmdk_allowed_types(conf),
                    guest_inspection=group.guest_inspection,
                    guest_limits=limits,
                    guest_inspection_required=(
                        group.guest_inspection_required))


def describe_settings(conf: cfg.ConfigOpts) -> list[str]:
    """Whether guest inspection runs and how, for ``check-config``."""
    settings = load_settings(conf)
    if not settings.guest_inspection:
        return ['guest inspection: off']
    limits = settings.guest_limits
    return ['guest inspection: on (accel %s, timeout %d s, appliance memory '
            '%d MiB, %s)' % (limits.accel, limits.timeout, limits.memory_mb,
                             'required' if settings.guest_inspection_required
                             else 'never fails an import')]


SPEC = base.PluginSpec(name=PLUGIN, group=GROUP, opts=introspection_opts,
                       loader=load_settings, describer=describe_settings)
SPEC.register(cfg.CONF)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return SPEC.list_opts()


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    problems = SPEC.check_config(conf)
    if not problems and conf[GROUP].guest_inspection:
        missing = guest.missing_parts()
        if missing:
            problems.append('[%s] guest_inspection: this host lacks %s'
                            % (GROUP, ', '.join(missing)))
    return problems


def describe_config(conf: cfg.ConfigOpts) -> list[str]:
    return SPEC.describe(conf)


class IntrospectImage(base.PluginTask):
    """Set the properties inspection implies; return what changed (undone
    by the revert when a later task fails)."""

    spec = SPEC
    label = 'ImageIntrospection'

    def run(self, file_path: str | None,
            settings: Settings) -> base.PropertyChanges:
        image_id = self.request.image_id
        changes = base.PropertyChanges()
        if not file_path:
            return changes
        path = base.staged_path(file_path)
        try:
            result = inspection.inspect_file(path, settings.vmdk_allowed_types)
        except (OSError, exception.InspectionInputError) as exc:
            # Nothing to say about a file we cannot read; the plugins that
            # need the data fail on it with their own reason.
            LOG.warning('%s: image %s: cannot inspect the staged data: %s',
                        PLUGIN, image_id, getattr(exc, 'strerror', exc))
            return changes
        wanted = result.properties_in(settings.property_families)
        LOG.info('%s: image %s is %s (%s); properties %s', PLUGIN, image_id,
                 result.format, 'safe' if result.safe else
                 'unsafe: ' + result.failure_summary(), wanted)
        ours: dict[str, str] = {}
        if settings.guest_inspection:
            # The guest's own facts are more specific than the headers'.
            props, outcome = self._guest(path, result, settings)
            wanted = {**wanted, **props}
            # How it ended, recorded on the image (the task message does
            # not survive a successful import): this plugin's own record,
            # never the user's to keep.
            ours[guest.OUTCOME_PROPERTY] = outcome
        if not wanted and not ours:
            return changes
        with self.request.action_wrapper as action:
            existing = action.image_extra_properties
            keep = {k for k in wanted
                    if k in existing and existing[k] != wanted[k]
                    and not settings.override_user_properties}
            for key in sorted(keep):
                LOG.info('%s: image %s keeps %s=%s (image says %s)', PLUGIN,
                         image_id, key, existing[key], wanted[key])
            changes.apply(action, {**{k: v for k, v in wanted.items()
                                      if k not in keep}, **ours})
        return changes

    def _guest(self, path: str, result: inspection.InspectionResult,
               settings: Settings) -> tuple[dict[str, str], str]:
        """The guest's properties and the outcome (one of
        ``guest.OUTCOMES``); no properties (logged, noted) when there are
        none and the operator does not require them."""
        image_id = self.request.image_id or 'the image'
        message = base.TaskMessage(self.request.task_repo,
                                   self.request.task_id)
        if not result.safe or result.format not in GUEST_FORMATS:
            # Never hand a hostile or unknown container to qemu: the
            # conversion refuses it with the reason.
            LOG.info('%s: image %s: no guest inspection of a %s image',
                     PLUGIN, image_id, result.format if result.safe
                     else 'unsafe')
            return {}, 'skipped'
        message.update('Inspecting the guest operating system (at most %d '
                       's)' % settings.guest_limits.timeout, force=True)
        try:
            facts = guest.inspect_guest(
                path, qemu_img.qemu_format(result.format),
                settings.guest_limits, name=image_id)
        except guest.GuestInspectionError as exc:
            LOG.warning('%s: image %s: %s', PLUGIN, image_id, exc)
            if settings.guest_inspection_required:
                # The contract's own branches: no OS is the content's
                # fault (queued, data removed), the rest can be retried.
                reason = str(exc)[:1].lower() + str(exc)[1:]
                if exc.refused:
                    raise exception.ContentRefused(reason=reason) from exc
                raise exception.Retryable(reason=reason) from exc
            message.update('%s; the import goes on without guest facts'
                           % exc, force=True)
            return {}, exc.outcome
        props = guest.guest_properties(facts)
        notes = guest.warnings(facts)
        LOG.info('%s: image %s: guest %s in %.1f s (%s); %s%s', PLUGIN,
                 image_id, facts.summary(), facts.elapsed, facts.accel,
                 props, ''.join('; ' + n for n in notes))
        message.update('Guest inspection: %s%s' % (
            facts.summary(), ''.join('; warning: ' + n for n in notes)),
            force=True)
        return props, 'done'


#: Formats guest inspection opens (what qemu reads without probing).
GUEST_FORMATS = frozenset({'raw', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi',
                           'iso'})


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (a bad option fails the task)."""
    request = base.ImportRequest.from_kwargs(kwargs)
    return lf.Flow(request.task_type).add(IntrospectImage(request))
