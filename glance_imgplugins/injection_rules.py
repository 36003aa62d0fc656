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

"""Rules of the ``property_injection`` plugin: schema, loading, evaluation.

This module is pure: no oslo.config, no Glance.  The plugin builds an
:class:`ImportContext` from the import and applies the :class:`Outcome` of
:func:`evaluate`; everything that decides *what* happens lives here so it can
be tested without a server and checked by ``glance-imgplugins check-config``.

A rules file (YAML, or JSON when its name ends ``.json``)::

    rules:
      - name: vmdk-adapter
        match:
          disk_format: vmdk
          facts: {vmware_adaptertype: null}
        default: {vmware_adaptertype: lsiLogic}
      - name: provenance
        set: {imported_by: "${user_id}@${project_id} via ${import_method}"}
        protect: [imported_by]
        forbid: ["hw_firmware_*"]
        ignore_roles: [admin]

Semantics, in short (``doc/source/property_injection.rst`` has the long form):

* A rule *applies* when every condition under ``match`` holds, the ``unless``
  block (same syntax) does not hold as a whole, and the user holds none of the
  rule's ``ignore_roles`` (nor any global ignore role).
* All applying rules act, in file order; for any one key the *last* applying
  rule that names it decides (general rules first, specific ones after).
* ``set`` always writes; ``default`` writes only when the image has no value
  for the key (neither from the user nor from an earlier plugin); ``remove``
  deletes (globs allowed); ``protect`` discards what the user sent for those
  keys (the rule's value, an earlier plugin's value, or nothing remains);
  ``forbid`` fails the import when the user sent such a key.
* Conditions and templates see the import as the plugin finds it.  ``facts``
  are the properties an earlier plugin of this import set or changed: unlike
  ``properties`` they cannot be faked by the user.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import re
import string
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from glance_imgplugins import exception

#: Glance drops these keys itself; a rule naming one is a mistake.
RESERVED_PREFIX = 'os_glance'
MAX_KEY_LENGTH = 255

#: Import methods Glance 33 knows.  copy-image never runs import plugins, but
#: naming it is not an error (it simply never matches).
IMPORT_METHODS = frozenset(
    ['glance-direct', 'web-download', 'copy-image', 'glance-download'])

# Conditions over one value of the import (true when it matches any pattern).
SCALAR_CONDITIONS = ('disk_format', 'original_disk_format', 'container_format',
                     'import_method', 'project_id', 'user_id', 'name')
# Conditions over a set of values (true when any value matches any pattern).
SET_CONDITIONS = ('roles', 'stores')
# Conditions over properties: {key: pattern(s) | null}.
PROPERTY_CONDITIONS = ('properties', 'facts')
CONDITION_KEYS = SCALAR_CONDITIONS + SET_CONDITIONS + PROPERTY_CONDITIONS

RULE_KEYS = ('name', 'description', 'match', 'unless', 'ignore_roles',
             'set', 'default', 'remove', 'protect', 'forbid')
ACTION_KEYS = ('set', 'default', 'remove', 'protect', 'forbid')
TOP_KEYS = ('version', 'rules')

#: Names a value template may use as ``${name}`` (``$name`` works too).
TEMPLATE_VARIABLES = (
    'project_id', 'user_id', 'roles', 'import_method', 'task_id', 'image_id',
    'image_name', 'disk_format', 'original_disk_format', 'container_format',
    'stores', 'utc_now', 'utc_date')
#: Namespaced template names: ``${prop:KEY}`` and ``${fact:KEY}``.
TEMPLATE_NAMESPACES = ('prop', 'fact')


def is_reserved(key: str) -> bool:
    return key.startswith(RESERVED_PREFIX)


# --- values ------------------------------------------------------------------

class _ValueTemplate(string.Template):
    # ``string.Template`` has no attribute access or indexing: a name is
    # looked up in a flat mapping, which is all a property value needs.
    idpattern = r'[a-z_][a-z0-9_]*'
    braceidpattern = r'(?:prop|fact):[A-Za-z0-9_.:\-]+|[a-z_][a-z0-9_]*'
    flags = re.ASCII


@dataclasses.dataclass(frozen=True)
class Value:
    """A property value: text with optional ``${name}`` placeholders."""

    text: str
    names: tuple[str, ...]

    @classmethod
    def literal(cls, text: str) -> 'Value':
        return cls(text=text.replace('$', '$$'), names=())

    def render(self, variables: Mapping[str, str | None], rule: str,
               key: str) -> str:
        missing = [n for n in self.names if variables.get(n) is None]
        if missing:
            raise exception.PropertyTemplateError(rule=rule, key=key,
                                                  var=missing[0])
        values = {n: variables[n] for n in self.names}
        return _ValueTemplate(self.text).substitute(values)


def _parse_value(text: str) -> tuple[Value | None, str | None]:
    """A :class:`Value` for ``text``, or the reason it is not a valid one."""
    names: list[str] = []
    for m in _ValueTemplate.pattern.finditer(text):
        if m.group('invalid') is not None:
            return None, ('invalid placeholder at column %d (write $$ for a '
                          'literal $)' % (m.start('invalid') + 1))
        name = m.group('named') or m.group('braced')
        if name is None:
            continue  # $$
        if ':' in name:
            ns, _, prop = name.partition(':')
            if ns not in TEMPLATE_NAMESPACES or not prop:
                return None, 'unknown placeholder ${%s}' % name
        elif name not in TEMPLATE_VARIABLES:
            return None, ('unknown placeholder ${%s} (known: %s, prop:KEY, '
                          'fact:KEY)' % (name, ', '.join(TEMPLATE_VARIABLES)))
        if name not in names:
            names.append(name)
    return Value(text=text, names=tuple(names)), None


# --- patterns ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Pattern:
    """A glob (the default) or a regular expression, matched in full."""

    kind: str
    text: str
    compiled: re.Pattern[str] = dataclasses.field(compare=False, repr=False)

    @classmethod
    def glob(cls, text: str) -> 'Pattern':
        return cls('glob', text, re.compile(fnmatch.translate(text)))

    def matches(self, value: str) -> bool:
        return self.compiled.fullmatch(value) is not None


def _any_match(patterns: Sequence[Pattern], value: str | None) -> bool:
    return value is not None and any(p.matches(value) for p in patterns)


# --- the import as rules see it ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImportContext:
    """Everything about one import that rules may match on or render.

    ``user_properties`` are the image's properties when the import began
    (what the user sent); ``properties`` are those on the image when the
    plugin runs (earlier plugins' facts included).  ``original_disk_format``
    is the disk_format before any conversion.
    """

    project_id: str | None = None
    user_id: str | None = None
    roles: frozenset[str] = frozenset()
    import_method: str | None = None
    task_id: str | None = None
    image_id: str | None = None
    image_name: str | None = None
    disk_format: str | None = None
    original_disk_format: str | None = None
    container_format: str | None = None
    stores: tuple[str, ...] = ()
    user_properties: Mapping[str, str] = dataclasses.field(
        default_factory=dict)
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    now: datetime.datetime = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))

    def visible_properties(self) -> dict[str, str]:
        return {k: v for k, v in self.properties.items() if not is_reserved(k)}

    def facts(self) -> dict[str, str]:
        """Properties an earlier plugin of this import set or changed."""
        return {k: v for k, v in self.visible_properties().items()
                if self.user_properties.get(k) != v}

    def user_sent(self) -> dict[str, str]:
        """The user's properties still on the image with the user's value."""
        return {k: v for k, v in self.visible_properties().items()
                if self.user_properties.get(k) == v}

    def scalar(self, name: str) -> str | None:
        if name == 'name':
            return self.image_name
        value = getattr(self, name)
        return value if isinstance(value, str) else None

    def variables(self, view: Mapping[str, str]) -> dict[str, str | None]:
        now = self.now.astimezone(datetime.timezone.utc)
        out: dict[str, str | None] = {
            'project_id': self.project_id,
            'user_id': self.user_id,
            'roles': ','.join(sorted(self.roles)),
            'import_method': self.import_method,
            'task_id': self.task_id,
            'image_id': self.image_id,
            'image_name': self.image_name,
            'disk_format': self.disk_format,
            'original_disk_format': self.original_disk_format,
            'container_format': self.container_format,
            'stores': ','.join(self.stores),
            'utc_now': now.strftime('%Y-%m-%dT%H:%M:%SZ'),
            'utc_date': now.strftime('%Y-%m-%d'),
        }
        for k, v in view.items():
            out['prop:' + k] = v
        for k, v in self.facts().items():
            out['fact:' + k] = v
        return out


# --- rules ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Conditions:
    """A ``match`` or ``unless`` block: every listed condition must hold."""

    scalars: tuple[tuple[str, tuple[Pattern, ...]], ...] = ()
    sets: tuple[tuple[str, tuple[Pattern, ...]], ...] = ()
    # (family, key, patterns); patterns None means "the key is absent".
    props: tuple[tuple[str, str, tuple[Pattern, ...] | None], ...] = ()

    def is_empty(self) -> bool:
        return not (self.scalars or self.sets or self.props)

    def holds(self, ctx: ImportContext) -> bool:
        for name, patterns in self.scalars:
            if not _any_match(patterns, ctx.scalar(name)):
                return False
        for name, patterns in self.sets:
            values: Iterable[str] = (
                ctx.roles if name == 'roles' else ctx.stores)
            if not any(_any_match(patterns, v) for v in values):
                return False
        if self.props:
            family = {'properties': ctx.visible_properties(),
                      'facts': ctx.facts()}
            for fam, key, pats in self.props:
                value = family[fam].get(key)
                if pats is None:
                    if value is not None:
                        return False
                elif not _any_match(pats, value):
                    return False
        return True


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    line: int | None = None
    match: Conditions = Conditions()
    unless: Conditions | None = None
    ignore_roles: frozenset[str] = frozenset()
    set: Mapping[str, Value] = dataclasses.field(default_factory=dict)
    default: Mapping[str, Value] = dataclasses.field(default_factory=dict)
    remove: tuple[Pattern, ...] = ()
    protect: tuple[Pattern, ...] = ()
    forbid: tuple[Pattern, ...] = ()

    def skipped_for(self, roles: frozenset[str]) -> bool:
        return bool(roles & self.ignore_roles)

    def applies(self, ctx: ImportContext) -> bool:
        if self.skipped_for(ctx.roles) or not self.match.holds(ctx):
            return False
        return self.unless is None or not self.unless.holds(ctx)


@dataclasses.dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    source: str = '<rules>'

    def __add__(self, other: 'RuleSet') -> 'RuleSet':
        return RuleSet(self.rules + other.rules,
                       '%s + %s' % (self.source, other.source))


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to do to the image: write ``set``, delete ``remove``.

    ``decided_by`` names, for every key written or removed, the rule that
    decided it (protected user values dropped without a rule value name the
    protecting rule).
    """

    set: Mapping[str, str] = dataclasses.field(default_factory=dict)
    remove: frozenset[str] = frozenset()
    applied: tuple[str, ...] = ()
    decided_by: Mapping[str, str] = dataclasses.field(default_factory=dict)
    skipped_reason: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.set or self.remove)


