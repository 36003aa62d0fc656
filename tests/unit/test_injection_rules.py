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

"""The pure rules core: loading errors, matching, templates, precedence."""

from __future__ import annotations

import datetime
import json
import pathlib
import textwrap

import pytest

from glance_imgplugins import exception
from glance_imgplugins import injection_rules as ir

NOW = datetime.datetime(2026, 11, 20, 12, 34, 56,
                        tzinfo=datetime.timezone.utc)


def rules(text: str) -> ir.RuleSet:
    return ir.parse_rules(textwrap.dedent(text), 'rules.yaml')


def ctx(**kw: object) -> ir.ImportContext:
    base: dict[str, object] = dict(
        project_id='p1', user_id='u1', roles=frozenset(['member']),
        import_method='glance-direct', task_id='t1', image_id='i1',
        image_name='ubuntu-24.04', disk_format='raw',
        original_disk_format='qcow2', container_format='bare',
        stores=('fast',), user_properties={}, properties={}, now=NOW)
    base.update(kw)
    if 'properties' not in kw:
        base['properties'] = dict(base['user_properties'])  # type: ignore
    return ir.ImportContext(**base)  # type: ignore[arg-type]


def load_error(text: str, fmt: str = 'yaml') -> str:
    with pytest.raises(exception.RulesError) as info:
        ir.parse_rules(textwrap.dedent(text), 'rules.' + fmt, fmt)
    return str(info.value)


# --- loading ---------------------------------------------------------------

