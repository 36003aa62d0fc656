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

"""Run every benchmarks/bench_*.py (or those named) one after the other."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    sys.path.insert(0, str(HERE.parent))
    scripts = sorted(HERE.glob('bench_*.py'))
    if names:
        scripts = [s for s in scripts
                   if s.stem in names or s.stem[len('bench_'):] in names]
    status = 0
    for script in scripts:
        print('\n######## %s' % script.name, flush=True)
        try:
            runpy.run_path(str(script), run_name='__main__')
        except SystemExit as exc:  # a script's own exit must not stop the rest
            if exc.code not in (0, None):
                status = 1
    return status


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
