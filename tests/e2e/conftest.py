"""Fixtures of the image tests: a network CAS, a LAS, and what a host gives a converted
image's runtime when it starts it (where to attest, the pinned CAS certificate)."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cas_server import CasServer, Owner, start_cas
from tests.net import free_port


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasServer]:
    server = start_cas(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def las(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "veil", "las", "serve", "--listen", f"127.0.0.1:{port}"],
        env={"VEIL_HOME": str(tmp_path / "node"), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, "the LAS did not start"
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def runtime_env(cas: CasServer, owner: Owner, las: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """The environment and injected files a host gives the runtime of a converted image."""
    env = {
        "VEIL_CAS_ADDR": cas.url,
        "VEIL_CAS_CA": "/run/veil/cas.pem",
        "VEIL_LAS_ADDR": las,
        "VEIL_MODE": "sim",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    return env, {"/run/veil/cas.pem": owner.pin(cas.url)["ca_certificate"].encode()}
