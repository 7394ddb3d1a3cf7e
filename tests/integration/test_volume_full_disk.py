"""A volume on a full backing disk behaves as a plain file system does: ENOSPC to the writer,
deletes free space, a later fsync succeeds, nothing written before is lost, no orphan left
(issue #26: `rm` freed nothing, every later fsync failed, 200 files were gone after
remount, a short manifest write lost the whole volume)."""

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import requires_root
from veil.volume import daemon, verify_volume

pytestmark = requires_root


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "backing"
    backing.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(backing)], check=True)
    try:
        yield backing
    finally:
        subprocess.run(["umount", "-l", str(backing)], check=False)


def fill(path: Path) -> int:
    """Write to ``path`` until the disk is full; the errno that stopped it."""
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for count in range(1000):
            os.write(fd, block)
            if count % 4 == 3:
                os.fsync(fd)
        raise AssertionError("the disk never filled")
    except OSError as exc:
        return exc.errno or 0
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


class Directory:
    """An open directory of the mount, to fsync it (which commits the volume's metadata)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_and_fill(mount: Path, small_disk: Path, files: dict[str, bytes], directory: Directory) -> None:
    for name, data in files.items():
        (mount / name).write_bytes(data)
    directory.sync()
    assert fill(mount / "big") in (errno.ENOSPC, errno.EDQUOT)
    assert fill(small_disk / "filler") == errno.ENOSPC  # not one byte left on the disk
    with pytest.raises(OSError) as full:
        (mount / "late").write_bytes(os.urandom(100_000))
        sync_file(mount / "late")
    assert full.value.errno == errno.ENOSPC

    os.unlink(mount / "big")
    directory.sync()  # the delete is recorded (the reserve pays for the manifest)
    os.unlink(small_disk / "filler")
    free = os.statvfs(small_disk)
    assert free.f_bavail * free.f_frsize > 16 << 20, "deleting freed the space"
    (mount / "after").write_bytes(b"written after the delete")
    sync_file(mount / "after")


def test_a_full_disk_reports_enospc_and_deletes_free_space(small_disk: Path, tmp_path: Path) -> None:
    storage, mount, key = small_disk / "volume", tmp_path / "mnt", os.urandom(32)
    mount.mkdir()
    daemon.start(storage, mount, key, None, create_mode="encrypted")
    files = {f"f{i:03d}": os.urandom(1000) for i in range(200)}
    try:
        with contextlib.closing(Directory(mount)) as directory:
            write_and_fill(mount, small_disk, files, directory)
    finally:
        tag = daemon.stop(mount, wait=10)

    daemon.start(storage, mount, key, tag)
    try:
        for name, data in files.items():
            assert (mount / name).read_bytes() == data, name
        assert (mount / "after").read_bytes() == b"written after the delete"
        assert not (mount / "big").exists()
    finally:
        tag = daemon.stop(mount, wait=10)
    final, problems = verify_volume(storage, key, tag)
    assert problems == [] and final == tag, "no orphan object, nothing damaged"
    assert not list(storage.rglob("*.tmp")), "no temporary file left behind"
