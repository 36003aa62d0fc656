"""Unit-test fixtures: the image corpus, built once per session."""

import pytest

from tests.support import images


@pytest.fixture(scope='session')
def corpus(tmp_path_factory):
    """A lazily built :class:`tests.support.images.Corpus`, shared."""
    return images.Corpus(tmp_path_factory.mktemp('corpus'))
