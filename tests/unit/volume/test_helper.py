"""The read helper (veil.volume.helper): a second process opens part of each large read and,
ahead of time, the part a sequential reader asks for next. It must never change what a read
returns: the same bytes, a write since it was asked still seen, tampering in its part still
refused and named, and reads still served when it is gone."""

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from veil.volume import IntegrityError, Volume
from veil.volume.helper import ReadHelper
from veil.volume.volume import DEFAULT_CHUNK

MiB = 1 << 20
SIZE = 4 * MiB + 5000  # the last request is short, its last chunk partial


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


def plain(volume: Volume, path: str) -> bytes:
    """What the file holds, read without the helper."""
    helper, volume.helper = volume.helper, None
    try:
        with volume.open_file(path) as handle:
            return handle.read()
    finally:
        volume.helper = helper


def test_large_reads_return_what_the_file_holds(volume: Volume) -> None:
    expected = plain(volume, "/big")
    assert read_sequentially(volume, "/big") == expected
    assert read_sequentially(volume, "/big", block=300_000) == expected  # unaligned requests
    assert volume.helper is not None and volume.helper.alive
    assert volume.helper.jobs >= 2 * (SIZE // MiB)  # it opened parts of every request


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


def flip(volume: Volume, path: str, position: int) -> None:
    file_id = volume.manifest.entries[path]["id"]
    with open(volume.root / "objects" / file_id[:2] / file_id, "r+b") as stored:
        stored.seek(position)
        byte = stored.read(1)
        stored.seek(position)
        stored.write(bytes([byte[0] ^ 1]))


def test_tampering_in_the_helpers_part_is_refused_and_named(volume: Volume) -> None:
    chunk = MiB // DEFAULT_CHUNK + 100  # in the second MiB's helper part
    flip(volume, "/big", chunk * stride(volume) + 40)
    with pytest.raises(IntegrityError, match=f"/big: chunk {chunk} fails authentication"):
        read_sequentially(volume, "/big")


def test_a_chunk_rolled_back_in_the_helpers_part_is_refused(volume: Volume) -> None:
    chunk = 2 * MiB // DEFAULT_CHUNK + 100
    file_id = volume.manifest.entries["/big"]["id"]
    stored = volume.root / "objects" / file_id[:2] / file_id
    at = chunk * stride(volume)
    with open(stored, "rb") as handle:
        handle.seek(at)
        old_record = handle.read(stride(volume))
    with volume.open_file("/big", "r+") as handle:
        handle.pwrite(b"x" * 10, chunk * DEFAULT_CHUNK)
    with open(stored, "r+b") as handle:  # the host puts the old record back
        handle.seek(at)
        handle.write(old_record)
    with pytest.raises(IntegrityError, match=f"/big: chunk {chunk} is not the current version"):
        read_sequentially(volume, "/big")


def test_reads_go_on_when_the_helper_is_gone(volume: Volume) -> None:
    assert volume.helper is not None
    expected = plain(volume, "/big")
    os.kill(volume.helper.pid, signal.SIGKILL)
    os.waitpid(volume.helper.pid, 0)
    assert read_sequentially(volume, "/big") == expected
    assert not volume.helper.alive
