"""Crashes at every kind of moment against a model (issue #26): random operations on a few
files (writes across chunk edges, holes, cuts inside a chunk and to nothing, O_TRUNC,
renames, unlinks, checkpoints), the storage copied as a killed process leaves it, and the
copy opened as the next run would. The copy must hold exactly the state of the last
commit: every committed byte, nothing of what came after, and `verify` clean.

Small chunks make every edge case frequent; a copy of the open volume is what a kill -9
leaves (the page cache survives a killed process; power cuts are the FUSE-level test's).
Each test runs twice: with overwrites kept aside for the journal (the usual amount), and
spilled to their second slot after a few records (as a large random-write load does).
"""

import errno
import os
import random
import shutil
from pathlib import Path

import pytest

from veil.volume import Volume, verify_volume
from veil.volume import volume as volume_module

MODES = ["encrypted", "authenticated"]
STEPS = 600


@pytest.fixture(params=["kept", "spilled"], autouse=True)
def spill(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "spilled":
        monkeypatch.setattr(volume_module, "SPILL_AT", 300)  # a few 64-byte chunks' records
    return str(request.param)


def committed_state(volume: Volume, where: Path) -> dict[str, bytes | None]:
    """The state the volume's tag names. After a lazy commit that left moved chunks for the
    next durable one, what is in memory is ahead of it: then the state is read from a copy
    taken at once (every later crash copy must still open to exactly that)."""
    if not volume.dirty:
        return snapshot(volume)
    shutil.copytree(volume.root, where, ignore=shutil.ignore_patterns(".lock"))
    try:
        with Volume.open(where, volume.keys._root, volume.tag, readonly=True) as copy:
            return snapshot(copy)
    finally:
        shutil.rmtree(where)


def snapshot(volume: Volume) -> dict[str, bytes | None]:
    state: dict[str, bytes | None] = {}
    for entry in volume.walk():
        if entry.path != "/" and entry.type == "file":
            with volume.open_file(entry.path) as handle:
                state[entry.path] = handle.read()
        elif entry.path != "/":
            state[entry.path] = None
    return state


class Model:
    def __init__(self, volume: Volume, rnd: random.Random) -> None:
        self.volume, self.rnd = volume, rnd
        self.names = [f"/f{i}" for i in range(4)]
        self.handles: dict[str, object] = {}

    def step(self) -> str:
        rnd, volume = self.rnd, self.volume
        cs = volume.chunk_size
        path = rnd.choice(self.names)
        exists = volume.exists(path)
        op = rnd.choices(
            [
                "write",
                "append",
                "cut",
                "cut-in-chunk",
                "hole",
                "otrunc",
                "rename",
                "unlink",
                "flush",
                "checkpoint",
                "lazy",
            ],
            weights=[30, 10, 8, 8, 5, 6, 5, 4, 12, 2, 6],
        )[0]
        if op in ("write", "append", "hole") or not exists:
            with volume.open_file(path, "r+" if exists else "w") as handle:
                size = handle.size
                if op == "append":
                    offset = size
                elif op == "hole":
                    offset = size + rnd.randrange(1, 4 * cs)
                else:
                    offset = rnd.randrange(0, size + 1)
                handle.pwrite(rnd.randbytes(rnd.randrange(1, 3 * cs)), offset)
            return "write"
        if op in ("cut", "cut-in-chunk"):
            with volume.open_file(path, "r+") as handle:
                size = handle.size
                if op == "cut-in-chunk" and size % cs:
                    new = size - rnd.randrange(1, size % cs + 1)  # the last chunk shrinks, the count stays
                else:
                    new = rnd.randrange(0, size + 2 * cs)
                handle.truncate(new)
            return op
        if op == "otrunc":
            with volume.open_file(path, "w") as handle:
                handle.write(rnd.randbytes(rnd.randrange(0, 2 * cs)))
            return op
        if op == "rename":
            volume.rename(path, rnd.choice(self.names))
            return op
        if op == "unlink":
            volume.unlink(path)
            return op
        if op == "checkpoint":
            volume.checkpoint()
            return op
        if op == "lazy":  # the mount's periodic commit
            volume.flush(durable=False)
            return op
        volume.flush()
        return op


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_a_crash_after_any_operation_opens_to_the_last_commit(tmp_path: Path, mode: str, seed: int) -> None:
    rnd = random.Random(seed)
    key = os.urandom(32)
    volume = Volume.create(tmp_path / "vol", key, mode, chunk_size=64)
    model = Model(volume, rnd)
    committed = {volume.flush(): snapshot(volume)}
    history: list[str] = []
    for step in range(STEPS):
        history.append(model.step())
        if volume.tag not in committed:
            committed[volume.tag] = committed_state(volume, tmp_path / "at-commit")
        if rnd.random() < 0.15:
            copy = tmp_path / f"crash-{step}"
            shutil.copytree(volume.root, copy, ignore=shutil.ignore_patterns(".lock"))
            last = volume.tag  # the tag the last commit gave (the CAS would hold it or an older one)
            with Volume.open(copy, key, last) as reopened:
                assert reopened.tag == last, f"step {step}: opened at another state; {history[-6:]}"
                assert snapshot(reopened) == committed[last], f"step {step}: {history[-6:]}"
            assert verify_volume(copy, key, last)[1] == [], f"step {step}: {history[-6:]}"
            shutil.rmtree(copy)
    volume.close()


class FullDisk:
    """os.pwrite as on a disk that fills and empties: while ``full``, a write that needs
    new space (past the end of the file) fails with ENOSPC at random, after writing the
    part that lies inside the file if there is one (a short write). Overwriting what the
    file already holds needs no space and succeeds, as on ext4."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd, self.full, self.real = rnd, False, os.pwrite

    def __call__(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        end = os.fstat(fd).st_size
        if self.full and offset + len(data) > end and self.rnd.random() < 0.5:
            if offset < end:
                return self.real(fd, memoryview(data)[: end - offset], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(fd, data, offset)

    def vector(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        """os.pwritev on the same disk: the buffers as one write."""
        return self(fd, b"".join(buffers), offset)


@pytest.mark.parametrize("seed", range(3))
def test_a_full_disk_loses_nothing_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The same, on a disk that is full now and then: an operation may fail with ENOSPC
    (the program is told), but what the volume holds in memory and what a crash leaves must
    agree at every commit, and no commit is lost."""
    rnd = random.Random(seed)
    key = os.urandom(32)
    volume = Volume.create(tmp_path / "vol", key, "encrypted", chunk_size=64)
    model = Model(volume, rnd)
    disk = FullDisk(random.Random(seed + 100))
    monkeypatch.setattr(os, "pwrite", disk)
    monkeypatch.setattr(os, "pwritev", disk.vector)
    committed = {volume.flush(): snapshot(volume)}
    failures = 0
    for step in range(STEPS):
        if rnd.random() < 0.1:
            disk.full = not disk.full
        try:
            model.step()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            failures += 1
        if volume.tag not in committed:
            disk.full, was_full = False, disk.full  # reading back writes nothing; keep it simple
            committed[volume.tag] = committed_state(volume, tmp_path / "at-commit")
            disk.full = was_full
        if rnd.random() < 0.15:
            copy = tmp_path / f"crash-{step}"
            shutil.copytree(volume.root, copy, ignore=shutil.ignore_patterns(".lock"))
            last = volume.tag
            if last not in committed:  # committed inside a failed operation: read it now
                disk.full, was_full = False, disk.full
                volume.flush()
                disk.full = was_full
                shutil.rmtree(copy)
                continue
            disk.full, was_full = False, disk.full
            with Volume.open(copy, key, last) as reopened:
                assert snapshot(reopened) == committed[last], f"step {step}"
            assert verify_volume(copy, key, last)[1] == [], f"step {step}"
            disk.full = was_full
            shutil.rmtree(copy)
    assert failures > 20  # the disk was full often enough to matter
    disk.full = False
    volume.close()
