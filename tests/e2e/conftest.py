"""Fixtures of the image tests: a network CAS and a LAS."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cas_server import CasServer, start_cas
from tests.deploy import las_server


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasServer]:
    server = start_cas(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def las(tmp_path: Path) -> Iterator[str]:
    with las_server(tmp_path / "node") as address:
        yield address
