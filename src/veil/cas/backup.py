"""Backups of a CAS store (docs/cas-storage.md, "Backups").

A backup is a consistent snapshot of every record and audit entry, taken while the CAS
serves, encrypted to the owners' recovery key: whoever restores it needs the recovery
private key, which also opens the master key the records are sealed with. Restoring
writes the snapshot into an empty store; the restored CAS keeps its identity (sealed in
the records) and its audit chain, which is checked on both sides.
"""

import base64
import binascii
import datetime as dt
import json
import zlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil import __version__
from veil.cas.audit import GENESIS, AuditChainBroken, chain_next
from veil.cas.custody import MASTER_KIND
from veil.cas.errors import CasError
from veil.cas.storage import LogEntry, RecordStore, Snapshot, StoredRow, check_schema
from veil.crypto import (
    BundleKeyPair,
    DecryptionFailed,
    canonical_json,
    constant_time_equal,
    open_to_key,
    seal_to_key,
    sha256_hex,
)

MAGIC = b"VEILBAK\x01"
_INFO = b"veil-backup-v1\0"
_KEY_LEN = 32
FORMAT = 1


class BackupRefused(CasError):
    """A backup cannot be taken or restored (no recovery key, another key, a damaged file)."""


@dataclass(frozen=True)
class BackupSummary:
    created: str
    veil: str
    schema: int
    master_id: str
    records: int
    audit_entries: int
    audit_head: str
    recovery_key: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _master_record(snapshot: Snapshot, key: str) -> dict[str, Any] | None:
    for row in snapshot.records:
        if row.kind == MASTER_KIND and row.key == key:
            found: dict[str, Any] = json.loads(row.blob)
            return found
    return None


def verify_chain(log: list[LogEntry]) -> str:
    """Recompute the audit chain; returns the head (hex), or raises naming the first break."""
    chain = GENESIS
    for expected, entry in enumerate(log, 1):
        if entry.seq != expected:
            raise AuditChainBroken(f"audit entry {expected} is missing")
        chain = chain_next(chain, entry.body)
        if not constant_time_equal(chain, entry.chain):
            raise AuditChainBroken(f"audit entry {entry.seq} was modified or reordered")
    return chain.hex()


def _summary(snapshot: Snapshot, created: str, veil: str, recovery_key: bytes) -> BackupSummary:
    master = _master_record(snapshot, "id")
    if master is None:
        raise BackupRefused("the store holds no master key id: it is not an initialised CAS store")
    return BackupSummary(
        created=created,
        veil=veil,
        schema=snapshot.schema,
        master_id=str(master["id"]),
        records=len(snapshot.records),
        audit_entries=len(snapshot.log),
        audit_head=verify_chain(snapshot.log),
        recovery_key=sha256_hex(recovery_key),
    )


def create_backup(store: RecordStore, recovery_key: bytes | None = None) -> tuple[bytes, BackupSummary]:
    """A consistent snapshot of ``store`` encrypted to ``recovery_key`` (raw X25519), by
    default the recovery key the store names (``veil cas serve --recovery-key``)."""
    snapshot = store.snapshot()
    if recovery_key is None:
        recovery = _master_record(snapshot, "recovery")
        if recovery is None:
            raise BackupRefused(
                "this CAS has no recovery key, and a backup is encrypted to it: start the CAS once with "
                "--recovery-key FILE.pub (veil cas recovery keygen), or give --recovery-key here"
            )
        recovery_key = base64.b64decode(recovery["public_key"])
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary = _summary(snapshot, created, __version__, recovery_key)
    document = {
        "format": FORMAT,
        "created": created,
        "veil": __version__,
        "schema": snapshot.schema,
        "records": [[r.kind, r.key, r.version, _b64(r.blob)] for r in snapshot.records],
        "audit_log": [[e.seq, _b64(e.body), _b64(e.chain)] for e in snapshot.log],
    }
    plaintext = zlib.compress(canonical_json(document), 6)
    sealed = seal_to_key(plaintext, recovery_key, _INFO + recovery_key)
    return MAGIC + recovery_key + sealed, summary


def open_backup(blob: bytes, private_key: X25519PrivateKey) -> tuple[Snapshot, BackupSummary]:
    """Decrypt and check a backup: the right recovery key, an intact chain, a schema this
    veil reads."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _KEY_LEN:
        raise BackupRefused("not a veil CAS backup (veil cas backup writes them)")
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    named = blob[len(MAGIC) : len(MAGIC) + _KEY_LEN]
    if not constant_time_equal(named, public):
        raise BackupRefused(
            f"this backup is encrypted to recovery key {sha256_hex(named)[:16]}…, not to the one "
            f"given ({sha256_hex(public)[:16]}…)"
        )
    try:
        plaintext = open_to_key(blob[len(MAGIC) + _KEY_LEN :], BundleKeyPair(private_key), _INFO + public)
    except DecryptionFailed:
        raise BackupRefused("the backup does not decrypt: it was modified or truncated") from None
    try:
        document = json.loads(zlib.decompress(plaintext))
        if document["format"] != FORMAT:
            raise BackupRefused(f"backup format {document['format']} is not one this veil reads ({FORMAT})")
        snapshot = Snapshot(
            int(document["schema"]),
            [StoredRow(str(k), str(n), int(v), _unb64(b)) for k, n, v, b in document["records"]],
            [LogEntry(int(s), _unb64(b), _unb64(c)) for s, b, c in document["audit_log"]],
        )
    except (ValueError, KeyError, TypeError, zlib.error, binascii.Error) as exc:
        raise BackupRefused(f"the backup's content is malformed: {exc}") from None
    check_schema(snapshot.schema, "the backup")
    return snapshot, _summary(snapshot, str(document["created"]), str(document["veil"]), public)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("a base64 string is expected")
    return base64.b64decode(text, validate=True)
