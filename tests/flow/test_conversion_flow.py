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

"""``format_conversion`` run by a real taskflow engine on staged corpus files.

Real qemu-img converts; the expected bytes are those of a plain
``qemu-img convert`` of the original, compared by sha256.
"""

from __future__ import annotations

import os
import pathlib
import re
import stat

import pytest
from glance.common import exception as glance_exception

from glance_imgplugins import inspection
from glance_imgplugins import qemu_img
from glance_imgplugins.plugins import format_conversion
from glance_imgplugins.plugins import image_introspection
from tests.flow.conftest import Boom, Record, STORES, qemu_convert
from tests.support.digest import sha256
from tests.support import images

convert_flow = format_conversion.get_flow
introspect_flow = image_introspection.get_flow
PLUGINS = [introspect_flow, convert_flow]

# Every benign image that must be converted to raw; the vmdk adapter
# variants only differ in descriptor text, two of them suffice here.
TO_CONVERT = sorted(
    n for n, e in images.BENIGN.items()
    if e.format not in ('raw', 'iso')
    and not (n.startswith('vmdk_') and not n.endswith(('_ide',
                                                       '_paravirtual'))))
FAILED = ','.join(sorted(STORES))


def staging_files(imp) -> set[str]:
    return {p.name for p in imp.staged.parent.iterdir()}


def expected_raw(imp, scratch: pathlib.Path) -> str:
    entry = images.ENTRIES[[n for n, e in images.ENTRIES.items()
                            if imp.source.name.startswith(n + '.')][0]]
    return sha256(qemu_convert(imp.source, entry.qemu_format,
                               scratch / 'expected.raw', 'raw'))


@pytest.mark.parametrize('name', TO_CONVERT)
def test_converts_to_raw_like_qemu_img(make_import, scratch, name):
    imp = make_import(name)
    declared = imp.image.disk_format
    Record.seen.clear()
    imp.run(PLUGINS, [Record()])

    # The output took the staged image's own name (Glance's delete and
    # housekeeping know it); nothing else is left in staging.
    out = imp.staged
    assert Record.seen == ['file://%s' % out]
    assert sha256(out) == expected_raw(imp, scratch)
    image = imp.image
    assert image.disk_format == 'raw'
    assert image.extra_properties['img_original_disk_format'] == declared
    assert image.virtual_size == images.VIRTUAL_SIZE or name.startswith(
        'vpc_')  # vpc rounds to its CHS geometry
    assert image.size == out.stat().st_size == image.virtual_size
    # Sparse: the 16 MiB disk holds 2 MiB of data.
    assert out.stat().st_blocks * 512 < 4 * images.MiB
    assert staging_files(imp) == {imp.image_id}
    # Introspection ran before, on the original.
    for key, value in images.BENIGN[name].properties.items():
        assert image.extra_properties[key] == value
    # Percent done in the task message, ending at 100%.
    messages = imp.task_repo.messages
    assert re.fullmatch(r'Converting image from %s to raw: 0%% done, \d+ s '
                        r'elapsed' % declared, messages[0]), messages
    assert re.fullmatch(r'Converting image from %s to raw: 100%% done, \d+ '
                        r's elapsed' % declared, messages[-1]), messages


def test_already_raw_is_not_copied(make_import):
    imp = make_import('raw_gpt_esp')
    inode = imp.staged.stat().st_ino
    Record.seen.clear()
    imp.run(PLUGINS, [Record()])
    assert Record.seen == ['file://%s' % imp.staged]
    assert imp.staged.stat().st_ino == inode
    assert staging_files(imp) == {imp.staged.name}
    assert imp.image.disk_format == 'raw'
    assert imp.image.virtual_size == images.VIRTUAL_SIZE
    assert 'img_original_disk_format' not in imp.image.extra_properties
    assert imp.image.extra_properties['hw_firmware_type'] == 'uefi'
    assert imp.task_repo.messages == []


def test_iso_is_preserved(make_import):
    imp = make_import('iso')
    before = sha256(imp.staged)
    Record.seen.clear()
    imp.run(PLUGINS, [Record()])
    assert Record.seen == ['file://%s' % imp.staged]
    assert sha256(imp.staged) == before
    assert imp.image.disk_format == 'iso'


