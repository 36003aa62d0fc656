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

import base64
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


# --- --signature: offline verification ------------------------------------

@pytest.fixture(scope='module')
def signed(tmp_path_factory):
    """A CA, a leaf it issued, a qcow2 signed with the leaf (PEM files)."""
    from tests.support import barbican as bb

    work = tmp_path_factory.mktemp('signed')
    ca = bb.Signer('inspect test CA', ca=True)
    leaf = bb.Signer('inspect leaf', issuer=ca)
    raw = images.write_seed(work / 'seed.raw')
    disk = work / 'disk.qcow2'
    images.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw),
                    str(disk))
    (work / 'ca.pem').write_bytes(ca.pem())
    (work / 'leaf.pem').write_bytes(leaf.pem())
    (work / 'other-ca.pem').write_bytes(
        bb.Signer('other CA', ca=True).pem())
    signature = leaf.sign(disk.read_bytes())
    (work / 'sig.b64').write_text(signature + '\n')
    return work, leaf, signature


def _fingerprint(signer):
    from cryptography.hazmat.primitives import hashes
    return signer.cert.fingerprint(hashes.SHA256()).hex(':').upper()


def test_signature_verified_offline(signed, capsys):
    work, leaf, signature = signed
    code, data = _json(capsys, str(work / 'disk.qcow2'), '--signature',
                       signature, '--certificate', str(work / 'leaf.pem'))
    assert code == status.OK
    assert data['signature'] == (
        'verified (RSA-PSS, SHA-256, certificate CN=inspect leaf, SHA-256 '
        'fingerprint %s)' % _fingerprint(leaf))
    assert data['signature_verified'] is True


def test_signature_with_trusted_certificate(signed, capsys):
    """--trusted-certificate: dates and chain, as
    signature_certificate_validation does at import (fallback front end:
    the table row)."""
    work, leaf, _sig = signed
    disk, cert = str(work / 'disk.qcow2'), str(work / 'leaf.pem')
    code = main._fallback(['inspect', disk, '--signature',
                           '@%s' % (work / 'sig.b64'), '--certificate', cert,
                           '--trusted-certificate', str(work / 'ca.pem')],
                          'cliff')
    out = capsys.readouterr()
    assert code == status.OK
    assert out.out.splitlines()[-1] == (
        'signature     verified (RSA-PSS, SHA-256, certificate CN=inspect '
        'leaf, SHA-256 fingerprint %s, within its dates and chained to a '
        'trusted certificate)' % _fingerprint(leaf))
    assert out.err == ''
    code, data = _json(capsys, disk, '--signature', '@%s' % (work / 'sig.b64'),
                       '--certificate', cert, '--trusted-certificate',
                       str(work / 'other-ca.pem'))
    assert code == status.UNSAFE
    assert data['signature'] == (
        'Image signature verification failed: certificate %s is not '
        'trusted: it does not chain to a trusted certificate authority: '
        'refused' % cert)
    assert data['signature_verified'] is False
    assert data['safe'] is True


def test_signature_refusals_read_as_at_import(signed, tmp_path, capsys):
    work, leaf, signature = signed
    disk, cert = str(work / 'disk.qcow2'), str(work / 'leaf.pem')
    # The raw signature bytes in a file are accepted too; another file's
    # signature does not match.
    raw_sig = tmp_path / 'sig.bin'
    raw_sig.write_bytes(base64.b64decode(leaf.sign(b'x')))
    code, data = _json(capsys, disk, '--signature', '@%s' % raw_sig,
                       '--certificate', cert)
    assert code == status.UNSAFE
    assert data['signature'] == (
        'Image signature verification failed: the signature does not match '
        'the image data (certificate %s): refused' % cert)
    code, data = _json(capsys, disk, '--signature', signature,
                       '--certificate', cert, '--hash-method', 'MD5')
    assert code == status.UNSAFE
    assert data['signature'] == (
        'Image signature verification failed: img_signature_hash_method MD5 '
        'is not supported (supported: SHA-224, SHA-256, SHA-384, SHA-512): '
        'refused')
    code, data = _json(capsys, disk, '--signature', signature,
                       '--certificate', str(work / 'sig.b64'))
    assert data['signature'] == (
        'Image signature verification failed: certificate %s is not a '
        'PEM-encoded X.509 certificate: refused' % (work / 'sig.b64'))


def test_signature_usage_and_unreadable(signed, capsys):
    work, _leaf, signature = signed
    disk = str(work / 'disk.qcow2')
    with pytest.raises(SystemExit) as info:
        main.main(['inspect', disk, '--signature', signature])
    assert info.value.code == status.USAGE
    assert capsys.readouterr().err.endswith(
        'error: --signature and --certificate go together (and '
        '--trusted-certificate needs both)\n')
    code = main.main(['inspect', disk, '--signature', signature,
                      '--certificate', str(work / 'missing.pem')])
    assert code == status.UNREADABLE
    assert capsys.readouterr().err == (
        'glance-imgplugins inspect: error: Cannot read %s: No such file or '
        'directory\n' % (work / 'missing.pem'))
