"""Shared fixtures: session files for real programs, the embedded CAS, the veil CLI."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from veil.cas import Cas
from veil.crypto import PlatformSigningKey
from veil.tee import measure_command

pytest_plugins = ["tests.postgres", "tests.nvml"]

# `veil run --policy` leaves an embedded CAS server behind for later runs (120 s); hundreds of
# tests in their own homes would leave hundreds. The suite runs in-process unless a test
# asks for the server (tests/integration/test_embedded_server.py).
os.environ.setdefault("VEIL_EMBEDDED_SERVER", "off")

TESTS = Path(__file__).parent
SHOW = TESTS / "programs" / "show.py"
PYTHON = os.path.realpath(sys.executable)
VECTORS = TESTS.parent.parent / "shared" / "vectors"


def measurement_of(argv: list[str], pwd: str = "/") -> str:
    return measure_command(argv, pwd, os.environ.get("PATH")).value


def session_dict(
    name: str = "test/app",
    command: list[str] | None = None,
    environment: dict[str, str] | None = None,
    files: list[dict[str, Any]] | None = None,
    secrets: list[dict[str, Any]] | None = None,
    tolerate: list[str] | None = None,
    measurement: str | None = None,
    service: str = "app",
    sim_platforms: list[str] | None = None,
    **service_extra: Any,
) -> dict[str, Any]:
    command = command or [PYTHON, str(SHOW)]
    security: dict[str, Any] = {"tolerate": ["sim"] if tolerate is None else tolerate}
    if sim_platforms:
        security["sim_platforms"] = sim_platforms
    return {
        "name": name,
        "version": "1",
        "security": security,
        "services": [
            {
                "name": service,
                "attestation": [{"platform": "sim", "measurement": measurement or measurement_of(command)}],
                "command": command,
                "environment": environment or {},
                "pwd": "/",
                "files": files or [],
                **service_extra,
            }
        ],
        "secrets": secrets if secrets is not None else [{"name": "pw", "kind": "ascii", "size": 24}],
    }


JOURNAL = TESTS / "programs" / "journal.py"


def journal_session(data: Path, environment: dict[str, str], accept_fresh: bool = True) -> dict[str, Any]:
    """A session whose service appends to a journal in its volume ``data`` (mounted there)."""
    command = [PYTHON, str(JOURNAL), f"{data}/log/journal.txt"]
    return {
        "name": "test/journal",
        "version": "1",
        "security": {"tolerate": ["sim"]},
        "volumes": [{"name": "data", "mode": "encrypted", "accept_fresh": accept_fresh}],
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement_of(command)}],
                "command": command,
                "environment": environment,
                "volumes": [{"name": "data", "path": str(data)}],
            }
        ],
    }


def session_yaml(**kwargs: Any) -> str:
    return yaml.safe_dump(session_dict(**kwargs), sort_keys=False)


@dataclass
class EmbeddedCas:
    cas: Cas
    platform: PlatformSigningKey


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedCas]:
    cas = Cas.open_embedded(tmp_path / "cas")
    key = PlatformSigningKey.load_or_create(tmp_path / "las" / "platform.key")
    cas.register_sim_platform(key.public_bytes, "local")
    cas.implicit_sim_platforms = frozenset({key.key_id})  # as the embedded CAS of `veil run`
    yield EmbeddedCas(cas, key)
    cas.close()


def veil(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the veil CLI as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "veil", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _own_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's embedded CAS defaults to a data directory of its own (not the user's
    ~/.local/share/veil, shared by every test)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")


def wait_gone(pid: int, seconds: float = 15) -> bool:
    """Whether process ``pid`` ended (gone, or a zombie: its files are closed) in time."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return True
        time.sleep(0.05)
    return False
