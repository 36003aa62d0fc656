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

"""property_injection inside a real taskflow engine, through Glance's own
ImportActionWrapper and domain Image (only the database is replaced, by a
repo keeping copies in memory, as Glance's repo keeps rows)."""

from __future__ import annotations

import textwrap
import uuid
from typing import Any

import pytest
from glance.async_.flows import api_image_import
from glance.common import exception as glance_exception
from glance import domain
from oslo_config import cfg
from oslo_context import context as oslo_context
from taskflow import engines
from taskflow.patterns import linear_flow as lf
from taskflow import task

from glance_imgplugins.plugins import property_injection as pi

CONF = cfg.CONF


class MemoryImageRepo:
    """Glance's ImageRepo contract: ``get`` builds a fresh domain Image from
    the stored row, ``save`` writes the row back (as the sqlalchemy repo)."""

    FIELDS = ('name', 'owner', 'disk_format', 'container_format', 'size',
              'virtual_size', 'created_at', 'updated_at')

    def __init__(self, image: domain.Image) -> None:
        self.image_id = image.image_id
        self.saves = 0
        self.save(image)

    def get(self, image_id: str) -> domain.Image:
        assert image_id == self.image_id
        row = dict(self._row)
        row['extra_properties'] = dict(row['extra_properties'])
        return domain.Image(image_id=image_id, **row)

    def save(self, image: domain.Image, from_state: str | None = None) -> None:
        row = {f: getattr(image, f) for f in self.FIELDS}
        row['status'] = image.status
        # dict() (not .items()): ExtraProperties iterates as an empty Mapping.
        row['extra_properties'] = dict(image.extra_properties)
        self._row = row
        self.saves += 1

    def delete_property_atomic(self, image: domain.Image, name: str,
                               value: str) -> None:
        if self._row['extra_properties'].get(name) != value:
            raise glance_exception.NotFound()
        del self._row['extra_properties'][name]

    @property
    def image(self) -> domain.Image:
        return self.get(self.image_id)


class SetFact(task.Task):
    """Stands for an earlier plugin (introspection) setting a fact."""

    def __init__(self, wrapper: Any, facts: dict[str, str],
                 disk_format: str | None = None) -> None:
        super().__init__(name='set-fact-%s' % uuid.uuid4())
        self.wrapper = wrapper
        self.facts = facts
        self.disk_format = disk_format

    def execute(self) -> None:
        with self.wrapper as action:
            action.set_image_extra_properties(self.facts)
            if self.disk_format:
                # As format_conversion does.
                action.set_image_attribute(disk_format=self.disk_format)


class StoreFails(task.Task):
    """Stands for an _ImportToStore that fails after the plugins ran."""

    def execute(self) -> None:
        raise RuntimeError('store down')


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / 'rules.yaml'

    def write(text: str) -> str:
        path.write_text(textwrap.dedent(text))
        CONF.set_override('rules_file', str(path), group=pi.GROUP)
        return str(path)

    yield write
    CONF.clear_override('rules_file', group=pi.GROUP)
    CONF.clear_override('ignore_user_roles', group=pi.GROUP)
    CONF.clear_override('inject_metadata_compat', group=pi.GROUP)
    for name in ('inject', 'ignore_user_roles'):
        try:
            CONF.clear_override(name, group=pi.UPSTREAM_GROUP)
        except cfg.Error:
            pass


def new_import(properties: dict[str, str] | None = None,
                roles: tuple[str, ...] = ('member',),
                method: str = 'glance-direct',
                disk_format: str = 'qcow2',
                stores: tuple[str, ...] = ('fast', 'cheap')) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    image = domain.ImageFactory().new_image(
        name='ubuntu-24.04', owner='proj-1', disk_format=disk_format,
        container_format='bare', extra_properties=dict(properties or {}))
    if method == 'glance-direct':
        image.status = 'uploading'
    image.status = 'importing'
    image.extra_properties['os_glance_import_task'] = task_id
    image.extra_properties['os_glance_importing_to_stores'] = ','.join(
        sorted(stores))
    repo = MemoryImageRepo(image)
    wrapper = api_image_import.ImportActionWrapper(repo, image.image_id,
                                                   task_id)
    # Glance's RequestContext subclass adds a policy check at creation;
    # the plugin reads only these fields of the base class.
    context = oslo_context.RequestContext(
        user_id='user-1', project_id='proj-1', roles=list(roles))
    kwargs = dict(task_id=task_id, task_type='api_image_import',
                  context=context, task_repo=None, image_repo=repo,
                  image_factory=None, backend=list(stores),
                  image_id=image.image_id,
                  import_req={'method': {'name': method}},
                  action_wrapper=wrapper)
    return {'repo': repo, 'wrapper': wrapper, 'kwargs': kwargs}


