"""``PostgresStore``: the record store on PostgreSQL (psycopg 3), for several CAS replicas.

Same contract as ``SqliteStore``. Every write transaction first takes one transaction-level
advisory lock, so writes of all replicas are serialised exactly as SQLite's ``BEGIN
IMMEDIATE`` serialises them: compare-and-swap reads see the last committed state, audit
sequence numbers stay contiguous and the chain never forks. Reads take no lock.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from veil.cas.errors import CasError, Conflict
from veil.cas.storage import (
    SCHEMA_VERSION,
    LogEntry,
    ReentrantTransactions,
    Snapshot,
    StoredRecord,
    StoreNotEmpty,
    check_schema,
    log_entries,
    snapshot_rows,
    stored_record,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS veil_records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version BIGINT NOT NULL,
    blob BYTEA NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS veil_audit_log (
    seq BIGINT PRIMARY KEY,
    body BYTEA NOT NULL,
    chain BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS veil_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_ANY_ROW = "SELECT 1 FROM veil_records UNION ALL SELECT 1 FROM veil_audit_log LIMIT 1"
#: the advisory lock every write transaction of every replica takes
_WRITE_LOCK = 0x7665696C  # "veil"


class StoreUnavailable(CasError):
    """The database cannot be reached."""


class PostgresStore(ReentrantTransactions):
    upgraded_from: int

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            self._db = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
        self._where = "the PostgreSQL database " + (self._db.info.dbname or "")
        try:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                self._db.execute(_SCHEMA)
                self.upgraded_from = self._upgrade()
        except BaseException:
            self._db.close()
            raise

    def _upgrade(self) -> int:
        """As SqliteStore._upgrade: no version row is version 1; returns the version found."""
        row = self._db.execute("SELECT value FROM veil_meta WHERE name = 'schema_version'").fetchone()
        found = int(row[0]) if row else 1 if self._holds_data() else SCHEMA_VERSION
        check_schema(found, self._where)
        if row is None or found < SCHEMA_VERSION:
            self._db.execute(
                "INSERT INTO veil_meta (name, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
        return found

    def _holds_data(self) -> bool:
        return bool(self._db.execute(_ANY_ROW).fetchone())

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM veil_meta WHERE name = 'schema_version'").fetchone()
        assert row is not None
        return int(row[0])

    def snapshot(self) -> Snapshot:
        """A consistent copy while replicas write (one REPEATABLE READ transaction)."""
        with self._lock, self._db.transaction():
            self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            records = self._db.execute(
                "SELECT kind, key, version, blob FROM veil_records ORDER BY kind, key"
            ).fetchall()
            log = self._db.execute("SELECT seq, body, chain FROM veil_audit_log ORDER BY seq").fetchall()
            version = self._db.execute("SELECT value FROM veil_meta WHERE name = 'schema_version'").fetchone()
        assert version is not None
        return snapshot_rows(records, log, int(version[0]))

    def load(self, snapshot: Snapshot) -> None:
        with self.transaction():
            if self._holds_data():
                raise StoreNotEmpty(f"{self._where} is not empty: a backup is restored into a new database")
            with self._db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO veil_records (kind, key, version, blob) VALUES (%s, %s, %s, %s)",
                    [(r.kind, r.key, r.version, r.blob) for r in snapshot.records],
                )
                cursor.executemany(
                    "INSERT INTO veil_audit_log (seq, body, chain) VALUES (%s, %s, %s)",
                    [(e.seq, e.body, e.chain) for e in snapshot.log],
                )

    @contextmanager
    def _outermost(self) -> Iterator[None]:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            yield

    def get(self, kind: str, key: str) -> StoredRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT version, blob FROM veil_records WHERE kind = %s AND key = %s", (kind, key)
            ).fetchone()
        return stored_record(row, kind, key)

    def put(self, kind: str, key: str, blob: bytes, expected_version: int | None) -> int:
        with self.transaction():
            if expected_version is None:
                cursor = self._db.execute(
                    "INSERT INTO veil_records (kind, key, version, blob) VALUES (%s, %s, 1, %s) "
                    "ON CONFLICT DO NOTHING",
                    (kind, key, blob),
                )
                if cursor.rowcount != 1:
                    raise Conflict(f"{kind} '{key}' already exists")
                return 1
            cursor = self._db.execute(
                "UPDATE veil_records SET version = %s, blob = %s "
                "WHERE kind = %s AND key = %s AND version = %s",
                (expected_version + 1, blob, kind, key, expected_version),
            )
            if cursor.rowcount != 1:
                raise Conflict(f"{kind} '{key}' was changed concurrently")
            return expected_version + 1

    def delete(self, kind: str, key: str) -> bool:
        with self.transaction():
            cursor = self._db.execute("DELETE FROM veil_records WHERE kind = %s AND key = %s", (kind, key))
            return cursor.rowcount > 0

    def keys(self, kind: str, prefix: str = "") -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM veil_records WHERE kind = %s AND left(key, %s) = %s ORDER BY key",
                (kind, len(prefix), prefix),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def append_log(self, body: bytes, chain: bytes) -> int:
        with self.transaction():
            row = self._db.execute(
                "INSERT INTO veil_audit_log (seq, body, chain) "
                "SELECT COALESCE(MAX(seq), 0) + 1, %s, %s FROM veil_audit_log RETURNING seq",
                (body, chain),
            ).fetchone()
            assert row is not None
            return int(row[0])

    def read_log(self, after_seq: int = 0) -> list[LogEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body, chain FROM veil_audit_log WHERE seq > %s ORDER BY seq", (after_seq,)
            ).fetchall()
        return log_entries(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
