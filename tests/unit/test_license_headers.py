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

"""tools/license-headers.py on real files: --check finds what lacks the
header, the default mode adds it once, after a shebang, and leaves empty
files alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'license-headers.py'
MARKER = 'Licensed under the Apache License, Version 2.0'


def tool(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd,
                          capture_output=True, text=True)


def test_check_add_and_check_again(tmp_path: Path) -> None:
    (tmp_path / 'mod.py').write_text('"""Doc."""\n\nX = 1\n')
    (tmp_path / 'run.sh').write_text('#!/usr/bin/env bash\necho hi\n')
    (tmp_path / '__init__.py').write_text('')
    files = ['mod.py', 'run.sh', '__init__.py']

    proc = tool(tmp_path, '--check', *files)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        'mod.py: no Apache-2.0 license header',
        'run.sh: no Apache-2.0 license header',
        '2 file(s) without the license header: run tools/license-headers.py',
    ]

    assert tool(tmp_path, *files).returncode == 0
    mod = (tmp_path / 'mod.py').read_text()
    assert mod.startswith('# Licensed under the Apache License')
    assert mod.endswith('# under the License.\n\n"""Doc."""\n\nX = 1\n')
    script = (tmp_path / 'run.sh').read_text().splitlines()
    assert script[0] == '#!/usr/bin/env bash'
    assert MARKER in script[1]
    assert script[-1] == 'echo hi'
    assert (tmp_path / '__init__.py').read_text() == ''

    proc = tool(tmp_path, '--check', *files)
    assert proc.returncode == 0, proc.stdout
    # Adding twice changes nothing.
    tool(tmp_path, *files)
    assert (tmp_path / 'mod.py').read_text() == mod
