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

"""cliff commands shared by the OSC plugin and ``glance-imgplugins``.

Authentication, ``clouds.yaml``, ``--os-*``, ``--debug``, ``-f``/``-c``
and ``--version`` are the libraries' (osc-lib, openstacksdk's config,
keystoneauth, cliff).  What is ours: the arguments, the live progress on
stderr, the result on stdout through cliff's formatters, and an exit status
per outcome (:mod:`glance_imgplugins.cmd.status`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Iterable, TextIO

from cliff import columns as cliff_columns
from cliff import lister, show

from glance_imgplugins import exception
from glance_imgplugins.cmd import multistore as args
from glance_imgplugins.cmd import status as st
from glance_imgplugins.multistore import api as ms_api
from glance_imgplugins.multistore import render, runner

LOG = logging.getLogger(__name__)


class StoresColumn(cliff_columns.FormattableColumn[list[dict[str, Any]]]):
    """Per-store results: a line each in a table, a list in JSON/YAML."""

    def human_readable(self) -> str:
        lines = []
        for store in self._value or []:
            text = '%s: %s' % (store['store'], store['state'])
            if store.get('bytes') is not None:
                text += ', %s' % render.format_bytes(store['bytes'])
            if store.get('detail'):
                text += ' (%s)' % store['detail']
            lines.append(text)
        return '\n'.join(lines)

    def machine_readable(self) -> list[dict[str, Any]]:
        return list(self._value or [])


class DictColumn(cliff_columns.FormattableColumn[Any]):
    """A mapping or list: ``key = value`` lines in a table, as is in JSON."""

    def human_readable(self) -> str:
        value = self._value
        if isinstance(value, dict):
            return '\n'.join('%s = %s' % kv for kv in sorted(value.items()))
        if isinstance(value, (list, tuple)):
            return '\n'.join(str(v) for v in value)
        return '' if value is None else str(value)

    def machine_readable(self) -> Any:
        return self._value


def _prog(app: Any, cmd_name: str) -> str:
    """How users spell this front end's commands: 'openstack image
    multistore ' or 'glance-imgplugins '."""
    words = (cmd_name or '').split()
    group = ' '.join(words[:-1])
    return '%s %s' % (getattr(app, 'NAME', 'glance-imgplugins'),
                      group + ' ' if group else '')


class _Command(show.ShowOne):
    """Exit statuses instead of cliff's 0-or-1, and clean error lines."""

    log = LOG
    auth_required = True
    _status = st.OK

    def get_epilog(self) -> str:
        return st.epilog()

    def _error(self, parsed_args: argparse.Namespace, message: str,
               status: int) -> int:
        renderer = getattr(self, '_renderer', None)
        if renderer is not None:
            renderer.error(message, status)
            if isinstance(renderer, render.JsonRenderer):
                return status  # stderr stays JSON lines only
        self._stderr().write('%s: error: %s\n' % (
            ' '.join(filter(None, [getattr(self.app, 'NAME', ''),
                                   self.cmd_name])), message))
        self._stderr().flush()
        return status

    def _stderr(self) -> TextIO:
        return getattr(self.app, 'stderr', None) or sys.stderr

    def run(self, parsed_args: argparse.Namespace) -> int:
        self._status = st.OK
        try:
            super().run(parsed_args)
        except exception.GlanceImgPluginsError as err:
            if getattr(self.app.options, 'debug', False):
                LOG.debug('error details', exc_info=True)
            return self._error(parsed_args, str(err), getattr(
                err, 'exit_status', st.NOT_STARTED))
        return self._status


# --- inspect -----------------------------------------------------------------