def test_iso_converted_when_not_preserved(make_import, conf, scratch):
    conf.config(preserve_iso=False, group='format_conversion')
    imp = make_import('iso')
    imp.run(PLUGINS)
    out = imp.staged
    assert imp.image.disk_format == 'raw'
    assert sha256(out) == sha256(qemu_convert(
        imp.source, 'raw', scratch / 'iso.raw', 'raw'))


def test_qcow2_output(make_import, conf, scratch):
    conf.config(output_format='qcow2', group='format_conversion')
    imp = make_import('vmdk_stream_lsilogic')
    imp.run(PLUGINS)
    out = imp.staged
    assert staging_files(imp) == {imp.image_id}
    assert imp.image.disk_format == 'qcow2'
    assert inspection.inspect_file(str(out)).format == 'qcow2'
    # Same guest data as the original.
    assert sha256(qemu_convert(out, 'qcow2', scratch / 'a.raw', 'raw')) == \
        sha256(qemu_convert(imp.source, 'vmdk', scratch / 'b.raw', 'raw'))


def test_qcow2_input_with_qcow2_output_is_untouched(make_import, conf):
    conf.config(output_format='qcow2', group='format_conversion')
    imp = make_import('qcow2_compressed')
    before = sha256(imp.staged)
    imp.run(PLUGINS)
    assert sha256(imp.staged) == before
    assert staging_files(imp) == {imp.staged.name}


# --- refusals -------------------------------------------------------------

def assert_refused(imp, match: str, *, staged_kept: bool,
                   status: str) -> None:
    declared = imp.image.disk_format
    before = sha256(imp.staged)
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(PLUGINS, [Record()])
    assert match in str(err.value), str(err.value)
    image = imp.image
    assert image.status == status
    assert image.disk_format == declared
    assert image.extra_properties['os_glance_failed_import'] == FAILED
    assert image.extra_properties['os_glance_importing_to_stores'] == ''
    assert 'os_glance_import_task' not in image.extra_properties  # unlocked
    assert 'img_original_disk_format' not in image.extra_properties
    # Introspection's properties were taken back too.
    assert not any(k.startswith(('vmware_', 'hw_'))
                   for k in image.extra_properties)
    if staged_kept:
        assert staging_files(imp) == {imp.staged.name}
        assert sha256(imp.staged) == before
        if status == 'uploading':
            # Staged again: the size is the staged file's.
            assert image.size == imp.staged.stat().st_size
    else:
        assert staging_files(imp) == set()
    return err.value


@pytest.mark.parametrize('name', sorted(images.HOSTILE))
def test_hostile_images_are_refused_by_name(make_import, name):
    imp = make_import(name)
    entry = images.HOSTILE[name]
    if entry.format == 'unknown':
        match = 'Image format could not be determined: format_detection ' \
                '(several formats match: %s): refused' % ', '.join(
                    entry.facts['matched_formats'])
    else:
        match = '%s image failed safety check %s (' % (
            entry.format, sorted(entry.failures)[0])
    exc = assert_refused(imp, match, staged_kept=False, status='queued')
    assert str(exc).endswith(': refused')
    for failure in entry.failures:
        assert failure in str(exc)


def test_declared_format_must_match(make_import):
    imp = make_import('vmdk_sparse_ide', disk_format='qcow2')
    assert_refused(imp, 'Image declared as disk_format qcow2 but its '
                   'content is vmdk: refused', staged_kept=False,
                   status='queued')


def test_iso_declared_as_raw_is_refused(make_import):
    imp = make_import('iso', disk_format='raw')
    assert_refused(imp, 'declared as disk_format raw but its content is '
                   'iso', staged_kept=False, status='queued')


def test_format_not_allowed_is_a_content_refusal(make_import, conf):
    # The declared format is part of the content: a retry cannot help.
    conf.config(allowed_input_formats=['raw', 'qcow2'],
                group='format_conversion')
    imp = make_import('vdi')
    assert_refused(imp, 'Image format vdi is not allowed for import here '
                   '(allowed: raw, qcow2): refused', staged_kept=False,
                   status='queued')


@pytest.mark.parametrize('declared', ['ami', 'ari', 'aki', 'ploop'])
def test_formats_glance_knows_but_we_do_not_take(make_import, declared):
    imp = make_import('raw_plain', disk_format=declared)
    assert_refused(imp, 'Image format %s is not allowed for import here '
                   '(allowed: raw, gpt, qcow2, vmdk, vhd, vhdx, vdi, iso): '
                   'refused' % declared, staged_kept=False, status='queued')