class TestLoadErrors:
    def test_yaml_syntax_error_names_line(self):
        msg = load_error("""\
            rules:
              - name: a
                set: {k: v
              - name: b
            """)
        assert msg.startswith('Property injection rules rules.yaml: line 4')
        assert 'YAML syntax error' in msg

    def test_unknown_rule_key_names_its_line_and_the_known_keys(self):
        msg = load_error("""\
            rules:
              - name: a
                set: {k: v}
              - name: b
                sett: {k: v}
            """)
        assert "line 5: rules[1] (b): unknown key 'sett'" in msg
        assert 'known: name, description, match' in msg

    def test_unknown_condition_key(self):
        msg = load_error("""\
            rules:
              - name: a
                match:
                  disk_formt: raw
                set: {k: v}
            """)
        assert "line 4: rules[0] (a).match: unknown key 'disk_formt'" in msg

    @pytest.mark.parametrize('section', ['set', 'default'])
    def test_reserved_key_refused_at_load(self, section):
        msg = load_error("""\
            rules:
              - name: a
                %s:
                  fine: x
                  os_glance_import_task: x
            """ % section)
        assert "line 5" in msg
        assert "'os_glance_import_task'" in msg and 'reserved' in msg

    @pytest.mark.parametrize('section', ['remove', 'protect', 'forbid'])
    def test_reserved_key_pattern_refused(self, section):
        msg = load_error("""\
            rules:
              - %s: [os_glance_*]
            """ % section)
        assert 'reserved to Glance' in msg and 'line 2' in msg

    def test_unquoted_yaml_boolean_value_refused(self):
        msg = load_error("""\
            rules:
              - name: a
                set:
                  hw_qemu_guest_agent: yes
            """)
        assert 'line 4' in msg and 'quote it' in msg

    def test_numbers_become_strings(self):
        rs = rules("""\
            rules:
              - set: {hw_vif_multiqueue_count: 4}
            """)
        assert ir.evaluate(rs, ctx()).set == {'hw_vif_multiqueue_count': '4'}

    def test_duplicate_key_refused(self):
        msg = load_error("""\
            rules:
              - name: a
                set: {k: v}
                set: {k: w}
            """)
        assert "line 4" in msg
        assert "duplicate key 'set' (first on line 3)" in msg

    def test_duplicate_rule_name(self):
        msg = load_error("""\
            rules:
              - {name: a, set: {k: v}}
              - {name: a, set: {k: w}}
            """)
        assert "line 3" in msg and "duplicate rule name 'a'" in msg

    def test_rule_without_action(self):
        msg = load_error("""\
            rules:
              - name: a
                match: {disk_format: raw}
            """)
        assert 'line 2' in msg and 'needs at least one of set' in msg

    def test_invalid_placeholder(self):
        msg = load_error("""\
            rules:
              - set:
                  price: "costs $5"
            """)
        assert 'line 3' in msg and 'invalid placeholder' in msg

    @pytest.mark.parametrize('template', [
        '${project_id.__class__}', '${project_id[0]}', '${secret}',
        '${env:HOME}', '{project_id}'])
    def test_no_attribute_access_or_unknown_names(self, template):
        text = 'rules:\n  - set: {k: "%s"}\n' % template
        if template == '{project_id}':
            # Not a placeholder at all: a literal.
            out = ir.evaluate(ir.parse_rules(text), ctx())
            assert out.set == {'k': '{project_id}'}
            return
        msg = load_error(text)
        assert 'line 2' in msg
        assert 'placeholder' in msg

    def test_unknown_import_method(self):
        msg = load_error("""\
            rules:
              - match: {import_method: glance_direct}
                set: {k: v}
            """)
        assert "unknown import method 'glance_direct'" in msg

    def test_bad_regex(self):
        msg = load_error("""\
            rules:
              - match:
                  name: {regex: "ubuntu-("}
                set: {k: v}
            """)
        assert 'line 3' in msg and 'bad regex' in msg

    def test_set_and_default_same_key(self):
        msg = load_error("""\
            rules:
              - set: {k: v}
                default: {k: w}
            """)
        assert "'k' is in both set and default" in msg

    def test_written_and_removed(self):
        msg = load_error("""\
            rules:
              - set: {hw_k: v}
                remove: [hw_*]
            """)
        assert "'hw_k' is both written and removed" in msg

    def test_top_level_must_have_rules(self):
        assert "no 'rules' list" in load_error('version: 1\n')
        assert 'empty' in load_error('')
        assert 'only version 1' in load_error('version: 2\nrules: []\n')
        assert "unknown key 'rule'" in load_error('rule: []\n')

    def test_json_syntax_error_names_line(self):
        msg = load_error(
            '{"rules": [\n  {"set": {"k": "v"}},\n  {"set": }\n]}\n', 'json')
        assert 'line 3' in msg and 'JSON syntax error' in msg

    def test_json_semantic_error_names_line(self):
        doc = json.dumps({'rules': [{'set': {'k': 'v'}},
                                    {'match': {'roles': 'x'},
                                     'frobnicate': {}}]}, indent=2)
        msg = load_error(doc, 'json')
        assert "unknown key 'frobnicate'" in msg
        line = doc.splitlines().index('      "frobnicate": {}') + 1
        assert 'line %d:' % line in msg

    def test_load_rules_file_and_json_by_extension(self, tmp_path):
        y = tmp_path / 'r.yaml'
        y.write_text('rules:\n  - set: {a: "1"}\n')
        j = tmp_path / 'r.json'
        j.write_text('{"rules": [{"set": {"b": "2"}}]}')
        assert ir.evaluate(ir.load_rules(str(y)), ctx()).set == {'a': '1'}
        assert ir.evaluate(ir.load_rules(str(j)), ctx()).set == {'b': '2'}
        with pytest.raises(exception.RulesError, match='cannot read'):
            ir.load_rules(str(tmp_path / 'missing.yaml'))

    def test_literal_rule_refuses_reserved_key(self):
        with pytest.raises(exception.RulesError, match='os_glance_x'):
            ir.literal_rule('compat', {'os_glance_x': 'v'})
        rule = ir.literal_rule('compat', {'cost': '$5'})
        assert ir.evaluate(ir.RuleSet((rule,)), ctx()).set == {'cost': '$5'}


# --- matching --------------------------------------------------------------

