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

"""``decompression``: unpack compressed images before anything else looks
at them.

List it **first** in ``[image_import_opts] image_import_plugins`` (before
``image_introspection`` and ``format_conversion``; ``glance-imgplugins
check-config`` says so when it is not).  The user declares the *inner*
format (``--disk-format qcow2`` for a ``.qcow2.xz``).  On the staged file:

1. the container is recognised by its magic bytes
   (:mod:`glance_imgplugins.decompression`): gzip, xz, bzip2, zstd, zip,
   tar, tar inside a compressor; anything else is left untouched;
2. the payload is streamed to ``<staged>.decompressed`` (an earlier,
   killed attempt's output is removed first), zero runs as holes, under
   the bounds: ``[format_conversion] max_virtual_size``,
   ``max_decompressed_size``, ``max_ratio`` x the compressed size (every
   byte, holes included) and the staging free space less
   ``staging_reserve`` (bytes written); progress shows in the task message;
3. the output replaces the container under the image's own staging name
   (so Glance's own delete and housekeeping know it), ``size`` is set and
   ``img_original_compression`` records the container.

The plugins after it then see the inner image.  Failures follow
:mod:`glance_imgplugins.exception`: an archive that cannot be unpacked
safely (:class:`~glance_imgplugins.exception.ArchiveRefused`) sends the
image back to ``queued`` with the staged data removed; a bound
(:class:`~glance_imgplugins.exception.DecompressedSizeTooLarge`) leaves it
``uploading`` with the container kept for a glance-direct retry once the
operator raised the bound.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units
from taskflow.patterns import linear_flow as lf

from glance_imgplugins import decompression
from glance_imgplugins.plugins import base

LOG = logging.getLogger(__name__)

GROUP = 'decompression'
PLUGIN = 'decompression'

#: Image property recording the container the image was uploaded in.
ORIGINAL_COMPRESSION_PROPERTY = 'img_original_compression'
#: Suffix of the output next to the staged file while it is written.
OUTPUT_SUFFIX = '.decompressed'

decompression_opts = [
    cfg.FloatOpt('max_ratio',
                 default=200.0,
                 min=0.0,
                 help="""
Largest ratio of decompressed to compressed size.

Every decompressed byte counts, zeros written as holes included: a few
hundred KiB of xz can describe a TiB of zeros.  Distribution images unpack
to 3-30 times their compressed size; a mostly empty raw disk can reach a few
hundred.

Possible values:
    * 0 (no ratio cap)
    * A positive number (default 200)

Related options:
    * max_decompressed_size
    * [format_conversion] max_virtual_size
"""),
    cfg.IntOpt('max_decompressed_size',
               min=0,
               help="""
Largest decompressed size, in bytes, of one image.

Every decompressed byte counts, zeros written as holes included.  The
import stops at the first byte past it and fails with this option named,
the compressed upload kept for a retry.

Possible values:
    * Unset: the value of [format_conversion] max_virtual_size, or no cap
      when that plugin's options are not loaded (default)
    * 0: no cap other than max_ratio and the staging space
    * A positive number of bytes

Related options:
    * max_ratio
    * staging_reserve
    * [format_conversion] max_virtual_size
"""),
    cfg.IntOpt('staging_reserve',
               default=units.Gi,
               min=0,
               help="""
Bytes of the staging filesystem that decompression must leave free.

The bytes written (zero runs are holes and cost nothing) must fit the
staging free space less this reserve, measured when decompression starts;
past it the import fails with the staging space named and the compressed
upload kept.

Possible values:
    * A number of bytes (default 1 GiB); 0 lets decompression fill staging

Related options:
    * [format_conversion] staging_reserve
    * [os_glance_staging_store] filesystem_store_datadir
"""),
    cfg.IntOpt('max_decoder_memory',
               default=256 * units.Mi,
               min=16 * units.Mi,
               help="""
Memory, in bytes, one decoder may use (an xz dictionary, a zstd window).

A stream that needs more is refused by name.  ``xz -9`` needs 65 MiB,
``zstd --long=31`` 2 GiB.

Possible values:
    * A number of bytes, at least 16 MiB (default 256 MiB)

Related options:
    * None
"""),
    cfg.FloatOpt('progress_interval',
                 default=2.0,
                 min=0.0,
                 help="""
Seconds between updates of the import task's message while decompressing.

Users see the percentage of the compressed data read and the time elapsed
in ``glance image-tasks``; each update is one database write.

Possible values:
    * A number of seconds (default 2); 0 updates as often as the data
      moves, with the refresh every half second

Related options:
    * [format_conversion] progress_interval
