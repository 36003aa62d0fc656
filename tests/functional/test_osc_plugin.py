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

"""The OSC plugin, loaded by the real ``openstack`` command
(python-openstackclient from PyPI), against a real Glance 33 behind a real
Keystone.

``openstack image multistore import`` into two stores and ``... copy`` to a
third, once with ``--os-cloud`` and the ``clouds.yaml`` the harness
generates, once with ``OS_*`` password variables; every result parsed from
``-f json``.  Next to them OSC's own ``image import`` is still OSC's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import barbican as bb
from tests.support.digest import md5
from tests.support.glance_server import BIN_DIR, GlanceServer

MiB = 1024 * 1024
OPENSTACK = str(BIN_DIR / 'openstack')
STORES = {'fast': ('file', {}), 'cheap': ('file', {}), 'edge': ('file', {})}


@pytest.fixture(scope='module')
def glance(glance_factory: Any) -> GlanceServer:
    return glance_factory(stores=STORES, default_store='fast')


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / 'disk.raw'
    path.write_bytes(os.urandom(4 * MiB))
    return path


def openstack(env: dict[str, str], *args: str, timeout: float = 180
              ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([OPENSTACK, *args], env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stderr
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def import_two_copy_third(glance: GlanceServer, env: dict[str, str],
                          image_file: Path, name: str) -> None:
    doc = as_json(openstack(
        env, 'image', 'multistore', 'import', str(image_file), '--name',
        name, '--disk-format', 'raw', '--store', 'fast', '--store', 'cheap',
        '--interval', '0.2', '-f', 'json'))
    assert doc['outcome'] == 'success' and doc['exit_status'] == 0
    assert doc['method'] == 'glance-direct'
    assert [(s['store'], s['state']) for s in doc['stores']] == [
        ('fast', 'done'), ('cheap', 'done')]
    image_id = doc['id']
    image = glance.image(image_id)
    assert image['name'] == name and image['status'] == 'active'
    assert sorted(image['stores'].split(',')) == ['cheap', 'fast']

    # Copy to the third store, the image named by its name.
    doc = as_json(openstack(
        env, 'image', 'multistore', 'copy', name, '--store', 'edge',
        '--interval', '0.2', '-f', 'json'))
    assert doc['id'] == image_id and doc['outcome'] == 'success'
    assert doc['stores'] == [{'store': 'edge', 'state': 'done',
                              'bytes': 4 * MiB, 'detail': ''}]
    stored = glance.stored_files(image_id)
    assert sorted(stored) == ['cheap', 'edge', 'fast']
    assert {md5(p) for p in stored.values()} == {md5(image_file)}

    # watch of the finished copy, one column.
    proc = openstack(env, 'image', 'multistore', 'watch', image_id, '-f',
                     'value', '-c', 'outcome')
    assert proc.returncode == 0 and proc.stdout == 'success\n'


def test_os_cloud_from_clouds_yaml(glance: GlanceServer,
                                   image_file: Path) -> None:
    env = glance.cloud_env('admin')
    import_two_copy_third(glance, dict(env), image_file, 'via-cloud')
    cloud = env.pop('OS_CLOUD')
    # --os-cloud on the command line works the same as OS_CLOUD.
    proc = openstack(env, '--os-cloud', cloud, 'image', 'multistore',
                     'watch', 'via-cloud', '-f', 'json')
    assert as_json(proc)['outcome'] == 'success'


def test_os_password_variables(glance: GlanceServer,
                               image_file: Path) -> None:
    env = glance.password_env('admin')
    assert 'OS_PASSWORD' in env and 'OS_CLOUD' not in env
    import_two_copy_third(glance, env, image_file, 'via-password')


def test_live_progress_and_json_progress(glance: GlanceServer,
                                         image_file: Path) -> None:
    env = glance.password_env('alice')
    proc = openstack(env, 'image', 'multistore', 'import', str(image_file),
                     '--disk-format', 'raw', '--all-stores',
                     '--progress', 'json', '--interval', '0.2', '-f', 'json')
    doc = as_json(proc)
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events[0]['event'] == 'start'
    assert events[-1]['event'] == 'result'
    assert events[-1]['image_id'] == doc['id']
    done = {e['store'] for e in events
            if e['event'] == 'store' and e['state'] == 'done'}
    assert done == {'fast', 'cheap', 'edge'}
    # Hints name this front end's commands.
    proc = openstack(env, 'image', 'multistore', 'import', str(image_file),
                     '--disk-format', 'raw', '--store', 'fast', '--no-wait')
    assert proc.returncode == 0
    assert 'follow it with: openstack image multistore watch ' in \
        proc.stderr


def test_errors_are_one_clean_line(glance: GlanceServer,
                                   image_file: Path) -> None:
    env = glance.password_env('alice')
    proc = openstack(env, 'image', 'multistore', 'copy', 'no-such-image',
                     '--all-stores')
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        'openstack image multistore copy: error: No image with name or ID '
        'no-such-image')
    bad = dict(env, OS_PASSWORD='wrong')
    proc = openstack(bad, 'image', 'multistore', 'watch', 'x')
    assert proc.returncode == 1
    assert 'HTTP 401' in proc.stderr or 'authentication' in proc.stderr
    proc = openstack(env, 'image', 'multistore', 'import', str(image_file),
                     '--disk-format', 'raw')
    assert proc.returncode == 2


def test_inspect_and_names_next_to_osc(glance: GlanceServer,
                                       image_file: Path) -> None:
    env = glance.password_env('alice')
    doc = as_json(openstack(env, 'image', 'inspect', str(image_file), '-f',
                            'json'))
    assert doc['format'] == 'raw' and doc['safe'] is True
    proc = openstack(env, 'image', 'inspect', str(image_file.parent))
    assert proc.returncode == 7
    assert 'not a regular file' in proc.stderr
    # The offline signature check, through OSC's front end too.
    signer = bb.Signer()
    cert = image_file.parent / 'signer.pem'
    cert.write_bytes(signer.pem())
    doc = as_json(openstack(
        env, 'image', 'inspect', str(image_file), '--signature',
        signer.sign(image_file.read_bytes()), '--certificate', str(cert),
        '-f', 'json'))
    assert doc['signature_verified'] is True
    assert doc['signature'].startswith(
        'verified (RSA-PSS, SHA-256, certificate CN=imgplugins test signer, '
        'SHA-256 fingerprint ')
    proc = openstack(env, 'image', 'inspect', str(image_file), '--signature',
                     signer.sign(b'other bytes'), '--certificate', str(cert),
                     '-f', 'value', '-c', 'signature')
    assert proc.returncode == 8
    assert proc.stdout == (
        'Image signature verification failed: the signature does not match '
        'the image data (certificate %s): refused\n' % cert)
    commands = as_json(openstack(env, 'command', 'list', '--group',
                                 'image', '-f', 'json'))
    names = {c for group in commands for c in group['Commands']}
    assert {'image import', 'image stores list', 'image inspect',
            'image multistore import', 'image multistore copy',
            'image multistore watch'} <= names
    # OSC's own image import is untouched.
    proc = openstack(env, 'help', 'image', 'import')
    assert '--remote-image' in proc.stdout
