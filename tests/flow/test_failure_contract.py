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

"""The failure contract, class by class, for every plugin.

Each failure class of :mod:`glance_imgplugins.exception` ends the import in
its documented state: the status, what happens to the staged data, the
failed stores and the exact message users read.  A real taskflow engine
runs Glance's own lock and staging tasks and our plugins on corpus images.
"""

from __future__ import annotations

import pathlib
import re
import stat
from typing import Any, Callable

import pytest
from glance.common import exception as glance_exception
from oslo_config import cfg
from taskflow.patterns import linear_flow as lf

from glance_imgplugins import qemu_img
from glance_imgplugins.plugins import base
from glance_imgplugins.plugins import format_conversion
from glance_imgplugins.plugins import image_introspection
from glance_imgplugins.plugins import property_injection
from tests.flow.conftest import STORES
from tests.support.digest import sha256
from tests.support import images

PLUGINS = [image_introspection.get_flow, format_conversion.get_flow,
           property_injection.get_flow]
FAILED = ','.join(sorted(STORES))


def staging_files(imp) -> set[str]:
    return {p.name for p in imp.staged.parent.iterdir()}


def assert_failed(imp, plugins: list[Callable[..., Any]], message: str, *,
                  status: str, staged_kept: bool,
                  regex: bool = False) -> str:
    """Run the import; check the whole contract; return the message."""
    declared = imp.image.disk_format
    before = sha256(imp.staged)
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(plugins)
    text = str(err.value.msg)
    if regex:
        assert re.fullmatch(message, text), text
    else:
        assert text == message
    # Never a host path, a repr or a class name.
    assert str(imp.staged.parent) not in text
    assert 'Error(' not in text and 'LocationInfo' not in text
    image = imp.image
    assert image.status == status
    assert image.disk_format == declared
    assert image.extra_properties['os_glance_failed_import'] == FAILED
    assert image.extra_properties['os_glance_importing_to_stores'] == ''
    assert 'os_glance_import_task' not in image.extra_properties
    assert 'img_original_disk_format' not in image.extra_properties
    assert not any(k.startswith(('vmware_', 'hw_'))
                   for k in image.extra_properties)
    if staged_kept:
        assert staging_files(imp) == {imp.image_id}
        assert sha256(imp.staged) == before
        assert image.size == imp.staged.stat().st_size
    else:
        assert staging_files(imp) == set()
    return text


def conf_file(tmp_path: pathlib.Path, text: str) -> cfg.ConfigOpts:
    path = tmp_path / 'glance-image-import.conf'
    path.write_text(text)
    conf = cfg.ConfigOpts()
    conf([], project='glance', default_config_files=[str(path)])
    return conf


def with_conf(task_class: type[base.PluginTask], conf: cfg.ConfigOpts
              ) -> Callable[..., lf.Flow]:
    """A get_flow() whose task reads ``conf`` instead of cfg.CONF."""
    def get_flow(**kwargs: Any) -> lf.Flow:
        request = base.ImportRequest.from_kwargs(kwargs)
        if task_class is property_injection.InjectProperties:
            task = task_class(request, None, conf=conf)
        else:
            task = task_class(request, conf=conf)
        return lf.Flow(request.task_type).add(task)
    return get_flow


# --- retryable: the configuration, each plugin ------------------------------

BAD_OPTIONS = {
    'image_introspection': (
        image_introspection.IntrospectImage,
        '[image_introspection]\noverride_user_properties = perhaps\n',
        "Invalid configuration: [image_introspection] "
        "override_user_properties: Unexpected boolean value 'perhaps'"),
    'format_conversion': (
        format_conversion.ConvertImage,
        '[format_conversion]\noutput_format = vmdk\n',
        "Invalid configuration: [format_conversion] output_format: Valid "
        "values are [raw, qcow2], but found 'vmdk'"),
    'property_injection': (
        property_injection.InjectProperties,
        '[property_injection]\ninject_metadata_compat = perhaps\n',
        "Invalid configuration: [property_injection] "
        "inject_metadata_compat: Unexpected boolean value 'perhaps'"),
}


