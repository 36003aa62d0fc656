"""``glance-imgplugins check-config``: what Glance would silently skip.

Glance only logs a plugin name it cannot load, or a plugin whose module
fails to import, and then imports the image without it.  A store driver that
cannot be loaded is likewise a log line.  This command reads the operator's
``glance-api.conf`` / ``glance-image-import.conf`` and reports every such
problem, plus what each enabled plugin finds wrong with its own options;
the exit status is non-zero when anything is wrong.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from importlib import metadata
from typing import Any, Callable, Iterable

from oslo_config import cfg

PLUGIN_NAMESPACE = 'glance.image_import.plugins'
STORE_NAMESPACE = 'glance_store.drivers'
# Glance reads these from its config dir in this order (its wsgi_app).
CONFIG_FILES = ('glance-image-import.conf', 'glance-api.conf')

# Only the Glance options this check reads, declared with Glance's types so
# the operator's files parse exactly as Glance parses them.
_GLANCE_OPTS: list[tuple[str | None, list[cfg.Opt]]] = [
    (None, [cfg.DictOpt('enabled_backends', default={})]),
    ('image_import_opts', [cfg.ListOpt(
        'image_import_plugins', item_type=cfg.types.String(quotes=True),
        bounds=True, default=[])]),
]


class Report:
    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.errors = 0

    def ok(self, text: str) -> None:
        print('OK     %s' % text, file=self.out)

    def error(self, text: str) -> None:
        self.errors += 1
        print('ERROR  %s' % text, file=self.out)


def config_files(args: argparse.Namespace) -> list[str]:
    files = list(args.config_file or [])
    if args.config_dir:
        files.extend(p for p in (os.path.join(args.config_dir, name)
                                 for name in CONFIG_FILES)
                     if os.path.exists(p))
    return files


def load_conf(files: list[str]) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    for group, opts in _GLANCE_OPTS:
        conf.register_opts(opts, group=group)
    conf([], project='glance', default_config_files=files)
    return conf


def _entry_points(namespace: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=namespace)}


def _load(ep: metadata.EntryPoint) -> tuple[Any, str | None]:
    try:
        return ep.load(), None
    except Exception as exc:  # any import-time failure is what we report
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return None, last


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1)
    return '%s %r is not provided by any installed package%s' % (
        kind, name, " (did you mean %r?)" % hint[0] if hint else '')


def check_plugins(conf: cfg.ConfigOpts, report: Report) -> None:
    names = conf.image_import_opts.image_import_plugins
    available = _entry_points(PLUGIN_NAMESPACE)
    if not names:
        report.ok('no import plugins enabled')
    for name in names:
        ep = available.get(name)
        if ep is None:
            report.error(_unknown('import plugin', name, available)
                         + '; Glance would skip it')
            continue
        obj, err = _load(ep)
        if err:
            report.error('import plugin %r (%s) fails to import: %s; Glance '
                         'would skip it' % (name, ep.value, err))
            continue
        problems = _plugin_checks(obj, conf)
        for problem in problems:
            report.error('import plugin %r: %s' % (name, problem))
        if not problems:
            report.ok('import plugin %r (%s)' % (name, ep.value))


def _plugin_checks(get_flow: Callable[..., Any],
                   conf: cfg.ConfigOpts) -> list[str]:
    # Plugins of this package may offer check_config(conf) in their module.
    module = sys.modules.get(getattr(get_flow, '__module__', '') or '')
    check = getattr(module, 'check_config', None)
    if check is None:
        return []
    try:
        # The plugin's own options, as Glance would have them registered.
        for group, opts in getattr(module, 'list_opts', list)():
            for opt in opts:
                try:
                    conf.register_opt(opt, group=group)
                except cfg.DuplicateOptError:
                    pass  # another definition of the same name already there
        return list(check(conf))
    except Exception as exc:
        return ['its configuration check crashed: %s' % exc]


def check_stores(conf: cfg.ConfigOpts, report: Report) -> None:
    backends = conf.enabled_backends or {}
    available = _entry_points(STORE_NAMESPACE)
    if not backends:
        report.ok('no multi-store backends enabled (enabled_backends unset)')
    for store, driver in backends.items():
        ep = available.get(driver)
        if ep is None:
            report.error('store %r: ' % store
                         + _unknown('store driver', driver, available))
            continue
        _obj, err = _load(ep)
        if err:
            report.error('store %r: driver %r (%s) cannot be loaded: %s' % (
                store, driver, ep.value, err))
        else:
            report.ok('store %r: driver %r (%s)' % (store, driver, ep.value))


def run(args: argparse.Namespace) -> int:
    files = config_files(args)
    if not files:
        print('ERROR  no configuration files found (give --config-dir or '
              '--config-file)', file=sys.stderr)
        return 2
    try:
        conf = load_conf(files)
        # Parse errors surface when a value is first read.
        _ = (conf.image_import_opts.image_import_plugins,
             conf.enabled_backends)
    except (cfg.Error, ValueError) as exc:
        print('ERROR  cannot read %s: %s' % (', '.join(files), exc),
              file=sys.stderr)
        return 2
    report = Report()
    print('Checking %s' % ', '.join(files))
    check_plugins(conf, report)
    check_stores(conf, report)
    if report.errors:
        print('%d problem(s) found' % report.errors)
        return 1
    print('configuration OK')
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        'check-config',
        help='Report import plugins and store drivers Glance would skip.',
        description=__doc__.split('\n\n')[1] if __doc__ else None)
    parser.add_argument('--config-dir',
                        help='Glance configuration folder (reads '
                             'glance-image-import.conf and glance-api.conf).')
    parser.add_argument('--config-file', action='append',
                        help='A configuration file; repeatable.')
    parser.set_defaults(func=run)
