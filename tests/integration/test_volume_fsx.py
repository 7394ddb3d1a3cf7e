"""fsx, after xfstests' ltp/fsx.c (read, not copied): random operations on one file of a
mounted volume against a byte-exact model, every read compared, in five configurations,
20,000 operations in all, the volume unmounted and mounted again between phases."""

import contextlib
import mmap
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import requires_root
from veil.volume import daemon, verify_volume

pytestmark = requires_root
OPERATIONS = 4_000  # per configuration: 20,000 in all
PHASE = 1_000  # operations between two mounts


@dataclass(frozen=True)
class Config:
    name: str
    max_size: int
    max_op: int
    aligned: int = 1  # offsets and lengths are multiples of this
    sync: bool = False  # O_SYNC writes
    drop_cache: bool = False  # the kernel's cache dropped after every operation


CONFIGS = [
    Config("small operations", 256 << 10, 64 << 10),
    Config("1 MiB aligned", 16 << 20, 1 << 20, aligned=1 << 20),
    Config("sync writes", 512 << 10, 32 << 10, sync=True),
    Config("cache dropped", 512 << 10, 32 << 10, drop_cache=True),
    Config("a 16 MiB file", 16 << 20, 256 << 10),
]


class Mounted:
    def __init__(self, work: Path) -> None:
        self.storage, self.mnt, self.key = work / "vol", work / "mnt", os.urandom(32)
        self.mnt.mkdir()
        self.tag = daemon.start(self.storage, self.mnt, self.key, None, create_mode="encrypted").initial_tag

    def remount(self) -> None:
        self.tag = daemon.stop(self.mnt, wait=10)
        daemon.start(self.storage, self.mnt, self.key, self.tag)

    def stop(self) -> None:
        self.tag = daemon.stop(self.mnt, wait=10)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    volume = Mounted(tmp_path)
    yield volume
    if os.path.ismount(volume.mnt):
        volume.stop()


class Fsx:
    def __init__(self, path: Path, config: Config, seed: int) -> None:
        self.path, self.config, self.rnd = path, config, random.Random(seed)
        self.model = bytearray()
        self.fd = -1
        self.log: list[str] = []

    def open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | (os.O_SYNC if self.config.sync else 0)
        self.fd = os.open(self.path, flags, 0o644)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def span(self, limit: int) -> tuple[int, int]:
        unit = self.config.aligned
        offset = self.rnd.randrange(0, max(1, limit // unit)) * unit
        length = (
            self.rnd.randrange(1, max(2, min(self.config.max_op, self.config.max_size - offset) // unit + 1))
            * unit
        )
        return offset, min(length, self.config.max_size - offset)

    def check(self, offset: int, data: bytes) -> None:
        expected = bytes(self.model[offset : offset + len(data)])
        if data != expected:
            first = (
                next(i for i, (a, b) in enumerate(zip(data, expected, strict=False)) if a != b)
                if len(data) == len(expected)
                else -1
            )
            raise AssertionError(
                f"{self.config.name}: bad data at {offset + max(first, 0)} after {len(self.log)} operations; "
                f"last: {self.log[-5:]}"
            )

    def step(self) -> None:
        op = self.rnd.choices(
            ["read", "write", "mapread", "mapwrite", "truncate", "allocate", "fsync", "reopen"],
            weights=[25, 30, 8, 10, 10, 5, 7, 5],
        )[0]
        size = len(self.model)
        if op == "read" and size:
            offset, length = self.span(size)
            self.check(offset, os.pread(self.fd, length, offset))
        elif op == "write":
            offset, length = self.span(self.config.max_size)
            data = self.rnd.randbytes(length)
            assert os.pwrite(self.fd, data, offset) == length
            if offset > size:
                self.model.extend(bytes(offset - size))  # a hole, read as zeros
            self.model[offset : offset + length] = data
        elif op in ("mapread", "mapwrite") and size:
            offset, length = self.span(size)
            length = min(length, size - offset)
            if length <= 0:
                return
            with mmap.mmap(self.fd, size) as mapped:
                if op == "mapread":
                    self.check(offset, mapped[offset : offset + length])
                else:
                    data = self.rnd.randbytes(length)
                    mapped[offset : offset + length] = data
                    mapped.flush()
                    self.model[offset : offset + length] = data
        elif op == "truncate":
            new = self.rnd.randrange(0, self.config.max_size + 1)
            new -= new % self.config.aligned
            os.ftruncate(self.fd, new)
            self.model = self.model[:new] + bytearray(max(0, new - size))
        elif op == "allocate":
            offset, length = self.span(self.config.max_size)
            os.posix_fallocate(self.fd, offset, length)
            if offset + length > size:
                self.model.extend(bytes(offset + length - size))
        elif op == "fsync":
            os.fsync(self.fd)
        elif op == "reopen":
            self.close()
            self.open()
        self.log.append(op)
        if self.config.drop_cache:
            os.fsync(self.fd)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.fstat(self.fd).st_size == len(self.model), f"{self.config.name}: size after {op}"

    def whole(self) -> None:
        self.check(0, Path(self.path).read_bytes())


def test_fsx_twenty_thousand_operations_in_five_configurations(mounted: Mounted) -> None:
    for number, config in enumerate(CONFIGS):
        fsx = Fsx(mounted.mnt / f"fsx-{number}", config, seed=number)
        fsx.open()
        try:
            for index in range(OPERATIONS):
                fsx.step()
                if index % PHASE == PHASE - 1:
                    fsx.close()
                    mounted.remount()  # the next phase reads what the volume stored
                    fsx.whole()
                    fsx.open()
        finally:
            with contextlib.suppress(OSError):
                fsx.close()
        fsx.whole()
    mounted.stop()
    assert verify_volume(mounted.storage, mounted.key, mounted.tag)[1] == []