@pytest.mark.parametrize('plugin', sorted(BAD_OPTIONS))
def test_bad_option_keeps_the_staged_data_for_a_retry(make_import, tmp_path,
                                                      plugin):
    task_class, text, message = BAD_OPTIONS[plugin]
    imp = make_import('qcow2_v3')
    bad = conf_file(tmp_path, text)
    plugins = [with_conf(task_class, bad) if get_flow.__module__.endswith(
        plugin) else get_flow for get_flow in PLUGINS]
    # get_flow() itself never raises: Glance would drop the plugin.
    assert plugins[0](**imp.kwargs()) is not None
    if plugin == 'property_injection':
        # It runs after the conversion: the converted data stays staged,
        # under its own disk_format, for the retry.
        with pytest.raises(glance_exception.UploadException) as err:
            imp.run(plugins)
        assert str(err.value.msg) == message
        image = imp.image
        assert image.status == 'uploading'
        assert image.disk_format == 'raw'
        assert image.extra_properties['img_original_disk_format'] == 'qcow2'
        assert image.extra_properties['os_glance_failed_import'] == FAILED
        assert image.extra_properties['os_glance_importing_to_stores'] == ''
        assert staging_files(imp) == {imp.image_id}
        assert image.size == imp.staged.stat().st_size
    else:
        assert_failed(imp, plugins, message, status='uploading',
                      staged_kept=True)
    # The operator fixes the option; the user imports again, no upload.
    imp.restart()
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert imp.image.extra_properties['img_original_disk_format'] == 'qcow2'


@pytest.mark.parametrize('plugin', sorted(BAD_OPTIONS))
def test_bad_option_on_web_download_leaves_the_status_to_glance(
        make_import, tmp_path, plugin):
    task_class, text, message = BAD_OPTIONS[plugin]
    imp = make_import('qcow2_v3', import_method='web-download')
    bad = conf_file(tmp_path, text)
    plugins = [with_conf(task_class, bad) if get_flow.__module__.endswith(
        plugin) else get_flow for get_flow in PLUGINS]
    with pytest.raises(glance_exception.UploadException) as err:
        imp.run(plugins)
    assert str(err.value.msg) == message
    image = imp.image
    # Glance's download task (not in this flow) sets queued and removes the
    # staged file after us; setting queued first would break its revert.
    assert image.status == 'importing'
    assert image.extra_properties['os_glance_failed_import'] == FAILED


def test_the_default_configuration_has_no_problem():
    for spec in (image_introspection.SPEC, format_conversion.SPEC,
                 property_injection.SPEC):
        assert spec.check_config(cfg.CONF) == [], spec.name


# --- content refused: queued, staged data removed ----------------------------

QEMU_MESSAGES = {
    'qcow2_l1_too_large': 'l1_table',
    'qcow2_header_too_long': 'header',
    'qcow2_cluster_bits_8': 'cluster_size',
    'qcow2_refcount_table_too_large': 'refcount_table',
    'qcow2_snapshot_table_too_large': 'snapshot_table',
}


@pytest.mark.parametrize('name', sorted(images.QEMU_REFUSED))
def test_what_qemu_img_refuses_is_a_content_refusal(make_import, name):
    imp = make_import(name, disk_format='qcow2')
    check = images.QEMU_REFUSED[name].qemu_check
    assert QEMU_MESSAGES[name] == check
    assert_failed(imp, PLUGINS, r'qcow2 image failed safety check %s '
                  r'\(qemu-img: [^/()]+\): refused' % check, regex=True,
                  status='queued', staged_kept=False)


@pytest.mark.parametrize('name', sorted(images.COMPRESSED))
def test_compressed_qcow2_is_named_compressed(make_import, name):
    imp = make_import(name, disk_format='qcow2')
    kind = images.COMPRESSED[name].facts['compression']
    assert_failed(imp, PLUGINS, 'Image declared as disk_format qcow2 is %s '
                  'compressed: refused (decompress it first, or ask the '
                  'operator to enable the decompression plugin)' % kind,
                  status='queued', staged_kept=False)


