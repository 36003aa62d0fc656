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

"""``image_introspection`` run by a real taskflow engine on staged files."""

from __future__ import annotations

import pytest

from glance_imgplugins.plugins import image_introspection
from tests.flow.conftest import Boom, Record
from tests.support import images

get_flow = image_introspection.get_flow

WITH_PROPERTIES = sorted(n for n, e in images.BENIGN.items() if e.properties)
WITHOUT_PROPERTIES = sorted(n for n, e in images.BENIGN.items()
                            if not e.properties)


@pytest.mark.parametrize('name', WITH_PROPERTIES)
def test_sets_the_properties_inspection_finds(make_import, name):
    imp = make_import(name)
    before = imp.staged.read_bytes()
    imp.run([get_flow], [Record()])
    props = imp.image.extra_properties
    for key, value in images.BENIGN[name].properties.items():
        assert props[key] == value, key
    # Introspection only reads: same file, same path, status untouched.
    assert imp.staged.read_bytes() == before
    assert Record.seen[-1] == 'file://%s' % imp.staged
    assert imp.image.status == 'importing'
    assert imp.image.disk_format == images.BENIGN[name].format


@pytest.mark.parametrize('name', WITHOUT_PROPERTIES[:4])
def test_sets_nothing_when_the_image_says_nothing(make_import, name):
    imp = make_import(name)
    keys_before = set(imp.image.extra_properties)
    imp.run([get_flow])
    assert set(imp.image.extra_properties) == keys_before


def test_vmdk_adapter_and_disk_type(make_import):
    imp = make_import('vmdk_stream_paravirtual')
    imp.run([get_flow])
    props = imp.image.extra_properties
    assert props['vmware_disktype'] == 'streamOptimized'
    assert props['vmware_adaptertype'] == 'paraVirtual'
    assert props['hw_disk_bus'] == 'scsi'
    assert props['hw_scsi_model'] == 'vmpvscsi'


def test_user_properties_are_kept_by_default(make_import):
    imp = make_import('vmdk_sparse_lsilogic',
                      properties={'hw_disk_bus': 'virtio'})
    imp.run([get_flow])
    props = imp.image.extra_properties
    assert props['hw_disk_bus'] == 'virtio'
    # The others are still set.
    assert props['vmware_adaptertype'] == 'lsiLogic'
    assert props['hw_scsi_model'] == 'lsilogic'


def test_override_user_properties(make_import, conf):
    conf.config(override_user_properties=True, group='image_introspection')
    imp = make_import('vmdk_sparse_lsilogic',
                      properties={'hw_disk_bus': 'virtio'})
    imp.run([get_flow])
    assert imp.image.extra_properties['hw_disk_bus'] == 'scsi'


def test_property_families(make_import, conf):
    conf.config(property_families=['bus'], group='image_introspection')
    imp = make_import('vmdk_sparse_buslogic')
    imp.run([get_flow])
    props = imp.image.extra_properties
    assert props['hw_disk_bus'] == 'scsi'
    assert props['hw_scsi_model'] == 'buslogic'
    assert not any(k.startswith('vmware_') for k in props)


def test_firmware_family(make_import, conf):
    conf.config(property_families=['firmware'], group='image_introspection')
    imp = make_import('raw_gpt_esp')
    imp.run([get_flow])
    assert imp.image.extra_properties['hw_firmware_type'] == 'uefi'


@pytest.mark.parametrize('name', sorted(images.HOSTILE))
def test_hostile_images_do_not_crash_it(make_import, name):
    imp = make_import(name)
    imp.run([get_flow], [Record()])
    # It refuses nothing (conversion does): the flow went on.
    assert Record.seen[-1] == 'file://%s' % imp.staged
    assert imp.image.status == 'importing'


def test_a_later_failure_takes_back_what_it_set(make_import):
    imp = make_import('vmdk_sparse_lsilogic',
                      properties={'hw_disk_bus': 'virtio'})
    with pytest.raises(RuntimeError, match='store exploded'):
        imp.run([get_flow], [Boom()])
    props = imp.image.extra_properties
    assert 'vmware_adaptertype' not in props
    assert 'hw_scsi_model' not in props
    assert props['hw_disk_bus'] == 'virtio'  # the user's, untouched


def test_a_later_failure_restores_overridden_values(make_import, conf):
    conf.config(override_user_properties=True, group='image_introspection')
    imp = make_import('vmdk_sparse_lsilogic',
                      properties={'hw_disk_bus': 'virtio'})
    with pytest.raises(RuntimeError):
        imp.run([get_flow], [Boom()])
    assert imp.image.extra_properties['hw_disk_bus'] == 'virtio'


def test_bad_configuration_fails_the_task_with_the_reason(make_import, conf):
    conf.config(property_families=['vmware', 'colour'],
                group='image_introspection')
    imp = make_import('vmdk_sparse_ide')
    flow = get_flow(**imp.kwargs())  # never raises
    assert flow is not None
    from glance.common import exception as glance_exception
    with pytest.raises(glance_exception.UploadException,
                       match='property_families: unknown family colour'):
        imp.run([get_flow])
    assert 'vmware_adaptertype' not in imp.image.extra_properties


def test_check_config(conf):
    from oslo_config import cfg
    assert image_introspection.check_config(cfg.CONF) == []
    conf.config(property_families=['nope'], group='image_introspection')
    problems = image_introspection.check_config(cfg.CONF)
    assert len(problems) == 1 and 'nope' in problems[0]


def test_list_opts():
    [(group, opts)] = image_introspection.list_opts()
    assert group == 'image_introspection'
    assert {o.name for o in opts} == {
        'override_user_properties', 'property_families', 'guest_inspection',
        'guest_inspection_timeout', 'guest_inspection_memory',
        'guest_inspection_accel', 'guest_inspection_required'}
