#!/usr/bin/env python3
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

"""Add or check the Apache-2.0 license header of the project's sources.

Usage:
    tools/license-headers.py --check   # list files without it, exit 1 if any
    tools/license-headers.py           # add it where it is missing

Files: the tracked ``*.py`` and shell scripts (``*.sh``, ``.ci/run``).
Empty files (package ``__init__.py``) need none.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Sequence

HEADER = '''\
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
'''
MARKER = 'Licensed under the Apache License, Version 2.0'
# The header must come within the first lines (after a shebang, an encoding
# line or a copyright line).
SEARCH_LINES = 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wanted(path: str) -> bool:
    return path.endswith(('.py', '.sh')) or path == '.ci/run'


def tracked_files(root: str) -> list[str]:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return sorted(p for p in out.split('\0') if p and wanted(p))


def has_header(text: str) -> bool:
    return MARKER in ''.join(text.splitlines(keepends=True)[:SEARCH_LINES])


def with_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    keep = 0
    # A shebang and a coding line must stay first.
    while keep < len(lines) and keep < 2 and (
            lines[keep].startswith('#!') or 'coding' in lines[keep]
            and lines[keep].startswith('#')):
        keep += 1
    head, rest = lines[:keep], lines[keep:]
    body = ''.join(rest).lstrip('\n')
    return ''.join(head) + HEADER + ('\n' + body if body else '')


def missing(root: str, paths: Sequence[str]) -> list[str]:
    result = []
    for path in paths:
        with open(os.path.join(root, path), encoding='utf-8') as f:
            text = f.read()
        if text.strip() and not has_header(text):
            result.append(path)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='only list the files without the header')
    parser.add_argument('paths', nargs='*',
                        help='files to handle (default: the tracked ones)')
    args = parser.parse_args(argv)
    paths = args.paths or tracked_files(ROOT)
    root = ROOT if not args.paths else os.getcwd()
    todo = missing(root, paths)
    if args.check:
        for path in todo:
            print('%s: no Apache-2.0 license header' % path)
        if todo:
            print('%d file(s) without the license header: run '
                  'tools/license-headers.py' % len(todo))
        return 1 if todo else 0
    for path in todo:
        full = os.path.join(root, path)
        with open(full, encoding='utf-8') as f:
            text = f.read()
        with open(full, 'w', encoding='utf-8') as f:
            f.write(with_header(text))
        print('%s: header added' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