@pytest.mark.parametrize('declared', ['ami', 'ari', 'aki', 'ploop'])
def test_formats_we_do_not_take_are_content_refusals(make_import, declared):
    imp = make_import('raw_plain', disk_format=declared)
    assert_failed(imp, PLUGINS, 'Image format %s is not allowed for import '
                  'here (allowed: raw, gpt, qcow2, vmdk, vhd, vhdx, vdi, '
                  'iso): refused' % declared, status='queued',
                  staged_kept=False)


def test_declared_gpt_without_a_gpt(make_import):
    imp = make_import('raw_plain', disk_format='gpt')
    assert_failed(imp, PLUGINS, 'Image declared as disk_format gpt but its '
                  'content is raw without a valid GPT: refused',
                  status='queued', staged_kept=False)


def test_unsafe_image(make_import):
    imp = make_import('qcow2_data_file')
    assert_failed(imp, PLUGINS, r'qcow2 image failed safety check data_file '
                  r'\(.+\): refused', regex=True, status='queued',
                  staged_kept=False)


# --- retryable: limits, space, the machinery ---------------------------------

def test_expansion_bomb_refused_before_converting(make_import, conf,
                                                  monkeypatch):
    conf.config(max_converted_size=512 * images.MiB,
                group='format_conversion')
    converts: list[str] = []
    real = qemu_img.convert
    monkeypatch.setattr(qemu_img, 'convert',
                        lambda *a, **k: converts.append(a[0]) or real(*a,
                                                                      **k))
    imp = make_import('qcow2_l2_repeat_bomb')
    # The upload is a few hundred KiB; the data it maps is 1 GiB.
    assert imp.staged.stat().st_size < 2 * images.MiB
    text = assert_failed(
        imp, PLUGINS, r'The converted image would hold at least (\d+) bytes '
        r'of data, more than the limit of 536870912 bytes '
        r'\(\[format_conversion\] max_converted_size\): not imported',
        regex=True, status='uploading', staged_kept=True)
    assert int(re.search(r'at least (\d+)', text).group(1)) > 512 * images.MiB
    assert converts == []


def test_expansion_bomb_against_the_staging_space(make_import, conf):
    imp = make_import('vdi_block_repeat_bomb')
    free = format_conversion.free_bytes(str(imp.staged.parent))
    # Leave 64 MiB above the reserve: the 256 MiB the bomb maps do not fit.
    conf.config(staging_reserve=free - 64 * images.MiB,
                group='format_conversion')
    text = assert_failed(
        imp, PLUGINS, r'Not enough space in the staging area for image %s: '
        r'at least (\d+) bytes needed, (\d+) available after the reserve'
        % imp.image_id, regex=True, status='uploading', staged_kept=True)
    needed, available = map(int, re.findall(r'(\d+) ', text)[-2:])
    assert needed > available


def test_benign_image_filling_its_guest_is_converted(make_import, scratch):
    imp = make_import('qcow2_full')
    imp.run(PLUGINS)
    assert imp.image.disk_format == 'raw'
    assert imp.staged.stat().st_blocks * 512 >= images.VIRTUAL_SIZE


def test_staging_space_falling_under_the_reserve_stops_qemu_img(
        make_import, conf, monkeypatch, tmp_path):
    # Another import fills staging while ours converts: the first reading
    # (the guard) is fine, every later one (the watchdog) is not.
    readings = iter([10 * images.GiB])
    monkeypatch.setattr(format_conversion, 'free_bytes',
                        lambda path: next(readings, 0))
    monkeypatch.setattr(qemu_img, 'QEMU_IMG', _slow_convert(tmp_path, 5))
    conf.config(staging_reserve=images.MiB, group='format_conversion')
    imp = make_import('vdi')
    assert_failed(imp, PLUGINS, 'Image conversion stopped: the staging '
                  "area's free space fell under the reserve of 1048576 bytes "
                  '([format_conversion] staging_reserve)',
                  status='uploading', staged_kept=True)


