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

"""The failure table in the docs says what the hierarchy does."""

from __future__ import annotations

import pathlib
import re

from glance_imgplugins import exception

DOC = pathlib.Path(__file__).resolve().parents[2] / 'doc' / 'source' / \
    'failures.rst'


def _rows() -> dict[str, tuple[str, str]]:
    rows = {}
    text = DOC.read_text()
    for match in re.finditer(r'\* - ``(\w+)``\n\s+- (\w+)\n\s+- (\w+)',
                             text):
        rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def _failure_classes() -> list[type[exception.ImportFailure]]:
    found = []
    todo = list(exception.ImportFailure.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls not in (exception.ContentRefused, exception.Retryable):
            found.append(cls)
    return found


def test_every_failure_class_has_its_row():
    rows = _rows()
    classes = _failure_classes()
    assert len(classes) > 15
    for cls in classes:
        assert cls.__name__ in rows, cls.__name__
        status, staged = rows[cls.__name__]
        assert status == cls.status, cls.__name__
        assert staged == ('kept' if cls.keep_staged else 'removed'), \
            cls.__name__


def test_no_row_for_a_class_that_is_gone():
    names = {cls.__name__ for cls in _failure_classes()}
    assert set(_rows()) <= names


def test_the_two_branches_are_the_contract():
    assert issubclass(exception.QemuImgRefused, exception.ContentRefused)
    assert issubclass(exception.ConfigError, exception.Retryable)
    assert exception.ContentRefused.status == 'queued'
    assert not exception.ContentRefused.keep_staged
    assert exception.Retryable.status == 'uploading'
    assert exception.Retryable.keep_staged
