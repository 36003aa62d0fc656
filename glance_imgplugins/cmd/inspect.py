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
"""``glance-imgplugins inspect FILE``: what the import plugins see in a file.

Prints the detected format, sizes, the safety verdict with each failed check,
the facts, and the properties introspection would set: the same
``inspection.inspect_file`` result the plugins act on.  Exit status: 0 safe,
8 unsafe (refused at import), 7 unreadable input (missing, not a regular
file, changed while read), 2 usage.

The arguments (:func:`add_arguments`) and the work (:func:`collect`) are
defined here once.  Two front ends use them: the cliff command
(``glance_imgplugins.osc.commands.InspectImage``), which is what
``glance-imgplugins inspect`` and ``openstack image inspect`` run, and this
module's ``register``/``run``, the argparse fallback used when the ``[cli]``
extra (cliff, osc-lib) is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from glance_imgplugins import exception, inspection
from glance_imgplugins.cmd import status as st

EXIT_SAFE, EXIT_UNSAFE, EXIT_UNREADABLE = st.OK, st.UNSAFE, st.UNREADABLE


def inspect(path: str, vmdk_allowed_types: list[str] | None = None
            ) -> inspection.InspectionResult:
    """``inspection.inspect_file`` with unreadable input as one error."""
    # format_inspector logs every failed check; the verdict says it.
    logging.getLogger('oslo_utils.imageutils').setLevel(logging.CRITICAL)
    allowed = vmdk_allowed_types or inspection.DEFAULT_VMDK_ALLOWED_TYPES
    try:
        return inspection.inspect_file(path, vmdk_allowed_types=allowed)
    except exception.InspectionInputError as err:
        raise exception.UnreadableInput(
            str(err), path=path, reason=str(err)) from err
    except OSError as err:
        raise exception.UnreadableInput(
            path=path, reason=err.strerror or 'cannot be read') from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``inspect`` arguments, for both front ends (not ``-f``: cliff
    has its own formatters, the fallback adds ``table``/``json``)."""
    parser.add_argument('file', metavar='FILE',
                        help='Image file to inspect.')
    parser.add_argument(
        '--vmdk-allowed-type', dest='vmdk_allowed_types',
        action='append', metavar='TYPE',
        help="Allowed vmdk createType (repeatable; default: %s, as "
             "Glance's [image_format] vmdk_allowed_types)."
             % ', '.join(inspection.DEFAULT_VMDK_ALLOWED_TYPES))
    parser.add_argument(
        '--guest', action='store_true',
        help='Also inspect the guest OS with libguestfs (read-only '
             'appliance; about 25 s without KVM) and show the '
             'properties guest inspection would set.')


@dataclasses.dataclass
class Report:
    """What ``inspect`` found: the header inspection, every field as
    shown (``data``), and the exit status."""

    result: inspection.InspectionResult
    data: dict[str, Any]
    status: int


def collect(args: argparse.Namespace) -> Report:
    """Run what ``args`` asks for.  Raises ``UnreadableInput`` (exit
    status 7) when FILE cannot be read as an image file."""
    result = inspect(args.file, args.vmdk_allowed_types)
    data: dict[str, Any] = result.to_dict()
    status = EXIT_SAFE if result.safe else EXIT_UNSAFE
    if getattr(args, 'guest', False):
        from glance_imgplugins import guest

        data['guest'] = guest.inspect_file(
            args.file, vmdk_allowed_types=args.vmdk_allowed_types)
    return Report(result=result, data=data, status=status)


# --- the argparse fallback ------------------------------------------------

def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        'inspect', help='Inspect an image file: format, safety, properties.',
        description=__doc__.split('\n\n')[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument('-f', '--format', dest='output',
                        choices=('table', 'json'),
                        default='table', help='output format (default: '
                        'table)')
    parser.set_defaults(func=run)


def _size(n: int) -> str:
    value = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if value < 1024:
            return '%d B' % n if unit == 'B' else '%.1f %s' % (value, unit)
        value /= 1024
    return '%.1f TiB' % value


def _guest_rows(found: dict[str, Any]) -> list[tuple[str, str]]:
    if 'error' in found:
        return [('guest', str(found['error']))]
    rows = [('guest', str(found.get('guest', '')))]
    rows += [('guest property', '%s = %s' % item)
             for item in sorted(found.get('properties', {}).items())]
    rows += [('guest warning', str(w)) for w in found.get('warnings', [])]
    return rows


def _table(report: Report) -> str:
    result = report.result
    rows = [
        ('file', result.path),
        ('format', result.format if result.format == result.inspector_name
         else '%s (detected as %s)' % (result.format,
                                      result.inspector_name)),
        ('virtual size', '%d (%s)' % (result.virtual_size,
                                       _size(result.virtual_size))),
        ('file size', '%d (%s)' % (result.file_size, _size(result.file_size))),
        ('allocated', '%d (%s)' % (result.allocated_size,
                                    _size(result.allocated_size))),
        ('verdict', 'safe' if result.safe else 'UNSAFE: refused at import'),
    ]
    rows += [('failure', '%s: %s' % item)
             for item in sorted(result.failures.items())]
    rows += [('fact', '%s = %s' % (k, v))
             for k, v in sorted(result.facts.items())]
    rows += [('property', '%s = %s  [%s]' % (
        k, v, result.property_families.get(k, '')))
        for k, v in sorted(result.properties.items())]
    if 'guest' in report.data:
        rows += _guest_rows(report.data['guest'])
    width = max(len(k) for k, _ in rows)
    return '\n'.join('%-*s  %s' % (width, k, v) for k, v in rows)


def run(args: argparse.Namespace) -> int:
    try:
        report = collect(args)
    except exception.UnreadableInput as err:
        if args.output == 'json':
            print(json.dumps({'path': args.file, 'error': str(err)}))
        print('glance-imgplugins inspect: error: %s' % err, file=sys.stderr)
        return EXIT_UNREADABLE
    if args.output == 'json':
        print(json.dumps(report.data, indent=2, sort_keys=True))
    else:
        print(_table(report))
    return report.status
