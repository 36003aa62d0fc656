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

"""atheris target: inspect_file on hostile bytes (``fuzz/run.sh``).

Usage: ``python -m fuzz.fuzz_inspection [libFuzzer flags] CORPUS_DIR...``;
every property of ``fuzz.checks.check_inspection`` holds or the input is
saved as a crash.
"""

import logging
import sys

import atheris

# Coverage is measured in the code that reads the bytes: ours and
# format_inspector's.
with atheris.instrument_imports(include=['glance_imgplugins.inspection',
                                         'oslo_utils.imageutils']):
    from fuzz import checks

_MEMFILE = checks.MemFile()


def one_input(data: bytes) -> None:
    checks.check_inspection(data, _MEMFILE)


def main() -> None:
    # format_inspector logs every failed safety check: noise at 10^4 execs/s.
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == '__main__':
    main()
