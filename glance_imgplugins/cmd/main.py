"""``glance-imgplugins``: the operator and user command line.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (``func(args) -> int`` exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Module names under glance_imgplugins.cmd, in the order --help lists them.
SUBCOMMANDS = ('inspect', 'check_config', 'multistore')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='glance-imgplugins',
        description='Inspect images, check a Glance import configuration, '
                    'and import or copy images to several stores.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    subparsers.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module('glance_imgplugins.cmd.' + name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
