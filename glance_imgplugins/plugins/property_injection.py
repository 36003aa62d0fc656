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

"""``property_injection``: set, default, remove or forbid properties by rule.

The rules (``[property_injection] rules_file``, YAML or JSON) and what they
mean live in :mod:`glance_imgplugins.injection_rules`; this module is the
Glance side: options, the taskflow task, and the config check.

List the plugin *after* ``image_introspection`` and ``format_conversion`` in
``[image_import_opts] image_import_plugins`` so rules see the final
disk_format and the detected facts.

Without a ``rules_file``, Glance's own ``[inject_metadata_properties]
inject`` applies exactly as under the in-tree ``inject_image_metadata``
plugin (skipped for its ``ignore_user_roles``): switching is one word in
``image_import_plugins``.

What the user sent is read in ``get_flow()``, before any plugin runs: that
snapshot is how rules tell the user's values from an earlier plugin's facts
and what the original disk_format was.

The rules file is read on every import (no restart needed after an edit).
A broken file fails the import with the parse error and its line, instead
of letting Glance skip the plugin: ``get_flow()`` never raises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from oslo_config import cfg
from oslo_log import log as logging
from taskflow.patterns import linear_flow as lf

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
                help="""
Also apply Glance's own ``[inject_metadata_properties]`` settings.

When enabled, ``[inject_metadata_properties] inject`` becomes a rule that
sets those properties, placed before the rules of ``rules_file`` (which may
therefore override them), skipped for
``[inject_metadata_properties] ignore_user_roles``. This lets operators move
from the ``inject_image_metadata`` plugin without rewriting their
configuration.

Possible values:
    * Unset (default): Glance's inject settings apply when ``rules_file``
      is not set, so moving from ``inject_image_metadata`` is one word in
      ``image_import_plugins``
    * True: Glance's inject settings apply as well as ``rules_file``
    * False: only ``rules_file`` applies

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


def _upstream_opts() -> list[cfg.Opt]:
    try:
        # Glance's module registers its options on cfg.CONF when imported;
        # using the very same Opt objects makes registering them again (on
        # any ConfigOpts) a no-op instead of a DuplicateOptError.
        from glance.async_.flows.plugins import inject_image_metadata
        return list(inject_image_metadata.inject_metadata_opts)
    except Exception:  # noqa: BLE001 - Glance absent or broken: use copies
        return list(_UPSTREAM_FALLBACK_OPTS)


def _register_upstream(conf: cfg.ConfigOpts) -> None:
    for opt in _upstream_opts():
        try:
            conf.register_opt(opt, group=UPSTREAM_GROUP)
        except cfg.DuplicateOptError:
            # Registered already with another definition (another Glance
            # version): reading the value still works.
            pass


@dataclasses.dataclass(frozen=True)
class Settings:
    rules: rules_mod.RuleSet
    ignore_user_roles: frozenset[str]
    compat: bool
    compat_why: str


def _roles(values: Any) -> frozenset[str]:
    return frozenset(r.strip() for r in values or () if r.strip())


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    """The rules and global ignore roles configured in ``conf``.

    :raises RulesError: the rules file cannot be read or is invalid.
    :raises ConfigError: an option is invalid.
    """
    group = conf[GROUP]
    ignore = _roles(group.ignore_user_roles)
    _register_upstream(conf)
    try:
        upstream = conf[UPSTREAM_GROUP]
        inject = dict(upstream.inject or {})
        upstream_ignore = _roles(upstream.ignore_user_roles)
    except (cfg.Error, ValueError) as exc:
        raise exception.ConfigError(reason='[%s] %s' % (
            UPSTREAM_GROUP, base._option_reason(exc))) from None
    wanted = group.inject_metadata_compat
    if wanted is None:
        compat = bool(inject) and not group.rules_file
        why = ('rules_file is not set' if compat else
               'rules_file is set' if group.rules_file else
               '[%s] inject is empty' % UPSTREAM_GROUP)
    else:
        compat = bool(wanted)
        why = 'inject_metadata_compat = %s' % compat
    ruleset = rules_mod.RuleSet(source='(no rules)')
    if compat:
        rule = rules_mod.literal_rule('[%s] inject' % UPSTREAM_GROUP, inject,
                                      ignore_roles=upstream_ignore)
        ruleset = rules_mod.RuleSet((rule,), '[%s]' % UPSTREAM_GROUP)
        location = conf.get_location('ignore_user_roles', GROUP)
        if location is None or location.location == cfg.Locations.opt_default:
            # Switching plugins must not change who is skipped.
            ignore = upstream_ignore
    if group.rules_file:
        ruleset = ruleset + rules_mod.load_rules(group.rules_file)
    return Settings(rules=ruleset, ignore_user_roles=ignore, compat=compat,
                    compat_why=why)


