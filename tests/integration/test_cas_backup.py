"""Backups of a serving CAS, restored into a new data directory and into a new PostgreSQL
database: same identity (old pins hold), same secrets, the audit chain verifies; and every
way a restore must refuse (docs/cas-storage.md, "Backups")."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cas_server import CasServer, Owner, pinned_owner, register_platform, start_cas
from tests.conftest import PYTHON, SHOW, measurement_of, session_dict, veil
from veil.client.http import CasConnection, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource

MEASUREMENT = measurement_of([PYTHON, str(SHOW)])


def _create(owner: Owner, tmp_path: Path, name: str, platform: str) -> None:
    document = session_dict(name, sim_platforms=[platform], environment={"PW": "$$VEIL::pw$$"})
    policy = tmp_path / f"{name.replace('/', '-')}.yaml"
    policy.write_text(yaml.safe_dump(document))
    created = owner.veil("session", "create", str(policy))
    assert created.returncode == 0, created.stderr


def _secret(cas: CasServer, owner: Owner, node: Path, config_id: str) -> str:
    """What a runtime attesting with the owner's pin receives."""
    client = HttpCasClient(CasConnection(cas.url, owner.pin(cas.url)["ca_certificate"]))
    key = PlatformSigningKey.load_or_create(node / "las" / "platform.key")
    return provision(client, SimEvidenceSource(key), config_id, MEASUREMENT).bundle.environment["PW"]


def _recover(cas: CasServer, owner: Owner, key: Path) -> None:
    """`veil cas recovery restore` to the restored CAS, then wait until it serves."""
    assert "recovery mode" in cas.log.read_text()
    restored = owner.veil("cas", "recovery", "restore", cas.url, "--key", str(key), "--tolerate", "sim")
    assert restored.returncode == 0, restored.stderr
    deadline = time.time() + 30
    while owner.veil("session", "list", "--cas", cas.url).returncode != 0:
        assert time.time() < deadline, cas.log.read_text()
        time.sleep(0.2)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[CasServer, Owner, Path, str]]:
    """A CAS with a recovery key, an owner, a registered node and one session; stopped
    (and its log scanned for secrets) at the end."""
    keygen = veil("cas", "recovery", "keygen", "-o", str(tmp_path / "recovery.key"))
    assert keygen.returncode == 0, keygen.stderr
    cas = start_cas(tmp_path)
    cas.stop()
    cas.extra = ["--recovery-key", str(tmp_path / "recovery.key.pub")]
    cas.start()
    alice = pinned_owner(tmp_path, cas)
    node = register_platform(tmp_path, cas)
    platform = PlatformSigningKey.load_or_create(node / "las" / "platform.key").key_id
    _create(alice, tmp_path, "kept/app", platform)
    try:
        yield cas, alice, node, platform
    finally:
        cas.stop()


