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

"""``glance-imgplugins check-config``: what Glance would silently skip.

Glance only logs a plugin name it cannot load, or a plugin whose module
fails to import, and then imports the image without it.  A store driver that
cannot be loaded, an option name with a typo, a value Glance reads only when
the first image arrives: each is a log line at best.  This command reads the
configuration the way glance-api does and reports every such problem;
the exit status is non-zero only when something is wrong, warnings are
listed separately.

:func:`check` is the pure core (files in, :class:`Report` out); ``run`` and
``register`` are the argparse front end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import glob
import importlib
import logging
import os
import subprocess
import sys
import warnings
from importlib import metadata
from typing import Any, Callable, Iterator, Sequence

from oslo_config import cfg
from oslo_config import types

PLUGIN_NAMESPACE = 'glance.image_import.plugins'
STORE_NAMESPACE = 'glance_store.drivers'
OPTS_NAMESPACE = 'oslo.config.opts'
# glance-api reads these from its config dir, in this order, the first
# one only if present (glance/common/wsgi_app.py).
CONFIG_FILES = ('glance-image-import.conf', 'glance-api.conf')
# ...and, as any oslo.config program named glance-api of project glance,
# every *.conf of these directories, after the files.
CONFIG_DIRS = ('glance.conf.d', 'glance-api.conf.d')
DEFAULT_CONFIG_DIR = '/etc/glance'
# Other Glance programs' files: not read by glance-api, not reported.
OTHER_PROGRAMS_FILES = ('glance-cache.conf', 'glance-manage.conf',
                        'glance-scrubber.conf', 'glance-swift.conf')

# What Glance 33's own generator lists for glance-api.conf and
# glance-image-import.conf (etc/oslo-config-generator/ in Glance's tree,
# not shipped in its wheel), plus ours.  Namespaces not installed (os_brick
# without the cinder store) are skipped.
NAMESPACES = (
    'castellan.config', 'glance.api', 'glance.store', 'os_brick',
    'glance.multi_store', 'oslo.concurrency', 'oslo.messaging', 'oslo.db',
    'oslo.policy', 'keystonemiddleware.auth_token', 'oslo.limit', 'oslo.log',
    'oslo.middleware.cors', 'oslo.middleware.healthcheck',
    'oslo.middleware.http_proxy_to_wsgi', 'oslo.reports',
    'glance', 'glance_imgplugins',
)

# Glance's reserved file stores (glance/common/wsgi_app.py).
RESERVED_STORES = {'os_glance_staging_store': 'file',
                   'os_glance_tasks_store': 'file'}
# Store drivers whose module imports without the library they need (the
# driver then fails when Glance configures it): what must be importable.
DRIVER_MODULES = {
    'rbd': ('rados', 'rbd'),
    'rbd_sparse': ('rados', 'rbd'),
    'cinder': ('os_brick', 'cinderclient'),
    'swift': ('swiftclient',),
    's3': ('boto3',),
    'vmware': ('oslo_vmware',),
}
SHARED_STORE_GROUP = 'backend_defaults'

CONVERSION_PLUGINS = ('image_conversion', 'format_conversion')
# Plugins that read the image's format, and so must see it decompressed.
FORMAT_READERS = ('image_introspection', 'format_conversion',
                  'image_conversion')
DECOMPRESSION_PLUGINS = ('decompression', 'image_decompression')
# Plugins whose results property_injection's rules can match.
FACT_PLUGINS = ('image_introspection', 'format_conversion')


@dataclasses.dataclass
class Report:
    """What :func:`check` found; ``errors`` decide the exit status."""

    files: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    ok: list[str] = dataclasses.field(default_factory=list)
    info: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> list[str]:
        lines = ['Checking %s' % ', '.join(self.files)]
        lines += ['OK     %s' % t for t in self.ok]
        lines += ['INFO   %s' % t for t in self.info]
        lines += ['WARN   %s' % t for t in self.warnings]
        lines += ['ERROR  %s' % t for t in self.errors]
        if self.errors:
            lines.append('%d problem(s) found, %d warning(s)'
                         % (len(self.errors), len(self.warnings)))
        elif self.warnings:
            lines.append('configuration OK, %d warning(s)'
                         % len(self.warnings))
        else:
            lines.append('configuration OK')
        return lines

    @property
    def exit_status(self) -> int:
        return 1 if self.errors else 0


class ConfigNotFound(Exception):
    """No configuration file to check (exit status 2)."""


class ConfigUnreadable(Exception):
    """A configuration file cannot be parsed (exit status 2)."""


# --- finding the files ------------------------------------------------------

def find_files(config_files: Sequence[str], config_dirs: Sequence[str]
               ) -> tuple[list[str], list[str], list[str]]:
    """(files, conf.d dirs, notes) glance-api would read, in its order.

    A directory is either a Glance config folder (its two files and its
    ``glance.conf.d``/``glance-api.conf.d``) or itself a ``*.conf.d``
    directory, every ``*.conf`` of which oslo.config reads.
    """
    files = [os.path.abspath(f) for f in config_files]
    dirs: list[str] = []
    notes: list[str] = []
    for d in config_dirs:
        d = os.path.abspath(d)
        if not os.path.isdir(d):
            continue
        if glob.glob(os.path.join(d, '*.conf')) and not any(
                os.path.exists(os.path.join(d, n)) for n in CONFIG_FILES):
            dirs.append(d)  # a conf.d of its own
            continue
        for name in CONFIG_FILES:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                files.append(path)
            elif name == 'glance-api.conf':
                notes.append('%s has no glance-api.conf, which glance-api '
                             'requires' % d)
        for name in CONFIG_DIRS:
            if os.path.isdir(os.path.join(d, name)):
                dirs.append(os.path.join(d, name))
        for path in sorted(glob.glob(os.path.join(d, '*.conf'))):
            name = os.path.basename(path)
            if name not in CONFIG_FILES + OTHER_PROGRAMS_FILES:
                notes.append('%s is not read by glance-api (it reads %s and '
                             'the *.conf files of %s)'
                             % (path, ' and '.join(CONFIG_FILES),
                                ' and '.join(n + '/' for n in CONFIG_DIRS)))
    return files, dirs, notes


def _dir_files(dirs: Sequence[str]) -> list[str]:
    # oslo.config reads each config dir's *.conf sorted by name.
    return [p for d in dirs for p in sorted(glob.glob(os.path.join(d,
                                                                   '*.conf')))]


# --- the option data --------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Loading every namespace imports half of OpenStack: its deprecation
    # warnings and stevedore's "could not load" lines are not our report.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _group_name(group: Any) -> str:
    if group is None:
        return 'DEFAULT'
    return str(getattr(group, 'name', group))


class _Options:
    """Every option glance-api knows, registered on one ConfigOpts."""

    def __init__(self, report: Report) -> None:
        self.conf = cfg.ConfigOpts()
        self.names: dict[str, set[str]] = {}
        self.deprecated: dict[str, dict[str, str]] = {}
        # Sections of stores whose driver did not load: not checked by name.
        self.unchecked: set[str] = set()
        eps = {ep.name: ep for ep in metadata.entry_points(
            group=OPTS_NAMESPACE)}
        with _quiet():
            for namespace in NAMESPACES:
                ep = eps.get(namespace)
                if ep is None:
                    continue
                try:
                    listed = ep.load()()
                except Exception as exc:  # a broken namespace is a finding
                    report.warnings.append(
                        'the options of %s cannot be listed (%s): they are '
                        'not checked' % (namespace, _last_line(exc)))
                    continue
                for group, opts in listed:
                    self.add(_group_name(group), opts)
        # Read by this check whatever Glance's namespaces say.
        self.add('DEFAULT', [cfg.DictOpt('enabled_backends')])
        self.add('image_import_opts', [cfg.ListOpt(
            'image_import_plugins', item_type=types.String(quotes=True),
            bounds=True, default=[])])

    def add(self, group: str, opts: Sequence[cfg.Opt]) -> None:
        names = self.names.setdefault(group, set())
        self.deprecated.setdefault(group, {})
        for opt in opts:
            if opt.required:
                # A required option missing is Glance's service to report
                # (e.g. [oslo_limit] when unified limits are off): a copy,
                # so that parsing does not stop there.
                opt = copy.copy(opt)
                opt.required = False
            try:
                self.conf.register_opt(
                    opt, group=None if group == 'DEFAULT' else group)
            except cfg.DuplicateOptError:
                pass  # another definition of the same name: keep the first
            names.update((opt.name, opt.dest))
            for old in opt.deprecated_opts:
                old_group = old.group or group
                if old.name:
                    self.deprecated.setdefault(old_group, {})[
                        old.name.replace('-', '_')] = '[%s] %s' % (
                            group, opt.dest)

    def value(self, group: str, name: str) -> Any:
        if group == 'DEFAULT':
            return getattr(self.conf, name)
        return getattr(getattr(self.conf, group), name)

    def opts(self, group: str) -> list[cfg.Opt]:
        if group == 'DEFAULT':
            return [v['opt'] for v in self.conf._opts.values()]
        grp = self.conf._groups.get(group)
        return [v['opt'] for v in grp._opts.values()] if grp else []


def _last_line(exc: BaseException) -> str:
    # The exception's text: its class name only when it has none.
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__


def _hint(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return ' (did you mean %s?)' % match[0] if match else ''


# --- the checks -------------------------------------------------------------

def _parse(path: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    try:
        cfg.ConfigParser(path, sections).parse()
    except (cfg.ParseError, OSError, UnicodeDecodeError) as exc:
        raise ConfigUnreadable('cannot read %s: %s' % (path, getattr(
            exc, 'msg', None) or exc.__class__.__name__)) from exc
    return sections


def _check_names(raw: dict[str, dict[str, dict[str, list[str]]]],
                 options: _Options, report: Report) -> None:
    """Unknown sections and options, as oslo-config-validator finds them."""
    for path, sections in raw.items():
        for section, values in sections.items():
            known = options.names.get(section)
            if section in options.unchecked:
                continue
            if known is None:
                hint = _hint(section, sorted(options.names))
                report.errors.append(
                    '%s: section [%s] is not read by Glance or any installed '
                    'plugin or store%s' % (path, section, hint))
                continue
            deprecated = options.deprecated.get(section, {})
            for name in values:
                if name in known:
                    continue
                if name in deprecated:
                    report.warnings.append(
                        '%s: [%s] %s is deprecated: use %s' % (
                            path, section, name, deprecated[name]))
                    continue
                report.errors.append(
                    '%s: [%s] %s is not an option of that section%s' % (
                        path, section, name, _hint(name, sorted(known))))


def _check_values(raw: dict[str, dict[str, dict[str, list[str]]]],
                  options: _Options, report: Report) -> None:
    """Read every value set, so a bad one is found now, not at import."""
    seen: set[tuple[str, str]] = set()
    for sections in raw.values():
        for section, values in sections.items():
            for name in values:
                key = (section, name)
                if key in seen or name not in options.names.get(section, ()):
                    continue
                seen.add(key)
                try:
                    options.value(section, name)
                except (ValueError, cfg.Error) as exc:
                    report.errors.append('[%s] %s = %s is not valid: %s' % (
                        section, name, values[name][-1],
                        _value_reason(options, section, name,
                                      values[name][-1], exc)))
                except AttributeError:
                    pass  # a deprecated name: its new name is read instead


_TYPE_WORDS = {'Integer': 'an integer', 'Port': 'a port number',
               'Float': 'a number'}


def _value_reason(options: _Options, section: str, name: str, value: str,
                  exc: BaseException) -> str:
    # oslo.config's own message names the file with a repr of its location:
    # the type's message alone is what the operator needs.
    for opt in options.opts(section):
        if name in (opt.name, opt.dest):
            try:
                opt.type(value)
            except (ValueError, TypeError) as type_exc:
                text = str(type_exc).rstrip('.')
                # int()/float()'s own words are Python's, not the operator's.
                if text.startswith(('invalid literal', 'could not convert')):
                    return 'not %s' % _TYPE_WORDS.get(
                        type(opt.type).__name__, 'a valid value')
                return text or 'not a valid value'
    return 'not a valid value'


def _entry_points(namespace: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=namespace)}


def _load(ep: metadata.EntryPoint) -> tuple[Any, str | None]:
    try:
        with _quiet():
            return ep.load(), None
    except Exception as exc:  # any import-time failure is what we report
        return None, _import_failure(exc)


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1)
    return '%s %r is not provided by any installed package%s' % (
        kind, name, " (did you mean %r?)" % hint[0] if hint else '')


def check_plugins(options: _Options, report: Report) -> None:
    conf = options.conf
    names = list(conf.image_import_opts.image_import_plugins)
    available = _entry_points(PLUGIN_NAMESPACE)
    if not names:
        report.ok.append('no import plugins enabled')
    for name in names:
        ep = available.get(name)
        if ep is None:
            report.errors.append(_unknown('import plugin', name, sorted(
                available)) + '; Glance would skip it')
            continue
        obj, err = _load(ep)
        if err:
            report.errors.append(
                'import plugin %r (%s) fails to import (%s); Glance would '
                'skip it' % (name, ep.value, err))
            continue
        module = sys.modules.get(getattr(obj, '__module__', '') or '')
        problems = _call_hook(module, 'check_config', conf)
        for problem in problems:
            report.errors.append('import plugin %r: %s' % (name, problem))
        if not problems:
            report.ok.append('import plugin %r (%s)' % (name, ep.value))
            for line in _call_hook(module, 'describe_config', conf):
                report.info.append('import plugin %r: %s' % (name, line))
    _check_plugin_order(names, report)


def _call_hook(module: Any, hook: str, conf: cfg.ConfigOpts) -> list[str]:
    # Plugins of this package offer check_config(conf) -> problems and
    # describe_config(conf) -> informational lines in their module.
    func: Callable[[cfg.ConfigOpts], Sequence[str]] | None = getattr(
        module, hook, None)
    if func is None:
        return []
    try:
        return [str(line) for line in func(conf)]
    except Exception as exc:
        return ['its %s crashed: %s' % (hook, _last_line(exc))]


def _check_plugin_order(names: Sequence[str], report: Report) -> None:
    enabled = [n for n in CONVERSION_PLUGINS if n in names]
    if len(enabled) > 1:
        report.errors.append(
            'import plugins %s are both enabled: both convert the image; '
            'enable only one'
            % ' and '.join(repr(n) for n in enabled))
    for later in DECOMPRESSION_PLUGINS:
        if later not in names:
            continue
        before = [n for n in names[:names.index(later)]
                  if n in FORMAT_READERS]
        if before:
            report.errors.append(
                'import plugin %r is listed after %s: those read the still '
                'compressed image; list %r first'
                % (later, ', '.join(repr(n) for n in before), later))
    if 'property_injection' in names:
        after = [n for n in names[names.index('property_injection') + 1:]
                 if n in FACT_PLUGINS]
        if after:
            report.warnings.append(
                "import plugin 'property_injection' is listed before %s: "
                'its rules cannot match the facts and formats those set; '
                "list 'property_injection' last"
                % ', '.join(repr(n) for n in after))


def check_stores(options: _Options,
                 raw: dict[str, dict[str, dict[str, list[str]]]],
                 report: Report) -> None:
    conf = options.conf
    backends = dict(conf.enabled_backends or {})
    available = _entry_points(STORE_NAMESPACE)
    if not backends:
        report.ok.append('no multi-store backends enabled '
                         '(enabled_backends unset)')
        return
    stores = dict(backends)
    stores.update(RESERVED_STORES)
    for store, driver in stores.items():
        ep = available.get(driver)
        options.unchecked.add(store)  # until its driver's options are in
        if ep is None:
            report.errors.append('store %r: ' % store + _unknown(
                'store driver', driver, sorted(available)))
            continue
        cls, err = _load(ep)
        if err:
            report.errors.append('store %r: driver %r (%s) cannot be loaded '
                                 '(%s)' % (store, driver, ep.value, err))
            continue
        missing = _missing_modules(DRIVER_MODULES.get(driver, ()))
        if missing:
            report.errors.append(
                'store %r: driver %r needs the Python module(s) %s; Glance '
                'would fail to configure it' % (store, driver, ', '.join(
                    '%s (%s)' % m for m in missing)))
            continue
        if store in RESERVED_STORES:
            continue  # Glance registers their options itself
        store_opts = list(getattr(cls, 'OPTIONS', None) or ())
        store_opts += list(getattr(cls, 'MULTI_BACKEND_OPTIONS', None) or ())
        options.add(store, store_opts)
        options.add(SHARED_STORE_GROUP, store_opts)
        options.unchecked.discard(store)
        problems = _store_hook(cls, options.conf, store)
        for problem in problems:
            report.errors.append('store %r: %s' % (store, problem))
        if not problems:
            report.ok.append('store %r: driver %r (%s)' % (store, driver,
                                                            ep.value))
    default = _raw_value(raw, 'glance_store', 'default_backend')
    if default is not None and default not in backends:
        report.errors.append(
            '[glance_store] default_backend = %s is not one of '
            'enabled_backends (%s)' % (default, ', '.join(backends)))
    elif default is None:
        report.errors.append('[glance_store] default_backend is not set: '
                             'glance-api refuses to start with '
                             'enabled_backends and no default_backend')


def _store_hook(cls: Any, conf: cfg.ConfigOpts, store: str) -> list[str]:
    # A driver module of this package may offer
    # check_store_config(conf, group) -> problems (rules beyond the types).
    module = sys.modules.get(getattr(cls, '__module__', '') or '')
    func = getattr(module, 'check_store_config', None)
    if func is None:
        return []
    try:
        return [str(p) for p in func(conf, store)]
    except (ValueError, cfg.Error):
        return []  # a bad value: already reported by the value check
    except Exception as exc:
        return ['its check_store_config crashed: %s' % _last_line(exc)]


def _missing_modules(names: Sequence[str]) -> list[tuple[str, str]]:
    missing = []
    for name in names:
        try:
            with _quiet():
                importlib.import_module(name)
        except Exception as exc:
            missing.append((name, _import_failure(exc, name)))
    return missing


def _import_failure(exc: BaseException, wanted: str | None = None) -> str:
    # The operator's words, not Python's exception class names.
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        if exc.name == wanted:
            return 'not installed'
        return 'module %s is not installed' % exc.name
    return _last_line(exc)


def _raw_value(raw: dict[str, dict[str, dict[str, list[str]]]],
               section: str, name: str) -> str | None:
    value = None
    for sections in raw.values():  # later files win, as in oslo.config
        if name in sections.get(section, {}):
            value = sections[section][name][-1]
    return value


def check_keystone(options: _Options,
                   raw: dict[str, dict[str, dict[str, list[str]]]],
                   report: Report) -> None:
    """The auth plugin's own options are valid in [keystone_authtoken]."""
    auth_type = _raw_value(raw, 'keystone_authtoken', 'auth_type')
    if auth_type is None:
        return
    try:
        from keystoneauth1 import exceptions as ksa_exc
        from keystoneauth1 import loading
    except ImportError:
        return
    try:
        with _quiet():
            plugin_opts = loading.get_auth_plugin_conf_options(auth_type)
    except ksa_exc.NoMatchingPlugin:
        report.errors.append(
            '[keystone_authtoken] auth_type = %s is not an installed '
            'keystoneauth plugin%s' % (auth_type, _hint(
                auth_type, sorted(loading.get_available_plugin_names()))))
        return
    options.add('keystone_authtoken', plugin_opts)


