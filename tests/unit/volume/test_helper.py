"""The read helper (veil.volume.helper): a second process opens part of each large read and,
ahead of time, the part a sequential reader asks for next. It must never change what a read
returns: the same bytes, a write since it was asked still seen, tampering in its part still
refused and named, and reads still served when it is gone."""

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from veil.volume import IntegrityError, Volume, spin
from veil.volume.helper import ReadHelper
from veil.volume.volume import DEFAULT_CHUNK

MiB = 1 << 20
SIZE = 4 * MiB + 5000  # the last request is short, its last chunk partial
MOUNT_READ = 1008 << 10  # the largest read the mount negotiates (veil.volume.mount)


@pytest.fixture(params=["encrypted", "authenticated"])
def volume(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Volume]:
    key = os.urandom(32)
    with Volume.create(tmp_path / "vol", key, request.param) as created:
        with created.open_file("/big", "w") as handle:
            handle.write(os.urandom(SIZE))
        created.flush()
    with Volume.open(tmp_path / "vol", key) as opened:
        opened.helper = ReadHelper(opened.keys, request.param == "encrypted", opened.chunk_size, MiB)
        yield opened
        opened.helper.close()


def stride(volume: Volume) -> int:
    return DEFAULT_CHUNK + (28 if volume.mode == "encrypted" else 16)


def read_sequentially(volume: Volume, path: str, block: int = MiB) -> bytes:
    """As the kernel reads a mounted file: requests of ``block`` bytes, one after the other."""
    out = bytearray()
    with volume.open_file(path) as handle:
        buffer = memoryview(bytearray(block))
        while count := handle.pread_into(buffer, len(out)):
            out += buffer[:count]
    return bytes(out)


def read_shared_sequentially(volume: Volume, path: str, block: int = MOUNT_READ) -> bytes:
    """As the mount answers the kernel: each request opened into the helper's shared memory,
    whose bytes libfuse then sends (read here before the next request, as libfuse does)."""
    assert volume.helper is not None
    out = bytearray()
    with volume.open_file(path) as handle:
        while True:
            at, count = handle.pread_shared(block, len(out))
            if not count:
                return bytes(out)
            out += volume.helper.view[at : at + count]


READS: list[Callable[..., bytes]] = [read_sequentially, read_shared_sequentially]


def plain(volume: Volume, path: str) -> bytes:
    """What the file holds, read without the helper."""
    helper, volume.helper = volume.helper, None
    try:
        with volume.open_file(path) as handle:
            return handle.read()
    finally:
        volume.helper = helper


