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

"""One meaning per exit status, and the documentation lists each one."""

from __future__ import annotations

import re
from pathlib import Path

from glance_imgplugins.cmd import status

DOC = Path(__file__).resolve().parents[2] / 'doc' / 'source' / \
    'multistore.rst'


def test_statuses_are_distinct() -> None:
    codes = [code for code, _text in status.TABLE]
    assert len(codes) == len(set(codes))
    assert sorted(codes) == codes
    assert set(codes) == {status.OK, status.NOT_STARTED, status.USAGE,
                          status.PARTIAL, status.FAILED, status.LOST,
                          status.STUCK, status.UNREADABLE, status.UNSAFE,
                          status.INTERRUPTED}


def test_documented_table_matches() -> None:
    text = DOC.read_text()
    table = text.split('Exit status\n===========\n', 1)[1].split('\n\n')
    rows = [block for block in table if block.startswith('=====  ')][0]
    documented = [int(m) for m in re.findall(r'^(\d+)\s{2,}', rows, re.M)]
    assert documented == [code for code, _text in status.TABLE]


def test_epilog_names_every_status() -> None:
    epilog = status.epilog()
    for code, text in status.TABLE:
        assert '%d %s' % (code, text) in epilog