def check_interpreter(raw: dict[str, dict[str, dict[str, list[str]]]],
                      report: Report) -> None:
    """prlimit-wrapped qemu-img calls run ``[wsgi] python_interpreter``."""
    value = _raw_value(raw, 'wsgi', 'python_interpreter')
    if not value:  # empty: the plugins use the server's interpreter too
        base = getattr(sys, '_base_executable', sys.executable)
        if sys.prefix != sys.base_prefix and _python_problem(base):
            report.warnings.append(
                '[wsgi] python_interpreter is not set: under uWSGI Glance '
                'uses %s, which cannot import oslo_concurrency, and every '
                'qemu-img call would fail; set it to %s'
                % (base, sys.executable))
        return
    problem = _python_problem(value)
    if problem:
        report.errors.append(
            '[wsgi] python_interpreter = %s %s: Glance runs qemu-img under '
            'prlimit with it, so every conversion and inspection would '
            'fail' % (value, problem))
    else:
        report.ok.append('[wsgi] python_interpreter imports '
                         'oslo_concurrency')


def _python_problem(python: str) -> str | None:
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        return 'is not an executable file'
    try:
        proc = subprocess.run(
            [python, '-c', 'import oslo_concurrency.prlimit'],
            capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 'cannot be run (%s)' % exc.__class__.__name__
    if proc.returncode != 0:
        if 'Traceback' not in proc.stderr:
            return 'is not a Python interpreter'
        last = proc.stderr.strip().splitlines()[-1]
        if last.startswith('ModuleNotFoundError'):
            return 'is a Python without oslo_concurrency installed'
        return 'is a Python that cannot import oslo_concurrency (%s)' % (
            last.split(': ', 1)[-1])
    return None


# --- the core ----------------------------------------------------------------

def check_staging(raw: dict[str, dict[str, dict[str, list[str]]]],
                  report: Report) -> None:
    """Staging written thick costs disk and time on every copy-image."""
    value = _raw_value(raw, 'os_glance_staging_store',
                       'filesystem_thin_provisioning')
    if value is not None and value.strip().lower() in ('true', '1', 'yes',
                                                       'on'):
        return
    report.warnings.append(
        '[os_glance_staging_store] filesystem_thin_provisioning is off: '
        'copy-image and web-download stage every zero byte (a 4 GiB image '
        'holding 238 MiB took 4096 MiB of staging, measured; on, Glance\'s '
        'zero test costs about 4.5 s per GiB of zeros instead); see '
        'rbd_sparse.html#staging-thin-provisioning')


def check(config_files: Sequence[str] = (),
          config_dirs: Sequence[str] | None = None) -> Report:
    """Check what glance-api would read from these files and directories.

    With neither, the directory is ``$OS_GLANCE_CONFIG_DIR`` or
    ``/etc/glance``, as glance-api's own.  Raises :class:`ConfigNotFound`
    or :class:`ConfigUnreadable` when there is nothing to check.
    """
    if config_dirs is None:
        config_dirs = [] if config_files else [os.environ.get(
            'OS_GLANCE_CONFIG_DIR', DEFAULT_CONFIG_DIR).strip()]
    files, dirs, notes = find_files(config_files, config_dirs)
    every_file = files + _dir_files(dirs)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ConfigNotFound('no such configuration file: %s'
                             % ', '.join(missing))
    if not every_file:
        raise ConfigNotFound(
            'no configuration files found in %s (give --config-dir or '
            '--config-file)' % ', '.join(config_dirs or ['(none)']))
    report = Report(files=every_file, warnings=list(notes))
    raw = {path: _parse(path) for path in every_file}
    options = _Options(report)
    try:
        options.conf([], project='glance', prog='glance-api',
                     default_config_files=files, default_config_dirs=dirs,
                     use_env=False)
    except cfg.Error as exc:
        raise ConfigUnreadable('cannot read %s: %s' % (
            ', '.join(every_file), exc)) from exc
    check_keystone(options, raw, report)
    check_plugins(options, report)
    check_stores(options, raw, report)
    check_interpreter(raw, report)
    check_staging(raw, report)
    _check_names(raw, options, report)
    _check_values(raw, options, report)
    return report


# --- the argparse front end -------------------------------------------------

def _dirs(args: argparse.Namespace) -> list[str] | None:
    value = getattr(args, 'config_dir', None)
    if not value:
        return None
    return [value] if isinstance(value, str) else list(value)


def run(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    try:
        report = check(list(getattr(args, 'config_file', None) or []),
                       _dirs(args))
    except (ConfigNotFound, ConfigUnreadable) as exc:
        print('ERROR  %s' % exc, file=sys.stderr)
        return 2
    for line in report.render():
        print(line, file=out)
    return report.exit_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--config-dir', action='append',
        help='A Glance configuration folder (reads glance-image-import.conf,'
             ' glance-api.conf, glance.conf.d/ and glance-api.conf.d/) or a '
             '*.conf.d folder; repeatable. Default: $OS_GLANCE_CONFIG_DIR or '
             '/etc/glance when no --config-file is given.')
    parser.add_argument('--config-file', action='append',
                        help='A configuration file, read before the folders;'
                             ' repeatable.')


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        'check-config',
        help='Report what Glance would skip or refuse in its configuration.',
        description=__doc__.split('\n\n')[1] if __doc__ else None)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='glance-imgplugins check-config')
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
