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
"""

from __future__ import annotations

import dataclasses
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from taskflow.patterns import linear_flow as lf

from glance_imgplugins import exception
from glance_imgplugins import inspection
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
]


@dataclasses.dataclass(frozen=True)
class Settings:
    override_user_properties: bool
    property_families: tuple[str, ...]
    vmdk_allowed_types: tuple[str, ...]


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
    return Settings(override_user_properties=group.override_user_properties,
                    property_families=tuple(families),
                    vmdk_allowed_types=_vmdk_allowed_types(conf))


SPEC = base.PluginSpec(name=PLUGIN, group=GROUP, opts=introspection_opts,
                       loader=load_settings)
SPEC.register(cfg.CONF)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return SPEC.list_opts()


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    return SPEC.check_config(conf)


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
        if not wanted:
            return changes
        with self.request.action_wrapper as action:
            existing = action.image_extra_properties
            keep = {k for k in wanted
                    if k in existing and existing[k] != wanted[k]
                    and not settings.override_user_properties}
            for key in sorted(keep):
                LOG.info('%s: image %s keeps %s=%s (image says %s)', PLUGIN,
                         image_id, key, existing[key], wanted[key])
            changes.apply(action, {k: v for k, v in wanted.items()
                                   if k not in keep})
        return changes


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (a bad option fails the task)."""
    request = base.ImportRequest.from_kwargs(kwargs)
    return lf.Flow(request.task_type).add(IntrospectImage(request))
