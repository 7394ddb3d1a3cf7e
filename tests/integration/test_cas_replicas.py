"""Several CAS processes on one PostgreSQL; a CAS killed with SIGKILL during writes."""

import random
import signal
import threading
import time
from pathlib import Path

import yaml

from tests.cas_server import (
    CasServer,
    node_platform,
    pinned_owner,
    register_platform,
    signed_update,
    start_cas,
    volume_session,
)
from tests.conftest import PYTHON, SHOW, measurement_of, session_dict
from veil.client.config import ClientConfig
from veil.client.http import CasConnection, CasRequestFailed, HttpCasClient, OwnerClient
from veil.crypto import PlatformSigningKey
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource


def test_three_replicas_lose_no_update_and_never_regress_a_tag(tmp_path: Path, postgres_url: str) -> None:
    shared = tmp_path / "shared-keys"
    replicas = [start_cas(tmp_path, f"replica{i}", db=postgres_url, data=shared) for i in range(3)]
    try:
        alice = pinned_owner(tmp_path, replicas[0], "alice")
        for replica in replicas[1:]:
            assert alice.veil("cas", "attest", replica.url, "--tolerate", "sim").returncode == 0
        policy = volume_session(tmp_path, "rep/app", [node_platform(tmp_path)[1]])
        assert alice.veil("session", "create", str(policy)).returncode == 0
        config = ClientConfig.load(alice.home / "veil")
        owners = [OwnerClient(r.url, config) for r in replicas]

        # 12 writers, each doing read-modify-write 5 times through a random replica
        document = yaml.safe_load(policy.read_text())
        revisions: list[int] = []
        conflicts = 0
        lock = threading.Lock()

        def writer(number: int) -> None:
            nonlocal conflicts
            done = 0
            while done < 5:
                client = random.choice(owners)
                current = client.get_session("rep/app")
                mine = dict(document, predecessor=current["hash"])
                mine["services"] = [dict(document["services"][0], environment={"W": f"{number}-{done}"})]
                try:
                    result = client.update_session(yaml.safe_dump(mine, sort_keys=False))
                except CasRequestFailed as exc:
                    assert exc.status == 409, exc
                    with lock:
                        conflicts += 1
                    continue
                with lock:
                    revisions.append(int(result["revision"]))
                done += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(revisions) == list(range(2, 62))  # every acknowledged update is one revision
        for client in owners:
            assert client.get_session("rep/app")["revision"] == 61

        # volume tags: racing pushes from one previous tag, through all replicas; one wins
        node = register_platform(tmp_path, replicas[0])
        key = PlatformSigningKey.load_or_create(node / "las" / "platform.key")
        runtimes = [HttpCasClient(CasConnection(r.url, config.pin(r.url).ca_certificate)) for r in replicas]
        measurement = measurement_of([PYTHON, str(SHOW)])
        provisioned = provision(runtimes[0], SimEvidenceSource(key), "rep/app/app", measurement)
        previous = None
        for step in range(8):
            winners: list[str] = []

            def push(
                tag: str, client: HttpCasClient, since: str | None = previous, won: list[str] = winners
            ) -> None:
                try:
                    client.push_volume_tag(signed_update(provisioned, "rep/app/app", since, tag))
                except CasRequestFailed as exc:
                    assert exc.status == 409 and "moved on" in str(exc), exc
                    return
                with lock:
                    won.append(tag)

            racers = [threading.Thread(target=push, args=(f"s{step}-{n}", runtimes[n % 3])) for n in range(6)]
            for racer in racers:
                racer.start()
            for racer in racers:
                racer.join()
            assert len(winners) == 1, winners
            previous = winners[0]
        again = provision(runtimes[2], SimEvidenceSource(key), "rep/app/app", measurement)
        assert again.bundle.volumes[0].tag == previous

        verified = alice.veil("audit", "verify", "--cas", replicas[1].url, "--json")
        assert verified.returncode == 0, verified.stderr
    finally:
        for replica in replicas:
            replica.stop()


def test_sigkill_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    server: CasServer = start_cas(tmp_path)
    try:
        alice = pinned_owner(tmp_path, server, "alice")
        config = ClientConfig.load(alice.home / "veil")
        OwnerClient(server.url, config)  # enrol once
        acknowledged: list[str] = []
        for round_ in range(3):
            stop = threading.Event()

            def write(prefix: str, stop: threading.Event = stop) -> None:
                client = OwnerClient(server.url, config)
                n = 0
                while not stop.is_set():
                    name = f"crash/{prefix}-{n}"
                    text = yaml.safe_dump(session_dict(name=name), sort_keys=False)
                    try:
                        client.create_session(text)
                    except CasRequestFailed:
                        return  # the CAS died under us: this write was not acknowledged
                    acknowledged.append(name)
                    n += 1

            writers = [threading.Thread(target=write, args=(f"r{round_}w{w}",)) for w in range(4)]
            for writer in writers:
                writer.start()
            time.sleep(random.uniform(0.5, 2.0))
            server.stop(signal.SIGKILL)
            stop.set()
            for writer in writers:
                writer.join()
            server.start()
        assert len(acknowledged) > 10
        client = OwnerClient(server.url, config)
        stored = set(client.list_sessions())
        missing = [name for name in acknowledged if name not in stored]
        assert not missing
        verified = alice.veil("audit", "verify", "--network", "--json")
        assert verified.returncode == 0, verified.stderr
    finally:
        server.stop()
