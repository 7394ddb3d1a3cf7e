"""Crashes during fsync-heavy work (issue #26): kill -9 of the mount at a random moment, and a
power cut, 100 times over three workloads (a rewrite-and-fsync loop, SQLite in WAL mode,
git commits). After each: the volume opens again with the tag the CAS would hold (no
owner's action), every acknowledged write is there, `veil volume verify` finds nothing,
SQLite's integrity_check says ok, git fsck is clean. The same loops run on gocryptfs, the
anchor, and its figures are printed beside veil's.

The backing store is an ext4 file system on a loop device over an image file. A power cut
keeps exactly what reached that image: the image is copied at the moment of the crash
(what the file system wrote to its block device, its own journal included) and the copy,
mounted, is the disk after the cut; data only in the page cache is gone.
"""

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import requires_root
from tests.programs import crash_workloads as workloads
from veil.volume import daemon, verify_volume

pytestmark = requires_root
WORKLOAD = Path(workloads.__file__)
ROUNDS = {"rewrite": 40, "sqlite": 35, "git": 25}  # 100 crashes
ANCHOR_ROUNDS = 6  # per workload, on gocryptfs


@dataclass
class Disk:
    """An ext4 file system on a loop device over ``image``, mounted at ``mount``."""

    image: Path
    mount: Path

    @classmethod
    def make(cls, work: Path, size_mb: int = 256) -> "Disk":
        image, mount = work / "disk.img", work / "disk"
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        mount.mkdir()
        disk = cls(image, mount)
        disk.attach()
        return disk

    def attach(self) -> None:
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True)

    def detach(self) -> None:
        for _ in range(50):
            if subprocess.run(["umount", str(self.mount)], check=False, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        subprocess.run(["umount", "-l", str(self.mount)], check=False)

    def snapshot(self) -> None:
        """A power cut now: what reached the image is all that survives (restore() puts it back)."""
        subprocess.run(
            ["cp", "--sparse=always", str(self.image), str(self.image.with_suffix(".cut"))], check=True
        )

    def restore(self) -> None:
        """The disk after the cut: the snapshot, mounted (ext4 replays its journal)."""
        self.detach()  # flushes into the old image what the cut lost; that image is dropped
        self.image.with_suffix(".cut").replace(self.image)
        self.attach()


@dataclass
class Tally:
    crashes: int = 0
    power_cuts: int = 0
    lost: list[str] = field(default_factory=list)


def run_workload(kind: str, directory: Path, acks: Path, seed: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKLOAD), kind, str(directory), str(acks), str(seed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def acked(acks: Path) -> list[str]:
    """What the workload was told is durable (whole lines only: a line cut by the kill was not)."""
    if not acks.exists():
        return []
    text = acks.read_text()
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


# -- what must be there ----------------------------------------------------------------


def check_rewrite(directory: Path, acks: list[str], expected: dict[int, int]) -> list[str]:
    """Every block holds its last acknowledged version or a later one written to it."""
    for line in acks:
        version = int(line)
        expected[workloads.block_of(version)] = version
    data = (directory / "blocks").read_bytes()
    problems = []
    for block in range(workloads.BLOCKS):
        try:
            found = workloads.parse(data[block * workloads.BLOCK : (block + 1) * workloads.BLOCK])
        except ValueError:
            problems.append(f"block {block} is torn")
            continue
        want = expected.get(block)
        if want is None:
            continue
        if found is None or found[1] < want or found[0] != block or workloads.block_of(found[1]) != block:
            problems.append(f"block {block}: acknowledged version {want}, found {found}")
    return problems


def check_sqlite(directory: Path, acks: list[str]) -> list[str]:
    with contextlib.closing(sqlite3.connect(directory / "db.sqlite")) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            return [f"integrity_check: {integrity}"]
        count, low, top = db.execute("SELECT count(*), min(id), coalesce(max(id), 0) FROM t").fetchone()
    problems = []
    if acks and top < int(acks[-1]):
        problems.append(f"committed row {acks[-1]} is missing (the last row is {top})")
    if top % 20 or count != min(top, workloads.SQLITE_ROWS) or (count and low != top - count + 1):
        problems.append(f"{count} rows from id {low} to {top}: a transaction is partly there")
    return problems


def check_git(directory: Path, acks: list[str]) -> list[str]:
    repo = directory / "repo"
    if not acks:
        return []
    fsck = subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, capture_output=True, text=True)
    if fsck.returncode != 0:
        return [f"git fsck: {fsck.stdout.strip()[:300]} {fsck.stderr.strip()[:300]}"]
    missing = [
        commit
        for commit in acks
        if subprocess.run(["git", "cat-file", "-e", commit], cwd=repo, capture_output=True).returncode != 0
    ]
    return [f"acknowledged commits missing: {missing[:3]}"] if missing else []


# -- the targets ------------------------------------------------------------------------


class VeilTarget:
    name = "veil"

    def __init__(self, disk: Disk, work: Path) -> None:
        self.disk, self.key, self.mnt = disk, os.urandom(32), work / "mnt"
        self.mnt.mkdir()
        self.tag: str | None = None  # what the CAS holds
        self.pid = 0

    @property
    def storage(self) -> Path:
        return self.disk.mount / "volume"

    def mount(self) -> Path:
        if self.tag is None:  # the runtime creates the volume and reports its first tag
            mounted = daemon.start(self.storage, self.mnt, self.key, None, create_mode="encrypted")
            self.tag = mounted.initial_tag
        else:
            mounted = daemon.start(self.storage, self.mnt, self.key, self.tag)
        self.pid = mounted.pid
        return self.mnt

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True)
        deadline = time.time() + 10
        while os.path.ismount(self.mnt) and time.time() < deadline:
            time.sleep(0.05)

    def unmount(self) -> None:
        self.tag = daemon.stop(self.mnt, wait=10)  # the runtime reports the final tag to the CAS

    def check_volume(self) -> list[str]:
        assert self.tag is not None
        _, problems = verify_volume(self.storage, self.key, self.tag)
        return [f"verify: {p.path}: {p.reason}" for p in problems]


