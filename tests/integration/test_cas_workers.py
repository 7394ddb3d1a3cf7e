"""`veil cas serve --workers N`: several processes on one port, one store, shared metrics,
stopping together."""

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cas_server import CasServer, Owner, node_platform, pinned_owner, register_platform
from tests.conftest import PYTHON, SHOW, measurement_of, session_dict, wait_gone
from tests.net import free_port
from veil.client.http import CasConnection, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource

CONFIG_ID = "multi/app/app"


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasServer]:
    server = CasServer(tmp_path / "cas", free_port(), tmp_path / "cas.log", extra=["--workers", "2"]).start()
    yield server
    server.stop()


def listeners(port: int) -> set[int]:
    """The processes listening on ``port``."""
    out = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def provision_fresh(cas: CasServer, owner: Owner, key: PlatformSigningKey) -> dict[str, str]:
    """One provision over a new connection (the kernel picks the worker per connection)."""
    connection = CasConnection(cas.url, owner.pin(cas.url)["ca_certificate"])
    try:
        granted = provision(
            HttpCasClient(connection), SimEvidenceSource(key), CONFIG_ID, measurement_of([PYTHON, str(SHOW)])
        )
    finally:
        connection.close()
    return granted.bundle.environment


def scrape(cas: CasServer, owner: Owner) -> str:
    connection = CasConnection(cas.url, owner.pin(cas.url)["ca_certificate"])
    try:
        conn = connection._connection()
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        connection.close()


def grants(page: str) -> float:
    found = re.search(r'^veil_attestations_total\{result="grant"\} (\S+)$', page, re.M)
    return float(found.group(1)) if found else 0.0


def test_workers_share_the_port_the_sessions_and_the_metrics(tmp_path: Path, cas: CasServer) -> None:
    assert cas.process is not None
    workers = listeners(cas.port)
    assert len(workers) == 2 and cas.process.pid in workers

    alice = pinned_owner(tmp_path, cas)
    key = PlatformSigningKey.load_or_create(register_platform(tmp_path, cas) / "las" / "platform.key")
    platforms = [node_platform(tmp_path)[1]]
    document = session_dict(name="multi/app", environment={"STAGE": "one"}, sim_platforms=platforms)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    assert alice.veil("session", "create", str(policy)).returncode == 0
    assert {provision_fresh(cas, alice, key)["STAGE"] for _ in range(12)} == {"one"}

    # an update written through one worker is what every worker serves next
    document["services"][0]["environment"] = {"STAGE": "two"}
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    updated = alice.veil("session", "update", str(policy))
    assert updated.returncode == 0, updated.stderr
    assert {provision_fresh(cas, alice, key)["STAGE"] for _ in range(12)} == {"two"}

    # whichever worker answers the scrape counts the grants of both
    assert {grants(scrape(cas, alice)) for _ in range(6)} == {24.0}
    audit = alice.veil("audit", "verify", "--cas", cas.url)
    assert audit.returncode == 0, audit.stderr


def test_a_dead_worker_stops_the_cas_with_an_error(cas: CasServer) -> None:
    assert cas.process is not None
    (child,) = listeners(cas.port) - {cas.process.pid}
    os.kill(child, signal.SIGKILL)
    assert cas.process.wait(timeout=30) != 0
    assert re.search(r"worker \d+ exited with status -9", cas.log.read_text())
    assert listeners(cas.port) == set()


def test_killing_the_cas_leaves_no_worker_serving(cas: CasServer) -> None:
    assert cas.process is not None
    (child,) = listeners(cas.port) - {cas.process.pid}
    cas.process.kill()
    cas.process.wait(timeout=30)
    assert wait_gone(child), "a worker outlived the CAS process"
    assert listeners(cas.port) == set()


def test_a_stopped_cas_stops_its_workers_cleanly(cas: CasServer) -> None:
    assert cas.process is not None
    (child,) = listeners(cas.port) - {cas.process.pid}
    cas.process.send_signal(signal.SIGINT)
    assert cas.process.wait(timeout=30) == 0
    assert wait_gone(child)
    assert "Traceback" not in cas.log.read_text()
