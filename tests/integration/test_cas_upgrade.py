"""Upgrades: a store and data directory written by the release before schema versions
(tests/fixtures/cas-store-v1, made with commit d53e2c8) open with this veil, on SQLite and
on PostgreSQL, with their identity, secrets and audit chain; a newer store is refused
before anything is touched (docs/cas-storage.md, "Schema versions")."""

import contextlib
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.cas_server import CasServer, Owner
from tests.net import free_port
from veil.cas.storage import SCHEMA_VERSION, SqliteStore
from veil.client.http import CasConnection, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cas-store-v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
OLD_URL = "https://127.0.0.1:9777"

#: the tables as the release before schema versions created them in PostgreSQL
_V1_POSTGRES = """
CREATE TABLE veil_records (kind TEXT NOT NULL, key TEXT NOT NULL, version BIGINT NOT NULL,
    blob BYTEA NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE veil_audit_log (seq BIGINT PRIMARY KEY, body BYTEA NOT NULL, chain BYTEA NOT NULL);
"""


def old_node(tmp_path: Path) -> tuple[Path, Owner]:
    """A copy of the old data directory, and its administrator with the pin of the old CAS
    moved to the port this test serves on (a pin is the CAS's identity, not its port)."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", data)
    home = tmp_path / "admin"
    (home / "veil").mkdir(parents=True)
    shutil.copy(FIXTURE / "admin" / "owner.key", home / "veil" / "owner.key")
    (home / "veil" / "owner.key").chmod(0o600)
    return data, Owner(home)


def serve_old(tmp_path: Path, data: Path, admin: Owner, db: str | None = None) -> CasServer:
    cas = CasServer(data, free_port(), tmp_path / "cas.log", db=db, admin_home=admin.home)
    config = json.loads((FIXTURE / "admin" / "cas.json").read_text())
    config["pins"] = {cas.url: config["pins"][OLD_URL]}
    config["default_url"] = cas.url
    (admin.home / "veil" / "cas.json").write_text(json.dumps(config))
    return cas.start()


def runtime_receives(cas: CasServer, admin: Owner) -> tuple[dict[str, str], str]:
    client = HttpCasClient(CasConnection(cas.url, admin.pin(cas.url)["ca_certificate"]))
    key = PlatformSigningKey.load_or_create(FIXTURE / "node" / "platform.key")
    got = provision(client, SimEvidenceSource(key), "fixture/app/app", "sha256:" + "ab" * 32)
    return got.bundle.environment, got.bundle.volumes[0].key.hex()


def check_old_cas_serves(cas: CasServer, admin: Owner) -> None:
    assert admin.pin(cas.url)["identity"] == EXPECTED["identity"]
    shown = admin.veil("session", "show", "fixture/app", "--cas", cas.url)
    assert shown.returncode == 0, shown.stderr  # the old pin still verifies the CAS
    assert runtime_receives(cas, admin) == (EXPECTED["environment"], EXPECTED["volume_key"])
    exported = admin.veil("audit", "export", "--cas", cas.url)
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(entry["body"]) for entry in json.loads(exported.stdout)["entries"]]
    migrated = [e for e in events if e["event"] == "store.migrated"]
    assert [(e["schema_from"], e["schema_to"]) for e in migrated] == [(1, SCHEMA_VERSION)]
    verified = admin.veil("audit", "verify", "--cas", cas.url, "--json")
    assert verified.returncode == 0, verified.stderr


def test_the_previous_release_s_store_opens_after_migration(tmp_path: Path) -> None:
    data, admin = old_node(tmp_path)
    with contextlib.closing(sqlite3.connect(data / "cas.db")) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"records", "audit_log"}, "the fixture is a version 1 store"
    assert not (data / "version").exists()
    cas = serve_old(tmp_path, data, admin)
    try:
        assert f"upgraded the store from schema version 1 to {SCHEMA_VERSION}" in cas.log.read_text()
        check_old_cas_serves(cas, admin)
    finally:
        cas.stop()
    assert json.loads((data / "version").read_text())["format"] == 1
    assert SqliteStore(data / "cas.db").schema_version() == SCHEMA_VERSION
    cas.start()  # a second start migrates nothing
    cas.stop()
    assert cas.log.read_text().count("upgraded the store") == 1


def test_the_previous_release_s_postgresql_schema_is_migrated(tmp_path: Path, postgres_url: str) -> None:
    data, admin = old_node(tmp_path)
    with (
        contextlib.closing(sqlite3.connect(data / "cas.db")) as old,
        psycopg.connect(postgres_url, autocommit=True) as pg,
    ):
        pg.execute(_V1_POSTGRES)
        with pg.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO veil_records VALUES (%s, %s, %s, %s)",
                old.execute("SELECT kind, key, version, blob FROM records").fetchall(),
            )
            cursor.executemany(
                "INSERT INTO veil_audit_log VALUES (%s, %s, %s)",
                old.execute("SELECT seq, body, chain FROM audit_log").fetchall(),
            )
    (data / "cas.db").unlink()
    cas = serve_old(tmp_path, data, admin, db=postgres_url)
    try:
        check_old_cas_serves(cas, admin)
    finally:
        cas.stop()
    with psycopg.connect(postgres_url) as pg:
        row = pg.execute("SELECT value FROM veil_meta WHERE name = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),)


def _refused_start(data: Path, *extra: str) -> str:
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


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_a_newer_store_or_data_directory_is_refused_untouched(tmp_path: Path, postgres_url: str) -> None:
    data, _ = old_node(tmp_path)
    with contextlib.closing(sqlite3.connect(data / "cas.db")) as db, db:
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
    before = _digest(data)
    message = _refused_start(data)
    assert f"schema version {SCHEMA_VERSION + 1}, written by a newer veil" in message
    assert "restore a backup taken before the upgrade" in message
    assert _digest(data) == before, "nothing in the directory changed"

    with psycopg.connect(postgres_url, autocommit=True) as pg:
        pg.execute("CREATE TABLE veil_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        pg.execute("INSERT INTO veil_meta VALUES ('schema_version', '99')")
    assert "schema version 99, written by a newer veil" in _refused_start(data, "--db", postgres_url)

    newer = tmp_path / "newer"
    shutil.copytree(FIXTURE / "data", newer)
    (newer / "version").write_text(json.dumps({"format": 2}))
    before = _digest(newer)
    assert "data layout 2, written by a newer veil" in _refused_start(newer)
    assert _digest(newer) == before


@pytest.mark.parametrize("text", ["not json", '{"layout": 1}'])
def test_a_damaged_version_file_is_named(tmp_path: Path, text: str) -> None:
    data, _ = old_node(tmp_path)
    (data / "version").write_text(text)
    assert "is not a veil data directory version file" in _refused_start(data)