def test_virtual_size_limit_then_retry(make_import, conf, scratch):
    conf.config(max_virtual_size=8 * images.MiB, group='format_conversion')
    imp = make_import('qcow2_v3')
    assert_refused(imp, 'Image virtual size 16777216 bytes exceeds the '
                   'limit of 8388608 bytes ([format_conversion] '
                   'max_virtual_size): not imported', staged_kept=True,
                   status='uploading')
    # The operator raises the limit; the user runs image-import again.
    conf.config(max_virtual_size=0, group='format_conversion')
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert sha256(imp.staged) == expected_raw(imp, scratch)


def test_bad_configuration_fails_the_task_not_get_flow(make_import, conf):
    conf.config(allowed_input_formats=['qcow2', 'floppy'],
                group='format_conversion')
    imp = make_import('qcow2_v3')
    assert format_conversion.get_flow(**imp.kwargs()) is not None
    assert_refused(imp, 'Invalid configuration: [format_conversion] '
                   'allowed_input_formats: unknown format floppy',
                   staged_kept=True, status='uploading')


def test_web_download_failure_leaves_the_status_to_its_task(make_import,
                                                            conf):
    conf.config(max_virtual_size=1, group='format_conversion')
    imp = make_import('qcow2_v3', import_method='web-download')
    # Glance's web-download task (not in this flow) reverts after us: it sets
    # queued (it fails on queued -> queued) and removes the staged file.
    assert_refused(imp, 'exceeds the limit', staged_kept=True,
                   status='importing')


def test_not_enough_space(make_import, conf, monkeypatch):
    # The staging filesystem is reported nearly full; the estimate for
    # an uncompressed qcow2 (its allocated size, ~2 MiB) does not fit.
    monkeypatch.setattr(format_conversion, 'free_bytes',
                        lambda path: 5 * images.MiB)
    conf.config(staging_reserve=4 * images.MiB, group='format_conversion')
    imp = make_import('qcow2_v3')
    exc = assert_refused(imp, 'Not enough space in the staging area for '
                         'image %s: at least 2097152 bytes needed, 1048576 '
                         'available after the reserve' % imp.image_id,
                         staged_kept=True, status='uploading')
    assert str(imp.staged.parent) not in str(exc)