def describe_settings(conf: cfg.ConfigOpts) -> list[str]:
    """Which rules are in effect, for ``check-config``."""
    try:
        settings = load_settings(conf)
    except exception.GlanceImgPluginsError:
        return []
    lines = []
    if settings.compat:
        lines.append('[%s] inject applies (%s)' % (UPSTREAM_GROUP,
                                                   settings.compat_why))
    else:
        lines.append('[%s] inject is not applied (%s)' % (
            UPSTREAM_GROUP, settings.compat_why))
    names = [r.name for r in settings.rules.rules]
    lines.append('%d rule(s) in effect: %s' % (
        len(names), ', '.join(names) or 'none: the plugin changes nothing'))
    lines.append('skipped for roles: %s' % (
        ', '.join(sorted(settings.ignore_user_roles)) or 'none'))
    return lines


SPEC = base.PluginSpec(name=PLUGIN, group=GROUP,
                       opts=property_injection_opts, loader=load_settings,
                       describer=describe_settings)
SPEC.register(cfg.CONF)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return SPEC.list_opts()


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    problems = SPEC.check_config(conf)
    if not problems and not load_settings(conf).rules.rules:
        problems.append('[%s] rules_file is not set and [%s] inject is not '
                        'applied: the plugin would change nothing'
                        % (GROUP, UPSTREAM_GROUP))
    return problems


def describe_config(conf: cfg.ConfigOpts) -> list[str]:
    return SPEC.describe(conf)


@dataclasses.dataclass(frozen=True)
class UserSnapshot:
    """The image as the user left it, read before any plugin ran."""

    name: str | None
    disk_format: str | None
    container_format: str | None
    properties: Mapping[str, str]


def _snapshot(request: base.ImportRequest) -> UserSnapshot | None:
    try:
        image = request.image_repo.get(request.image_id)
        return UserSnapshot(
            name=image.name, disk_format=image.disk_format,
            container_format=image.container_format,
            properties=dict(image.extra_properties))
    except Exception:  # noqa: BLE001 - get_flow() must not raise
        LOG.warning('%s: image %s: cannot read it through the image repo; '
                    'trying the import wrapper', PLUGIN, request.image_id,
                    exc_info=True)
    try:
        snap = base.read_image(request.action_wrapper)
        return UserSnapshot(name=None, disk_format=snap.disk_format,
                            container_format=snap.container_format,
                            properties=dict(snap.extra_properties))
    except Exception:  # noqa: BLE001 - get_flow() must not raise
        LOG.warning('%s: image %s: cannot read what the user sent; rules '
                    'will treat every property as sent by the user',
                    PLUGIN, request.image_id, exc_info=True)
        return None


class InjectProperties(base.PluginTask):
    """Apply the rules; return what changed so ``revert`` can undo it."""

    spec = SPEC
    label = 'PropertyInjection'

    def __init__(self, request: base.ImportRequest,
                 snapshot: UserSnapshot | None,
                 conf: cfg.ConfigOpts | None = None) -> None:
        super().__init__(request, conf)
        self.snapshot = snapshot

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
        ctx = self.request.context
        return rules_mod.ImportContext(
            project_id=getattr(ctx, 'project_id', None),
            user_id=getattr(ctx, 'user_id', None),
            roles=frozenset(getattr(ctx, 'roles', None) or ()),
            import_method=self.request.import_method,
            task_id=self.request.task_id,
            image_id=action.image_id,
            image_name=snap.name if snap is not None else None,
            disk_format=action.image_disk_format,
            original_disk_format=original,
            container_format=action.image_container_format,
            stores=self.request.stores,
            user_properties=user_props,
            properties=props)

    def run(self, file_path: str | None,
            settings: Settings) -> base.PropertyChanges:
        changes = base.PropertyChanges()
        with self.request.action_wrapper as action:
            outcome = rules_mod.evaluate(settings.rules,
                                         self._context(action),
                                         settings.ignore_user_roles)
            changes.apply(action, dict(outcome.set), outcome.remove)
        if outcome.skipped_reason:
            LOG.info('%s: image %s: rules skipped: %s', PLUGIN,
                     self.request.image_id, outcome.skipped_reason)
        else:
            LOG.info('%s: image %s: rules applied: %s', PLUGIN,
                     self.request.image_id,
                     ', '.join(outcome.applied) or 'none')
        return changes


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (configuration fails the task)."""
    request = base.ImportRequest.from_kwargs(kwargs)
    return lf.Flow(request.task_type).add(
        InjectProperties(request, _snapshot(request)))
