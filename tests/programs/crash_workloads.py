"""fsync-heavy workloads for the crash test (tests/integration/test_volume_crashes.py).

Each runs in DIRECTORY until killed, and appends to ACKS (a file outside the volume, synced)
what the file system acknowledged: a write is acknowledged once the fsync (or the commit,
or git's synced commit) after it returned.

  crash_workloads.py rewrite DIRECTORY ACKS SEED   4 KiB blocks rewritten at random, fsync each
                                                   (versions SEED * 10^6 + 1, ...)
  crash_workloads.py sqlite  DIRECTORY ACKS SEED   SQLite WAL, synchronous=FULL, 20 rows a commit
                                                   (the newest 2,000 kept)
  crash_workloads.py git     DIRECTORY ACKS SEED   git commits with core.fsync=all
"""

import os
import random
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

BLOCK = 4096
BLOCKS = 256
SQLITE_ROWS = 2_000
_STAMP = struct.Struct("<QQ")


def block_of(version: int) -> int:
    """The block version ``version`` of the rewrite workload goes to (reproducible)."""
    return random.Random(version).randrange(BLOCKS)


def pattern(block: int, version: int) -> bytes:
    return _STAMP.pack(block, version) * (BLOCK // _STAMP.size)


def parse(data: bytes) -> tuple[int, int] | None:
    """(block, version) of a block written by ``pattern``; None if it is not one (zeros, or torn)."""
    if data == bytes(BLOCK):
        return None
    stamp = data[: _STAMP.size]
    if data != stamp * (BLOCK // _STAMP.size):
        raise ValueError("a torn or foreign block")
    block, version = _STAMP.unpack(stamp)
    return block, version


class Acks:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)


def rewrite(directory: Path, acks: Acks, seed: int) -> None:
    path = directory / "blocks"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if os.fstat(fd).st_size < BLOCK * BLOCKS:
        os.ftruncate(fd, BLOCK * BLOCKS)
        os.fsync(fd)
    version = seed * 1_000_000
    while True:
        version += 1
        block = block_of(version)
        os.pwrite(fd, pattern(block, version), block * BLOCK)
        os.fsync(fd)
        acks(f"{version}")


def sqlite(directory: Path, acks: Acks, seed: int) -> None:
    db = sqlite3.connect(directory / "db.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB)")
    rng = random.Random(seed)
    next_id = (db.execute("SELECT max(id) FROM t").fetchone()[0] or 0) + 1
    while True:
        db.execute("BEGIN")
        for offset in range(20):
            payload = rng.randbytes(rng.randrange(10, 3000))
            db.execute("INSERT INTO t VALUES (?, ?)", (next_id + offset, payload))
        # the newest SQLITE_ROWS rows stay: pages are freed and reused (overwrites), the size bounded
        db.execute("DELETE FROM t WHERE id <= ?", (next_id + 19 - SQLITE_ROWS,))
        db.execute("COMMIT")
        next_id += 20
        acks(f"{next_id - 1}")


def git(directory: Path, acks: Acks, seed: int) -> None:
    repo = directory / "repo"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "crash",
        "GIT_AUTHOR_EMAIL": "crash@veil",
        "GIT_COMMITTER_NAME": "crash",
        "GIT_COMMITTER_EMAIL": "crash@veil",
    }
    options = ["-c", "core.fsync=all", "-c", "core.fsyncMethod=fsync", "-c", "gc.auto=0"]

    def run(*argv: str) -> str:
        return subprocess.run(
            ["git", *options, *argv], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    if not (repo / ".git").exists():
        repo.mkdir(exist_ok=True)
        run("init", "-q")
    (repo / ".git" / "index.lock").unlink(missing_ok=True)  # what a crash leaves, as after any crash
    rng = random.Random(seed)
    number = len(list(repo.glob("f*")))
    while True:
        (repo / f"f{number}").write_bytes(rng.randbytes(rng.randrange(100, 20_000)))
        run("add", f"f{number}")
        run("commit", "-q", "-m", f"commit {number}")
        acks(run("rev-parse", "HEAD"))
        number += 1


def main() -> None:
    kind, directory, ack_file, seed = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    {"rewrite": rewrite, "sqlite": sqlite, "git": git}[kind](directory, Acks(ack_file), seed)


if __name__ == "__main__":
    main()
