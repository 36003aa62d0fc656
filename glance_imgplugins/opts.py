"""Every option this package declares, for ``oslo-config-generator``.

Options live beside the code that uses them; this module only gathers each
module's ``list_opts()`` (entry point ``oslo.config.opts`` =
``glance_imgplugins``).
"""

from __future__ import annotations

import importlib

from oslo_config import cfg

# Modules declaring options, in the order the sample file shows them.
_OPT_MODULES = (
    'glance_imgplugins.plugins.image_introspection',
    'glance_imgplugins.plugins.format_conversion',
    'glance_imgplugins.plugins.property_injection',
    'glance_imgplugins.stores.rbd_sparse',
)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    result: list[tuple[str | None, list[cfg.Opt]]] = []
    for name in _OPT_MODULES:
        module = importlib.import_module(name)
        result.extend((group, list(opts))
                      for group, opts in module.list_opts())
    return result