def applies(match: str, context: ir.ImportContext) -> bool:
    rs = rules('rules:\n  - match: %s\n    set: {hit: "yes"}\n' % match)
    return ir.evaluate(rs, context).set.get('hit') == 'yes'


class TestMatching:
    @pytest.mark.parametrize('match,expected', [
        ('{disk_format: raw}', True),
        ('{disk_format: [qcow2, vmdk]}', False),
        ('{original_disk_format: qcow2}', True),
        ('{original_disk_format: raw}', False),
        ('{container_format: bare}', True),
        ('{import_method: web-download}', False),
        ('{import_method: [glance-direct, web-download]}', True),
        ('{project_id: "p*"}', True),
        ('{project_id: p2}', False),
        ('{user_id: u1}', True),
        ('{roles: [admin, member]}', True),
        ('{roles: admin}', False),
        ('{stores: [fast]}', True),
        ('{stores: cheap}', False),
        ('{name: "ubuntu-*"}', True),
        ('{name: "ubuntu"}', False),
        ('{name: {regex: "ubuntu-[0-9.]+"}}', True),
        # regexes match the whole name
        ('{name: {regex: "ubuntu"}}', False),
        ('{name: [centos-*, {regex: "ubu.*"}]}', True),
        ('{disk_format: raw, roles: admin}', False),
        ('{}', True),
    ])
    def test_conditions(self, match, expected):
        assert applies(match, ctx()) is expected

    def test_properties_and_facts(self):
        c = ctx(user_properties={'os_distro': 'ubuntu'},
                properties={'os_distro': 'ubuntu',
                            'vmware_adaptertype': 'lsiLogic'})
        assert applies('{properties: {os_distro: ubuntu}}', c)
        assert applies('{properties: {vmware_adaptertype: "lsi*"}}', c)
        # facts: only what an earlier plugin set, not what the user sent
        assert applies('{facts: {vmware_adaptertype: "*"}}', c)
        assert not applies('{facts: {os_distro: "*"}}', c)
        # null: the key must be absent
        assert applies('{properties: {hw_disk_bus: null}}', c)
        assert not applies('{properties: {os_distro: null}}', c)
        assert applies('{facts: {os_distro: null}}', c)

    def test_fact_changed_by_plugin_counts_as_fact(self):
        c = ctx(user_properties={'vmware_adaptertype': 'ide'},
                properties={'vmware_adaptertype': 'paraVirtual'})
        assert applies('{facts: {vmware_adaptertype: paraVirtual}}', c)

    def test_reserved_properties_are_invisible(self):
        c = ctx(properties={'os_glance_import_task': 't1'})
        assert not applies('{properties: {x: null}, facts: {y: "*"}}', c)

    def test_unless(self):
        rs = rules("""\
            rules:
              - match: {roles: member}
                unless: {project_id: p1, disk_format: raw}
                set: {hit: "yes"}
            """)
        assert ir.evaluate(rs, ctx()).set == {}
        assert ir.evaluate(rs, ctx(disk_format='qcow2')).set == {'hit': 'yes'}

    def test_missing_values_never_match(self):
        assert not applies('{name: "*"}', ctx(image_name=None))


# --- templates ---------------------------------------------------------------

