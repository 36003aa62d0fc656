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

"""Glance behind a real Keystone: keystonemiddleware decides who calls.

The harness's Glance runs the ``keystone`` paste flavor; these tests show
that a token is required, that the roles Glance sees are Keystone's
(including implied ones), and that the ``glance`` and ``openstack`` CLIs
log in with a password, from ``OS_*`` variables or a ``clouds.yaml``.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import keystone as ks
from tests.support.glance_server import (
    ADMIN_TOKEN, BIN_DIR, MEMBER_TOKEN, GlanceServer, parse_table,
    real_token)


@pytest.fixture(scope='module')
def glance(glance_factory) -> GlanceServer:
    return glance_factory(plugins=['image_introspection'])


def status_of(glance: GlanceServer, method: str, path: str,
              token: str | None, body: object = None) -> int:
    headers = {'Content-Type': 'application/json'}
    resolved = real_token(token)
    if resolved:
        headers['X-Auth-Token'] = resolved
    req = urllib.request.Request(
        glance.url + path, method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_token_is_required(glance: GlanceServer) -> None:
    assert status_of(glance, 'GET', '/v2/images', None) == 401
    assert status_of(glance, 'GET', '/v2/images', 'not-a-token') == 401
    assert status_of(glance, 'POST', '/v2/images', None,
                     {'name': 'x'}) == 401
    # The same call with a real token succeeds.
    assert status_of(glance, 'GET', '/v2/images', MEMBER_TOKEN) == 200
    # The healthcheck stays open, as in Glance's own paste file.
    assert status_of(glance, 'GET', '/healthcheck', None) == 200


def test_glance_sees_keystone_roles_and_projects(glance: GlanceServer,
                                                 tmp_path: Path) -> None:
    disk = tmp_path / 'disk.raw'
    disk.write_bytes(b'\0' * 65536)

    def create(user: str) -> subprocess.CompletedProcess[str]:
        return glance.glance(
            'image-create-via-import', '--name', 'by-%s' % user,
            '--disk-format', 'raw', '--container-format', 'bare',
            '--file', str(disk), token=user, check=False)

    # A member uploads into its own project.
    image_id = parse_table(create('alice').stdout)['id']
    assert glance.wait_for_import(image_id)['owner'] == 'demo-project'
    # A reader of the same project may look but not upload.
    assert [i['id'] for i in glance.request(
        'GET', '/v2/images', 'bob')['images']] == [image_id]
    refused = create('bob')
    assert refused.returncode != 0
    assert '403' in refused.stderr, refused.stderr
    # 'partner' was never given 'member': Keystone's implied role is.
    image_id = parse_table(create('dave').stdout)['id']
    assert glance.wait_for_import(image_id)['owner'] == 'partner-project'
    # Projects are separate: alice does not see dave's private image.
    assert status_of(glance, 'GET', '/v2/images/%s' % image_id,
                     MEMBER_TOKEN) == 404


def test_password_login_from_os_variables(glance: GlanceServer) -> None:
    """No token, no image URL: the CLI logs in and reads the catalog."""
    env = glance.password_env('carol')
    assert 'OS_AUTH_TOKEN' not in env and 'OS_IMAGE_URL' not in env
    assert env['OS_PASSWORD'] == ks.USERS['carol'].password
    out = glance.glance('image-create', '--name', 'carol-os-vars',
                        '--disk-format', 'raw', '--container-format',
                        'bare', env=env)
    image = parse_table(out.stdout)
    assert image['owner'] == 'admin-project'
    assert glance.image(image['id'], ADMIN_TOKEN)['name'] == 'carol-os-vars'


def test_openstack_cli_with_clouds_yaml(glance: GlanceServer) -> None:
    env = glance.cloud_env('alice')
    out = subprocess.run(
        [str(BIN_DIR / 'openstack'), 'image', 'create', 'alice-cloud',
         '--disk-format', 'raw', '--container-format', 'bare',
         '-f', 'json'], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120)
    assert out.returncode == 0, out.stderr
    image = json.loads(out.stdout)
    assert image['owner'] == 'demo-project'
    # The same clouds.yaml holds every test user: the admin sees it too.
    env = glance.cloud_env('admin')
    out = subprocess.run(
        [str(BIN_DIR / 'openstack'), 'image', 'show', image['id'],
         '-f', 'json'], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)['name'] == 'alice-cloud'


def test_domain_scoped_token(glance: GlanceServer) -> None:
    """A domain admin's token carries no project.  Glance 33's default
    policies want a project-scoped token for the image API: 403, not 401
    (the token itself is valid)."""
    access = ks.shared().session('dora')
    auth = access.auth.get_access(access)
    assert auth.project_id is None and auth.domain_id == 'default'
    assert 'admin' in auth.role_names
    assert status_of(glance, 'GET', '/v2/images', 'dora') == 403
    assert status_of(glance, 'POST', '/v2/images', 'dora',
                     {'name': 'x'}) == 403
