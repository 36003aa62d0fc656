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

"""glance_store's real multi-store API, loaded as Glance loads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from glance_store import multi_backend
from oslo_config import cfg

from tests.support.glance_server import write_ini


def load_multi_stores(workdir: str,
                      backends: Mapping[str, tuple[str, Mapping[str, Any]]]
                      ) -> cfg.ConfigOpts:
    """Write a glance-api.conf-like file and create its stores for real.

    ``backends`` maps store name -> (driver, options of its section); the
    first store is the default.  Returns the ConfigOpts the stores live in.
    """
    sections: dict[str, Mapping[str, Any]] = {
        'DEFAULT': {'enabled_backends': ', '.join(
            '%s:%s' % (name, driver)
            for name, (driver, _) in backends.items())},
        'glance_store': {'default_backend': next(iter(backends))},
    }
    sections.update((name, opts) for name, (_, opts) in backends.items())
    path = Path(workdir) / 'stores.conf'
    write_ini(path, sections)
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf(args=[], default_config_files=[os.fspath(path)])
    multi_backend.register_store_opts(conf)
    count = multi_backend.create_multi_stores(conf)
    if count < len(backends):
        raise RuntimeError('only %d of %d stores could be created'
                           % (count, len(backends)))
    return conf
