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

"""atheris target: the property-injection rules loader (``fuzz/run.sh``).

Usage: ``python -m fuzz.fuzz_rules [libFuzzer flags] CORPUS_DIR...``; the
bytes are loaded as a YAML and as a JSON rules file, and every property of
``fuzz.checks.check_rules`` holds or the input is saved as a crash.
"""

import sys

import atheris

# PyYAML's pure-Python loader is what our _LineLoader runs on: instrument
# it with our loader so coverage sees the parser's branches.
with atheris.instrument_imports(include=['glance_imgplugins.injection_rules',
                                         'yaml']):
    from fuzz import checks


def one_input(data: bytes) -> None:
    checks.check_rules(data)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == '__main__':
    main()