"""),
]


@dataclasses.dataclass(frozen=True)
class Settings:
    max_ratio: float
    #: (limit, option) or None.
    max_size: tuple[int, str] | None
    staging_reserve: int
    max_decoder_memory: int
    progress_interval: float


def _max_virtual_size(conf: cfg.ConfigOpts) -> int | None:
    """``[format_conversion] max_virtual_size`` when that plugin's options
    are loaded (the inner image may never exceed it anyway)."""
    try:
        value = conf.format_conversion.max_virtual_size
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return None
    return int(value) if value else None


def load_settings(conf: cfg.ConfigOpts) -> Settings:
    group = conf[GROUP]
    max_size: tuple[int, str] | None = None
    if group.max_decompressed_size is None:
        virtual = _max_virtual_size(conf)
        if virtual:
            max_size = (virtual, '[format_conversion] max_virtual_size')
    elif group.max_decompressed_size:
        max_size = (group.max_decompressed_size,
                    '[%s] max_decompressed_size' % GROUP)
    return Settings(max_ratio=group.max_ratio, max_size=max_size,
                    staging_reserve=group.staging_reserve,
                    max_decoder_memory=group.max_decoder_memory,
                    progress_interval=group.progress_interval)


SPEC = base.PluginSpec(name=PLUGIN, group=GROUP, opts=decompression_opts,
                       loader=load_settings)
SPEC.register(cfg.CONF)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return SPEC.list_opts()


def check_config(conf: cfg.ConfigOpts) -> list[str]:
    """Problems with this plugin's configuration, for ``check-config``."""
    return SPEC.check_config(conf)


#: A module global, so a test can stand in for the filesystem.
free_bytes = base.free_bytes


def bounds(settings: Settings, compressed_size: int,
           free: int) -> list[decompression.Bound]:
    """The bounds of one decompression, each named as the user reads it."""
    result = []
    if settings.max_size is not None:
        result.append(decompression.Bound(*settings.max_size))
    if settings.max_ratio:
        result.append(decompression.Bound(
            int(settings.max_ratio * max(compressed_size, 1)),
            '[%s] max_ratio %g x the compressed size'
            % (GROUP, settings.max_ratio)))
    result.append(decompression.Bound(
        max(free - settings.staging_reserve, 0),
        'the staging free space less [%s] staging_reserve' % GROUP,
        data_only=True))
    return result


class DecompressImage(base.PluginTask):
    """Replace a compressed staged image by its payload (see module doc)."""

    spec = SPEC
    label = 'Decompression'

    def __init__(self, request: base.ImportRequest,
                 conf: cfg.ConfigOpts | None = None) -> None:
        super().__init__(request, conf, provides='file_path')
        self._decompressed = False
        self._changes = base.PropertyChanges()
        self._summary = 'not compressed: left as it is'

    def run(self, file_path: str | None, settings: Settings) -> str | None:
        image_id = self.request.image_id or 'the image'
        if not file_path:
            return file_path  # nothing staged: the next plugin says so
        src = base.staged_path(file_path)
        out = src + OUTPUT_SUFFIX
        base.remove_file(out)  # residue of an earlier, killed attempt
        container = decompression.detect_file(src)
        if container is None:
            LOG.info('%s: image %s is not compressed', PLUGIN, image_id)
            return file_path
        compressed_size = os.stat(src).st_size
        folder = os.path.dirname(src) or '.'
        limits = bounds(settings, compressed_size, free_bytes(folder))
        message = base.TaskMessage(self.request.task_repo,
                                   self.request.task_id,
                                   settings.progress_interval)
        label = 'Decompressing the %s image' % container

        with base.PercentMessage(message, label,
                                 settings.progress_interval) as shown:
            def progress(done: int, total: int) -> None:
                shown.progress(100.0 * done / total if total else 100.0)

            result = decompression.decompress(
                src, out, limits, progress=progress,
                memory_limit=settings.max_decoder_memory)
            shown.done()
        if result is None:  # changed under us: nothing to unpack
            return file_path
        # The payload takes the staged image's own name: the container is
        # gone and Glance's delete and housekeeping know the file.
        os.replace(out, src)
        self._decompressed = True
        with self.request.action_wrapper as action:
            action.set_image_attribute(size=result.size)
            self._changes.apply(action, {
                ORIGINAL_COMPRESSION_PROPERTY: result.container})
        self._summary = (
            'decompressed %s: %d bytes into %d (%d written, the rest holes)'
            % (result.container, result.compressed_size, result.size,
               result.data_bytes))
        return file_path

    def describe_result(self, result: Any) -> str:
        return self._summary

    # -- revert ---------------------------------------------------------------

    def cleanup(self, src: str | None) -> None:
        if src:
            base.remove_file(src + OUTPUT_SUFFIX)

    def undo(self, action: Any, result: Any, file_path: str | None) -> None:
        """A later task failed (a plugin, a store)."""
        src = base.staged_path(file_path) if file_path else None
        if src:
            base.remove_file(src + OUTPUT_SUFFIX)

        def forget() -> dict[str, Any]:
            # New data will be uploaded or downloaded: the record of this
            # upload's container goes with it.
            self._changes.undo(action)
            return {}

        # Else the decompressed data stays staged (the container recorded):
        # a glance-direct retry imports it without decompressing again.
        self.fail_after_replacing(action, src, self._decompressed, forget)


def get_flow(**kwargs: Any) -> lf.Flow:
    """The plugin's flow; never raises (a bad option fails the task)."""
    request = base.ImportRequest.from_kwargs(kwargs)
    return lf.Flow(request.task_type).add(DecompressImage(request))