class InspectImage(_Command):
    """Inspect an image file offline: format, safety, properties.

    Detected format, sizes, the safety verdict with each failed check, and
    the properties the import plugins would set: the same inspection they
    run at import, without a Glance.
    """

    auth_required = False

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        from glance_imgplugins.cmd import inspect as cmd_inspect

        parser = super().get_parser(prog_name)
        cmd_inspect.add_arguments(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        from glance_imgplugins.cmd import inspect as cmd_inspect

        report = cmd_inspect.collect(parsed_args)
        self._status = report.status
        names = tuple(report.data)
        values = tuple(DictColumn(v) if isinstance(v, (dict, list)) else v
                       for v in report.data.values())
        return names, values


# --- check-config ----------------------------------------------------------

class CheckConfig(lister.Lister):
    """Report what Glance would skip or refuse in its configuration.

    Reads glance-api.conf / glance-image-import.conf (and their conf.d
    folders); needs no credentials.  Text by default; with -f, one row per
    finding (Level, Message) through cliff's formatters.
    """

    log = LOG
    auth_required = False

    def get_epilog(self) -> str:
        return ('exit status: 0 no problem (warnings allowed); 1 problems '
                'found; 2 no configuration file, or one that cannot be '
                'parsed')

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        from glance_imgplugins.cmd import check_config

        parser = super().get_parser(prog_name)
        check_config.add_arguments(parser)
        # No -f: check-config's own text report.
        parser.set_defaults(formatter=None)
        return parser

    def run(self, parsed_args: argparse.Namespace) -> int:
        from glance_imgplugins.cmd import check_config

        if parsed_args.formatter is None:
            return int(check_config.run(parsed_args, out=self.app.stdout))
        try:
            self._report = check_config.check(
                list(parsed_args.config_file or []),
                check_config._dirs(parsed_args))
        except (check_config.ConfigNotFound,
                check_config.ConfigUnreadable) as exc:
            self.app.stderr.write('ERROR  %s\n' % exc)
            return 2
        super().run(parsed_args)
        return int(self._report.exit_status)

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        report = self._report
        rows = [('ok', t) for t in report.ok] + [
            ('info', t) for t in report.info] + [
            ('warning', t) for t in report.warnings] + [
            ('error', t) for t in report.errors]
        return ('Level', 'Message'), rows


# --- import / copy / watch -------------------------------------------------

class _Multistore(_Command):
    _renderer: render.Renderer | None = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        self._arguments(parser)
        args.add_progress(parser)
        return parser

    def _arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def _api(self) -> ms_api.Api:
        manager: Any = self.app.client_manager  # type: ignore[attr-defined]
        try:
            endpoint = manager.get_endpoint_for_service_type(
                'image', region_name=manager.region_name,
                interface=manager.interface)
        except Exception as err:
            raise ms_api.translate(err, 'find the Image API') from err
        if not endpoint:
            raise exception.ApiConnectionError(
                reason='no image endpoint in the service catalog (or set '
                       'image_endpoint_override)')
        return ms_api.Api(manager.session, endpoint)

    def _run(self, run: runner.Runner, parsed_args: argparse.Namespace
             ) -> runner.Result:
        raise NotImplementedError

    def take_action(self, parsed_args: argparse.Namespace
                    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        commands = _prog(self.app, self.cmd_name or '')
        err = self._stderr()
        self._renderer = render.make_renderer(
            err, err, style=parsed_args.progress, commands=commands)
        record = None
        try:
            if parsed_args.record:
                try:
                    record = open(parsed_args.record, 'a')
                except OSError as exc:
                    raise exception.MultistoreError(
                        reason='cannot write %s: %s' % (
                            parsed_args.record, exc.strerror)) from exc
            run = runner.Runner(
                self._api(), self._renderer, interval=parsed_args.interval,
                record=record, retry_for=parsed_args.retry_for,
                stale_after=parsed_args.stale_after, commands=commands)
            result = self._run(run, parsed_args)
        finally:
            if record is not None:
                record.close()
        self._status = result.status
        data = result.as_dict()
        names = tuple(data)
        values = tuple(StoresColumn(v) if k == 'stores' else v
                       for k, v in data.items())
        return names, values


class ImportToStores(_Multistore):
    """Create an image and import it into several stores, live.

    Uploads FILE to staging (glance-direct) or has Glance download --uri
    (web-download), then imports into every --store (or --all-stores),
    showing each store live.
    """

    def _arguments(self, parser: argparse.ArgumentParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument('file', nargs='?', metavar='FILE',
                            help='Local image file (glance-direct).')
        source.add_argument('--file', dest='file_option', metavar='FILE',
                            help='Same as FILE.')
        source.add_argument('--uri', metavar='URL',
                            help='URL Glance downloads (web-download).')
        parser.add_argument('--name', help='Image name.')
        parser.add_argument('--disk-format', required=True,
                            help='raw, qcow2, vmdk, ... as declared to '
                                 'Glance.')
        parser.add_argument('--container-format', default='bare',
                            help='Default bare.')
        parser.add_argument('--property', type=args.parse_property,
                            action='append', default=[], metavar='KEY=VALUE',
                            help='Image property (repeatable).')
        args.add_targets(parser, retry=False)
        args.add_allow_failure(parser)
        args.add_wait(parser)

    def _run(self, run: runner.Runner, parsed_args: argparse.Namespace
             ) -> runner.Result:
        req = runner.ImportRequest(
            name=parsed_args.name, disk_format=parsed_args.disk_format,
            container_format=parsed_args.container_format,
            properties=dict(parsed_args.property),
            stores=parsed_args.stores, all_stores=parsed_args.all_stores,
            allow_failure=parsed_args.allow_failure,
            file=parsed_args.file or parsed_args.file_option,
            uri=parsed_args.uri, wait=parsed_args.wait)
        return run.run_import(req)


class CopyToStores(_Multistore):
    """Copy an active image to more stores, live (copy-image, admin)."""

    def _arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('image', metavar='IMAGE',
                            help='Image name or ID.')
        args.add_targets(parser, retry=True)
        args.add_allow_failure(parser)
        args.add_wait(parser)

    def _run(self, run: runner.Runner, parsed_args: argparse.Namespace
             ) -> runner.Result:
        return run.run_copy(
            parsed_args.image, stores=parsed_args.stores,
            all_stores=parsed_args.all_stores,
            retry_failed=parsed_args.retry_failed,
            allow_failure=parsed_args.allow_failure, wait=parsed_args.wait)


class WatchImport(_Multistore):
    """Follow the running (or last) import of an image, live.

    Picks up an import after Ctrl-C, --no-wait or a lost connection, and
    says when it is stuck.
    """

    def _arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('image', metavar='IMAGE',
                            help='Image name or ID.')

    def _run(self, run: runner.Runner, parsed_args: argparse.Namespace
             ) -> runner.Result:
        return run.run_watch(parsed_args.image)


#: Command name (as ``glance-imgplugins`` spells it) -> class.
STANDALONE: dict[str, type[Any]] = {
    'inspect': InspectImage,
    'check-config': CheckConfig,
    'import': ImportToStores,
    'copy': CopyToStores,
    'watch': WatchImport,
}


def names() -> Iterable[str]:
    return STANDALONE
