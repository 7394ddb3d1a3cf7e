"""The cost of `veil cas backup` and `veil cas restore` (docs/operations.md, "Backups"): a
SQLite store shaped like a CAS's (per session: its current text, one stored version,
three secrets, a session CA; sealed blobs of real sizes; and an audit log with a real
chain), backed up (snapshot, chain check, compression, HPKE to a recovery key) and opened
and loaded into a new store. The anchor, in the same run, is SQLite's own online backup of
the same file (`sqlite3.Connection.backup`: a page copy, neither checked nor encrypted).
Prints seconds, sizes and ratios.

Run: .venv/bin/python bench/backup.py [--sessions 1000] [--audit 100000] [--json]
"""

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.cas.audit import GENESIS, chain_next
from veil.cas.backup import create_backup, open_backup
from veil.cas.storage import SqliteStore

#: sealed record sizes measured on a real CAS (tests/fixtures/cas-store-v1)
SHAPE = {"session": 860, "session-version": 950, "secret": 150, "session-ca": 780}


def fill(path: Path, sessions: int, audit: int) -> None:
    store = SqliteStore(path)
    with store.transaction():
        store.put("cas-master", "id", json.dumps({"id": os.urandom(32).hex()}).encode(), None)
        for index in range(sessions):
            name = f"team/app-{index}"
            store.put("session", name, os.urandom(SHAPE["session"]), None)
            store.put("session-version", f"{name}@{index:064x}", os.urandom(SHAPE["session-version"]), None)
            store.put("session-ca", name, os.urandom(SHAPE["session-ca"]), None)
            for secret in ("db_password", "api_key", "tls_key"):
                store.put("secret", f"{name}#{secret}", os.urandom(SHAPE["secret"]), None)
        chain = GENESIS
        for seq in range(1, audit + 1):
            body = json.dumps(
                {
                    "time": "2026-12-07T10:00:00Z",
                    "event": "attest.grant",
                    "sim": True,
                    "config_id": f"team/app-{seq % max(sessions, 1)}/web",
                    "measurement": os.urandom(32).hex(),
                    "instance": os.urandom(16).hex(),
                },
                sort_keys=True,
            ).encode()
            chain = chain_next(chain, body)
            store.append_log(body, chain)
    store.close()


def timed(action: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def one_round(work: Path, source: Path, key: X25519PrivateKey) -> dict[str, float]:
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    store = SqliteStore(source)
    backup_s, (blob, _) = timed(lambda: create_backup(store, public))
    store.close()
    target = work / f"restored-{time.monotonic_ns()}.db"

    def restore() -> None:
        snapshot, _ = open_backup(blob, key)
        restored = SqliteStore(target)
        restored.load(snapshot)
        restored.close()

    restore_s, _ = timed(restore)
    copy = work / f"copy-{time.monotonic_ns()}.db"

    def sqlite_backup() -> None:
        with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)

    anchor_s, _ = timed(sqlite_backup)
    sizes = {"backup_bytes": len(blob), "store_bytes": source.stat().st_size}
    target.unlink()
    copy.unlink()
    return {"backup_s": backup_s, "restore_s": restore_s, "sqlite_backup_s": anchor_s, **sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--audit", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = X25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="veil-bench-backup-") as tmp:
        work = Path(tmp)
        source = work / "cas.db"
        fill(source, args.sessions, args.audit)
        rounds = [one_round(work, source, key) for _ in range(args.rounds)]
    result: dict[str, Any] = {
        "sessions": args.sessions,
        "audit_entries": args.audit,
        "store_mb": rounds[0]["store_bytes"] / 1e6,
        "backup_mb": rounds[0]["backup_bytes"] / 1e6,
    }
    for name in ("backup_s", "restore_s", "sqlite_backup_s"):
        result[name] = statistics.median(r[name] for r in rounds)
    result["backup_vs_sqlite"] = result["backup_s"] / result["sqlite_backup_s"]
    result["restore_vs_sqlite"] = result["restore_s"] / result["sqlite_backup_s"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.sessions} sessions, {args.audit} audit entries: store {result['store_mb']:.1f} MB, "
        f"backup file {result['backup_mb']:.1f} MB"
    )
    print(
        f"backup {result['backup_s']:.2f} s ({result['backup_vs_sqlite']:.1f}x SQLite's online backup, "
        f"{result['sqlite_backup_s']:.2f} s); restore {result['restore_s']:.2f} s "
        f"({result['restore_vs_sqlite']:.1f}x)"
    )


if __name__ == "__main__":
    main()
