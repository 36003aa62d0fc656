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

"""The arguments of the multi-store commands (``import``, ``copy``,
``watch``), shared by ``glance-imgplugins`` and ``openstack image
multistore``: plain argparse, so they are typed and tested without cliff.

The flags follow python-openstackclient's ``image import``: repeatable
``--store`` or ``--all-stores``, ``--allow-failure`` (default) /
``--disallow-failure``, ``--wait`` (default here) / ``--no-wait``.
"""

from __future__ import annotations

import argparse

from glance_imgplugins.multistore import render


def add_progress(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('progress')
    group.add_argument(
        '--progress', choices=render.STYLES, default='auto',
        help='Live per-store progress on stderr: "live" redraws in place '
             '(default on a terminal), "plain" prints a line per change '
             '(default elsewhere), "json" prints JSON lines, "none" '
             'nothing. The result goes to stdout (-f).')
    group.add_argument('--interval', type=positive_seconds, default=1.0,
                       metavar='SECONDS',
                       help='Seconds between polls of the Image API '
                            '(default 1).')
    group.add_argument(
        '--retry-for', type=positive_seconds, default=60.0, metavar='SECONDS',
        help='When the Image API cannot be reached while watching, retry '
             'with a doubling delay for this long, then stop with exit '
             'status 5 and the watch command that resumes (default 60).')
    group.add_argument(
        '--stale-after', type=positive_seconds, default=None,
        metavar='SECONDS',
        help='Report the import as stuck (exit status 6) when its task has '
             'not been updated for this long while the image is importing. '
             "Default: Glance's own import-lock expiry, 3600 (7200 for a "
             'pending task).')
    group.add_argument(
        '--record', metavar='FILE',
        help='Append every image and task answer polled to FILE as JSON '
             'lines (for bug reports and tests).')


def add_wait(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--wait', dest='wait', action='store_true',
                       default=True,
                       help='Follow the import until Glance is done '
                            '(default).')
    group.add_argument('--no-wait', dest='wait', action='store_false',
                       help='Return once the import is started; follow it '
                            'later with the watch command.')


def add_allow_failure(parser: argparse.ArgumentParser) -> None:
    # The names and default of "openstack image import".
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        '--allow-failure', dest='allow_failure', action='store_true',
        default=True,
        help='The image becomes usable when at least one store succeeds; '
             'failed stores are listed in os_glance_failed_import (exit '
             'status 3). Default, as in "openstack image import".')
    group.add_argument(
        '--disallow-failure', dest='allow_failure', action='store_false',
        help='Every store must succeed, or the import fails as a whole '
             '(exit status 4).')


def add_targets(parser: argparse.ArgumentParser, retry: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--store', dest='stores', action='append',
                       metavar='STORE',
                       help='Store to import into (repeatable).')
    group.add_argument('--all-stores', action='store_true',
                       help='Every writable store of this Glance.')
    if retry:
        group.add_argument(
            '--retry-failed', action='store_true',
            help='Copy to the stores listed in os_glance_failed_import.')


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected seconds, got %s'
                                         % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError('expected a positive number of '
                                         'seconds, got %s' % text)
    return value


def parse_property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition('=')
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError('expected KEY=VALUE, got %s' % text)
    return key.strip(), value
