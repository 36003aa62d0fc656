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

"""Fail when the committed sample config is not what genconfig writes.

Usage: tools/check-sample-config.py   (run with the project venv's python)
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATOR_CONF = 'etc/oslo-config-generator/glance-imgplugins.conf'
SAMPLE = 'etc/glance-image-import.conf.sample'


def main() -> int:
    generator = os.path.join(os.path.dirname(sys.executable),
                             'oslo-config-generator')
    with tempfile.TemporaryDirectory() as tmp:
        fresh = os.path.join(tmp, 'sample.conf')
        # --output-file overrides the generator config's own output_file.
        subprocess.run([generator, '--config-file', GENERATOR_CONF,
                        '--output-file', fresh], cwd=ROOT, check=True)
        with open(fresh, encoding='utf-8') as f:
            want = f.read().splitlines(keepends=True)
    with open(os.path.join(ROOT, SAMPLE), encoding='utf-8') as f:
        have = f.read().splitlines(keepends=True)
    if want == have:
        print('%s is up to date' % SAMPLE)
        return 0
    sys.stdout.writelines(difflib.unified_diff(
        have, want, SAMPLE + ' (committed)', SAMPLE + ' (generated)'))
    print('%s is stale: regenerate it with `tox -e genconfig` or '
          '`make genconfig` and commit it' % SAMPLE)
    return 1


if __name__ == '__main__':
    sys.exit(main())
