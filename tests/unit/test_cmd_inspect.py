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

"""glance-imgplugins inspect: output and exit status on real corpus images.

The cliff command (what ``glance-imgplugins inspect`` and ``openstack image
inspect`` run) and the argparse fallback used without the [cli] extra.
"""

import json
import os
import subprocess
import sys

import pytest

from glance_imgplugins import inspection
from glance_imgplugins.cmd import main
from glance_imgplugins.cmd import status
from tests.support import images


def _json(capsys, *argv):
    status = main.main(['inspect', '--format', 'json', *argv])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize('name', ['raw_gpt_esp', 'vmdk_stream_paravirtual',
                                  'qcow2_v2', 'vpc_fixed'])
def test_json_safe(corpus, capsys, name):
    entry = images.ENTRIES[name]
    code, data = _json(capsys, str(corpus.path(name)))
    assert code == 0
    assert data['safe'] is True and data['failures'] == []
    assert data['format'] == entry.format
    assert data['properties'] == dict(entry.properties)
    # Exactly what the plugins get from inspect_file.
    assert data == json.loads(json.dumps(
        inspection.inspect_file(str(corpus.path(name))).to_dict()))


@pytest.mark.parametrize('name', sorted(images.HOSTILE))
def test_json_unsafe_exit_8(corpus, capsys, name):
    code, data = _json(capsys, str(corpus.path(name)))
    assert code == status.UNSAFE == 8
    assert data['safe'] is False
    assert data['failures'] == sorted(images.HOSTILE[name].failures)


def test_table(corpus, capsys):
    code = main.main(['inspect', str(corpus.path('qcow2_data_file'))])
    out = capsys.readouterr().out
    assert code == status.UNSAFE
    assert '| safe              | False ' in out
    assert '| failure_reasons   | data_file = Image has data_file set' in out
    code = main.main(['inspect', str(corpus.path('vmdk_sparse_buslogic'))])
    out = capsys.readouterr().out
    assert code == 0
    assert 'hw_scsi_model = buslogic' in out
    assert 'vmware_adaptertype = busLogic' in out


def test_value_of_one_column(corpus, capsys):
    code = main.main(['inspect', '-f', 'value', '-c', 'format',
                      str(corpus.path('qcow2_v2'))])
    assert code == 0
    assert capsys.readouterr().out == 'qcow2\n'


def test_vmdk_allowed_type_option(corpus, capsys):
    path = str(corpus.path('vmdk_stream_ide'))
    code, data = _json(capsys, '--vmdk-allowed-type', 'monolithicSparse',
                       path)
    assert code == status.UNSAFE and data['failures'] == ['vmdk_create_type']


def test_missing_file_is_unreadable_input(tmp_path, capsys):
    code = main.main(['inspect', str(tmp_path / 'nope')])
    captured = capsys.readouterr()
    assert code == status.UNREADABLE == 7
    assert captured.err == ('glance-imgplugins inspect: error: Cannot read '
                            '%s: No such file or directory\n'
                            % (tmp_path / 'nope'))
    assert captured.out == ''


def test_fifo_is_unreadable_input(tmp_path, capsys):
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    code = main.main(['inspect', str(fifo)])
    captured = capsys.readouterr()
    assert code == status.UNREADABLE
    assert 'not a regular file' in captured.err
    assert 'Traceback' not in captured.err


def test_usage_error_is_2(capsys):
    with pytest.raises(SystemExit) as info:
        main.main(['inspect'])
    assert info.value.code == status.USAGE


def test_fallback_without_cli_extra(corpus, capsys):
    """Without cliff/osc-lib: inspect and check-config run on argparse."""
    path = str(corpus.path('qcow2_data_file'))
    assert main._fallback(['inspect', '-f', 'json', path], 'cliff') == 8
    assert json.loads(capsys.readouterr().out)['failures'] == ['data_file']
    assert main._fallback(['inspect', '/nonexistent'], 'cliff') == 7
    assert main._fallback(['import', 'x', '--all-stores'], 'cliff') == 1
    err = capsys.readouterr().err
    assert "pip install 'glance-imgplugins[cli]'" in err
    assert 'Traceback' not in err