def test_unexpected_error_keeps_the_data_and_says_nothing_internal(
        make_import, monkeypatch):
    def broken(path: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError('cannot read %s' % path)
    monkeypatch.setattr(qemu_img, 'info', broken)
    imp = make_import('qcow2_v3')
    assert_failed(imp, PLUGINS, 'format_conversion failed unexpectedly; see '
                  'the Glance API log', status='uploading', staged_kept=True)


# --- nothing of ours outlives a crash ------------------------------------

def _slow_convert(tmp_path: pathlib.Path, seconds: float) -> str:
    """A qemu-img whose convert first waits."""
    path = tmp_path / 'qemu-img'
    path.write_text('#!/bin/sh\nif [ "$1" = convert ]; then sleep %s; fi\n'
                    'exec qemu-img "$@"\n' % seconds)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _listing_convert(tmp_path: pathlib.Path) -> tuple[str, pathlib.Path]:
    """A qemu-img whose convert, once its output is written, lists the
    staging folder into the returned file."""
    record = tmp_path / 'listing'
    wrapper = tmp_path / 'qemu-img'
    wrapper.write_text(
        '#!/bin/sh\nif [ "$1" = convert ]; then qemu-img "$@" || exit $?; '
        'for a; do src="$prev"; prev="$a"; done; '
        'ls "$(dirname "$src")" > %s; exit 0; fi\nexec qemu-img "$@"\n'
        % record)
    wrapper.chmod(0o755)
    return str(wrapper), record


def test_output_has_no_name_while_qemu_img_writes(make_import, monkeypatch,
                                                  tmp_path):
    wrapper, record = _listing_convert(tmp_path)
    monkeypatch.setattr(qemu_img, 'QEMU_IMG', wrapper)
    imp = make_import('vdi')
    imp.run(PLUGINS)
    # While qemu-img ran (its output complete), staging held only the
    # original: a crash then would have left nothing behind.
    assert record.read_text().split() == [imp.image_id]
    assert staging_files(imp) == {imp.image_id}
    assert imp.image.disk_format == 'raw'


def test_named_output_where_o_tmpfile_cannot_be_used(make_import,
                                                     monkeypatch, tmp_path):
    wrapper, record = _listing_convert(tmp_path)
    monkeypatch.setattr(qemu_img, 'QEMU_IMG', wrapper)
    imp = make_import('vdi')
    monkeypatch.setitem(format_conversion._tmpfile_ok,
                        (str(imp.staged.parent.resolve()), ''), False)
    imp.run(PLUGINS)
    assert sorted(record.read_text().split()) == [imp.image_id,
                                                  imp.image_id + '.raw']
    assert staging_files(imp) == {imp.image_id}


def test_earlier_output_of_a_killed_attempt_is_removed(make_import,
                                                       scratch):
    imp = make_import('qcow2_v3')
    residue = pathlib.Path('%s.raw' % imp.staged)
    residue.write_bytes(b'half a conversion')
    other = imp.staged.parent / 'unrelated-file'
    other.write_bytes(b'not ours')
    imp.run(PLUGINS)
    assert staging_files(imp) == {imp.image_id, 'unrelated-file'}
    assert imp.image.disk_format == 'raw'


# --- property changes undo themselves ---------------------------------------

def test_property_changes_undo_only_what_is_still_ours(make_import):
    imp = make_import('raw_plain', properties={'keep': 'user', 'gone': 'x'})
    changes = base.PropertyChanges()
    with imp.action_wrapper as action:
        changes.apply(action, {'keep': 'ours', 'new': 'ours', 'same': 'v'},
                      remove=['gone', 'absent'])
    assert changes.written == {'keep': 'ours', 'new': 'ours', 'same': 'v'}
    assert changes.removed == {'gone'}
    with imp.action_wrapper as action:
        # Someone else changes "same" after us: it is theirs now.
        action.set_image_extra_properties({'same': 'theirs'})
    with imp.action_wrapper as action:
        changes.undo(action)
    props = imp.image.extra_properties
    assert props['keep'] == 'user'
    assert props['gone'] == 'x'
    assert props['same'] == 'theirs'
    assert 'new' not in props
