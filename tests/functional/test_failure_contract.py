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

"""Every import ends in a defined state, through a real Glance 33.

All three plugins enabled, the real ``glance`` CLI behind a real Keystone:
a bad option of each plugin, content qemu-img refuses, the API process
killed before and during a conversion, and the one-word switch from
Glance's ``inject_image_metadata``.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import pytest

from tests.support.digest import sha256
from tests.support import images
from tests.support.glance_server import ADMIN_TOKEN
from tests.support.glance_server import MEMBER_TOKEN
from tests.support.glance_server import parse_table

STORES = ['cheap', 'fast']
PLUGINS = ['image_introspection', 'format_conversion', 'property_injection']
INJECT = {'inject_metadata_properties': {'inject': {'injected_by': 'ops'}}}

BAD_OPTIONS = {
    'image_introspection': (
        {'image_introspection': {'override_user_properties': 'perhaps'}},
        "Invalid configuration: [image_introspection] "
        "override_user_properties: Unexpected boolean value 'perhaps'"),
    'format_conversion': (
        {'format_conversion': {'output_format': 'vmdk'}},
        "Invalid configuration: [format_conversion] output_format: Valid "
        "values are [raw, qcow2], but found 'vmdk'"),
    'property_injection': (
        {'property_injection': {'inject_metadata_compat': 'perhaps'}},
        "Invalid configuration: [property_injection] "
        "inject_metadata_compat: Unexpected boolean value 'perhaps'"),
}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> images.Corpus:
    return images.Corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='module')
def glance(glance_factory, http_dir):
    return glance_factory(plugins=PLUGINS, allowed_ports=[http_dir[1]],
                          import_conf=INJECT)


def reconfigure(glance, extra: dict[str, Any] | None) -> None:
    """Restart Glance with ``extra`` on top of the module's options."""
    conf = {k: dict(v) for k, v in INJECT.items()}
    for section, options in (extra or {}).items():
        conf.setdefault(section, {}).update(options)
    glance.import_conf = conf
    # check-config (run before every start) rightly refuses a bad option.
    glance.check_config = extra is None
    try:
        glance.restart()
    finally:
        glance.check_config = True


def create(glance, path: pathlib.Path, disk_format: str, *extra: str,
           token=MEMBER_TOKEN) -> str:
    args = ['image-create-via-import', '--name', path.name,
            '--disk-format', disk_format, '--container-format', 'bare',
            '--stores', ','.join(STORES), *extra]
    if '--uri' not in extra:
        args += ['--file', str(path)]
    return parse_table(glance.glance(*args, token=token).stdout)['id']


def staged(glance, image_id: str) -> list[str]:
    return sorted(p.name for p in glance.staging_dir.glob(image_id + '*'))


@pytest.mark.parametrize('plugin', sorted(BAD_OPTIONS))
def test_bad_option_then_retry_after_the_fix(glance, corpus, plugin):
    extra, message = BAD_OPTIONS[plugin]
    reconfigure(glance, extra)
    source = corpus.path('qcow2_v3')
    image_id = create(glance, source, 'qcow2')
    image = glance.wait_for_import(image_id)
    assert glance.last_task_message(image_id) == message
    assert image['status'] == 'uploading'
    assert sorted(image['os_glance_failed_import'].split(',')) == STORES
    assert image.get('os_glance_importing_to_stores', '') == ''
    assert glance.stored_files(image_id) == {}
    assert staged(glance, image_id) == [image_id]
    if plugin == 'property_injection':
        # It runs after the conversion: the converted data is kept.
        assert image['disk_format'] == 'raw'
        assert image['img_original_disk_format'] == 'qcow2'
    else:
        assert image['disk_format'] == 'qcow2'
        assert sha256(glance.staged_path(image_id)) == sha256(source)
    # The operator fixes the option; the user imports again, no upload.
    reconfigure(glance, None)
    glance.glance('image-import', '--import-method', 'glance-direct',
                  '--stores', ','.join(STORES), image_id, token=MEMBER_TOKEN)
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == 'raw'
    assert image['img_original_disk_format'] == 'qcow2'
    assert image['injected_by'] == 'ops'
    assert staged(glance, image_id) == []