def run(imp: dict[str, Any], before: tuple[task.Task, ...] = (),
        after: tuple[task.Task, ...] = ()) -> None:
    # As Glance does: plugins' get_flow() is called while building the
    # flow, before any task runs.
    flow = lf.Flow('import')
    for t in before:
        flow.add(t)
    flow.add(pi.get_flow(**imp['kwargs']))
    for t in after:
        flow.add(t)
    engines.load(flow).run()


def props(imp: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in dict(imp['repo'].image.extra_properties).items()
            if not k.startswith('os_glance')}


RULES = """\
    rules:
      - name: everyone
        set: {imported_by: "${user_id}@${project_id} via ${import_method}"}
        default: {hw_qemu_guest_agent: "no"}
        protect: [billing_code]
      - name: converted
        match: {original_disk_format: qcow2, disk_format: raw}
        set: {img_origin: "${original_disk_format}->${disk_format}"}
      - name: lsi-fact
        match: {facts: {vmware_adaptertype: lsiLogic}}
        set: {hw_disk_bus: scsi, hw_scsi_model: "${fact:vmware_adaptertype}"}
      - name: members
        match: {roles: member}
        default: {billing_code: "std-${project_id}"}
        forbid: [hw_firmware_type]
        ignore_roles: [admin]
    """


def test_rules_see_facts_final_format_and_user_values(rules_file):
    rules_file(RULES)
    imp = new_import({'billing_code': 'free', 'hw_qemu_guest_agent': 'yes',
                       'os_distro': 'ubuntu'})
    fact = SetFact(imp['wrapper'], {'vmware_adaptertype': 'lsiLogic'},
                   disk_format='raw')
    run(imp, before=(fact,))
    assert props(imp) == {
        'os_distro': 'ubuntu',
        'hw_qemu_guest_agent': 'yes',          # default: the user's wins
        'billing_code': 'std-proj-1',          # protected: the rule's wins
        'imported_by': 'user-1@proj-1 via glance-direct',
        'img_origin': 'qcow2->raw',
        'vmware_adaptertype': 'lsiLogic',
        'hw_disk_bus': 'scsi', 'hw_scsi_model': 'lsiLogic'}
    assert imp['repo'].image.status == 'importing'


def test_user_cannot_fake_a_fact(rules_file):
    rules_file(RULES)
    imp = new_import({'vmware_adaptertype': 'lsiLogic'})
    run(imp)
    assert 'hw_disk_bus' not in props(imp)
    assert 'img_origin' not in props(imp)   # no conversion happened


def test_ignored_role_skips_everything(rules_file):
    rules_file(RULES)
    imp = new_import({'hw_firmware_type': 'uefi', 'billing_code': 'free'},
                      roles=('admin', 'member'))
    run(imp)
    assert props(imp) == {'hw_firmware_type': 'uefi', 'billing_code': 'free'}


def test_forbidden_key_fails_with_reason_and_frees_the_image(rules_file):
    rules_file(RULES)
    imp = new_import({'hw_firmware_type': 'uefi'})
    with pytest.raises(glance_exception.UploadException) as info:
        run(imp)
    assert str(info.value) == (
        'Property hw_firmware_type may not be set by users here (property '
        'injection rule members): refused')
    image = imp['repo'].image
    # glance-direct keeps the staged data: back to uploading, so the user
    # can drop the key and import again; every store is marked failed.
    assert image.status == 'uploading'
    assert image.extra_properties['os_glance_importing_to_stores'] == ''
    assert image.extra_properties['os_glance_failed_import'] == 'cheap,fast'
    assert props(imp) == {'hw_firmware_type': 'uefi'}


def test_broken_rules_file_fails_the_import_with_the_line(rules_file):
    path = rules_file("""\
        rules:
          - name: a
            set: {ok: "1"}
          - name: b
            sett: {k: v}
        """)
    imp = new_import(method='web-download')
    flow = pi.get_flow(**imp['kwargs'])   # never raises
    with pytest.raises(glance_exception.UploadException) as info:
        engines.load(flow).run()
    assert str(info.value) == (
        "Property injection rules %s: line 5: rules[1] (b): unknown key "
        "'sett' (known: name, description, match, unless, ignore_roles, "
        "set, default, remove, protect, forbid)" % path)
    image = imp['repo'].image
    # web-download: the status is left to the download task's revert, which
    # sets queued itself (queued -> queued would make that revert fail and
    # the user read "Internal Error"); every store is marked failed.
    assert image.status == 'importing'
    assert image.extra_properties['os_glance_importing_to_stores'] == ''
    assert image.extra_properties['os_glance_failed_import'] == 'cheap,fast'
    assert props(imp) == {}


def test_later_failure_reverts_what_the_rules_did(rules_file):
    rules_file("""\
        rules:
          - set: {tier: gold, os_distro: rules}
            remove: [legacy]
        """)
    imp = new_import({'os_distro': 'ubuntu', 'legacy': 'x'})
    with pytest.raises(RuntimeError, match='store down'):
        run(imp, after=(StoreFails(),))
    assert props(imp) == {'os_distro': 'ubuntu', 'legacy': 'x'}


