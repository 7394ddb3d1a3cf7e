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

from veil.cas.errors import Conflict, StorageCorrupted


@dataclass(frozen=True)
class StoredRecord:
    version: int
    blob: bytes


@dataclass(frozen=True)
class LogEntry:
    seq: int
    body: bytes
    chain: bytes


class RecordStore(Protocol):
    def transaction(self) -> AbstractContextManager[None]: ...

    def get(self, kind: str, key: str) -> StoredRecord | None: ...

    def put(self, kind: str, key: str, blob: bytes, expected_version: int | None) -> int: ...

    def delete(self, kind: str, key: str) -> bool: ...

    def keys(self, kind: str, prefix: str = "") -> list[str]: ...

    def append_log(self, body: bytes, chain: bytes) -> int: ...

    def read_log(self, after_seq: int = 0) -> list[LogEntry]: ...

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
"""


class SqliteStore(ReentrantTransactions):
    """One SQLite file in WAL mode; a transaction is ``BEGIN IMMEDIATE`` (one writer)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

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
