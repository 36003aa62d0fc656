"""``glance-imgplugins import``, ``copy`` and ``watch``.

Import an image (a local file through glance-direct, or a URL through
web-download) or copy an active one (copy-image) into several stores, and
follow every store live until Glance is done.  Exit statuses::

    0    every requested store holds the image
    1    nothing was started: the API refused, auth or input error
    2    bad command line
    3    allow-failure: the image is usable but some stores failed
    4    the import task failed
    130  Ctrl-C: watching stopped, the import goes on in Glance

See doc/source/multistore.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, Iterator, TextIO

from glance_imgplugins import exception
from glance_imgplugins.multistore import progress as prog
from glance_imgplugins.multistore import render, runner, session

_EPILOG = ('exit status: 0 every store succeeded, 1 not started (error), '
           '2 usage, 3 some stores failed under allow-failure, 4 import '
           'failed, 130 interrupted (the import goes on; resume with '
           '"glance-imgplugins watch IMAGE")')


def _stores(text: str) -> list[str]:
    stores = [s.strip() for s in text.split(',') if s.strip()]
    if not stores:
        raise argparse.ArgumentTypeError('expected store names, e.g. a,b')
    return stores


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition('=')
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError('expected KEY=VALUE, got %r' % text)
    return key.strip(), value


def _common(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group('output')
    out.add_argument('--json', action='store_true',
                     help='JSON lines on stdout (one event per change, '
                          'then a "result" document) instead of text.')
    out.add_argument('--interval', type=float, default=1.0, metavar='SEC',
                     help='Seconds between polls of the Image API '
                          '(default 1).')
    out.add_argument('--record', metavar='FILE',
                     help='Append every image and task answer polled to '
                          'FILE as JSON lines (for bug reports and tests).')
    session.add_arguments(parser)


def _allow_failure(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        '--allow-failure', dest='allow_failure', action='store_true',
        default=True,
        help='Default. The image becomes usable when at least one store '
             'succeeds; failed stores are listed in os_glance_failed_import '
             '(exit status 3). Same default as "glance '
             'image-create-via-import".')
    group.add_argument(
        '--no-allow-failure', dest='allow_failure', action='store_false',
        help='Every store must succeed, or the import fails as a whole '
             '(exit status 4).')


def _targets(parser: argparse.ArgumentParser, retry: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--stores', type=_stores, metavar='A,B',
                       help='Comma-separated store names.')
    group.add_argument('--all-stores', action='store_true',
                       help='Every writable store of this Glance.')
    if retry:
        group.add_argument(
            '--retry-failed', action='store_true',
            help='Copy to the stores listed in os_glance_failed_import.')


def register(subparsers: Any) -> None:
    imp = subparsers.add_parser(
        'import', help='Import an image into several stores, live.',
        description='Create an image, upload FILE (glance-direct) or have '
                    'Glance download --uri (web-download), and import it '
                    'into the stores, showing each store live.',
        epilog=_EPILOG)
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument('file', nargs='?', metavar='FILE',
                        help='Local image file (glance-direct).')
    source.add_argument('--uri', metavar='URL',
                        help='URL Glance downloads (web-download).')
    imp.add_argument('--name', help='Image name.')
    imp.add_argument('--disk-format', required=True,
                     help='raw, qcow2, vmdk, ... as declared to Glance.')
    imp.add_argument('--container-format', default='bare',
                     help='Default bare.')
    imp.add_argument('--property', type=_property, action='append',
                     default=[], metavar='KEY=VALUE',
                     help='Image property (repeatable).')
    _targets(imp, retry=False)
    _allow_failure(imp)
    _common(imp)
    imp.set_defaults(func=run_import)

    copy = subparsers.add_parser(
        'copy', help='Copy an active image to more stores, live.',
        description='Copy an active image into more stores (copy-image, '
                    'needs an admin), showing each store live.',
        epilog=_EPILOG)
    copy.add_argument('image', metavar='IMAGE', help='Image ID.')
    _targets(copy, retry=True)
    _allow_failure(copy)
    _common(copy)
    copy.set_defaults(func=run_copy)

    watch = subparsers.add_parser(
        'watch', help='Follow the running (or last) import of an image.',
        description='Follow the newest import task of IMAGE, e.g. after '
                    'Ctrl-C stopped "import" or "copy".', epilog=_EPILOG)
    watch.add_argument('image', metavar='IMAGE', help='Image ID.')
    _common(watch)
    watch.set_defaults(func=run_watch)


@contextlib.contextmanager
def _runner(args: argparse.Namespace) -> Iterator[runner.Runner]:
    renderer = render.make_renderer(sys.stdout, sys.stderr,
                                    json_lines=args.json)
    record: TextIO | None = None
    try:
        if args.record:
            record = open(args.record, 'a')
        api = runner.Api(session.make_client(args))
        yield runner.Runner(api, renderer, interval=args.interval,
                            record=record)
    finally:
        if record is not None:
            record.close()


def _guard(args: argparse.Namespace, body: Any) -> int:
    try:
        with _runner(args) as run:
            return int(body(run))
    except exception.GlanceImgPluginsError as err:
        if args.json:
            sys.stdout.write(json.dumps({
                'event': 'error', 'error': str(err),
                'exit_status': prog.EXIT_ERROR}) + '\n')
        sys.stderr.write('glance-imgplugins %s: error: %s\n' % (
            args.command, err))
        return prog.EXIT_ERROR


def run_import(args: argparse.Namespace) -> int:
    req = runner.ImportRequest(
        name=args.name, disk_format=args.disk_format,
        container_format=args.container_format,
        properties=dict(args.property), stores=args.stores,
        all_stores=args.all_stores, allow_failure=args.allow_failure,
        file=args.file, uri=args.uri)
    return _guard(args, lambda run: run.run_import(req))


def run_copy(args: argparse.Namespace) -> int:
    return _guard(args, lambda run: run.run_copy(
        args.image, stores=args.stores, all_stores=args.all_stores,
        retry_failed=args.retry_failed, allow_failure=args.allow_failure))


def run_watch(args: argparse.Namespace) -> int:
    return _guard(args, lambda run: run.run_watch(args.image))
