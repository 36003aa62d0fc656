"""glance-imgplugins inspect: output and exit status on real corpus images."""

import json
import subprocess
import sys

import pytest

from glance_imgplugins import inspection
from glance_imgplugins.cmd import main
from tests.support import images


def _json(capsys, *argv):
    status = main.main(['inspect', '--format', 'json', *argv])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize('name', ['raw_gpt_esp', 'vmdk_stream_paravirtual',
                                  'qcow2_v2', 'vpc_fixed'])
def test_json_safe(corpus, capsys, name):
    entry = images.ENTRIES[name]
    status, data = _json(capsys, str(corpus.path(name)))
    assert status == 0
    assert data['safe'] is True and data['failures'] == []
    assert data['format'] == entry.format
    assert data['properties'] == dict(entry.properties)
    # Exactly what the plugins get from inspect_file.
    assert data == json.loads(json.dumps(
        inspection.inspect_file(str(corpus.path(name))).to_dict()))


@pytest.mark.parametrize('name', sorted(images.HOSTILE))
def test_json_unsafe_exit_1(corpus, capsys, name):
    status, data = _json(capsys, str(corpus.path(name)))
    assert status == 1
    assert data['safe'] is False
    assert data['failures'] == sorted(images.HOSTILE[name].failures)


def test_table(corpus, capsys):
    status = main.main(['inspect', str(corpus.path('qcow2_data_file'))])
    out = capsys.readouterr().out
    assert status == 1
    assert 'UNSAFE' in out
    assert 'failure       data_file: Image has data_file set' in out
    status = main.main(['inspect', str(corpus.path('vmdk_sparse_buslogic'))])
    out = capsys.readouterr().out
    assert status == 0
    assert 'hw_scsi_model = buslogic  [bus]' in out
    assert 'vmware_adaptertype = busLogic  [vmware]' in out


def test_vmdk_allowed_type_option(corpus, capsys):
    path = str(corpus.path('vmdk_stream_ide'))
    status, data = _json(capsys, '--vmdk-allowed-type', 'monolithicSparse',
                         path)
    assert status == 1 and data['failures'] == ['vmdk_create_type']


def test_unreadable_exit_2(tmp_path, capsys):
    status = main.main(['inspect', str(tmp_path / 'nope')])
    captured = capsys.readouterr()
    assert status == 2
    assert 'cannot read' in captured.err


def test_console_script(corpus):
    # The installed entry point, as an operator runs it; no log noise.
    proc = subprocess.run(
        [sys.executable, '-m', 'glance_imgplugins.cmd.main', 'inspect',
         '--format', 'json', str(corpus.path('vmdk_extent_host_path'))],
        capture_output=True, text=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)['failures'] == ['descriptor']
    assert proc.stderr == ''
