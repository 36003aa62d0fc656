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

"""Exit statuses of ``glance-imgplugins`` and of the ``openstack image``
commands this package adds: one meaning per number, in every command.

doc/source/multistore.rst lists them for users; keep the two in step.
"""

from __future__ import annotations

OK = 0            # every requested store holds the image; inspect: safe
NOT_STARTED = 1   # nothing was started: refused, auth, unknown store...
USAGE = 2         # bad command line (argparse's own status)
PARTIAL = 3       # allow-failure: the image is usable, some stores failed
FAILED = 4        # the import task failed: no usable image from it
LOST = 5          # lost contact with the API mid-watch: the import goes on
STUCK = 6         # the task stopped moving (its API process is gone)
UNREADABLE = 7    # inspect: not a regular file, changed while read, missing
UNSAFE = 8        # inspect: an import would refuse this image (or signature)
INTERRUPTED = 130  # Ctrl-C: we stopped watching, the import goes on

#: (status, meaning) in the order the documentation lists them.
TABLE = (
    (OK, 'success'),
    (NOT_STARTED, 'nothing was started (refused, authentication, API or '
                  'Keystone unreachable, unknown store or image)'),
    (USAGE, 'bad command line'),
    (PARTIAL, 'some stores failed under allow-failure'),
    (FAILED, 'the import failed'),
    (LOST, 'lost contact with the Image API while watching (the import '
           'goes on; the printed watch command resumes)'),
    (STUCK, 'the import is stuck (its task stopped moving)'),
    (UNREADABLE, 'inspect: unreadable input'),
    (UNSAFE, 'inspect: an import would refuse the image (its content or, '
             'with --signature, its signature)'),
    (INTERRUPTED, 'Ctrl-C (an import goes on; watch resumes)'),
)


def epilog() -> str:
    """The exit-status table for ``--help`` epilogs."""
    return 'exit status: ' + '; '.join(
        '%d %s' % (code, text) for code, text in TABLE) + '.'
