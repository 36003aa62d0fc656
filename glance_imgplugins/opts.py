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

"""Every option this package declares, for ``oslo-config-generator``.

Options live beside the code that uses them; the plugins' come from their
:class:`~glance_imgplugins.plugins.base.PluginSpec`, which the plugins and
``check-config`` read too (entry point ``oslo.config.opts`` =
``glance_imgplugins``).
"""

from __future__ import annotations

from oslo_config import cfg

from glance_imgplugins.plugins import base
from glance_imgplugins.plugins import decompression
from glance_imgplugins.plugins import format_conversion
from glance_imgplugins.plugins import image_introspection
from glance_imgplugins.plugins import property_injection

#: The plugins' specs, in the order the sample file shows them.
PLUGIN_SPECS: tuple[base.PluginSpec, ...] = (
    decompression.SPEC,
    image_introspection.SPEC,
    format_conversion.SPEC,
    property_injection.SPEC,
)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    result: list[tuple[str | None, list[cfg.Opt]]] = []
    for spec in PLUGIN_SPECS:
        result.extend(spec.list_opts())
    # Imported here: the store needs glance_store (and, to be used, rados).
    from glance_imgplugins.stores import rbd_sparse
    result.extend((group, list(opts))
                  for group, opts in rbd_sparse.list_opts())
    return result
