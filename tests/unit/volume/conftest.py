"""A fresh volume for one test, closed afterwards if the test left it open."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from veil.volume import Volume


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    opened = Volume.create(tmp_path / "vol", os.urandom(32))
    yield opened
    if not opened._closed:
        opened.close()
