"""``property_injection``: set, default, remove or forbid properties by rule.

The rules (``[property_injection] rules_file``, YAML or JSON) and what they
mean live in :mod:`glance_imgplugins.injection_rules`; this module is the
Glance side: options, the taskflow task, and ``check_config`` for
``glance-imgplugins check-config``.

List the plugin *after* ``image_introspection`` and ``format_conversion`` in
``[image_import_opts] image_import_plugins`` so rules see the final
disk_format and the detected facts.

What the user sent is read in ``get_flow()``, before any plugin runs: that
snapshot is how rules tell the user's values from an earlier plugin's facts
and what the original disk_format was.

The rules file is read on every import (no restart needed after an edit).
A broken file fails the import with the parse error and its line, instead
of letting Glance skip the plugin: ``get_flow()`` never raises.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from oslo_config import cfg
from taskflow.patterns import linear_flow as lf
from taskflow import task
from taskflow.types import failure as tf_failure

from glance_imgplugins import exception
from glance_imgplugins import injection_rules as rules_mod
from glance_imgplugins.plugins import base

LOG = logging.getLogger(__name__)

GROUP = 'property_injection'
PLUGIN = 'property_injection'
UPSTREAM_GROUP = 'inject_metadata_properties'
#: Where format_conversion records the format it converted from; used only
#: when the snapshot taken in get_flow() is missing.
CONVERSION_ORIGINAL_FORMAT = 'img_original_disk_format'

property_injection_opts = [
    cfg.StrOpt('rules_file',
               help="""
Path of the property injection rules file (YAML, or JSON when the name ends
in ``.json``).

The file is read on every import, so edits apply without a restart. A file
that cannot be read or parsed fails the import with the reason and line;
``glance-imgplugins check-config`` reports the same.

Possible values:
    * An absolute path to a rules file (see the documented example
      ``etc/property-injection-rules.yaml.example``)
    * Unset: only the compatibility rule (if enabled) applies

Related options:
    * ignore_user_roles
    * inject_metadata_compat
"""),
    cfg.ListOpt('ignore_user_roles',
                default=['admin'],
                help="""
Roles whose imports skip every rule (no injection, nothing forbidden).

Rules can also name their own ``ignore_roles``.

Possible values:
    * A list of role names, for example: admin,service
    * An empty list: rules apply to everybody

Related options:
    * inject_metadata_compat (when enabled and this option is not set,
      ``[inject_metadata_properties] ignore_user_roles`` is used instead)
"""),
    cfg.BoolOpt('inject_metadata_compat',
                default=False,
                help="""
Also apply Glance's own ``[inject_metadata_properties]`` settings.

When enabled, ``[inject_metadata_properties] inject`` becomes a rule that
sets those properties, placed before the rules of ``rules_file`` (which may
therefore override them), skipped for
``[inject_metadata_properties] ignore_user_roles``. This lets operators move
from the ``inject_image_metadata`` plugin without rewriting their
configuration.

Possible values:
    * False: only ``rules_file`` applies (default)
    * True: Glance's inject settings apply as well

Related options:
    * rules_file
    * ignore_user_roles
