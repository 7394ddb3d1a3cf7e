"""diskio: every byte written whatever the system calls return, errors raised."""

import errno
import os
from pathlib import Path

import pytest

from veil.volume import diskio


def test_pwritev_all_completes_short_vector_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pwritev that writes fewer bytes than asked (a signal, a filling disk) is continued
    where it stopped, inside a buffer or between two; batches stay within IOV_MAX."""
    buffers = [bytes([i % 251]) * (1 + i % 7) for i in range(3000)]
    real = os.pwritev
    batches: list[int] = []

    def short(fd: int, views: list[memoryview], offset: int) -> int:
        batches.append(len(views))
        if len(views) == 1:
            return real(fd, views, offset)
        return real(fd, [views[0][: max(1, len(views[0]) // 2)]], offset)

    monkeypatch.setattr(os, "pwritev", short)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        diskio.pwritev_all(fd, buffers, 10)
        assert os.pread(fd, 1 << 20, 10) == b"".join(buffers)
    finally:
        os.close(fd)
    assert max(batches) <= 1024


def test_pwritev_all_raises_what_the_disk_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, views: list[memoryview], offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as caught:
            diskio.pwritev_all(fd, [b"x"], 0)
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