def _wrapper(tmp_path: pathlib.Path, body: str) -> str:
    """A qemu-img that misbehaves on convert (info stays real)."""
    path = tmp_path / 'qemu-img'
    path.write_text('#!/bin/sh\nif [ "$1" = convert ]; then %s; fi\n'
                    'exec qemu-img "$@"\n' % body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_hung_qemu_img_times_out(make_import, conf, monkeypatch, tmp_path):
    monkeypatch.setattr(qemu_img, 'QEMU_IMG',
                        _wrapper(tmp_path, 'exec sleep 60'))
    conf.config(convert_timeout=1.0, group='format_conversion')
    imp = make_import('qcow2_v3')
    assert_refused(imp, 'qemu-img convert did not finish within 1.0 '
                   'seconds', staged_kept=True, status='uploading')


def test_killed_qemu_img(make_import, monkeypatch, tmp_path):
    monkeypatch.setattr(qemu_img, 'QEMU_IMG',
                        _wrapper(tmp_path, 'kill -9 $$'))
    imp = make_import('vdi')
    assert_refused(imp, 'qemu-img convert failed: qemu-img was killed by '
                   'SIGKILL', staged_kept=True, status='uploading')


def test_partial_output_is_removed(make_import, monkeypatch, tmp_path):
    # qemu-img writes part of the output, then dies.
    monkeypatch.setattr(qemu_img, 'QEMU_IMG', _wrapper(
        tmp_path, 'for a; do out="$a"; done; head -c 1000000 /dev/urandom '
        '> "$out"; exit 3'))
    imp = make_import('qcow2_v2')
    assert_refused(imp, 'qemu-img convert failed', staged_kept=True,
                   status='uploading')


# --- a later task fails -----------------------------------------------------

def test_later_failure_after_conversion(make_import, scratch):
    imp = make_import('vmdk_sparse_ide')
    with pytest.raises(RuntimeError, match='store exploded'):
        imp.run(PLUGINS, [Boom()])
    image = imp.image
    # The converted data stays staged under its own disk_format (the
    # original one recorded): a glance-direct retry imports it as it is.
    assert image.status == 'uploading'
    assert image.disk_format == 'raw'
    assert image.extra_properties['img_original_disk_format'] == 'vmdk'
    assert 'vmware_adaptertype' not in image.extra_properties
    assert image.extra_properties['os_glance_failed_import'] == FAILED
    assert staging_files(imp) == {imp.image_id}
    converted = sha256(imp.staged)
    assert converted == expected_raw(imp, scratch)
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert sha256(imp.staged) == converted


def test_later_failure_after_conversion_on_web_download(make_import):
    imp = make_import('vmdk_sparse_ide', import_method='web-download')
    with pytest.raises(RuntimeError, match='store exploded'):
        imp.run(PLUGINS, [Boom()])
    image = imp.image
    # The download task's revert removes the data: back to what the user
    # declared, for a new download.
    assert image.disk_format == 'vmdk'
    assert 'img_original_disk_format' not in image.extra_properties
    assert image.extra_properties['os_glance_failed_import'] == FAILED


def test_later_failure_without_conversion_keeps_staged_data(make_import):
    imp = make_import('raw_plain')
    with pytest.raises(RuntimeError):
        imp.run(PLUGINS, [Boom()])
    assert imp.image.status == 'uploading'
    assert staging_files(imp) == {imp.staged.name}
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'


# --- progress ----------------------------------------------------------------

def test_progress_save_errors_do_not_fail_the_conversion(make_import):
    imp = make_import('qcow2_v3')
    imp.task_repo.fail_saves = True
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert imp.task_repo.messages == []


def test_progress_is_throttled(make_import, conf):
    conf.config(progress_interval=3600.0, group='format_conversion')
    imp = make_import('qcow2_v3')
    imp.run(PLUGINS)
    # The first update and the forced final one; nothing in between.
    assert [m.split(',')[0] for m in imp.task_repo.messages] == [
        'Converting image from qcow2 to raw: 0% done',
        'Converting image from qcow2 to raw: 100% done']


def test_message_refreshed_while_percent_stands_still(make_import, conf,
                                                      monkeypatch, tmp_path):
    # qemu-img that takes 2.5 s before converting (as one slow percent of a
    # big image would): the heartbeat still refreshes the message.
    monkeypatch.setattr(qemu_img, 'QEMU_IMG',
                        _wrapper(tmp_path, 'sleep 2.5'))
    conf.config(progress_interval=0.5, group='format_conversion')
    imp = make_import('qcow2_v3')
    imp.run(PLUGINS)
    stalled = [m for m in imp.task_repo.messages if ': 0% done' in m]
    # One save per elapsed second (the same text is never saved twice).
    assert len(stalled) >= 3, imp.task_repo.messages
    assert stalled[-1].endswith((', 2 s elapsed', ', 3 s elapsed'))
    assert len(set(imp.task_repo.messages)) == len(imp.task_repo.messages)
    assert imp.image.disk_format == 'raw'


# --- configuration and helpers --------------------------------------------

def test_check_config(conf):
    from oslo_config import cfg
    assert format_conversion.check_config(cfg.CONF) == []
    conf.config(allowed_input_formats=['qcow2', 'ploop'],
                group='format_conversion')
    [problem] = format_conversion.check_config(cfg.CONF)
    assert 'allowed_input_formats: unknown format ploop' in problem


def test_check_config_output_format(conf):
    from oslo_config import cfg
    conf.config(allowed_input_formats=[], group='format_conversion')
    [problem] = format_conversion.check_config(cfg.CONF)
    assert problem == ('[format_conversion] allowed_input_formats: empty, '
                       'every import would be refused')


def test_list_opts_help_shape():
    [(group, opts)] = format_conversion.list_opts()
    assert group == 'format_conversion'
    for opt in opts:
        assert 'Possible values:' in opt.help, opt.name
        assert 'Related options:' in opt.help, opt.name


def test_output_is_sparse_on_disk(make_import):
    imp = make_import('qcow2_v3')
    imp.run(PLUGINS)
    st = os.stat(imp.staged)
    assert st.st_size == images.VIRTUAL_SIZE
    assert st.st_blocks * 512 <= 3 * images.MiB
