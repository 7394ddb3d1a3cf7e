"""Writing the volume's files so that no error is lost and a crash leaves old or new whole:
every byte written or an error raised, atomic replacement, directory and file system syncs."""

import contextlib
import ctypes
import os
from pathlib import Path


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (os.pwrite may write fewer); ENOSPC and
    every other error raise."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def pwrite_or_put_back(fd: int, data: bytes | bytearray | memoryview, offset: int, previous: bytes) -> None:
    """``pwrite_all``, and if it fails (after a part, maybe), ``previous`` (what those bytes
    of the file held, or its part within the file) written back before the error raises."""
    try:
        pwrite_all(fd, data, offset)
    except OSError:
        with contextlib.suppress(OSError):  # within blocks the file had: no new space needed
            pwrite_all(fd, previous, offset)
        raise


def write_atomic(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a reader, or a crash, sees the old or the new
    file whole: written aside completely (a short write or ENOSPC raises, and the old file
    stays), synced, renamed over, the directory synced."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            pwrite_all(fd, data, 0)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.replace(temporary, path)
    if durable:
        fsync_directory(os.path.dirname(path))


def fsync_directory(path: str | Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def pwritev_all(fd: int, buffers: list[bytes], offset: int) -> None:
    """pwrite_all of the buffers one after another, a thousand to a system call."""
    pending = [memoryview(b) for b in buffers if b]
    first = 0  # pending[:first] are written
    while first < len(pending):
        written = os.pwritev(fd, pending[first : first + 1024], offset)
        offset += written
        while first < len(pending) and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:
            pending[first] = pending[first][written:]


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """syncfs(2): everything written to the file system holding ``fd`` reaches its disk (one
    call for many files, where an fsync each would wait for the disk as many times)."""
    if _libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