def test_compat_mode_reads_upstream_options(rules_file):
    rules_file("""\
        rules:
          - set: {tier: from-rules}
        """)
    CONF.set_override('inject_metadata_compat', True, group=pi.GROUP)
    pi.load_settings(CONF)   # registers Glance's options
    CONF.set_override('inject', {'tier': 'upstream', 'site': 'paris'},
                      group=pi.UPSTREAM_GROUP)
    CONF.set_override('ignore_user_roles', ['reader'],
                      group=pi.UPSTREAM_GROUP)
    imp = new_import()
    run(imp)
    # Upstream's rule comes first: the rules file overrides it.
    assert props(imp) == {'tier': 'from-rules', 'site': 'paris'}
    # Upstream's ignore list replaces ours (not set explicitly)...
    reader = new_import(roles=('reader',))
    run(reader)
    assert props(reader) == {}
    admin = new_import(roles=('admin',))
    run(admin)
    assert props(admin) == {'tier': 'from-rules', 'site': 'paris'}
    # ...unless ours is set.
    CONF.set_override('ignore_user_roles', ['admin'], group=pi.GROUP)
    admin = new_import(roles=('admin',))
    run(admin)
    assert props(admin) == {}


def test_compat_registers_with_glances_own_plugin_loaded(rules_file):
    # Glance's plugin module registers the same options when imported:
    # both orders must work without a DuplicateOptError.
    from glance.async_.flows.plugins import inject_image_metadata  # noqa
    CONF.set_override('inject_metadata_compat', True, group=pi.GROUP)
    CONF.clear_override('rules_file', group=pi.GROUP)
    settings = pi.load_settings(CONF)
    assert [r.name for r in settings.rules.rules] == [
        '[inject_metadata_properties] inject']


def test_check_config(tmp_path):
    conf = cfg.ConfigOpts()
    conf([], project='glance', default_config_files=[])
    problems = pi.check_config(conf)
    assert problems and 'rules_file is not set' in problems[0]
    bad = tmp_path / 'rules.yaml'
    bad.write_text('rules:\n  - set:\n      os_glance_x: "1"\n')
    conf.set_override('rules_file', str(bad), group=pi.GROUP)
    assert pi.check_config(conf) == [
        "Property injection rules %s: line 3: rules[0].set: key "
        "'os_glance_x': keys starting os_glance are reserved to Glance" % bad]
    bad.write_text('rules:\n  - set: {a: "1"}\n')
    assert pi.check_config(conf) == []
    conf.set_override('inject_metadata_compat', True, group=pi.GROUP)
    assert pi.check_config(conf) == []   # registers Glance's options
    conf.set_override('inject', {'os_glance_y': '1'},
                      group=pi.UPSTREAM_GROUP)
    assert 'os_glance_y' in pi.check_config(conf)[0]


def test_list_opts():
    (group, opts), = pi.list_opts()
    assert group == 'property_injection'
    assert [o.name for o in opts] == ['rules_file', 'ignore_user_roles',
                                      'inject_metadata_compat']
    for opt in opts:
        assert 'Possible values:' in opt.help
        assert 'Related options:' in opt.help


# --- with the real image_introspection, lock and staging tasks ------------

def with_context(get_flow: Any, roles: list[str]) -> Any:
    context = oslo_context.RequestContext(user_id='user-9',
                                          project_id='project', roles=roles)
    return lambda **kw: get_flow(**{**kw, 'context': context})


def test_real_introspection_facts_drive_rules_and_forbid_then_retry(
        make_import, conf, rules_file):
    from glance_imgplugins.plugins import image_introspection
    rules_file(RULES)
    imp = make_import('vmdk_stream_lsilogic',
                      properties={'hw_firmware_type': 'bios'})
    plugins = [image_introspection.get_flow,
               with_context(pi.get_flow, ['member'])]
    with pytest.raises(glance_exception.UploadException,
                       match='Property hw_firmware_type may not be set'):
        imp.run(plugins)
    image = imp.image
    assert image.status == 'uploading'
    # Introspection's revert took its facts back too: nothing half-done.
    assert {k: v for k, v in dict(image.extra_properties).items()
            if not k.startswith('os_glance')} == {'hw_firmware_type': 'bios'}
    assert 'os_glance_import_task' not in image.extra_properties

    # The user drops the key and imports again (the data is still staged).
    image.extra_properties.pop('hw_firmware_type')
    imp.image_repo.save(image)
    imp.restart()
    imp.run(plugins)
    got = {k: v for k, v in dict(imp.image.extra_properties).items()
           if not k.startswith('os_glance')}
    assert got == {
        'vmware_disktype': 'streamOptimized', 'vmware_hw_version': '4',
        'vmware_adaptertype': 'lsiLogic',
        'hw_disk_bus': 'scsi', 'hw_scsi_model': 'lsiLogic',   # lsi-fact
        'imported_by': 'user-9@project via glance-direct',
        'hw_qemu_guest_agent': 'no',
        'billing_code': 'std-project'}
