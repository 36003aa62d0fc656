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

"""The wheel as a packager ships it, installed next to Glance 33 in a fresh
virtualenv (no system site-packages, nothing from the project venv)."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
GLANCE = 'glance>=33.0.0,<34.0.0'


def declared_entry_points() -> dict[str, set[str]]:
    """setup.cfg's [entry_points]: every one must load once installed."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / 'setup.cfg')
    return {group: {line.split('=')[0].strip()
                    for line in value.splitlines() if line.strip()}
            for group, value in parser['entry_points'].items()}


ETC_FILES = ('glance-image-import.conf.sample',
             'property-injection-rules.yaml.example')


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    # pip's warnings about this machine's mirrors are not failures.
    return subprocess.run([str(c) for c in cmd], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, **kwargs)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope='module')
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('wheel')
    _ok(_run(sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
             '-w', out, ROOT))
    (built,) = out.glob('glance_imgplugins-*.whl')
    return built


@pytest.fixture(scope='module')
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Path]:
    path = tmp_path_factory.mktemp('venv') / 'v'
    base = getattr(sys, '_base_executable', sys.executable)
    _ok(_run(base, '-m', 'venv', path))
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    _ok(_run(path / 'bin' / 'pip', 'install', '-q',
             '%s[cli]' % wheel, GLANCE, env=env, timeout=900))
    yield path


def test_wheel_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith('.dist-info/METADATA')]
        meta = zf.read(meta_name).decode()
    headers = [line for line in meta.splitlines() if ': ' in line]
    assert [h for h in headers if h.startswith('License-File:')] == [
        'License-File: LICENSE']
    assert 'License: Apache-2.0' in headers
    assert any(h.startswith('Project-URL: Source, ') for h in headers)
    assert 'Provides-Extra: cli' in headers
    # The server install stays lean: client libraries only with [cli].
    requires = [h for h in headers if h.startswith('Requires-Dist:')]
    for client in ('python-glanceclient', 'keystoneauth1', 'openstacksdk',
                   'cliff', 'osc-lib'):
        assert [r for r in requires if client in r and 'extra ==' not in r
                ] == [], client
        assert 'extra == "cli"' in ''.join(r for r in requires if client in r)
    licenses = [n for n in names if '.dist-info/licenses/' in n]
    assert [n.rsplit('/', 1)[1] for n in licenses] == ['LICENSE']


def test_etc_files_are_installed(venv: Path) -> None:
    for name in ETC_FILES:
        installed = venv / 'etc' / 'glance-imgplugins' / name
        assert installed.read_bytes() == (ROOT / 'etc' / name).read_bytes()


def test_entry_points_load(venv: Path) -> None:
    script = textwrap.dedent('''\
        import json, sys
        from importlib import metadata
        found = {}
        for group in %r:
            for ep in metadata.entry_points(group=group):
                if ep.dist.name.replace('_', '-') != 'glance-imgplugins':
                    continue
                ep.load()
                found.setdefault(group, []).append(ep.name)
        json.dump(found, sys.stdout)
        ''' % sorted(declared_entry_points()))
    found = json.loads(_ok(_run(venv / 'bin' / 'python', '-c', script)))
    expected = declared_entry_points()
    assert {'image_introspection', 'format_conversion',
            'property_injection'} <= expected['glance.image_import.plugins']
    assert {g: set(n) for g, n in found.items()} == expected


def test_console_script_runs(venv: Path) -> None:
    out = _ok(_run(venv / 'bin' / 'glance-imgplugins', '--help'))
    assert 'check-config' in out


def test_pip_check(venv: Path) -> None:
    out = _ok(_run(venv / 'bin' / 'pip', 'check'))
    assert 'No broken requirements found' in out


def test_check_config_in_the_installed_venv(venv: Path,
                                            tmp_path: Path) -> None:
    """The sample config is a valid configuration, and a venv without
    Ceph's bindings gets the rbd_sparse store refused by name."""
    etc = tmp_path / 'etc'
    etc.mkdir()
    (etc / 'glance-api.conf').write_text(textwrap.dedent('''\
        [DEFAULT]
        enabled_backends = local:file, ceph:rbd_sparse
        [glance_store]
        default_backend = local
        [local]
        filesystem_store_datadir = %s
        [ceph]
        rbd_store_pool = images
        [wsgi]
        python_interpreter = %s
        ''' % (tmp_path / 'images', venv / 'bin' / 'python')))
    sample = venv / 'etc' / 'glance-imgplugins' / ETC_FILES[0]
    (etc / 'glance-image-import.conf').write_text(
        sample.read_text() + "\n[image_import_opts]\nimage_import_plugins = "
        "['image_introspection', 'format_conversion']\n")
    proc = _run(venv / 'bin' / 'python', '-m',
                'glance_imgplugins.cmd.check_config', '--config-dir', etc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines()
              if line.startswith('ERROR')]
    assert errors == [
        "ERROR  store 'ceph': driver 'rbd_sparse' needs the Python module(s) "
        "rados (not installed), rbd (not installed); Glance would fail to "
        "configure it"]


def test_server_install_without_the_cli_extra(
        wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Glance's environment gets no client libraries it does not already
    need; the CLI commands that need them name the extra instead of
    printing a traceback, and check-config still works."""
    path = tmp_path_factory.mktemp('server') / 'v'
    base = getattr(sys, '_base_executable', sys.executable)
    _ok(_run(base, '-m', 'venv', path))
    _ok(_run(path / 'bin' / 'pip', 'install', '-q', wheel, GLANCE,
             timeout=900))
    _ok(_run(path / 'bin' / 'pip', 'check'))
    assert _run(path / 'bin' / 'python', '-c', 'import osc_lib'
                ).returncode != 0
    proc = _run(path / 'bin' / 'glance-imgplugins', 'import', ROOT / 'LICENSE',
                '--name', 'x')
    assert proc.returncode != 0
    assert "pip install 'glance-imgplugins[cli]'" in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr
    proc = _run(path / 'bin' / 'glance-imgplugins', 'check-config',
                '--config-dir', path / 'nowhere')
    assert proc.returncode == 2
    assert 'no configuration files found' in proc.stderr
