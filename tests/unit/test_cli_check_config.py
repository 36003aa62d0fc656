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

"""``glance-imgplugins check-config`` through cliff: the report's text by
default, one (Level, Message) row per finding with ``-f``; no credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / 'glance-imgplugins')


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    return subprocess.run([CLI, 'check-config', *args], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL)


def test_rows_with_a_formatter(tmp_path: Path) -> None:
    (tmp_path / 'glance-api.conf').write_text(
        '[DEFAULT]\nenabled_backends = fast:file, odd:no_such_driver\n'
        '[glance_store]\ndefault_backend = fast\n'
        '[fast]\nfilesystem_store_datadir = %s\n' % tmp_path)
    text = run('--config-dir', str(tmp_path))
    assert text.returncode == 1
    assert any(line.startswith('ERROR  ') and 'no_such_driver' in line
               for line in text.stdout.splitlines()), text.stdout
    rows = run('--config-dir', str(tmp_path), '-f', 'json')
    assert rows.returncode == 1
    found = json.loads(rows.stdout)
    errors = [r['Message'] for r in found if r['Level'] == 'error']
    # The same findings as the text report, one row each.
    assert errors == [line[len('ERROR  '):]
                      for line in text.stdout.splitlines()
                      if line.startswith('ERROR  ')]
    assert {r['Level'] for r in found} <= {'ok', 'info', 'warning', 'error'}


def test_nothing_to_check(tmp_path: Path) -> None:
    proc = run('--config-dir', str(tmp_path / 'none'), '-f', 'json')
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert 'no configuration files found' in proc.stderr
    assert 'Traceback' not in proc.stderr
