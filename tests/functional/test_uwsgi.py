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

"""Glance served by uWSGI (as devstack runs it), behind Keystone.

Under uWSGI ``sys.executable`` is not the venv's Python, so qemu-img's
prlimit wrapper must be started with ``[wsgi] python_interpreter``: with
it, an import is inspected and converted; the harness sets it, as the
install guide tells operators to.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.digest import sha256
from tests.support.glance_server import (
    BIN_DIR, MEMBER_TOKEN, GlanceServer, parse_table)

MiB = 1024 * 1024
PLUGINS = ['image_introspection', 'format_conversion', 'property_injection']


@pytest.fixture(scope='module')
def glance(glance_factory, tmp_path_factory) -> GlanceServer:
    rules = tmp_path_factory.mktemp('rules') / 'rules.yaml'
    rules.write_text('rules:\n  - name: provenance\n    set:\n'
                     '      imported_under: uwsgi\n')
    return glance_factory(
        server='uwsgi', plugins=PLUGINS,
        import_conf={'format_conversion': {'output_format': 'raw'},
                     'property_injection': {'rules_file': str(rules)}})


def make_qcow2(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / 'disk.raw'
    with open(raw, 'wb') as f:
        f.truncate(12 * MiB)
        for offset in (0, 7 * MiB):
            f.seek(offset)
            f.write(bytes(range(256)) * 1024)
    qcow2 = tmp_path / 'disk.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(qcow2)], check=True)
    return raw, qcow2


def test_served_by_uwsgi(glance: GlanceServer) -> None:
    log = glance.server_log.read_text(errors='replace')
    assert 'uWSGI' in log and 'WSGI app 0' in log, log[-2000:]
    assert python_interpreter(glance) == str(BIN_DIR / 'python')


def python_interpreter(glance: GlanceServer) -> str:
    for line in (glance.conf_dir / 'glance-api.conf').read_text(
            ).splitlines():
        if line.startswith('python_interpreter = '):
            return line.split(' = ', 1)[1]
    return ''


def test_import_converts_under_uwsgi(glance: GlanceServer,
                                     tmp_path: Path) -> None:
    raw, qcow2 = make_qcow2(tmp_path)
    # glanceclient stages with chunked transfer encoding.
    out = glance.glance('image-create-via-import', '--name', 'under-uwsgi',
                        '--disk-format', 'qcow2', '--container-format',
                        'bare', '--stores', 'fast,cheap', '--file',
                        str(qcow2), token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    image = glance.wait_for_import(image_id)
    assert image['status'] == 'active', glance.last_task_message(image_id)
    assert image['disk_format'] == 'raw'
    assert image['virtual_size'] == raw.stat().st_size
    assert image['imported_under'] == 'uwsgi'
    assert image['owner'] == 'demo-project'
    stored = glance.stored_files(image_id)
    assert sorted(stored) == ['cheap', 'fast']
    for path in stored.values():
        assert sha256(path) == sha256(raw)
    assert not [line for line in glance.plugin_load_failures()
                if any(name in line for name in PLUGINS)]


def test_without_python_interpreter_the_import_fails_clearly(
        glance_factory, tmp_path: Path) -> None:
    """What operators met before: uWSGI's ``sys.executable`` cannot run
    the wrapper.  The import fails with a message naming the setting,
    and the image keeps its data staged for a retry."""
    glance = glance_factory(
        server='uwsgi', plugins=['format_conversion'],
        api_conf={'wsgi': {'python_interpreter': ''}},
        import_conf={'format_conversion': {'output_format': 'raw'}})
    _raw, qcow2 = make_qcow2(tmp_path)
    out = glance.glance('image-create-via-import', '--name', 'no-interp',
                        '--disk-format', 'qcow2', '--container-format',
                        'bare', '--stores', 'fast', '--file', str(qcow2),
                        token=MEMBER_TOKEN)
    image_id = parse_table(out.stdout)['id']
    image = glance.wait_for_import(image_id)
    message = glance.last_task_message(image_id)
    assert image['status'] != 'active', message
    assert glance.stored_files(image_id) == {}
    assert 'python_interpreter' in message, message
    assert '/' not in message, message