"""),
]

# Copies of Glance's own option definitions, used only when Glance's plugin
# module cannot be imported (check-config outside a Glance install).
_UPSTREAM_FALLBACK_OPTS = [
    cfg.ListOpt('ignore_user_roles', default='admin',
                help='Roles skipping metadata injection (Glance option).'),
    cfg.DictOpt('inject', default={},
                help='Properties injected into images (Glance option).'),
]

_REGISTRATION_ERROR = base.register_opts(cfg.CONF, GROUP,
                                         property_injection_opts)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, list(property_injection_opts))]


def _upstream_opts() -> list[cfg.Opt]:
    try:
        # Glance's module registers its options on cfg.CONF when imported;
        # using the very same Opt objects makes registering them again (on
        # any ConfigOpts) a no-op instead of a DuplicateOptError.
        from glance.async_.flows.plugins import inject_image_metadata
        return list(inject_image_metadata.inject_metadata_opts)
    except Exception:  # noqa: BLE001 - Glance absent or broken: use copies
        return list(_UPSTREAM_FALLBACK_OPTS)


def _register(conf: cfg.ConfigOpts, group: str,
              opts: list[cfg.Opt]) -> None:
    for opt in opts:
        try:
            conf.register_opt(opt, group=group)
        except cfg.DuplicateOptError:
            # Registered already with another definition (another Glance
            # version): reading the value still works.
            pass


@dataclasses.dataclass(frozen=True)
class Settings:
    rules: rules_mod.RuleSet
    ignore_user_roles: frozenset[str]


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    """The rules and global ignore roles configured in ``conf``.

    :raises RulesError: the rules file cannot be read or is invalid.
    :raises ConfigError: an option is invalid.
    """
    if _REGISTRATION_ERROR is not None and conf is cfg.CONF:
        raise exception.ConfigError(reason=str(_REGISTRATION_ERROR))
    _register(conf, GROUP, property_injection_opts)
    group = conf[GROUP]
    ignore = frozenset(r.strip() for r in group.ignore_user_roles
                       if r.strip())
    ruleset = rules_mod.RuleSet(source='(no rules)')
    if group.inject_metadata_compat:
        _register(conf, UPSTREAM_GROUP, _upstream_opts())
        upstream = conf[UPSTREAM_GROUP]
        upstream_ignore = frozenset(r.strip() for r in
                                    upstream.ignore_user_roles if r.strip())
        compat = rules_mod.literal_rule(
            '[%s] inject' % UPSTREAM_GROUP, dict(upstream.inject or {}),
            ignore_roles=upstream_ignore)
        ruleset = rules_mod.RuleSet((compat,), '[%s]' % UPSTREAM_GROUP)
        location = conf.get_location('ignore_user_roles', GROUP)
        if location is None or location.location == cfg.Locations.opt_default:
            # Switching plugins must not change who is skipped.
            ignore = upstream_ignore
    if group.rules_file:
        ruleset = ruleset + rules_mod.load_rules(group.rules_file)
    return Settings(rules=ruleset, ignore_user_roles=ignore)


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    try:
        _register(conf, GROUP, property_injection_opts)
        group = conf[GROUP]
        if not group.rules_file and not group.inject_metadata_compat:
            return ['[%s] rules_file is not set and inject_metadata_compat '
                    'is off: the plugin would change nothing' % GROUP]
        load_settings(conf)
    except exception.GlanceImgPluginsError as exc:
        return [str(exc)]
    except (cfg.Error, ValueError) as exc:
        return ['[%s] %s' % (GROUP, exc)]
    return []


@dataclasses.dataclass(frozen=True)
class UserSnapshot:
    """The image as the user left it, read before any plugin ran."""

    name: str | None
    disk_format: str | None
    container_format: str | None
    properties: Mapping[str, str]


def _snapshot(image_repo: Any, image_id: Any,
              action_wrapper: Any) -> UserSnapshot | None:
    try:
        image = image_repo.get(image_id)
        return UserSnapshot(
            name=image.name, disk_format=image.disk_format,
            container_format=image.container_format,
            properties=dict(image.extra_properties))
    except Exception:  # noqa: BLE001 - get_flow() must not raise
        LOG.warning('%s: image %s: cannot read it through the image repo; '
                    'trying the import wrapper', PLUGIN, image_id,
                    exc_info=True)
    try:
        snap = base.read_image(action_wrapper)
        return UserSnapshot(name=None, disk_format=snap.disk_format,
                            container_format=snap.container_format,
                            properties=dict(snap.extra_properties))
    except Exception:  # noqa: BLE001 - get_flow() must not raise
        LOG.warning('%s: image %s: cannot read what the user sent; rules '
                    'will treat every property as sent by the user',
                    PLUGIN, image_id, exc_info=True)
        return None


class _InjectProperties(task.Task):
    """Apply the rules; return what changed so ``revert`` can undo it."""

    def __init__(self, task_id: str, task_type: str, context: Any,
                 action_wrapper: Any, import_method: str | None,
                 stores: list[str | None], snapshot: UserSnapshot | None,
                 conf: cfg.ConfigOpts) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.context = context
        self.action_wrapper = action_wrapper
        self.import_method = import_method
        self.stores = stores
        self.snapshot = snapshot
        self.conf = conf
        super().__init__(
            name='%s-ImgPlugins-PropertyInjection-%s' % (task_type, task_id))

    def _context(self, action: Any) -> rules_mod.ImportContext:
        props = action.image_extra_properties
        snap = self.snapshot
        if snap is not None:
            original = snap.disk_format
            user_props = snap.properties
        else:
            user_props = props
            original = (props.get(CONVERSION_ORIGINAL_FORMAT)
                        or action.image_disk_format)
        ctx = self.context
        return rules_mod.ImportContext(
            project_id=getattr(ctx, 'project_id', None),
            user_id=getattr(ctx, 'user_id', None),
            roles=frozenset(getattr(ctx, 'roles', None) or ()),
            import_method=self.import_method,
            task_id=self.task_id,
            image_id=action.image_id,
            image_name=snap.name if snap is not None else None,
            disk_format=action.image_disk_format,
            original_disk_format=original,
            container_format=action.image_container_format,
            stores=tuple(s for s in self.stores if s),
            user_properties=user_props,
            properties=props)

    def execute(self) -> dict[str, Any]:
        image_id = getattr(self.action_wrapper, 'image_id', None)
        with base.task_edge(PLUGIN, image_id):
            settings = load_settings(self.conf)
            with self.action_wrapper as action:
                before = action.image_extra_properties
                outcome = rules_mod.evaluate(settings.rules,
                                             self._context(action),
                                             settings.ignore_user_roles)
                if outcome.set:
                    action.set_image_extra_properties(dict(outcome.set))
                for key in sorted(outcome.remove):
                    action.pop_extra_property(key)
            if outcome.skipped_reason:
                LOG.info('%s: image %s: rules skipped: %s', PLUGIN, image_id,
                         outcome.skipped_reason)
            else:
                LOG.info('%s: image %s: rules applied %s; set %s; removed %s',
                         PLUGIN, image_id, list(outcome.applied),
                         dict(outcome.set), sorted(outcome.remove))
            touched = set(outcome.set) | outcome.remove
            return {'set': dict(outcome.set),
                    'previous': {k: before.get(k) for k in sorted(touched)}}

    def revert(self, result: Any, **kwargs: Any) -> None:
        if isinstance(result, tf_failure.Failure):
            # This task failed: none of the stores was written. A
            # glance-direct import keeps its staged data, so the user can
            # fix the properties and import again; a download's own revert
            # sets the status (setting it here too made that revert fail).
            status = base.revert_status(
                self.import_method,
                retry=self.import_method == 'glance-direct')
            with self.action_wrapper as action:
                base.fail_import(action, self.stores, status=status)
            return
        if not isinstance(result, dict) or not result.get('previous'):
            return
        # A later task failed: put back what the user had, so a retry is
        # judged on the user's values, not on ours. Keys changed since by
        # someone else are theirs now.
        with self.action_wrapper as action:
            current = action.image_extra_properties
            for key, old in result['previous'].items():
                if current.get(key) != result['set'].get(key):
                    continue
                if old is None:
                    action.pop_extra_property(key)
                else:
                    action.set_image_extra_properties({key: old})


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (configuration fails the task)."""
    task_id = kwargs.get('task_id')
    task_type = kwargs.get('task_type') or 'api_image_import'
    action_wrapper = kwargs.get('action_wrapper')
    import_method: str | None = None
    try:
        import_method = kwargs['import_req']['method']['name']
    except (KeyError, TypeError):
        pass
    stores = list(kwargs.get('backend') or [None])
    snapshot = _snapshot(kwargs.get('image_repo'), kwargs.get('image_id'),
                         action_wrapper)
    return lf.Flow(task_type).add(
        _InjectProperties(str(task_id), task_type, kwargs.get('context'),
                          action_wrapper, import_method, stores, snapshot,
                          cfg.CONF))
