"""The network CAS's master key: sealed to the node, handed to an attested replica, restored
with the owners' recovery key when every replica is lost (docs/cas-storage.md)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.cas_server import CasServer, Owner, pinned_owner, start_cas
from tests.conftest import session_dict
from tests.net import free_port
from veil.crypto import PlatformSigningKey


def _session(owner: Owner, tmp_path: Path, name: str) -> None:
    policy = tmp_path / f"{name.replace('/', '-')}.yaml"
    policy.write_text(yaml.safe_dump(session_dict(name, tolerate=["sim"])))
    created = owner.veil("session", "create", str(policy))
    assert created.returncode == 0, created.stderr


def _reads(owner: Owner, url: str, name: str) -> bool:
    shown = owner.veil("session", "show", name, "--cas", url)
    return shown.returncode == 0 and name in shown.stdout


def _fails_to_start(data: Path, *extra: str) -> str:
    """A `veil cas serve` that must exit with an error; its stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "cas",
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--data",
            str(data),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    return done.stderr


def _audit_events(owner: Owner, url: str) -> list[str]:
    shown = owner.veil("audit", "export", "--cas", url)
    assert shown.returncode == 0, shown.stderr
    return [json.loads(entry["body"])["event"] for entry in json.loads(shown.stdout)["entries"]]


def test_the_master_key_is_sealed_to_the_node_and_a_copied_database_opens_nothing(tmp_path: Path) -> None:
    cas = start_cas(tmp_path, "node")
    alice = pinned_owner(tmp_path, cas)
    _session(alice, tmp_path, "custody/app")
    cas.stop()
    files = sorted(p.name for p in cas.data.iterdir())
    assert "master.sealed" in files and "master.key" not in files and "identity.key" not in files
    assert (cas.data / "master.sealed").stat().st_mode & 0o777 == 0o600

    # the database and the sealed key, without this node's platform key
    thief = tmp_path / "thief"
    thief.mkdir()
    for name in ("cas.db", "master.sealed"):
        shutil.copy(cas.data / name, thief / name)
    PlatformSigningKey.load_or_create(thief / "platform.key")
    stderr = _fails_to_start(thief)
    assert "does not open on this node" in stderr
    assert "--join URL" in stderr and "veil cas recovery restore" in stderr

    # without the sealed key and without a recovery key: a clear refusal, nothing changed
    (thief / "master.sealed").unlink()
    assert "no recovery key was set" in _fails_to_start(thief)
    cas.start()
    assert _reads(alice, cas.url, "custody/app")
    cas.stop()


def test_a_new_replica_receives_the_master_key_only_after_attesting(
    tmp_path: Path, postgres_url: str
) -> None:
    first = start_cas(tmp_path, "first", db=postgres_url)
    alice = pinned_owner(tmp_path, first)
    _session(alice, tmp_path, "replicated/app")
    second_data = tmp_path / "second"
    second_platform = PlatformSigningKey.load_or_create(second_data / "platform.key")
    try:
        # its sim platform is unknown to the CAS: refused, and it never serves
        stderr = _fails_to_start(second_data, "--db", postgres_url, "--join", first.url)
        assert "refused to hand over the master key" in stderr
        assert "platform" in stderr
        assert not (second_data / "master.sealed").exists()

        registered = first.admin.veil(
            "cas", "platform", "add", "--key-file", str(second_data / "platform.key"), "--cas", first.url
        )
        assert registered.returncode == 0, registered.stderr
        second = CasServer(second_data, free_port(), tmp_path / "second.log", postgres_url)
        second.extra = ["--join", first.url]
        second.start()
        try:
            bob = Owner(tmp_path / "bob")
            assert bob.veil("cas", "attest", second.url, "--tolerate", "sim").returncode == 0
            assert bob.pin(second.url)["identity"] == alice.pin(first.url)["identity"], "one identity"
            assert alice.veil("cas", "attest", second.url, "--tolerate", "sim").returncode == 0
            assert _reads(alice, second.url, "replicated/app")
            assert (second_data / "master.sealed").exists()
            events = _audit_events(second.admin, second.url)
            assert events.count("replica.join") == 2 and "replica.joined" in events
            del second_platform
        finally:
            second.stop()
        # restarted, the new replica unseals its own copy: no join needed
        second.extra = []
        second.start()
        assert _reads(alice, second.url, "replicated/app")
        second.stop()
    finally:
        first.stop()


def test_the_recovery_key_restores_the_master_key_when_every_replica_is_lost(tmp_path: Path) -> None:
    keygen = Owner(tmp_path / "alice").veil("cas", "recovery", "keygen", "-o", str(tmp_path / "recovery.key"))
    assert keygen.returncode == 0, keygen.stderr
    assert (tmp_path / "recovery.key").stat().st_mode & 0o777 == 0o600
    cas = start_cas(tmp_path, "lost")
    cas.stop()
    cas.extra = ["--recovery-key", str(tmp_path / "recovery.key.pub")]
    cas.start()
    # the warning of the first start (no recovery key yet) is not repeated
    assert cas.log.read_text().count("warning: no recovery key is set") == 1
    alice = pinned_owner(tmp_path, cas)
    _session(alice, tmp_path, "recovered/app")
    identity = alice.pin(cas.url)["identity"]
    cas.stop()

    # the node is lost; the database survives (a backup, or the PostgreSQL server)
    new = CasServer(tmp_path / "new", cas.port, tmp_path / "new.log")
    new.data.mkdir()
    shutil.copy(cas.data / "cas.db", new.data / "cas.db")
    new.start()
    try:
        assert "recovery mode" in new.log.read_text()
        listed = alice.veil("session", "list")
        assert listed.returncode == 1, "the recovery-mode CAS is not the pinned identity"

        other = Owner(tmp_path / "mallory")
        assert other.veil("cas", "recovery", "keygen", "-o", str(tmp_path / "wrong.key")).returncode == 0
        wrong = alice.veil(
            "cas", "recovery", "restore", new.url, "--key", str(tmp_path / "wrong.key"), "--tolerate", "sim"
        )
        assert wrong.returncode == 1 and "recovery key is another one" in wrong.stderr
        strict = alice.veil("cas", "recovery", "restore", new.url, "--key", str(tmp_path / "recovery.key"))
        assert strict.returncode == 1 and "not tolerated" in strict.stderr, "sim needs --tolerate sim"
        assert not (new.data / "master.sealed").exists()

        restored = alice.veil(
            "cas",
            "recovery",
            "restore",
            new.url,
            "--key",
            str(tmp_path / "recovery.key"),
            "--tolerate",
            "sim",
        )
        assert restored.returncode == 0, restored.stderr
        deadline = time.time() + 30
        while not _reads(alice, new.url, "recovered/app"):
            assert time.time() < deadline, new.log.read_text()
            time.sleep(0.2)
        assert alice.pin(new.url)["identity"] == identity, "the same identity: pins still hold"
        assert (new.data / "master.sealed").exists()
        events = _audit_events(new.admin, new.url)
        assert "recovery.set" in events and events[-1] == "recovery.restore"
        verified = alice.veil("audit", "verify", "--network", "--json")
        assert verified.returncode == 0, verified.stderr
    finally:
        new.stop()