def test_a_backup_taken_during_updates_restores_into_a_new_node(
    tmp_path: Path, serving: tuple[CasServer, Owner, Path, str]
) -> None:
    cas, alice, node, platform = serving
    before = _secret(cas, alice, node, "kept/app/app")
    identity = alice.pin(cas.url)["identity"]

    created: list[str] = []
    stop = threading.Event()

    def keep_writing() -> None:  # sessions created while the backups are taken
        while not stop.is_set() and len(created) < 40:
            name = f"busy/s{len(created)}"
            _create(alice, tmp_path, name, platform)
            created.append(name)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        time.sleep(1.0)
        backups = []
        for number in range(3):
            out = tmp_path / f"cas-{number}.backup"
            taken = veil("cas", "backup", "--data", str(cas.data), "--out", str(out), "--json")
            assert taken.returncode == 0, taken.stderr
            backups.append((out, json.loads(taken.stdout)))
            time.sleep(0.3)
    finally:
        stop.set()
        writer.join()
    out, summary = backups[-1]
    assert out.stat().st_mode & 0o777 == 0o600
    assert summary["audit_entries"] > 0 and summary["records"] > 0
    assert b"kept/app" not in out.read_bytes(), "the backup is encrypted (session names included)"
    again = veil("cas", "backup", "--data", str(cas.data), "--out", str(out))
    assert again.returncode == 2 and "never overwrites" in again.stderr
    cas.stop()

    # the node is lost: a new one (its own platform key) restores the last backup
    restored = CasServer(tmp_path / "new", cas.port, tmp_path / "new.log")
    done = veil(
        "cas",
        "restore",
        str(out),
        "--key",
        str(tmp_path / "recovery.key"),
        "--data",
        str(restored.data),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["audit_head"] == summary["audit_head"]
    assert "recovery mode" in done.stderr
    restored.start()
    try:
        _recover(restored, alice, tmp_path / "recovery.key")
        assert alice.pin(restored.url)["identity"] == identity
        assert _secret(restored, alice, node, "kept/app/app") == before, "old pin, same secret"
        listed = alice.veil("session", "list", "--cas", restored.url)
        in_backup = [name for name in created if name in listed.stdout]
        assert in_backup == created[: len(in_backup)], "a consistent prefix of the writes"
        verified = alice.veil("audit", "verify", "--network", "--json")
        assert verified.returncode == 0, verified.stderr
    finally:
        restored.stop()


def test_a_backup_restores_into_a_new_postgresql_database(
    tmp_path: Path, serving: tuple[CasServer, Owner, Path, str], postgres_url: str
) -> None:
    cas, alice, node, _ = serving
    before = _secret(cas, alice, node, "kept/app/app")
    out = tmp_path / "cas.backup"
    config = tmp_path / "cas.toml"
    config.write_text(f'data = "{cas.data}"\n')
    assert veil("cas", "backup", "--config", str(config), "--out", str(out)).returncode == 0
    cas.stop()

    restored = CasServer(tmp_path / "pg-node", cas.port, tmp_path / "pg.log", db=postgres_url)
    argv = ["cas", "restore", str(out), "--key", str(tmp_path / "recovery.key")]
    done = veil(*argv, "--data", str(restored.data), "--db", postgres_url)
    assert done.returncode == 0, done.stderr
    twice = veil(*argv, "--data", str(restored.data), "--db", postgres_url)
    assert twice.returncode == 1 and "is not empty" in twice.stderr, "never over a store in use"
    restored.start()
    try:
        _recover(restored, alice, tmp_path / "recovery.key")
        assert _secret(restored, alice, node, "kept/app/app") == before
        verified = alice.veil("audit", "verify", "--network", "--json")
        assert verified.returncode == 0, verified.stderr
        # a backup of the PostgreSQL CAS, taken through its configuration file
        pg_config = tmp_path / "pg.toml"
        pg_config.write_text(f'data = "{restored.data}"\ndb = "{postgres_url}"\n')
        second = tmp_path / "pg.backup"
        assert veil("cas", "backup", "--config", str(pg_config), "--out", str(second)).returncode == 0
    finally:
        restored.stop()


def test_restore_refuses_another_key_a_damaged_file_and_a_store_in_use(
    tmp_path: Path, serving: tuple[CasServer, Owner, Path, str]
) -> None:
    cas, _, _, _ = serving
    out = tmp_path / "cas.backup"
    assert veil("cas", "backup", "--data", str(cas.data), "--out", str(out)).returncode == 0
    key = str(tmp_path / "recovery.key")

    assert veil("cas", "recovery", "keygen", "-o", str(tmp_path / "other.key")).returncode == 0
    other = veil(
        "cas", "restore", str(out), "--key", str(tmp_path / "other.key"), "--data", str(tmp_path / "a")
    )
    assert other.returncode == 1 and "encrypted to recovery key" in other.stderr

    damaged = tmp_path / "damaged.backup"
    blob = bytearray(out.read_bytes())
    blob[-40] ^= 1
    damaged.write_bytes(bytes(blob))
    broken = veil("cas", "restore", str(damaged), "--key", key, "--data", str(tmp_path / "b"))
    assert broken.returncode == 1 and "modified or truncated" in broken.stderr
    damaged.write_bytes(out.read_bytes()[:-100])
    cut = veil("cas", "restore", str(damaged), "--key", key, "--data", str(tmp_path / "b"))
    assert cut.returncode == 1 and "modified or truncated" in cut.stderr
    assert not (tmp_path / "b" / "cas.db").exists(), "nothing written on a refusal"

    in_use = veil("cas", "restore", str(out), "--key", key, "--data", str(cas.data))
    assert in_use.returncode == 1 and "restore into a new data directory" in in_use.stderr
    not_backup = veil(
        "cas", "restore", str(tmp_path / "recovery.key.pub"), "--key", key, "--data", str(tmp_path / "c")
    )
    assert not_backup.returncode == 1 and "not a veil CAS backup" in not_backup.stderr


def test_a_cas_without_recovery_key_says_how_to_get_one(tmp_path: Path) -> None:
    cas = start_cas(tmp_path)
    try:
        refused = veil("cas", "backup", "--data", str(cas.data), "--out", str(tmp_path / "x.backup"))
        assert refused.returncode == 1 and "--recovery-key" in refused.stderr
        assert not (tmp_path / "x.backup").exists()
        assert veil("cas", "recovery", "keygen", "-o", str(tmp_path / "r.key")).returncode == 0
        given = veil(
            "cas",
            "backup",
            "--data",
            str(cas.data),
            "--out",
            str(tmp_path / "x.backup"),
            "--recovery-key",
            str(tmp_path / "r.key.pub"),
        )
        assert given.returncode == 0, given.stderr
        missing = veil("cas", "backup", "--out", str(tmp_path / "y.backup"), env={"VEIL_CAS_DATA": ""})
        assert missing.returncode == 2 and "--data DIR or --config FILE" in missing.stderr
    finally:
        cas.stop()