class TestTemplates:
    def test_context_variables(self):
        rs = rules("""\
            rules:
              - set:
                  by: "${user_id}@${project_id} via $import_method"
                  orig: "${original_disk_format}->${disk_format}"
                  cf: "${container_format}"
                  when: "${utc_now} ${utc_date}"
                  ids: "${task_id} ${image_id} ${image_name} ${stores}"
                  roles: "${roles}"
                  cost: "$$5"
            """)
        out = ir.evaluate(rs, ctx(roles=frozenset(['member', 'reader']),
                                  stores=('fast', 'cheap')))
        assert out.set == {
            'by': 'u1@p1 via glance-direct',
            'orig': 'qcow2->raw', 'cf': 'bare',
            'when': '2026-11-20T12:34:56Z 2026-11-20',
            'ids': 't1 i1 ubuntu-24.04 fast,cheap', 'roles': 'member,reader',
            'cost': '$5'}

    def test_prop_and_fact(self):
        rs = rules("""\
            rules:
              - set:
                  hw_disk_bus: "${fact:hw:bus}"
                  note: "distro ${prop:os_distro}"
            """)
        c = ctx(user_properties={'os_distro': 'debian'},
                properties={'os_distro': 'debian', 'hw:bus': 'scsi'})
        assert ir.evaluate(rs, c).set == {'hw_disk_bus': 'scsi',
                                          'note': 'distro debian'}

    def test_missing_fact_fails_with_named_reason(self):
        rs = rules("""\
            rules:
              - name: bus
                set: {hw_disk_bus: "${fact:hw:bus}"}
            """)
        # The user sending the key does not make it a fact.
        c = ctx(user_properties={'hw:bus': 'ide'})
        with pytest.raises(exception.PropertyTemplateError) as info:
            ir.evaluate(rs, c)
        assert str(info.value) == (
            'Property injection rule bus: the value of hw_disk_bus needs '
            '${fact:hw:bus}, which this import does not have')


# --- precedence --------------------------------------------------------------

class TestPrecedence:
    def test_set_overrides_user_default_does_not(self):
        rs = rules("""\
            rules:
              - set: {a: rule}
                default: {b: rule, c: rule}
            """)
        out = ir.evaluate(rs, ctx(user_properties={'a': 'user', 'b': 'user'}))
        assert out.set == {'a': 'rule', 'c': 'rule'}
        assert out.remove == frozenset()

    def test_default_does_not_override_a_fact(self):
        rs = rules('rules:\n  - default: {vmware_adaptertype: lsiLogic}\n')
        c = ctx(properties={'vmware_adaptertype': 'paraVirtual'})
        assert ir.evaluate(rs, c).set == {}

    def test_later_rule_decides_a_key(self):
        rs = rules("""\
            rules:
              - name: general
                set: {tier: bronze, x: one}
                remove: [legacy_*]
              - name: specific
                match: {project_id: p1}
                default: {tier: gold}
                set: {legacy_keep: "1"}
            """)
        c = ctx(user_properties={'tier': 'user', 'legacy_a': 'z',
                                 'legacy_keep': '0'})
        out = ir.evaluate(rs, c)
        # "specific" comes last: its default (the user set tier) keeps the
        # user's value; legacy_keep is written, legacy_a removed.
        assert out.set == {'x': 'one', 'legacy_keep': '1'}
        assert out.remove == frozenset(['legacy_a'])
        assert out.decided_by == {'x': 'general', 'legacy_keep': 'specific',
                                  'legacy_a': 'general'}
        assert out.applied == ('general', 'specific')

    def test_protect_discards_user_value(self):
        rs = rules("""\
            rules:
              - name: p
                protect: [billing_*, owner_team]
                default: {billing_code: "proj-${project_id}"}
            """)
        c = ctx(user_properties={'billing_code': 'free', 'billing_x': '1',
                                 'owner_team': 'me', 'os_distro': 'x'})
        out = ir.evaluate(rs, c)
        assert out.set == {'billing_code': 'proj-p1'}
        assert out.remove == frozenset(['billing_x', 'owner_team'])
        assert out.decided_by['owner_team'] == 'p'

    def test_protect_keeps_an_earlier_plugins_value(self):
        rs = rules('rules:\n  - protect: [vmware_adaptertype]\n')
        c = ctx(user_properties={'vmware_adaptertype': 'ide'},
                properties={'vmware_adaptertype': 'lsiLogic'})
        assert not ir.evaluate(rs, c).changed

    def test_protected_user_value_invisible_to_templates(self):
        rs = rules("""\
            rules:
              - protect: [tier]
                set: {label: "${prop:tier}"}
            """)
        with pytest.raises(exception.PropertyTemplateError):
            ir.evaluate(rs, ctx(user_properties={'tier': 'gold'}))

    def test_forbid(self):
        rs = rules("""\
            rules:
              - name: no-firmware
                forbid: ["hw_firmware_*"]
              - name: no-owner
                forbid: [owner]
                ignore_roles: [reader]
            """)
        c = ctx(user_properties={'hw_firmware_type': 'uefi', 'owner': 'x',
                                 'os_distro': 'y'})
        with pytest.raises(exception.ForbiddenPropertyByRule) as info:
            ir.evaluate(rs, c)
        assert str(info.value) == (
            'Property hw_firmware_type, owner may not be set by users here '
            '(property injection rule no-firmware, no-owner): refused')
        assert isinstance(info.value, exception.PropertiesRefused)
        # Per-rule ignore role: only the other rule still forbids.
        with pytest.raises(exception.ForbiddenPropertyByRule,
                           match='Property hw_firmware_type may not'):
            ir.evaluate(rs, ctx(user_properties=c.user_properties,
                                roles=frozenset(['member', 'reader'])))
        # Not sent by the user (a fact): fine.
        ok = ctx(properties={'hw_firmware_type': 'uefi'})
        assert not ir.evaluate(rs, ok).changed

    def test_ignore_roles_global_and_per_rule(self):
        rs = rules("""\
            rules:
              - {name: all, set: {a: "1"}}
              - {name: not-admins, set: {b: "1"}, ignore_roles: [admin]}
            """)
        admin = ctx(roles=frozenset(['admin']))
        assert ir.evaluate(rs, admin).set == {'a': '1'}
        out = ir.evaluate(rs, admin, ignore_user_roles=['admin'])
        assert out.set == {} and 'admin' in (out.skipped_reason or '')
        assert ir.evaluate(rs, ctx(), ['admin']).set == {'a': '1', 'b': '1'}

    def test_unchanged_values_are_not_rewritten(self):
        rs = rules('rules:\n  - set: {a: "1"}\n')
        out = ir.evaluate(rs, ctx(properties={'a': '1'}))
        assert not out.changed

    def test_reserved_keys_never_removed(self):
        rs = rules('rules:\n  - remove: ["*"]\n')
        c = ctx(user_properties={'x': '1'},
                properties={'x': '1', 'os_glance_import_task': 't1'})
        assert ir.evaluate(rs, c).remove == frozenset(['x'])