@pytest.mark.parametrize("read", READS)
def test_large_reads_return_what_the_file_holds(volume: Volume, read: Callable[..., bytes]) -> None:
    expected = plain(volume, "/big")
    assert read(volume, "/big") == expected
    # Unaligned requests: each starts inside the chunk the previous one ended in, so the
    # part asked for ahead (from the next chunk on) is not the next request's
    for block in (300_000, 18 * DEFAULT_CHUNK - 1, 17 * DEFAULT_CHUNK + 1, MiB - 1):
        assert read(volume, "/big", block=block) == expected, block
    assert read(volume, "/big", block=4096) == expected  # small ones, without the helper
    assert volume.helper is not None and volume.helper.alive
    assert volume.helper.jobs >= 2 * (SIZE // MiB)  # it opened parts of every request


def test_a_reply_is_not_overwritten_while_the_helper_opens_the_next_read(volume: Volume) -> None:
    """The mount hands libfuse the slot a read was opened into and returns; the helper
    then opens the next range ahead. It must write into the other slot, so that the reply
    still holds the bytes read when libfuse sends it."""
    expected = plain(volume, "/big")
    assert volume.helper is not None
    with volume.open_file("/big") as handle:
        for offset in range(0, SIZE, MOUNT_READ):
            at, count = handle.pread_shared(MOUNT_READ, offset)
            time.sleep(0.05)  # the helper opens the next range's part meanwhile
            assert bytes(volume.helper.view[at : at + count]) == expected[offset : offset + count]


def test_a_write_after_the_helper_was_asked_is_seen(volume: Volume) -> None:
    """The first read asks the helper for the second part of the next MiB; a write into that
    part before the next read must win over what the helper opened."""
    with volume.open_file("/big", "r+") as handle:
        first = memoryview(bytearray(MiB))
        handle.pread_into(first, 0)
        handle.pwrite(b"new data" * 1000, MiB + MiB // 2)
        second = memoryview(bytearray(MiB))
        handle.pread_into(second, MiB)
    assert bytes(second[MiB // 2 : MiB // 2 + 8000]) == b"new data" * 1000
    assert bytes(second) == plain(volume, "/big")[MiB : 2 * MiB]


def test_a_write_after_the_helper_was_asked_is_seen_in_the_mounts_reads(volume: Volume) -> None:
    assert volume.helper is not None
    with volume.open_file("/big", "r+") as handle:
        handle.pread_shared(MOUNT_READ, 0)
        handle.pwrite(b"new data" * 1000, MOUNT_READ + MOUNT_READ // 2)
        at, count = handle.pread_shared(MOUNT_READ, MOUNT_READ)
        second = bytes(volume.helper.view[at : at + count])
    assert second[MOUNT_READ // 2 : MOUNT_READ // 2 + 8000] == b"new data" * 1000
    assert second == plain(volume, "/big")[MOUNT_READ : 2 * MOUNT_READ]


def flip(volume: Volume, path: str, position: int) -> None:
    file_id = volume.file_id(path)
    with open(volume.root / "objects" / file_id[:2] / file_id, "r+b") as stored:
        stored.seek(position)
        byte = stored.read(1)
        stored.seek(position)
        stored.write(bytes([byte[0] ^ 1]))


@pytest.mark.parametrize("read", READS)
def test_tampering_in_the_helpers_part_is_refused_and_named(
    volume: Volume, read: Callable[..., bytes]
) -> None:
    chunk = MiB // DEFAULT_CHUNK + 100  # in the second MiB's helper part
    flip(volume, "/big", chunk * stride(volume) + 40)
    with pytest.raises(IntegrityError, match=f"/big: chunk {chunk} fails authentication"):
        read(volume, "/big")


@pytest.mark.parametrize("read", READS)
def test_a_chunk_rolled_back_in_the_helpers_part_is_refused(
    volume: Volume, read: Callable[..., bytes]
) -> None:
    chunk = 2 * MiB // DEFAULT_CHUNK + 100
    file_id = volume.file_id("/big")
    stored = volume.root / "objects" / file_id[:2] / file_id
    at = chunk * stride(volume)
    with open(stored, "rb") as handle:
        handle.seek(at)
        old_record = handle.read(stride(volume))
    with volume.open_file("/big", "r+") as handle:
        handle.pwrite(b"x" * 10, chunk * DEFAULT_CHUNK)
    volume.flush()  # committed: the new record is in place
    with open(stored, "r+b") as handle:  # the host puts the old record back
        handle.seek(at)
        handle.write(old_record)
    with pytest.raises(IntegrityError, match=f"/big: chunk {chunk} is not the current version"):
        read(volume, "/big")


@pytest.mark.parametrize("read", READS)
def test_reads_go_on_when_the_helper_is_gone(volume: Volume, read: Callable[..., bytes]) -> None:
    assert volume.helper is not None
    expected = plain(volume, "/big")
    os.kill(volume.helper.pid, signal.SIGKILL)
    os.waitpid(volume.helper.pid, 0)
    assert read(volume, "/big") == expected
    assert not volume.helper.alive


def test_mixed_reads_and_writes_return_what_the_file_holds(volume: Volume) -> None:
    """Sequential runs of assorted sizes and alignments, jumps, small reads and writes in
    between, as the mount answers them (each reply read before the next request)."""
    assert volume.helper is not None
    rng = random.Random(7)
    expected = bytearray(plain(volume, "/big"))
    with volume.open_file("/big", "r+") as handle:
        offset = 0
        for _ in range(300):
            choice = rng.random()
            if choice < 0.1:
                data = rng.randbytes(rng.randrange(1, 20_000))
                at = rng.randrange(0, SIZE - len(data))
                handle.pwrite(data, at)
                expected[at : at + len(data)] = data
                continue
            if choice < 0.3:
                offset = rng.randrange(0, SIZE)
            size = rng.choice((MOUNT_READ, 4096, rng.randrange(1, MOUNT_READ + 1)))
            at, count = handle.pread_shared(size, offset)
            assert count == min(size, SIZE - offset)
            assert bytes(volume.helper.view[at : at + count]) == expected[offset : offset + count]
            offset = offset + count if offset + count < SIZE else 0


@pytest.mark.parametrize("window", [0, 1_000, 1_000_000])
def test_reads_are_the_same_however_long_the_loop_polls_for_the_helper(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    monkeypatch.setattr(spin, "HELPER_NS", window)
    assert read_shared_sequentially(volume, "/big") == plain(volume, "/big")


def test_a_helper_slower_than_the_polling_window_is_waited_for(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its window the loop sleeps until the helper answers, and uses its work."""
    helper = volume.helper
    assert helper is not None
    monkeypatch.setattr(spin, "HELPER_NS", 1_000)
    answers: list[bool] = []
    collect = helper.collect

    def recorded(part: object) -> bool:
        answers.append(collect(part))  # type: ignore[arg-type]
        return answers[-1]

    monkeypatch.setattr(helper, "collect", recorded)
    os.kill(helper.pid, signal.SIGSTOP)
    threading.Timer(0.3, os.kill, (helper.pid, signal.SIGCONT)).start()
    start = time.monotonic()
    assert read_shared_sequentially(volume, "/big") == plain(volume, "/big")
    assert time.monotonic() - start >= 0.3
    assert answers and all(answers), "the helper's work was dropped"
