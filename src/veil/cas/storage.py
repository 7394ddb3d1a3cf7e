"""Storage behind one interface: records (kind, key) -> (version, blob) and an append-only log.

Writes are compare-and-swap on the record version, so concurrent updates never overwrite
each other silently. ``SqliteStore`` is the embedded default; its file holds only sealed
blobs and the audit chain.
"""

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veil.cas.errors import CasError, Conflict, StorageCorrupted, StoreTooNew

#: the layout of the tables (docs/cas-storage.md, "Schema versions"): 1 had no version
#: row; 2 adds one (``meta``/``veil_meta``)
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class StoredRecord:
    version: int
    blob: bytes


@dataclass(frozen=True)
class LogEntry:
    seq: int
    body: bytes
    chain: bytes


@dataclass(frozen=True)
class StoredRow:
    """One record as stored (sealed blob), for backups."""

    kind: str
    key: str
    version: int
    blob: bytes


@dataclass(frozen=True)
class Snapshot:
    """Every record and audit entry of a store at one instant (a backup's content)."""

    schema: int
    records: list[StoredRow]
    log: list[LogEntry]


class StoreNotEmpty(CasError):
    """A backup is restored only into an empty store."""


class RecordStore(Protocol):
    #: the schema version found when opened (SCHEMA_VERSION for a new store)
    upgraded_from: int

    def transaction(self) -> AbstractContextManager[None]: ...

    def get(self, kind: str, key: str) -> StoredRecord | None: ...

    def put(self, kind: str, key: str, blob: bytes, expected_version: int | None) -> int: ...

    def delete(self, kind: str, key: str) -> bool: ...

    def keys(self, kind: str, prefix: str = "") -> list[str]: ...

    def append_log(self, body: bytes, chain: bytes) -> int: ...

    def read_log(self, after_seq: int = 0) -> list[LogEntry]: ...

    def snapshot(self) -> Snapshot: ...

    def load(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


def checked_blob(value: object, where: str) -> bytes:
    """A stored value must be a BLOB; anything else was written by someone other than the CAS."""
    if not isinstance(value, bytes):
        raise StorageCorrupted(f"{where} is not a sealed blob: the database was modified outside the CAS")
    return value


def stored_record(row: Any, kind: str, key: str) -> StoredRecord | None:
    """A (version, blob) row as a record, or None for no row."""
    return StoredRecord(int(row[0]), checked_blob(row[1], f"record {kind}/{key}")) if row else None


def log_entries(rows: Iterable[Any]) -> list[LogEntry]:
    """(seq, body, chain) rows as log entries, each blob checked."""
    return [
        LogEntry(
            int(r[0]), checked_blob(r[1], f"audit entry {r[0]}"), checked_blob(r[2], f"audit entry {r[0]}")
        )
        for r in rows
    ]


def check_schema(found: int, where: str) -> None:
    """Refuse a store of a newer schema than this veil reads."""
    if found > SCHEMA_VERSION:
        raise StoreTooNew(
            f"{where} has schema version {found}, written by a newer veil; this one reads up to "
            f"{SCHEMA_VERSION}: run the newer veil, or restore a backup taken before the upgrade"
        )


def snapshot_rows(records: Iterable[Any], log: Iterable[Any], schema: int) -> Snapshot:
    return Snapshot(
        schema,
        [
            StoredRow(str(r[0]), str(r[1]), int(r[2]), checked_blob(r[3], f"record {r[0]}/{r[1]}"))
            for r in records
        ],
        log_entries(log),
    )


class ReentrantTransactions:
    """One lock per store; the outermost ``transaction()`` is a database transaction and
    nested ones join it (use cases call each other inside one transaction)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0

    def _outermost(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with self._outermost():
                    yield
            finally:
                self._depth = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    chain BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


_ANY_ROW = "SELECT 1 FROM records UNION ALL SELECT 1 FROM audit_log LIMIT 1"


class SqliteStore(ReentrantTransactions):
    """One SQLite file in WAL mode; a transaction is ``BEGIN IMMEDIATE`` (one writer)."""

    #: the schema version the file had when opened (SCHEMA_VERSION when it was new)
    upgraded_from: int

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._path = path
        try:
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._upgrade()
        except BaseException:
            self._db.close()
            raise

    def _upgrade(self) -> None:
        """Bring the tables to SCHEMA_VERSION in the open transaction. A store without a
        version row is version 1 (version 1 had no ``meta`` table): creating that table
        was its migration."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        found = int(row[0]) if row else 1 if self._holds_data() else SCHEMA_VERSION
        check_schema(found, str(self._path))
        if row is None or found < SCHEMA_VERSION:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        self.upgraded_from = found

    def _holds_data(self) -> bool:
        return bool(self._db.execute(_ANY_ROW).fetchone())

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return int(row[0])

    def snapshot(self) -> Snapshot:
        """A consistent copy while other processes write (WAL: a read transaction sees one
        instant)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                records = self._db.execute(
                    "SELECT kind, key, version, blob FROM records ORDER BY kind, key"
                ).fetchall()
                log = self._db.execute("SELECT seq, body, chain FROM audit_log ORDER BY seq").fetchall()
                version = self._db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            finally:
                self._db.execute("COMMIT")
        return snapshot_rows(records, log, int(version[0]))

    def load(self, snapshot: Snapshot) -> None:
        with self.transaction():
            if self._holds_data():
                raise StoreNotEmpty(f"{self._path} is not empty: a backup is restored into a new store")
            self._db.executemany(
                "INSERT INTO records (kind, key, version, blob) VALUES (?, ?, ?, ?)",
                [(r.kind, r.key, r.version, r.blob) for r in snapshot.records],
            )
            self._db.executemany(
                "INSERT INTO audit_log (seq, body, chain) VALUES (?, ?, ?)",
                [(e.seq, e.body, e.chain) for e in snapshot.log],
            )

    @contextmanager
    def _outermost(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, kind: str, key: str) -> StoredRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT version, blob FROM records WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return stored_record(row, kind, key)

    def put(self, kind: str, key: str, blob: bytes, expected_version: int | None) -> int:
        """Compare-and-swap in one statement: the row is written only if its version is
        still ``expected_version`` (or, for None, if there is no row yet)."""
        with self.transaction():
            if expected_version is None:
                try:
                    self._db.execute(
                        "INSERT INTO records (kind, key, version, blob) VALUES (?, ?, 1, ?)",
                        (kind, key, blob),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict(f"{kind} '{key}' already exists") from None
                return 1
            cursor = self._db.execute(
                "UPDATE records SET version = ?, blob = ? WHERE kind = ? AND key = ? AND version = ?",
                (expected_version + 1, blob, kind, key, expected_version),
            )
            if cursor.rowcount != 1:
                raise Conflict(f"{kind} '{key}' was changed concurrently")
            return expected_version + 1

    def delete(self, kind: str, key: str) -> bool:
        with self.transaction():
            cursor = self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
            return cursor.rowcount > 0

    def keys(self, kind: str, prefix: str = "") -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM records WHERE kind = ? AND substr(key, 1, ?) = ? ORDER BY key",
                (kind, len(prefix), prefix),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def append_log(self, body: bytes, chain: bytes) -> int:
        with self.transaction():
            cursor = self._db.execute("INSERT INTO audit_log (body, chain) VALUES (?, ?)", (body, chain))
            return int(cursor.lastrowid or 0)

    def read_log(self, after_seq: int = 0) -> list[LogEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body, chain FROM audit_log WHERE seq > ? ORDER BY seq", (after_seq,)
            ).fetchall()
        return log_entries(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
