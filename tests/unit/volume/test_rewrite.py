"""A chunk written again before the commit (``Volume._rewrite``, the random-write path):
it is written over its own record, so a write that fails part-way must put that record
back; the file then reads as before the failed write, and the program is told."""

import errno
import os
from pathlib import Path

import pytest

from veil.volume import Volume
from veil.volume.volume import DEFAULT_CHUNK

CS = DEFAULT_CHUNK


def test_a_rewrite_takes_the_short_path_and_reads_back(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = bytearray(os.urandom(3 * CS + 100))
    with volume.open_file("/f", "w") as handle:
        handle.write(content)  # past the durable chunk count: written in place
        taken: list[int] = []
        real = volume._rewrite
        monkeypatch.setattr(volume, "_rewrite", lambda s, i, o, d: taken.append(i) or real(s, i, o, d))
        for at in (5, CS + 17, 3 * CS + 90):  # the last chunk is short
            data = os.urandom(10)
            handle.pwrite(data, at)
            content[at : at + 10] = data
        assert taken == [0, 1, 3]
        handle.pwrite(b"grows", len(content) - 2)  # past the end: the general path
        content[-2:] = b"grows"
        assert taken == [0, 1, 3]
    assert volume.open_file("/f").read() == content
    tag = volume.flush()
    volume.close()
    with Volume.open(volume.root, volume.keys._root, tag) as reopened:
        assert reopened.open_file("/f").read() == content


def test_a_rewrite_that_fails_part_way_leaves_the_chunk_as_it_was(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    content = os.urandom(2 * CS)
    with volume.open_file("/f", "w+") as handle:
        handle.write(content)
        real, calls = os.pwrite, []

        def torn(fd: int, data: bytes | memoryview, offset: int) -> int:
            calls.append(offset)
            if len(calls) == 1:
                return real(fd, memoryview(data)[:100], offset)  # a short write, then
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error")  # the device fails
            return real(fd, data, offset)  # the record put back

        monkeypatch.setattr(os, "pwrite", torn)
        with pytest.raises(OSError) as caught:
            handle.pwrite(b"x" * 50, CS + 10)
        assert caught.value.errno == errno.EIO and len(calls) == 3
        monkeypatch.setattr(os, "pwrite", real)
        assert handle.pread(2 * CS, 0) == content
    tag = volume.flush()
    volume.close()
    with Volume.open(volume.root, volume.keys._root, tag) as reopened:
        assert reopened.open_file("/f").read() == content
