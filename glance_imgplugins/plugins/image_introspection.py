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
import logging
from typing import Any

from oslo_config import cfg
from taskflow.patterns import linear_flow as lf
from taskflow import task

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

_REGISTRATION_ERROR = base.register_opts(cfg.CONF, GROUP, introspection_opts)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, list(introspection_opts))]


@dataclasses.dataclass(frozen=True)
class Settings:
    override_user_properties: bool
    property_families: tuple[str, ...]


def _problems(families: list[str]) -> list[str]:
    unknown = sorted(set(families) - set(inspection.PROPERTY_FAMILIES))
    if unknown:
        return ['[%s] property_families: unknown famil%s %s (known: %s)' % (
            GROUP, 'y' if len(unknown) == 1 else 'ies', ', '.join(unknown),
            ', '.join(inspection.PROPERTY_FAMILIES))]
    return []


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    if _REGISTRATION_ERROR is not None:
        raise exception.ConfigError(reason=str(_REGISTRATION_ERROR))
    group = conf[GROUP]
    families = [f.strip() for f in group.property_families if f.strip()]
    problems = _problems(families)
    if problems:
        raise exception.ConfigError(reason='; '.join(problems))
    return Settings(override_user_properties=group.override_user_properties,
                    property_families=tuple(families))


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    return base.check_options(conf, GROUP, introspection_opts, load_settings)


def _vmdk_allowed_types(conf: cfg.ConfigOpts) -> tuple[str, ...]:
    try:
        return tuple(conf.image_format.vmdk_allowed_types)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return inspection.DEFAULT_VMDK_ALLOWED_TYPES


class _Introspect(task.Task):
    """Set the properties inspection implies; return what changed.

    The return value (``{'set': {key: value}, 'replaced': {key: old}}``) is
    what taskflow hands to ``revert`` when a later task fails.
    """

    def __init__(self, task_id: str, task_type: str, action_wrapper: Any,
                 config: base.DeferredConfig,
                 vmdk_allowed_types: tuple[str, ...]) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.action_wrapper = action_wrapper
        self.config = config
        self.vmdk_allowed_types = vmdk_allowed_types
        super().__init__(
            name='%s-ImgPlugins-ImageIntrospection-%s' % (task_type, task_id))

    def execute(self, file_path: str) -> dict[str, dict[str, str]]:
        image_id = getattr(self.action_wrapper, 'image_id', None)
        with base.task_edge(PLUGIN, image_id):
            settings: Settings = self.config.value()
            path = base.staged_path(file_path)
            try:
                result = inspection.inspect_file(path,
                                                 self.vmdk_allowed_types)
            except OSError as exc:
                # Nothing to say about a file we cannot read; the plugins
                # that need the data will fail on it with their own reason.
                LOG.warning('%s: image %s: cannot inspect %s: %s',
                            PLUGIN, image_id, path, exc)
                return {'set': {}, 'replaced': {}}
            wanted = {k: v for k, v in result.properties.items()
                      if result.property_families.get(k)
                      in settings.property_families}
            LOG.info('%s: image %s is %s (%s); properties %s',
                     PLUGIN, image_id, result.format,
                     'safe' if result.safe else
                     'unsafe: ' + result.failure_summary(), wanted)
            if not wanted:
                return {'set': {}, 'replaced': {}}
            changed: dict[str, str] = {}
            replaced: dict[str, str] = {}
            with self.action_wrapper as action:
                existing = action.image_extra_properties
                for key, value in wanted.items():
                    if key in existing:
                        if existing[key] == value:
                            continue
                        if not settings.override_user_properties:
                            LOG.info('%s: image %s keeps %s=%s (image says '
                                     '%s)', PLUGIN, image_id, key,
                                     existing[key], value)
                            continue
                        replaced[key] = existing[key]
                    changed[key] = value
                if changed:
                    action.set_image_extra_properties(changed)
            return {'set': changed, 'replaced': replaced}

    def revert(self, result: Any, **kwargs: Any) -> None:
        if not isinstance(result, dict) or not result.get('set'):
            return
        # Undo only what is still ours: a value someone changed since is
        # theirs now.
        with self.action_wrapper as action:
            current = action.image_extra_properties
            for key, value in result['set'].items():
                if current.get(key) != value:
                    continue
                if key in result.get('replaced', {}):
                    action.set_image_extra_properties(
                        {key: result['replaced'][key]})
                else:
                    action.pop_extra_property(key)


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (a bad option fails the task)."""
    task_id = str(kwargs.get('task_id'))
    task_type = str(kwargs.get('task_type'))
    action_wrapper = kwargs.get('action_wrapper')
    config = base.DeferredConfig.load(lambda: load_settings(cfg.CONF))
    return lf.Flow(task_type).add(
        _Introspect(task_id, task_type, action_wrapper, config,
                    _vmdk_allowed_types(cfg.CONF)))