def test_bad_option_on_web_download(glance, corpus, http_dir):
    extra, message = BAD_OPTIONS['image_introspection']
    reconfigure(glance, extra)
    try:
        root, port = http_dir
        source = corpus.path('qcow2_v3')
        (root / source.name).write_bytes(source.read_bytes())
        image_id = create(glance, source, 'qcow2', '--import-method',
                          'web-download', '--uri',
                          'http://127.0.0.1:%d/%s' % (port, source.name))
        image = glance.wait_for_import(image_id)
    finally:
        reconfigure(glance, None)
    assert glance.last_task_message(image_id) == message
    # Glance's download revert: queued, its download removed.
    assert image['status'] == 'queued'
    assert sorted(image['os_glance_failed_import'].split(',')) == STORES
    assert staged(glance, image_id) == []


@pytest.mark.parametrize('name', ['qcow2_l1_too_large',
                                  'qcow2_header_too_long',
                                  'qcow2_cluster_bits_8'])
def test_content_qemu_img_refuses_ends_queued(glance, corpus, name):
    image_id = create(glance, corpus.path(name), 'qcow2')
    image = glance.wait_for_import(image_id)
    message = glance.last_task_message(image_id)
    check = images.QEMU_REFUSED[name].qemu_check
    assert message.startswith('qcow2 image failed safety check %s (qemu-img: '
                              % check), message
    assert message.endswith('): refused'), message
    assert str(glance.workdir) not in message
    assert image['status'] == 'queued'
    assert sorted(image['os_glance_failed_import'].split(',')) == STORES
    assert glance.stored_files(image_id) == {}
    assert staged(glance, image_id) == []


# --- the API process killed mid-import ----------------------------------

def _qemu_img_wrapper(folder: pathlib.Path, phase: str) -> pathlib.Path:
    """A qemu-img first on Glance's PATH that signals, then hangs, in
    ``phase``: ``map`` (the size guard, before converting) or ``convert``
    (after the real convert wrote its whole output)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / 'reached'
    real = '/usr/bin/qemu-img'
    if phase == 'map':
        body = ('if [ "$1" = map ]; then touch %s; sleep 600; fi\n'
                'exec %s "$@"\n' % (marker, real))
    else:
        body = ('if [ "$1" = convert ]; then %s "$@" || exit $?; '
                'touch %s; sleep 600; exit 0; fi\nexec %s "$@"\n'
                % (real, marker, real))
    wrapper = folder / 'qemu-img'
    wrapper.write_text('#!/bin/sh\n' + body)
    wrapper.chmod(0o755)
    return marker


@pytest.mark.parametrize('phase', ['map', 'convert'])
def test_api_killed_mid_import_leaves_nothing_after_delete(
        glance, corpus, tmp_path, monkeypatch, phase):
    marker = _qemu_img_wrapper(tmp_path / 'bin', phase)
    monkeypatch.setenv('PATH', '%s:%s' % (tmp_path / 'bin',
                                          os.environ['PATH']))
    glance.restart()
    image_id = create(glance, corpus.path('vdi'), 'vdi')
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, glance.log_tail()
        time.sleep(0.2)
    # Everything Glance runs (workers, qemu-img) dies at once, as in a
    # crash or an OOM kill of the service.
    glance.kill()
    monkeypatch.setenv('PATH', os.environ['PATH'].split(':', 1)[1])
    glance.start()
    # Nothing of ours but the staged upload itself is in staging.
    assert staged(glance, image_id) == [image_id]
    assert glance.image(image_id)['status'] == 'importing'
    glance.glance('image-delete', image_id, token=MEMBER_TOKEN)
    assert staged(glance, image_id) == []
    assert list(glance.staging_dir.iterdir()) == []


# --- the one-word switch from inject_image_metadata ------------------------

def test_switch_from_inject_image_metadata_is_one_word(glance_factory,
                                                       corpus):
    conf = {'inject_metadata_properties': {
        'inject': {'injected_by': 'ops', 'hw_watchdog_action': 'reset'},
        'ignore_user_roles': 'admin'}}
    results = {}
    for plugin in ('inject_image_metadata', 'property_injection'):
        server = glance_factory(plugins=[plugin], import_conf=conf)
        for user in (MEMBER_TOKEN, ADMIN_TOKEN):
            image_id = create(server, corpus.path('raw_plain'), 'raw',
                              token=user)
            image = server.wait_for_import(image_id)
            assert image['status'] == 'active'
            results[plugin, user.name] = {
                k: image.get(k) for k in ('injected_by',
                                          'hw_watchdog_action')}
        server.stop()
    assert results['property_injection', 'alice'] == {
        'injected_by': 'ops', 'hw_watchdog_action': 'reset'}
    assert results['property_injection', 'admin'] == {
        'injected_by': None, 'hw_watchdog_action': None}
    for user in ('alice', 'admin'):
        assert results['property_injection', user] == \
            results['inject_image_metadata', user]
