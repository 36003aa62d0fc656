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

"""``glance-imgplugins``: the operator and user command line.

An osc-lib shell (cliff app) running the commands of
:mod:`glance_imgplugins.osc.commands`, the same classes python-openstackclient
runs as ``openstack image inspect`` and ``openstack image multistore ...``:
``--os-cloud``, ``--os-*`` / ``OS_*``, ``--debug``, ``-f``/``-c`` and
``--version`` come from osc-lib, openstacksdk's config and cliff.

python-glanceclient's ``OS_IMAGE_URL`` + ``OS_AUTH_TOKEN`` (an endpoint and a
token, no Keystone) is taken as keystoneauth's ``admin_token`` plugin when no
other authentication is configured.

Without the ``[cli]`` extra (cliff, osc-lib, openstacksdk) ``inspect`` and
``check-config`` still run through argparse; the other commands say which
extra to install.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, MutableMapping, Sequence

from glance_imgplugins.cmd import status as st

#: What the fallback (no [cli] extra) still offers.
_OFFLINE = ('inspect', 'check-config')
_AUTH_VARS = ('OS_AUTH_TYPE', 'OS_CLOUD', 'OS_AUTH_URL', 'OS_ENDPOINT')


def glanceclient_token_env(env: MutableMapping[str, str]) -> None:
    """Map glanceclient's OS_IMAGE_URL + OS_AUTH_TOKEN onto keystoneauth's
    admin_token plugin (OS_ENDPOINT, OS_TOKEN), unless something else is
    configured."""
    token = env.get('OS_AUTH_TOKEN') or env.get('OS_TOKEN')
    url = env.get('OS_IMAGE_URL')
    if not (token and url) or any(env.get(k) for k in _AUTH_VARS):
        return
    env['OS_AUTH_TYPE'] = 'admin_token'
    env['OS_ENDPOINT'] = url
    env['OS_TOKEN'] = token


def _version() -> str:
    try:
        from importlib import metadata
        return metadata.version('glance-imgplugins')
    except Exception:  # running from a source tree without metadata
        return 'unknown'


def _fallback(argv: Sequence[str], missing: str) -> int:
    """argparse front end for the commands that need no cliff."""
    from glance_imgplugins.cmd import check_config, inspect

    command = next((a for a in argv if not a.startswith('-')), None)
    if command is not None and command not in _OFFLINE:
        sys.stderr.write(
            "glance-imgplugins: error: the %s command needs the CLI "
            "libraries (%s is not installed): install them with: pip "
            "install 'glance-imgplugins[cli]'\n" % (command, missing))
        return st.NOT_STARTED
    parser = argparse.ArgumentParser(
        prog='glance-imgplugins',
        description='Inspect images and check a Glance import '
                    'configuration (import, copy and watch need the [cli] '
                    'extra).', epilog=st.epilog())
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    inspect.register(subparsers)
    check_config.register(subparsers)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def build_app() -> Any:
    """The cliff app (imports cliff and osc-lib: needs the [cli] extra)."""
    from cliff import commandmanager
    from osc_lib import shell
    from osc_lib.api import auth

    from glance_imgplugins.multistore import api as ms_api
    from glance_imgplugins.osc import commands

    class GlanceImgPlugins(shell.OpenStackShell):  # type: ignore[misc]
        def __init__(self) -> None:
            manager = commandmanager.CommandManager(
                'glance_imgplugins.cli', convert_underscores=True)
            for name, cls in commands.STANDALONE.items():
                manager.add_command(name, cls)
            super().__init__(
                description='Inspect images, check a Glance import '
                            'configuration, and import or copy images to '
                            'several stores with live per-store progress.',
                version=_version(), command_manager=manager,
                deferred_help=True)

        def build_option_parser(self, description: Any, version: Any,
                                argparse_kwargs: Any = None) -> Any:
            parser = super().build_option_parser(description, version,
                                                 argparse_kwargs)
            # --os-auth-type and every auth plugin's --os-* options, as
            # python-openstackclient adds them.
            return auth.build_auth_plugins_option_parser(parser)

        def prepare_to_run_command(self, cmd: Any) -> None:
            try:
                super().prepare_to_run_command(cmd)
            except Exception as err:
                from keystoneauth1 import exceptions as ksa_exc
                if isinstance(err, ksa_exc.ClientException):
                    # keystoneauth's own text embeds urllib3 reprs.
                    raise ms_api.translate(err, 'authenticate') from err
                raise

    app = GlanceImgPlugins()
    app.NAME = 'glance-imgplugins'
    return app


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import cliff  # noqa: F401
        import osc_lib  # noqa: F401
        import openstack  # noqa: F401
    except ImportError as err:
        return _fallback(argv, err.name or 'cliff')
    glanceclient_token_env(os.environ)
    try:
        return int(build_app().run(argv))
    except KeyboardInterrupt:
        return st.INTERRUPTED


if __name__ == '__main__':
    sys.exit(main())