def _matching(patterns: Sequence[Pattern], key: str) -> bool:
    return any(p.matches(key) for p in patterns)


def evaluate(rules: RuleSet, ctx: ImportContext,
             ignore_user_roles: Iterable[str] = ()) -> Outcome:
    """Decide what the rules do to this import.

    :raises ForbiddenPropertyByRule: the user sent a key a rule forbids.
    :raises PropertyTemplateError: a value needs something the import lacks.
    """
    ignored = ctx.roles & frozenset(ignore_user_roles)
    if ignored:
        return Outcome(skipped_reason='user holds ignored role(s) %s'
                       % ', '.join(sorted(ignored)))
    applying = [r for r in rules.rules if r.applies(ctx)]
    user_sent = ctx.user_sent()

    forbidden: dict[str, str] = {}
    for rule in applying:
        for key in sorted(user_sent):
            if key not in forbidden and _matching(rule.forbid, key):
                forbidden[key] = rule.name
    if forbidden:
        keys = sorted(forbidden)
        raise exception.ForbiddenPropertyByRule(
            key=', '.join(keys),
            rule=', '.join(sorted(set(forbidden.values()))))

    current = ctx.visible_properties()
    decided_by: dict[str, str] = {}
    dropped: set[str] = set()
    for rule in applying:
        for key in user_sent:
            if _matching(rule.protect, key):
                dropped.add(key)
                decided_by[key] = rule.name
    # What the image holds once the user's protected values are discarded:
    # ``default`` and ``${prop:...}`` see this view.
    view = {k: v for k, v in current.items() if k not in dropped}

    plan: dict[str, tuple[str, Value | None, str]] = {}
    for rule in applying:
        if rule.remove:
            for key in list(view) + list(plan):
                if _matching(rule.remove, key):
                    plan[key] = ('remove', None, rule.name)
        for key, value in rule.default.items():
            plan[key] = ('default', value, rule.name)
        for key, value in rule.set.items():
            plan[key] = ('set', value, rule.name)

    variables = ctx.variables(view)
    final = dict(view)
    for key, (action, planned, rule_name) in plan.items():
        if action == 'remove':
            if key in final:
                del final[key]
                decided_by[key] = rule_name
        elif planned is not None and (action == 'set' or key not in view):
            final[key] = planned.render(variables, rule_name, key)
            decided_by[key] = rule_name

    to_set = {k: v for k, v in final.items() if current.get(k) != v}
    to_remove = frozenset(k for k in current if k not in final)
    touched = set(to_set) | to_remove
    return Outcome(set=to_set, remove=to_remove,
                   applied=tuple(r.name for r in applying),
                   decided_by={k: v for k, v in decided_by.items()
                               if k in touched})


