"""Both record stores keep one contract: compare-and-swap, prefixes, the audit log."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import session_yaml
from tests.postgres import new_database
from veil.cas import Cas, Conflict
from veil.cas.postgres import PostgresStore, StoreUnavailable
from veil.cas.sealing import load_or_create_master_key
from veil.cas.storage import SCHEMA_VERSION, RecordStore, SqliteStore, StoreNotEmpty


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    made: RecordStore = (
        SqliteStore(tmp_path / "cas.db")
        if request.param == "sqlite"
        else PostgresStore(request.getfixturevalue("postgres_url"))
    )
    yield made
    made.close()


def test_records_are_compare_and_swap(store: RecordStore) -> None:
    assert store.put("k", "a", b"1", None) == 1
    with pytest.raises(Conflict, match="already exists"):
        store.put("k", "a", b"x", None)
    assert store.put("k", "a", b"2", 1) == 2
    with pytest.raises(Conflict, match="changed concurrently"):
        store.put("k", "a", b"3", 1)
    with pytest.raises(Conflict):
        store.put("k", "missing", b"3", 1)
    found = store.get("k", "a")
    assert found is not None and (found.version, found.blob) == (2, b"2")
    store.put("k", "ab", b"", None)
    store.put("k", "b", b"", None)
    store.put("other", "a", b"", None)
    assert store.keys("k", "a") == ["a", "ab"]
    assert store.keys("k") == ["a", "ab", "b"]
    assert store.delete("k", "a") and not store.delete("k", "a")
    assert store.get("k", "a") is None


def test_a_failed_transaction_leaves_nothing(store: RecordStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.put("k", "a", b"1", None)
        store.append_log(b"body", b"chain")
        raise RuntimeError("boom")
    assert store.get("k", "a") is None
    assert store.read_log() == []


def test_the_log_is_contiguous(store: RecordStore) -> None:
    assert [store.append_log(b"%d" % i, b"c") for i in range(3)] == [1, 2, 3]
    assert [e.body for e in store.read_log(1)] == [b"1", b"2"]


def test_a_snapshot_loads_into_an_empty_store_only(
    store: RecordStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert store.upgraded_from == SCHEMA_VERSION, "a new store is of the current schema"
    store.put("k", "a", b"1", None)
    store.put("k", "a", b"2", 1)
    store.put("j", "b", b"\x00\xff", None)
    store.append_log(b"first", b"c1")
    store.append_log(b"second", b"c2")
    snapshot = store.snapshot()
    assert snapshot.schema == SCHEMA_VERSION
    assert [(r.kind, r.key, r.version, r.blob) for r in snapshot.records] == [
        ("j", "b", 1, b"\x00\xff"),
        ("k", "a", 2, b"2"),
    ]
    other: RecordStore = (
        SqliteStore(tmp_path / "other.db")
        if isinstance(store, SqliteStore)
        else PostgresStore(new_database(request.getfixturevalue("postgres_server")))
    )
    try:
        other.load(snapshot)
        assert other.snapshot() == snapshot
        found = other.get("k", "a")
        assert found is not None and found.version == 2, "versions kept: compare-and-swap goes on"
        assert other.append_log(b"third", b"c3") == 3
        with pytest.raises(StoreNotEmpty, match="is not empty"):
            other.load(snapshot)
    finally:
        other.close()


def test_a_cas_runs_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    key = load_or_create_master_key(tmp_path / "master.key")
    cas = Cas(PostgresStore(postgres_url), key)
    record = cas.create_session(session_yaml(name="pg/app"), "me")
    cas.close()
    again = Cas(PostgresStore(postgres_url), key)
    assert again.get_session("pg/app", "me").hash == record.hash
    assert again.audit.verify() == 1
    again.close()


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL"):
        PostgresStore("postgresql://veil@127.0.0.1:1/none?connect_timeout=2")
