"""``glance-imgplugins check-config`` against real installed entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CLI = str(Path(sys.executable).parent / 'glance-imgplugins')


def write_conf(confdir: Path, plugins: list[str],
               backends: str = 'fast:file, cheap:file') -> None:
    confdir.mkdir(exist_ok=True)
    (confdir / 'glance-api.conf').write_text(
        '[DEFAULT]\nenabled_backends = %s\n' % backends)
    (confdir / 'glance-image-import.conf').write_text(
        '[image_import_opts]\nimage_import_plugins = [%s]\n'
        % ', '.join("'%s'" % p for p in plugins))


def broken_distribution(path: Path) -> Path:
    """An installed distribution whose plugin module fails to import."""
    info = path / 'broken_plugin-1.0.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n')
    (info / 'entry_points.txt').write_text(textwrap.dedent('''\
        [glance.image_import.plugins]
        broken_plugin = broken_plugin:get_flow
        '''))
    (path / 'broken_plugin.py').write_text(
        'import no_such_dependency_xyz\n\ndef get_flow(**kwargs):\n'
        '    return None\n')
    return path


def run(confdir: Path, extra_path: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path:
        env['PYTHONPATH'] = str(extra_path)
    return subprocess.run([CLI, 'check-config', '--config-dir', str(confdir)],
                          capture_output=True, text=True, env=env)


def test_good_config_passes(tmp_path):
    write_conf(tmp_path / 'etc', ['image_conversion', 'inject_image_metadata'])
    proc = run(tmp_path / 'etc')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK     import plugin 'image_conversion'" in proc.stdout
    assert "OK     store 'cheap': driver 'file'" in proc.stdout
    assert 'configuration OK' in proc.stdout


def test_misspelled_plugin_is_reported(tmp_path):
    write_conf(tmp_path / 'etc', ['image_convertion'])
    proc = run(tmp_path / 'etc')
    assert proc.returncode == 1
    assert ("ERROR  import plugin 'image_convertion' is not provided by any "
            "installed package (did you mean 'image_conversion'?)"
            in proc.stdout)


def test_plugin_that_fails_to_import_is_reported(tmp_path):
    path = broken_distribution(tmp_path / 'site')
    write_conf(tmp_path / 'etc', ['image_conversion', 'broken_plugin'])
    proc = run(tmp_path / 'etc', extra_path=path)
    assert proc.returncode == 1
    assert ("ERROR  import plugin 'broken_plugin' (broken_plugin:get_flow) "
            "fails to import: ModuleNotFoundError: No module named "
            "'no_such_dependency_xyz'" in proc.stdout)
    assert "OK     import plugin 'image_conversion'" in proc.stdout
    assert '1 problem(s) found' in proc.stdout


def test_unknown_store_driver_is_reported(tmp_path):
    write_conf(tmp_path / 'etc', [], backends='fast:file, odd:flie')
    proc = run(tmp_path / 'etc')
    assert proc.returncode == 1
    assert ("ERROR  store 'odd': store driver 'flie' is not provided by any "
            "installed package (did you mean 'file'?)" in proc.stdout)


def test_missing_config_is_an_error(tmp_path):
    proc = run(tmp_path / 'nowhere')
    assert proc.returncode == 2
    assert 'no configuration files found' in proc.stderr