def test_console_script(corpus):
    # The installed entry point, as an operator runs it; no log noise.
    proc = subprocess.run(
        [sys.executable, '-m', 'glance_imgplugins.cmd.main', 'inspect',
         '--format', 'json', str(corpus.path('vmdk_extent_host_path'))],
        capture_output=True, text=True)
    assert proc.returncode == status.UNSAFE
    assert json.loads(proc.stdout)['failures'] == ['descriptor']
    assert proc.stderr == ''


def test_console_script_without_cli_extra(corpus):
    """cliff missing (as without the [cli] extra): main() falls back."""
    code = ('import sys; sys.modules["cliff"] = None; '
            'from glance_imgplugins.cmd import main; '
            'sys.exit(main.main(sys.argv[1:]))')
    path = str(corpus.path('vmdk_extent_host_path'))
    proc = subprocess.run([sys.executable, '-c', code, 'inspect', '-f',
                           'json', path], capture_output=True, text=True)
    assert proc.returncode == status.UNSAFE, proc.stderr
    assert json.loads(proc.stdout)['failures'] == ['descriptor']
    proc = subprocess.run([sys.executable, '-c', code, 'watch', 'x'],
                          capture_output=True, text=True)
    assert proc.returncode == status.NOT_STARTED
    assert proc.stderr == (
        "glance-imgplugins: error: the watch command needs the CLI "
        "libraries (cliff is not installed): install them with: pip "
        "install 'glance-imgplugins[cli]'\n")


def _options(parser):
    return sorted((a.dest, tuple(a.option_strings), a.help)
                  for a in parser._actions
                  if a.dest not in ('help', 'output', 'formatter', 'columns',
                                    'variables', 'noindent', 'prefix',
                                    'max_width', 'fit_width', 'print_empty',
                                    'sort_columns', 'sort_direction'))


def test_both_front_ends_have_the_same_arguments():
    """One definition (cmd/inspect.add_arguments): what the cliff command
    accepts, the fallback accepts too."""
    import argparse

    from glance_imgplugins.cmd import inspect as cmd_inspect
    from glance_imgplugins.osc import commands

    cliff_parser = commands.InspectImage(
        main.build_app(), None).get_parser('glance-imgplugins inspect')
    top = argparse.ArgumentParser()
    cmd_inspect.register(top.add_subparsers())
    fallback = top._subparsers._group_actions[0].choices['inspect']
    assert _options(cliff_parser) == _options(fallback)
    assert '--guest' in fallback._option_string_actions


def test_fallback_guest_on_an_unsafe_file_names_why(corpus, capsys):
    # Header inspection refuses first, as at import: no appliance starts.
    path = str(corpus.path('qcow2_data_file'))
    assert main._fallback(['inspect', '--guest', path], 'cliff') == 8
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == ('guest         not inspected: the image is unsafe '
                       '(data_file (Image has data_file set))')


def test_fallback_guest_inspects_the_guest(tmp_path, capsys):
    """The fallback's --guest runs the same guest.inspect_file as the
    cliff command (one appliance launch, ~25 s under TCG)."""
    from tests.support import guest_images as gi

    path = gi.build(gi.GUESTS['debian12'], tmp_path)
    assert main._fallback(['inspect', '--guest', '-f', 'json', str(path)],
                          'cliff') == 0
    found = json.loads(capsys.readouterr().out)['guest']
    assert found['properties'] == dict(gi.GUESTS['debian12'].expected)
    assert found['guest'] == 'debian 12, x86_64'
    assert found['warnings'] == []
    from glance_imgplugins import guest
    assert guest.guest_properties(guest.GuestFacts(**found['facts'])) == \
        found['properties']
    assert found['accel'] in ('kvm', 'tcg')
