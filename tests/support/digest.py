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

"""Digests of whole files, for comparing what stores hold with sources."""

from __future__ import annotations

import hashlib
import os
from typing import Union

PathLike = Union[str, 'os.PathLike[str]']


def file_digest(path: PathLike, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: PathLike) -> str:
    return file_digest(path, 'sha256')


def md5(path: PathLike) -> str:
    """What Glance records as an image's ``checksum``."""
    return file_digest(path, 'md5')