class GocryptfsTarget:
    name = "gocryptfs"

    def __init__(self, disk: Disk, work: Path) -> None:
        self.disk, self.mnt = disk, work / "gmnt"
        self.mnt.mkdir()
        self.cipher = disk.mount / "cipher"
        self.cipher.mkdir()
        subprocess.run(["gocryptfs", "-init", "-q", *self.password, str(self.cipher)], check=True)
        os.sync()  # gocryptfs -init does not sync its root's gocryptfs.diriv: a power cut empties it
        self.process: subprocess.Popen[bytes] | None = None

    password = ("-extpass", "echo crash", "-scryptn", "10")

    def mount(self) -> Path:
        self.process = subprocess.Popen(
            ["gocryptfs", "-fg", "-q", *self.password[:2], str(self.cipher), str(self.mnt)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while not os.path.ismount(self.mnt):
            assert time.time() < deadline, "gocryptfs did not mount"
            time.sleep(0.05)
        return self.mnt

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True)

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
        assert self.process is not None
        self.process.wait(timeout=30)

    def check_volume(self) -> list[str]:
        return []


def check(kind: str, directory: Path, lines: list[str], expected: dict[int, int]) -> list[str]:
    try:
        if kind == "rewrite":
            return check_rewrite(directory, lines, expected)
        return check_sqlite(directory, lines) if kind == "sqlite" else check_git(directory, lines)
    except (OSError, sqlite3.Error) as exc:
        return [f"unreadable: {exc}"]


def crash_loop(target: VeilTarget | GocryptfsTarget, rounds: dict[str, int], seed: int) -> Tally:
    tally = Tally()
    rng = random.Random(seed)
    acks_dir = target.mnt.parent / f"acks-{target.name}"
    acks_dir.mkdir()
    for kind, count in rounds.items():
        name, expected = kind, {}
        for round_ in range(count):
            label = f"{kind} round {round_} ({'power cut' if round_ % 2 else 'kill -9'})"
            try:
                problems = crash_round(
                    target, kind, name, acks_dir / f"{kind}-{round_}", expected, rng, round_
                )
            except (OSError, subprocess.CalledProcessError, AssertionError) as exc:
                problems = [f"the volume or its directory is unusable after the crash: {exc}"]
                with contextlib.suppress(Exception):
                    target.unmount()
                name, expected = f"{kind}-{round_}", {}  # go on in a fresh directory
            tally.crashes += 1
            tally.power_cuts += round_ % 2
            tally.lost += [f"{label}: {p}" for p in problems]
    return tally


def crash_round(
    target: VeilTarget | GocryptfsTarget,
    kind: str,
    name: str,
    acks: Path,
    expected: dict[int, int],
    rng: random.Random,
    round_: int,
) -> list[str]:
    """Mount, run the workload, crash at a random moment (every second round a power cut),
    mount again as the next run would, check; the problems found."""
    directory = target.mount() / name
    directory.mkdir(exist_ok=True)
    os.sync()  # the directory exists before the crash, on both file systems: only the workload is judged
    worker = run_workload(kind, directory, acks, round_ + 1)
    time.sleep(rng.uniform(0.4, 1.6))
    power = round_ % 2 == 1
    target.freeze()  # the moment of the crash: nothing is written or acknowledged after it
    try:
        os.kill(worker.pid, signal.SIGSTOP)
        lines = acked(acks)
        if power:  # what reached the disk now is what survives; the kill must not add to it
            target.disk.snapshot()
    finally:  # a frozen mount left behind would hang whoever touches its directory
        target.kill()
        worker.kill()
        worker.wait()
    if power:
        target.disk.restore()
    directory = target.mount() / name  # no owner's action: the tag the CAS holds
    problems = check(kind, directory, lines, expected)
    target.unmount()
    return problems + target.check_volume()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    made = Disk.make(tmp_path)
    yield made
    for mount in (tmp_path / "mnt", tmp_path / "anchor" / "gmnt"):
        if os.path.ismount(mount):
            subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False)
    made.detach()


@pytest.mark.timeout(1500)  # about 7 minutes on 2 cores
def test_a_hundred_crashes_lose_nothing_acknowledged(disk: Disk, tmp_path: Path) -> None:
    veil = crash_loop(VeilTarget(disk, tmp_path), ROUNDS, seed=7)
    (tmp_path / "anchor").mkdir()
    anchor_disk = Disk.make(tmp_path / "anchor")
    try:
        anchor = crash_loop(
            GocryptfsTarget(anchor_disk, tmp_path / "anchor"), dict.fromkeys(ROUNDS, ANCHOR_ROUNDS), seed=11
        )
    finally:
        anchor_disk.detach()
    print(
        f"\ncrashes: veil {veil.crashes} ({veil.power_cuts} power cuts), {len(veil.lost)} losses; "
        f"gocryptfs {anchor.crashes} ({anchor.power_cuts} power cuts), {len(anchor.lost)} losses"
    )
    for line in anchor.lost:
        print(f"  gocryptfs: {line}")
    assert veil.crashes == sum(ROUNDS.values())
    assert veil.lost == [], "\n".join(veil.lost)
