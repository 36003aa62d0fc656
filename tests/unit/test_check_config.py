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

"""``check-config`` against real configuration files and installed entry
points: each case asserts the exact line an operator reads and the exit
status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glance_imgplugins.cmd import check_config

PYTHON = sys.executable

API_CONF = '''\
[DEFAULT]
enabled_backends = fast:file, cheap:file

[glance_store]
default_backend = fast

[fast]
filesystem_store_datadir = {tmp}/fast

[cheap]
filesystem_store_datadir = {tmp}/cheap

[os_glance_staging_store]
filesystem_store_datadir = {tmp}/staging
filesystem_thin_provisioning = True

[wsgi]
python_interpreter = {python}
'''

IMPORT_CONF = '''\
[image_import_opts]
image_import_plugins = [{plugins}]

[format_conversion]
output_format = raw
'''


def write_conf(confdir: Path, plugins=('image_introspection',
                                       'format_conversion'),
               api: str = API_CONF, extra_api: str = '',
               extra_import: str = '') -> Path:
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / 'glance-api.conf').write_text(
        api.format(tmp=confdir, python=PYTHON) + extra_api)
    (confdir / 'glance-image-import.conf').write_text(
        IMPORT_CONF.format(plugins=', '.join("'%s'" % p for p in plugins))
        + extra_import)
    return confdir


def run(*args: str, extra_path: Path | None = None,
        env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if env is None else env)
    if extra_path:
        env['PYTHONPATH'] = str(extra_path)
    return subprocess.run(
        [PYTHON, '-m', 'glance_imgplugins.cmd.check_config', *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)


def lines(proc: subprocess.CompletedProcess[str], prefix: str) -> list[str]:
    return [line for line in proc.stdout.splitlines()
            if line.startswith(prefix)]


def test_clean_config_passes(tmp_path):
    etc = write_conf(tmp_path / 'etc')
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == 'Checking %s, %s' % (
        etc / 'glance-image-import.conf', etc / 'glance-api.conf')
    assert lines(proc, 'OK') == [
        "OK     import plugin 'image_introspection' "
        "(glance_imgplugins.plugins.image_introspection:get_flow)",
        "OK     import plugin 'format_conversion' "
        "(glance_imgplugins.plugins.format_conversion:get_flow)",
        "OK     store 'fast': driver 'file' "
        "(glance_store._drivers.filesystem:Store)",
        "OK     store 'cheap': driver 'file' "
        "(glance_store._drivers.filesystem:Store)",
        'OK     [wsgi] python_interpreter imports oslo_concurrency',
    ]
    assert not lines(proc, 'WARN') and not lines(proc, 'ERROR')
    assert proc.stdout.splitlines()[-1] == 'configuration OK'


def test_option_typo_is_an_error(tmp_path):
    etc = write_conf(tmp_path / 'etc', extra_import='outptu_format = raw\n')
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        'ERROR  %s: [format_conversion] outptu_format is not an option of '
        'that section (did you mean output_format?)'
        % (etc / 'glance-image-import.conf')]
    assert proc.stdout.splitlines()[-1] == '1 problem(s) found, 0 warning(s)'


def test_glance_option_typo_and_unknown_section_are_errors(tmp_path):
    etc = write_conf(tmp_path / 'etc', extra_api=(
        '\n[image_import_opts]\nmax_parallel_store = 2\n'
        '\n[format_convertion]\noutput_format = raw\n'))
    report = check_config.check([], [str(etc)])
    api = etc / 'glance-api.conf'
    assert report.errors == [
        '%s: [image_import_opts] max_parallel_store is not an option of that '
        'section (did you mean max_parallel_stores?)' % api,
        '%s: section [format_convertion] is not read by Glance or any '
        'installed plugin or store (did you mean format_conversion?)' % api,
    ]


def test_misspelled_plugin_is_reported(tmp_path):
    etc = write_conf(tmp_path / 'etc', plugins=['image_convertion'])
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        "ERROR  import plugin 'image_convertion' is not provided by any "
        "installed package (did you mean 'image_conversion'?); Glance would "
        "skip it"]


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


def test_plugin_that_fails_to_import_is_reported(tmp_path):
    path = broken_distribution(tmp_path / 'site')
    etc = write_conf(tmp_path / 'etc',
                     plugins=['image_conversion', 'broken_plugin'])
    proc = run('--config-dir', str(etc), extra_path=path)
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        "ERROR  import plugin 'broken_plugin' (broken_plugin:get_flow) "
        "fails to import (module no_such_dependency_xyz is not installed); "
        "Glance would skip it"]
    assert ("OK     import plugin 'image_conversion' "
            "(glance.async_.flows.plugins.image_conversion:get_flow)"
            in lines(proc, 'OK'))


def test_both_conversion_plugins_are_an_error(tmp_path):
    etc = write_conf(tmp_path / 'etc', plugins=['image_conversion',
                                                'format_conversion'])
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        "ERROR  import plugins 'image_conversion' and 'format_conversion' "
        "are both enabled: both convert the image; enable only one"]


def test_property_injection_before_the_fact_plugins_is_a_warning(tmp_path):
    rules = tmp_path / 'rules.yaml'
    rules.write_text('rules:\n  - name: tier\n    set: {tier: gold}\n')
    etc = write_conf(
        tmp_path / 'etc', plugins=['property_injection', 'image_introspection',
                                   'format_conversion'],
        extra_import='\n[property_injection]\nrules_file = %s\n' % rules)
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 0, proc.stdout
    assert lines(proc, 'WARN') == [
        "WARN   import plugin 'property_injection' is listed before "
        "'image_introspection', 'format_conversion': its rules cannot match "
        "the facts and formats those set; list 'property_injection' last"]
    assert proc.stdout.splitlines()[-1] == 'configuration OK, 1 warning(s)'
    # The plugin's describe_config lines come as information.
    assert any(line.startswith("INFO   import plugin 'property_injection': ")
               for line in proc.stdout.splitlines()), proc.stdout


def test_decompression_after_conversion_is_an_error(tmp_path):
    etc = write_conf(tmp_path / 'etc', plugins=['format_conversion',
                                                'image_decompression'])
    report = check_config.check([], [str(etc)])
    assert report.errors == [
        "import plugin 'image_decompression' is listed after "
        "'format_conversion': those read the still compressed image; list "
        "'image_decompression' first"]


RBD_STORE = '''
[ceph]
rbd_store_pool = images
rbd_store_ceph_conf = /etc/ceph/ceph.conf
'''


def rbd_conf(etc: Path, extra: str = '') -> Path:
    api = API_CONF.replace('fast:file, cheap:file',
                           'fast:file, cheap:file, ceph:rbd_sparse')
    return write_conf(etc, api=api, extra_api=RBD_STORE + extra)


def test_rbd_sparse_store_without_rados_is_an_error(tmp_path):
    # A rados module that cannot load, as on a host without python3-rados
    # (the driver module itself imports fine: it defers the failure).
    site = tmp_path / 'site'
    site.mkdir()
    for name in ('rados', 'rbd'):
        (site / ('%s.py' % name)).write_text(
            "raise ImportError('lib%s.so.1: cannot open shared object "
            "file')\n" % name)
    etc = rbd_conf(tmp_path / 'etc')
    proc = run('--config-dir', str(etc), extra_path=site)
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        "ERROR  store 'ceph': driver 'rbd_sparse' needs the Python module(s) "
        "rados (librados.so.1: cannot open shared object file), rbd "
        "(librbd.so.1: cannot open shared object file); Glance would fail "
        "to configure it"]


def test_rbd_sparse_store_options_are_read(tmp_path):
    pytest.importorskip('rados')
    etc = rbd_conf(tmp_path / 'etc', extra='rbd_sparse_granularity = 1000\n'
                   'rbd_store_chunk_sise = 8\n')
    report = check_config.check([], [str(etc)])
    assert report.errors == [
        '%s: [ceph] rbd_store_chunk_sise is not an option of that section '
        '(did you mean rbd_store_chunk_size?)' % (etc / 'glance-api.conf'),
        '[ceph] rbd_sparse_granularity = 1000 is not valid: Should be '
        'greater than or equal to 4096',
    ]
    assert ("store 'ceph': driver 'rbd_sparse' "
            "(glance_imgplugins.stores.rbd_sparse:Store)" in report.ok)


def test_rbd_sparse_granularity_must_be_a_power_of_two(tmp_path):
    pytest.importorskip('rados')
    etc = rbd_conf(tmp_path / 'etc', extra='rbd_sparse_granularity = 12288\n')
    report = check_config.check([], [str(etc)])
    assert report.errors == [
        "store 'ceph': [ceph] rbd_sparse_granularity must be a power of two "
        "between 4096 and the object size (8388608 bytes), not 12288"]


def test_unknown_store_driver_is_reported(tmp_path):
    api = API_CONF.replace('fast:file, cheap:file', 'fast:file, odd:flie')
    etc = write_conf(tmp_path / 'etc', api=api)
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        "ERROR  store 'odd': store driver 'flie' is not provided by any "
        "installed package (did you mean 'file'?)",
        # No longer enabled, so nothing reads it.
        'ERROR  %s: section [cheap] is not read by Glance or any installed '
        'plugin or store' % (etc / 'glance-api.conf')]


def test_default_backend_must_be_an_enabled_store(tmp_path):
    api = API_CONF.replace('default_backend = fast', 'default_backend = fats')
    report = check_config.check([], [str(write_conf(tmp_path / 'etc',
                                                    api=api))])
    assert report.errors == [
        '[glance_store] default_backend = fats is not one of '
        'enabled_backends (fast, cheap)']


def test_python_interpreter_that_is_not_python_is_an_error(tmp_path):
    api = API_CONF.replace('python_interpreter = {python}',
                           'python_interpreter = /bin/sh')
    proc = run('--config-dir', str(write_conf(tmp_path / 'etc', api=api)))
    assert proc.returncode == 1
    assert lines(proc, 'ERROR') == [
        'ERROR  [wsgi] python_interpreter = /bin/sh is not a Python '
        'interpreter: Glance runs qemu-img under prlimit with it, so every '
        'conversion and inspection would fail']


def test_python_without_oslo_concurrency_is_an_error(tmp_path):
    bare = tmp_path / 'bare'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(bare)],
                   check=True)
    python = bare / 'bin' / 'python'
    api = API_CONF.replace('python_interpreter = {python}',
                           'python_interpreter = %s' % python)
    report = check_config.check([], [str(write_conf(tmp_path / 'etc',
                                                    api=api))])
    assert report.errors == [
        "[wsgi] python_interpreter = %s is a Python without oslo_concurrency "
        "installed: Glance runs qemu-img under prlimit with it, so every "
        "conversion and inspection would fail" % python]


def test_conf_d_directories_are_read(tmp_path):
    etc = write_conf(tmp_path / 'etc')
    (etc / 'glance-api.conf.d').mkdir()
    (etc / 'glance-api.conf.d' / '10-conversion.conf').write_text(
        '[format_conversion]\noutput_format = vmdk\n')
    (etc / 'glance-api.conf.d' / '20-typo.conf').write_text(
        '[DEFAULT]\nenabled_import_method = glance-direct\n')
    proc = run('--config-dir', str(etc))
    assert proc.returncode == 1
    assert str(etc / 'glance-api.conf.d' / '20-typo.conf') in (
        proc.stdout.splitlines()[0])
    errors = lines(proc, 'ERROR')
    # The conf.d value overrides glance-image-import.conf's, as in Glance.
    assert any(e.startswith("ERROR  import plugin 'format_conversion': ")
               and 'vmdk' in e for e in errors), errors
    assert ('ERROR  %s: [DEFAULT] enabled_import_method is not an option '
            'of that section (did you mean enabled_import_methods?)'
            % (etc / 'glance-api.conf.d' / '20-typo.conf')) in errors


WEIGHT_ERROR = 'not an integer'


def test_a_conf_d_directory_can_be_given_directly(tmp_path):
    etc = write_conf(tmp_path / 'etc')
    extra = tmp_path / 'extra.conf.d'
    extra.mkdir()
    (extra / 'stores.conf').write_text('[fast]\nweight = heavy\n')
    proc = run('--config-dir', str(etc), '--config-dir', str(extra))
    assert proc.returncode == 1
    assert str(extra / 'stores.conf') in proc.stdout.splitlines()[0]
    assert lines(proc, 'ERROR') == [
        'ERROR  [fast] weight = heavy is not valid: %s' % WEIGHT_ERROR]


def test_unread_file_in_the_config_dir_is_a_warning(tmp_path):
    etc = write_conf(tmp_path / 'etc')
    (etc / 'glance-import.conf').write_text('[format_conversion]\n')
    report = check_config.check([], [str(etc)])
    assert report.errors == []
    assert report.warnings == [
        '%s is not read by glance-api (it reads glance-image-import.conf and '
        'glance-api.conf and the *.conf files of glance.conf.d/ and '
        'glance-api.conf.d/)' % (etc / 'glance-import.conf')]


def test_glance_config_dir_environment_and_etc_glance_default(tmp_path):
    etc = write_conf(tmp_path / 'etc')
    env = dict(os.environ, OS_GLANCE_CONFIG_DIR=str(etc))
    proc = run(env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(etc / 'glance-api.conf') in proc.stdout.splitlines()[0]
    env.pop('OS_GLANCE_CONFIG_DIR')
    if os.path.exists('/etc/glance'):
        pytest.skip('this machine has a /etc/glance')
    proc = run(env=env)
    assert proc.returncode == 2
    assert proc.stderr == ('ERROR  no configuration files found in '
                           '/etc/glance (give --config-dir or '
                           '--config-file)\n')


def test_missing_config_is_an_error(tmp_path):
    proc = run('--config-dir', str(tmp_path / 'nowhere'))
    assert proc.returncode == 2
    assert proc.stderr == ('ERROR  no configuration files found in %s (give '
                           '--config-dir or --config-file)\n'
                           % (tmp_path / 'nowhere'))


def test_thick_staging_is_a_warning_with_its_cost(tmp_path):
    api = API_CONF.replace('filesystem_thin_provisioning = True\n', '')
    etc = write_conf(tmp_path / 'etc', api=api)
    report = check_config.check([], [str(etc)])
    assert report.errors == []
    assert report.warnings == [
        '[os_glance_staging_store] filesystem_thin_provisioning is off: '
        'copy-image and web-download stage every zero byte (a 4 GiB image '
        'holding 238 MiB took 4096 MiB of staging, measured; on, Glance\'s '
        'zero test costs about 4.5 s per GiB of zeros instead); see '
        'rbd_sparse.html#staging-thin-provisioning']
