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

"""Guest inspection inside a real taskflow engine, with the other plugins.

Real libguestfs (TCG), real qemu-img, Glance's ImportActionWrapper and
domain objects; six appliance launches in all, one of them guestfish
building the Windows guest (~2 minutes under TCG) unless an earlier run left
it in ``guest_images``' cache.
"""

from __future__ import annotations

import pathlib
import textwrap

import pytest
from glance.common import exception as glance_exception

from glance_imgplugins.plugins import format_conversion
from glance_imgplugins.plugins import image_introspection
from glance_imgplugins.plugins import property_injection
from tests.flow.conftest import Import, Record
from tests.support.digest import sha256
from tests.support import guest_images as gi

GROUP = image_introspection.GROUP
PLUGINS = [image_introspection.get_flow, format_conversion.get_flow,
           property_injection.get_flow]
def ours(props) -> dict[str, str]:
    """The image's properties less Glance's own bookkeeping (os_glance_*)."""
    return {k: v for k, v in dict(props).items()
            if not k.startswith('os_glance_')}


RULES = """\
rules:
  - name: z-systems
    match:
      facts: {hw_architecture: s390x}
    set: {img_zsystems: "yes"}
  - name: windows-guests
    match:
      facts: {os_type: windows}
    set: {hw_time_hpet: "true"}
"""


@pytest.fixture(scope='module')
def guests(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp('guests')


@pytest.fixture
def guest_conf(conf, tmp_path):
    rules = tmp_path / 'rules.yaml'
    rules.write_text(textwrap.dedent(RULES))
    conf.config(group=GROUP, guest_inspection=True,
                guest_inspection_accel='tcg')
    conf.config(group=property_injection.GROUP, rules_file=str(rules))
    return conf


def test_s390x_guest_facts_conversion_untouched_and_rules(
        guests, staging, guest_conf):
    source = gi.build(gi.GUESTS['s390x_zipl'], guests)
    imp = Import(staging, source, 'raw', properties={'os_distro': 'mine'})
    before = sha256(imp.staged)
    imp.run(PLUGINS, [Record()])
    props = dict(imp.image.extra_properties)
    expected = dict(gi.GUESTS['s390x_zipl'].expected)
    expected['os_distro'] = 'mine'   # the user's value wins
    expected['img_guest_inspection'] = 'done'
    # Exactly: the guest facts, the outcome, the rule's property.
    assert ours(props) == {**expected, 'img_zsystems': 'yes'}
    # The rule matched the detected (unfakeable) architecture.
    assert props['img_zsystems'] == 'yes'
    # Conversion left the s390x disk as it was: raw in, same bytes out.
    assert sha256(imp.staged) == before
    assert imp.image.disk_format == 'raw'
    assert Record.seen[-1] == 'file://%s' % imp.staged
    assert 'Guest inspection: sles 15.5, s390x, zipl' in \
        imp.task_repo.messages


def test_windows_guest_facts_and_rules(guests, staging, guest_conf):
    source = gi.build(gi.GUESTS['win2k19'], guests)
    imp = Import(staging, source, 'raw')
    before = sha256(imp.staged)
    imp.run(PLUGINS, [Record()])
    # Exactly: the facts from the NTFS guest and its registry, the outcome,
    # and the rule on the detected (unfakeable) os_type.
    assert ours(imp.image.extra_properties) == {
        **gi.GUESTS['win2k19'].expected, 'img_guest_inspection': 'done',
        'hw_time_hpet': 'true'}
    assert sha256(imp.staged) == before
    assert 'Guest inspection: windows, x86_64' in imp.task_repo.messages


def test_user_cannot_fake_the_architecture_for_rules(staging, guest_conf,
                                                     corpus):
    # Header facts only (not a guest): the user's s390x is not a fact.
    guest_conf.config(group=GROUP, guest_inspection=False)
    imp = Import(staging, corpus.path('raw_gpt_esp'), 'raw',
                 properties={'hw_architecture': 's390x'})
    imp.run(PLUGINS)
    assert 'img_zsystems' not in imp.image.extra_properties


def test_timeout_is_noted_and_the_import_goes_on(guests, staging,
                                                 guest_conf):
    guest_conf.config(group=GROUP, guest_inspection_timeout=10)
    source = gi.build(gi.GUESTS['debian12'], guests)
    imp = Import(staging, source, 'raw')
    imp.run(PLUGINS, [Record()])
    props = imp.image.extra_properties
    # No guest facts; how it ended, exactly (it outlives the message).
    assert ours(props) == {'img_guest_inspection': 'timeout'}
    assert Record.seen[-1] == 'file://%s' % imp.staged
    assert imp.image.status == 'importing'
    assert ('Guest inspection did not finish within 10 seconds '
            '([image_introspection] guest_inspection_timeout); the import '
            'goes on without guest facts') in imp.task_repo.messages


def test_no_os_is_noted_and_recorded(guests, staging, guest_conf):
    source = gi.build(gi.GUESTS['no_os'], guests)
    imp = Import(staging, source, 'raw')
    imp.run(PLUGINS, [Record()])
    assert imp.image.status == 'importing'
    assert ours(imp.image.extra_properties) == {
        'img_guest_inspection': 'no-os'}
    assert ('Guest inspection found no operating system in the image (no '
            'filesystem holds a recognisable OS); the import goes on '
            'without guest facts') in imp.task_repo.messages


def test_appliance_that_cannot_run_is_recorded_as_failed(guests, staging,
                                                         guest_conf):
    # A real misconfiguration (uWSGI): the worker's Python lacks
    # oslo.concurrency, so nothing starts (no appliance: a second).
    # Introspection alone: qemu-img in format_conversion would fail the
    # import on the same interpreter.
    from glance.common import wsgi  # noqa: F401  (registers [wsgi])
    guest_conf.config(group='wsgi', python_interpreter='/usr/bin/python3')
    source = gi.build(gi.GUESTS['debian12'], guests)
    imp = Import(staging, source, 'raw')
    imp.run([image_introspection.get_flow], [Record()])
    assert imp.image.status == 'importing'
    assert ours(imp.image.extra_properties) == {
        'img_guest_inspection': 'failed'}
    assert ('Guest inspection failed: the Python interpreter that runs the '
            'prlimit wrapper has no oslo_concurrency module (see [wsgi] '
            'python_interpreter); the import goes on without guest facts'
            ) in imp.task_repo.messages


def test_unsafe_image_is_recorded_as_skipped(staging, guest_conf, corpus):
    # Never handed to qemu (no appliance: milliseconds).  Introspection
    # alone: format_conversion would refuse it and revert the property.
    imp = Import(staging, corpus.path('qcow2_backing_file'), 'qcow2')
    imp.run([image_introspection.get_flow])
    assert ours(imp.image.extra_properties) == {
        'img_guest_inspection': 'skipped'}


def test_required_and_no_os_refuses_the_image(guests, staging, guest_conf):
    guest_conf.config(group=GROUP, guest_inspection_required=True)
    source = gi.build(gi.GUESTS['no_os'], guests)
    imp = Import(staging, source, 'raw')
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS)
    assert str(err.value.msg) == (
        'Image refused: guest inspection found no operating system in the '
        'image (no filesystem holds a recognisable OS)')
    # ContentRefused: queued, staged data removed, stores failed.
    assert imp.image.status == 'queued'
    assert not imp.staged.exists()
    assert imp.image.extra_properties['os_glance_failed_import'] == \
        'cheap,fast'
    # Required: the failure is the import's own message; no outcome kept.
    assert 'img_guest_inspection' not in imp.image.extra_properties
