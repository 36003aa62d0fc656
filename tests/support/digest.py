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