# --- loading ----------------------------------------------------------------

class _Map(dict[str, Any]):
    """A mapping from the rules file that remembers where its keys were."""

    line: int | None = None
    key_lines: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.key_lines = {}


class _Seq(list[Any]):
    line: int | None = None


class _LoadError(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _LineLoader(yaml.SafeLoader):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, _LoadError):
            raise
        except Exception:  # noqa: BLE001 - PyYAML's own constructor bugs
            # PyYAML's constructors raise AttributeError or ValueError on
            # some explicitly tagged values (``!!timestamp 2001-12/14``,
            # month 13); found by fuzzing.  Name the value's line instead.
            tag = str(node.tag).rsplit(':', 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, 'cannot read this value as %s' % tag,
                node.start_mark) from None


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise _LoadError(key_line, (
                'key %s is not a string: quote it' % _shown(key)
                if isinstance(key, (int, float, datetime.date)) or key is None
                else 'a key must be a string, not %s' % _kind(key)))
        if key in out:
            raise _LoadError(key_line, 'duplicate key %s (first on line %d)'
                             % (_shown(key), out.key_lines[key]))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_line
    return out


def _construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True)
               for child in node.value)
    out.line = node.start_mark.line + 1
    return out


def _construct_undefined(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    # PyYAML's own message shows the tag as a Python repr; the tag is the
    # user's text, quoted the way every other value in our errors is.
    raise yaml.constructor.ConstructorError(
        None, None, 'unknown tag %s (rules use no YAML tags)'
        % _shown(str(node.tag)), node.start_mark)


_LineLoader.add_constructor('tag:yaml.org,2002:map', _construct_map)
_LineLoader.add_constructor('tag:yaml.org,2002:seq', _construct_seq)
_LineLoader.add_constructor(None, _construct_undefined)


def _json_map(pairs: list[tuple[str, Any]]) -> _Map:
    out = _Map()
    for key, value in pairs:
        if key in out:
            raise _LoadError(None, 'duplicate key %s' % _shown(key))
        out[key] = value
    return out


def _read_document(text: str, fmt: str) -> Any:
    """Parse ``text``; every error names its line where the parser knows it."""
    if fmt == 'json':
        try:
            doc = json.loads(text, object_pairs_hook=_json_map)
        except json.JSONDecodeError as exc:
            raise _LoadError(exc.lineno, 'JSON syntax error, column %d: %s'
                             % (exc.colno, exc.msg)) from exc
        except _LoadError as exc:
            # A duplicate key: the YAML reading below names its line.
            try:
                yaml.load(text, Loader=_LineLoader)  # noqa: S506
            except _LoadError as located:
                if located.line is not None:
                    raise located from None
            except yaml.YAMLError:
                pass
            raise exc
        # Valid JSON: read it again as YAML (a superset, for our purpose)
        # only to learn the line of every key.
        try:
            lined = yaml.load(text, Loader=_LineLoader)  # noqa: S506
        except (yaml.YAMLError, _LoadError):
            return doc
        return _with_line(text, lined)
    try:
        return _with_line(
            text, yaml.load(text, Loader=_LineLoader))  # noqa: S506
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = ', column %d' % (mark.column + 1) if mark is not None else ''
        problem = exc.problem or exc.context or 'invalid YAML'
        raise _LoadError(line, 'YAML syntax error%s: %s'
                         % (column, problem)) from exc
    except yaml.YAMLError as exc:
        raise _LoadError(None, 'YAML error: %s' % exc) from exc


def _with_line(text: str, doc: Any) -> Any:
    """``doc``, refused with its line when it is a lone scalar."""
    if doc is None or isinstance(doc, (_Map, _Seq)):
        return doc
    # A scalar document carries no line of its own: ask the composer.
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    line = node.start_mark.line + 1 if node is not None else None
    raise _LoadError(line, 'file: expected a mapping, got %s' % _kind(doc))


class _Builder:
    """Turns the parsed document into a :class:`RuleSet`, naming bad spots."""

    def _fail(self, where: str, line: int | None, reason: str) -> _LoadError:
        return _LoadError(line, '%s: %s' % (where, reason))

    def _line(self, node: Any, key: str | None = None) -> int | None:
        if isinstance(node, _Map) and key in node.key_lines:
            return node.key_lines[str(key)]
        return getattr(node, 'line', None)

    def _mapping(self, node: Any, where: str, line: int | None,
                 allowed: Sequence[str] | None = None) -> _Map:
        if not isinstance(node, _Map):
            raise self._fail(where, line, 'expected a mapping, got %s'
                             % _kind(node))
        if allowed is not None:
            for key in node:
                if key not in allowed:
                    raise self._fail(
                        where, self._line(node, key),
                        'unknown key %s (known: %s)'
                        % (_shown(key), ', '.join(allowed)))
        return node

    def _strings(self, node: Any, where: str, line: int | None) -> list[str]:
        """A string or a list of strings."""
        items = node if isinstance(node, list) else [node]
        out = []
        for item in items:
            out.append(self._string(item, where, getattr(node, 'line', line)))
        return out

    def _string(self, item: Any, where: str, line: int | None) -> str:
        if isinstance(item, bool) or item is None:
            # YAML 1.1 reads yes/no/on/off/true/false/~ as these: an unquoted
            # ``yes`` becoming "True" would silently change the meaning.
            raise self._fail(where, line, '%s is not a string: quote it'
                             % _shown(item))
        if isinstance(item, (int, float)):
            return str(item)
        if not isinstance(item, str):
            raise self._fail(where, line, 'expected a string, got %s'
                             % _kind(item))
        return item

    def _patterns(self, node: Any, where: str,
                  line: int | None) -> tuple[Pattern, ...]:
        """One pattern or a list: glob strings or ``{regex: ...}``."""
        items = node if isinstance(node, list) else [node]
        out = []
        for item in items:
            if isinstance(item, _Map):
                self._mapping(item, where, line, ('regex', 'glob'))
                if len(item) != 1:
                    raise self._fail(where, item.line,
                                     'a pattern is {regex: ...} or '
                                     '{glob: ...}')
                kind, text = next(iter(item.items()))
                text = self._string(text, where, item.line)
                if kind == 'glob':
                    out.append(Pattern.glob(text))
                    continue
                try:
                    out.append(Pattern('regex', text, re.compile(text)))
                except re.error as exc:
                    raise self._fail(
                        where, item.line,
                        'bad regex %s: %s' % (_shown(text), exc)) from exc
            else:
                out.append(Pattern.glob(self._string(
                    item, where, getattr(node, 'line', line))))
        if not out:
            raise self._fail(where, line, 'empty list matches nothing')
        return tuple(out)

    def _key(self, key: str, where: str, line: int | None) -> str:
        if not key or len(key) > MAX_KEY_LENGTH:
            raise self._fail(where, line, 'property key %s must have 1 to %d '
                             'characters' % (_shown(key), MAX_KEY_LENGTH))
        if is_reserved(key):
            raise self._fail(where, line, 'key %s: keys starting %s are '
                             'reserved to Glance'
                             % (_shown(key), RESERVED_PREFIX))
        return key

    def conditions(self, node: Any, where: str,
                   line: int | None) -> Conditions:
        block = self._mapping(node, where, line, CONDITION_KEYS)
        scalars: list[tuple[str, tuple[Pattern, ...]]] = []
        sets: list[tuple[str, tuple[Pattern, ...]]] = []
        props: list[tuple[str, str, tuple[Pattern, ...] | None]] = []
        for name in CONDITION_KEYS:
            if name not in block:
                continue
            sub = '%s.%s' % (where, name)
            nline = self._line(block, name)
            value = block[name]
            if name in PROPERTY_CONDITIONS:
                pmap = self._mapping(value, sub, nline)
                for key, pats in pmap.items():
                    kline = self._line(pmap, key)
                    self._key(key, sub, kline)
                    props.append((name, key, None if pats is None else
                                  self._patterns(pats, sub + '.' + key,
                                                 kline)))
                continue
            patterns = self._patterns(value, sub, nline)
            if name == 'import_method':
                for p in patterns:
                    if p.kind == 'glob' and not any(
                            p.matches(m) for m in IMPORT_METHODS):
                        raise self._fail(
                            sub, nline, 'unknown import method %s (known: %s)'
                            % (_shown(p.text),
                               ', '.join(sorted(IMPORT_METHODS))))
            (sets if name in SET_CONDITIONS else scalars).append(
                (name, patterns))
        return Conditions(tuple(scalars), tuple(sets), tuple(props))

    def _values(self, node: Any, where: str,
                line: int | None) -> dict[str, Value]:
        vmap = self._mapping(node, where, line)
        out = {}
        for key, raw in vmap.items():
            kline = self._line(vmap, key)
            self._key(key, where, kline)
            text = self._string(raw, '%s.%s' % (where, key), kline)
            value, error = _parse_value(text)
            if value is None:
                raise self._fail('%s.%s' % (where, key), kline, str(error))
            out[key] = value
        return out

    def _key_patterns(self, node: Any, where: str,
                      line: int | None) -> tuple[Pattern, ...]:
        items = node if isinstance(node, list) else [node]
        out = []
        for item in items:
            text = self._string(item, where, getattr(node, 'line', line))
            if is_reserved(text):
                raise self._fail(where, line, 'key %s: keys starting %s are '
                                 'reserved to Glance'
                                 % (_shown(text), RESERVED_PREFIX))
            out.append(Pattern.glob(text))
        return tuple(out)

    def rule(self, node: Any, index: int, line: int | None) -> Rule:
        where = 'rules[%d]' % index
        block = self._mapping(node, where, line)
        line = block.line or line
        name = ('#%d' % (index + 1) if 'name' not in block else
                self._string(block['name'], where + '.name',
                             self._line(block, 'name')))
        if 'name' in block:
            where = '%s (%s)' % (where, name)
        self._mapping(block, where, line, RULE_KEYS)
        if not any(k in block for k in ACTION_KEYS):
            raise self._fail(where, line, 'a rule needs at least one of %s'
                             % ', '.join(ACTION_KEYS))

        def sub(key: str) -> tuple[Any, str, int | None]:
            return block[key], '%s.%s' % (where, key), self._line(block, key)

        match = (self.conditions(*sub('match')) if 'match' in block
                 else Conditions())
        unless = self.conditions(*sub('unless')) if 'unless' in block else None
        if unless is not None and unless.is_empty():
            raise self._fail(where + '.unless', self._line(block, 'unless'),
                             'an empty unless block would disable the rule')
        ignore = (frozenset(self._strings(*sub('ignore_roles')))
                  if 'ignore_roles' in block else frozenset())
        set_ = self._values(*sub('set')) if 'set' in block else {}
        default = self._values(*sub('default')) if 'default' in block else {}
        remove, protect, forbid = (
            self._key_patterns(*sub(k)) if k in block else ()
            for k in ('remove', 'protect', 'forbid'))
        both = sorted(set(set_) & set(default))
        if both:
            raise self._fail(where, line, 'key %s is in both set and default'
                             % _shown(both[0]))
        for key in list(set_) + list(default):
            if _matching(remove, key):
                raise self._fail(where, line, 'key %s is both written and '
                                 'removed' % _shown(key))
        return Rule(name=name, line=line, match=match, unless=unless,
                    ignore_roles=ignore, set=set_, default=default,
                    remove=remove, protect=protect, forbid=forbid)

    def ruleset(self, doc: Any, source: str) -> RuleSet:
        if doc is None:
            raise self._fail('file', None, "empty; expected a mapping with a "
                             "'rules' list")
        top = self._mapping(doc, 'file', getattr(doc, 'line', None),
                            TOP_KEYS)
        if 'version' in top and top['version'] != 1:
            raise self._fail('version', self._line(top, 'version'),
                             'only version 1 is known')
        if 'rules' not in top:
            raise self._fail('file', top.line, "no 'rules' list")
        rules_node = top['rules']
        rules_line = self._line(top, 'rules')
        if not isinstance(rules_node, list):
            raise self._fail('rules', rules_line, 'expected a list, got %s'
                             % _kind(rules_node))
        rules = [self.rule(node, i, getattr(node, 'line', rules_line))
                 for i, node in enumerate(rules_node)]
        seen: dict[str, int] = {}
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise self._fail('rules[%d]' % i, rule.line,
                                 'duplicate rule name %s (also rules[%d])'
                                 % (_shown(rule.name), seen[rule.name]))
            seen[rule.name] = i
        return RuleSet(tuple(rules), source)


def _kind(node: Any) -> str:
    """What a YAML value is, in the words of the YAML the user wrote."""
    if isinstance(node, dict):
        return 'a mapping'
    if isinstance(node, (list, tuple)):
        return 'a list'
    if isinstance(node, (set, frozenset)):
        return 'a set'
    if isinstance(node, bool):
        return 'a boolean'
    if isinstance(node, (int, float)):
        return 'a number'
    if isinstance(node, str):
        return 'a string'
    if isinstance(node, (bytes, bytearray)):
        return 'binary data'
    if isinstance(node, (datetime.date, datetime.datetime)):
        return 'a date'
    if node is None:
        return 'null'
    return 'an unsupported value'


# A value quoted in an error is cut here: the error must stay readable
# whatever the file holds.
_SHOWN_MAX = 60


def _shown(value: Any) -> str:
    """A value as an error message shows it: no Python repr, bounded."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value is None:
        return 'null'
    if isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (datetime.date, datetime.datetime)):
        text = value.isoformat()
    else:
        return _kind(value)
    if len(text) > _SHOWN_MAX:
        text = text[:_SHOWN_MAX - 3] + '...'
    # Quoted with control characters escaped (a key may hold a newline).
    text = ''.join(c if c.isprintable() else
                   c.encode('unicode_escape').decode('ascii') for c in text)
    return "'%s'" % text.replace("'", "\\'")


def _as_rules_error(source: str, exc: _LoadError) -> exception.RulesError:
    where = 'line %d: ' % exc.line if exc.line is not None else ''
    return exception.RulesError(path=source, reason=where + exc.reason,
                                line=exc.line)


def parse_rules(text: str, source: str = '<rules>',
                fmt: str = 'yaml') -> RuleSet:
    """Parse a rules document; ``fmt`` is ``yaml`` or ``json``.

    :raises RulesError: naming the line and the place of the first problem.
    """
    try:
        return _Builder().ruleset(_read_document(text, fmt), source)
    except _LoadError as exc:
        raise _as_rules_error(source, exc) from None


def load_rules(path: str,
               opener: Callable[[str], str] | None = None) -> RuleSet:
    """Read and parse the rules at ``path`` (JSON if it ends ``.json``)."""
    try:
        if opener is not None:
            text = opener(path)
        else:
            with open(path, encoding='utf-8') as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise exception.RulesError(path=path, reason='cannot read: %s'
                                   % exc) from exc
    fmt = 'json' if path.lower().endswith('.json') else 'yaml'
    return parse_rules(text, path, fmt)


def literal_rule(name: str, values: Mapping[str, str],
                 ignore_roles: Iterable[str] = ()) -> Rule:
    """A rule setting fixed values (upstream ``inject``'s meaning).

    :raises RulesError: for keys Glance reserves.
    """
    for key in values:
        if not key or is_reserved(key) or len(key) > MAX_KEY_LENGTH:
            raise exception.RulesError(
                path=name, reason='key %s cannot be injected (empty, longer '
                'than %d, or starting %s)' % (_shown(key), MAX_KEY_LENGTH,
                                              RESERVED_PREFIX))
    return Rule(name=name, set={k: Value.literal(str(v))
                                for k, v in values.items()},
                ignore_roles=frozenset(ignore_roles))