# --- the documented example ------------------------------------------------

def test_example_rules_file_is_valid_and_does_what_it_says():
    path = (pathlib.Path(__file__).resolve().parents[2] / 'etc'
            / 'property-injection-rules.yaml.example')
    rs = ir.load_rules(str(path))
    assert [r.name for r in rs.rules] == [
        'provenance', 'defaults', 'lsi-to-virtio-scsi', 'user-limits',
        'nightly-builds']
    c = ctx(original_disk_format='vmdk',
            user_properties={'imported_by': 'forged', 'billing_code': 'x',
                             'hw_qemu_guest_agent': 'no'},
            properties={'imported_by': 'forged', 'billing_code': 'x',
                        'hw_qemu_guest_agent': 'no',
                        'vmware_adaptertype': 'lsiLogic'})
    out = ir.evaluate(rs, c)
    assert out.set == {
        'imported_by': 'u1@p1', 'imported_via': 'glance-direct on 2026-11-20',
        'img_source_format': 'vmdk', 'os_require_quiesce': 'no',
        'hw_disk_bus': 'scsi', 'hw_scsi_model': 'virtio-scsi',
        'billing_code': 'std-p1'}
    assert out.remove == frozenset()
    with pytest.raises(exception.ForbiddenPropertyByRule):
        ir.evaluate(rs, ctx(user_properties={'hw_firmware_type': 'bios'}))
    admin = ctx(roles=frozenset(['admin', 'member']),
                user_properties={'hw_firmware_type': 'bios'})
    assert 'hw_firmware_type' not in ir.evaluate(rs, admin).remove
