"""Chunks written again before the commit (``Volume._rewrite``, the random-write path):
each new record is written over the chunk's own record, so a write that fails part-way
must put back every record it changed: the file then reads as before the write, and the
program is told. Not a short write: on the kernel's write-back path a short count may
not reach the program."""

import errno
import os

import pytest

from veil.volume import IntegrityError, Volume
from veil.volume.volume import DEFAULT_CHUNK

CS = DEFAULT_CHUNK


def assert_committed(volume: Volume, content: bytes | bytearray) -> None:
    """/f holds ``content`` after a commit, in the volume opened again."""
    tag = volume.flush()
    volume.close()
    with Volume.open(volume.root, volume.keys._root, tag) as reopened:
        assert reopened.open_file("/f").read() == content


def test_rewrites_take_the_short_path_and_read_back(volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    content = bytearray(os.urandom(5 * CS + 100))
    with volume.open_file("/f", "w") as handle:
        handle.write(content)  # past the durable chunk count: written in place
        taken: list[tuple[int, int]] = []
        real = volume._rewrite
        monkeypatch.setattr(
            volume, "_rewrite", lambda s, f, la, o, d: taken.append((f, la)) or real(s, f, la, o, d)
        )
        writes = [
            (5, 10),  # inside chunk 0
            (2 * CS - 5, 10),  # across chunks 1 and 2
            (3 * CS - 7, CS + 20),  # chunk 3 whole, the ends of 2 and 4
            (5 * CS + 90, 10),  # inside the last, short chunk
        ]
        for at, length in writes:
            data = os.urandom(length)
            assert handle.pwrite(data, at) == length
            content[at : at + length] = data
        assert taken == [(0, 0), (1, 2), (2, 4), (5, 5)]
        handle.pwrite(b"grows", len(content) - 2)  # past the end: the general path
        content[-2:] = b"grows"
        assert len(taken) == 4
    assert volume.open_file("/f").read() == content
    assert_committed(volume, content)


class TornDisk:
    """os.pwrite whose ``fail_at``-th call writes 100 bytes and the next one fails (EIO)."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.calls, self.real = fail_at, 0, os.pwrite

    def __call__(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self.calls += 1
        if self.calls == self.fail_at:
            return self.real(fd, memoryview(data)[:100], offset)
        if self.calls == self.fail_at + 1:
            raise OSError(errno.EIO, "Input/output error")
        return self.real(fd, data, offset)


@pytest.mark.parametrize(("at", "length"), [(CS + 10, 50), (CS - 20, 40), (CS - 20, CS + 40)])
def test_a_rewrite_that_fails_at_once_changes_nothing(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, at: int, length: int
) -> None:
    content = os.urandom(4 * CS)
    with volume.open_file("/f", "w+") as handle:
        handle.write(content)
        disk = TornDisk(fail_at=1)
        monkeypatch.setattr(os, "pwrite", disk)
        with pytest.raises(OSError) as caught:
            handle.pwrite(b"x" * length, at)
        assert caught.value.errno == errno.EIO
        assert disk.calls == 3  # the torn write, the failed rest, the record put back
        monkeypatch.setattr(os, "pwrite", disk.real)
        assert handle.pread(4 * CS, 0) == content
    assert_committed(volume, content)


@pytest.mark.parametrize("fail_at", [2, 3])
def test_a_rewrite_over_chunks_that_fails_in_a_later_one_puts_back_the_earlier(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    content = os.urandom(4 * CS)
    with volume.open_file("/f", "w+") as handle:
        handle.write(content)
        disk = TornDisk(fail_at)
        monkeypatch.setattr(os, "pwrite", disk)
        with pytest.raises(OSError) as caught:
            handle.pwrite(b"x" * (CS + 40), CS - 20)  # chunks 0, 1 and 2
        assert caught.value.errno == errno.EIO
        assert disk.calls == fail_at + 1 + fail_at  # each record written put back
        monkeypatch.setattr(os, "pwrite", disk.real)
        assert handle.pread(4 * CS, 0) == content
    assert_committed(volume, content)


def test_a_rewrite_over_chunks_refused_in_a_later_one_puts_back_the_earlier(volume: Volume) -> None:
    """A later chunk's stored record damaged (here: changed on the host) refuses the write
    with an integrity error, and the chunks before it keep what they held."""
    content = os.urandom(4 * CS)
    with volume.open_file("/f", "w+") as handle:
        handle.write(content)
        state = handle._state
        overhead = state.codec.overhead
        at = 2 * (CS + overhead) + 100  # inside chunk 2's record
        os.pwrite(state.fd, bytes([os.pread(state.fd, 1, at)[0] ^ 1]), at)
        with pytest.raises(IntegrityError):
            handle.pwrite(b"x" * (CS + 40), CS - 20)  # chunks 0, 1 and 2
        assert handle.pread(2 * CS, 0) == content[: 2 * CS]


@pytest.mark.parametrize("damage", ["changed", "cut short"])
def test_a_rewrite_of_one_chunk_refuses_a_damaged_record_and_writes_nothing(
    volume: Volume, damage: str
) -> None:
    """The one-chunk short path opens the stored record before writing over it: a record
    changed on the host, or cut short with its object, refuses the write as an integrity
    error (not an internal one), and the object is left as it was."""
    content = os.urandom(4 * CS)
    with volume.open_file("/f", "w+") as handle:
        handle.write(content)
        state = handle._state
        last = 3 * (CS + state.codec.overhead)  # the last chunk's record
        if damage == "changed":
            os.pwrite(state.fd, bytes([os.pread(state.fd, 1, last + 100)[0] ^ 1]), last + 100)
        else:
            os.ftruncate(state.fd, last + CS)
        stored = os.pread(state.fd, 2 * CS, last)
        with pytest.raises(IntegrityError):
            handle.pwrite(b"x" * 10, 3 * CS + 5)
        assert os.pread(state.fd, 2 * CS, last) == stored
        assert handle.pread(3 * CS, 0) == content[: 3 * CS]
