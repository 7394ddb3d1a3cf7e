"""What a volume holds beyond files and directories (issue #26: symlinks, FIFOs and sockets
gave ENOSYS, hard links EPERM, chown stored nothing, link counts were always 2, sparse
files stored every zero): each kept, counted, and still there after reopening."""

import errno
import os

import pytest

from veil.volume import Volume, verify_volume
from veil.volume.volume import DEFAULT_CHUNK, MAX_FILE_SIZE

CS = DEFAULT_CHUNK


def reopened(volume: Volume) -> Volume:
    key = volume.keys._root
    volume.close()
    return Volume.open(volume.root, key)


def write(volume: Volume, path: str, data: bytes) -> None:
    with volume.open_file(path, "w") as handle:
        handle.write(data)


def test_hard_links_share_content_and_count(volume: Volume) -> None:
    write(volume, "/a", b"shared")
    volume.mkdir("/d")
    volume.link("/a", "/d/b")
    assert volume.stat("/a").nlink == volume.stat("/d/b").nlink == 2
    assert volume.stat("/a").ino == volume.stat("/d/b").ino
    with volume.open_file("/d/b", "r+") as handle:
        handle.write(b"SHARED")
    assert volume.open_file("/a").read() == b"SHARED"
    volume.rename("/a", "/d/b")  # two names of one inode: nothing happens
    assert volume.exists("/a") and volume.stat("/a").nlink == 2
    volume.unlink("/a")
    again = reopened(volume)
    assert again.stat("/d/b").nlink == 1
    assert again.open_file("/d/b").read() == b"SHARED"
    with pytest.raises(PermissionError):
        again.link("/d", "/e")  # no hard link to a directory
    again.close()


def test_symbolic_links_are_kept_as_written(volume: Volume) -> None:
    volume.symlink("../lib/libfoo.so.1", "/link")
    volume.symlink("/absolute/elsewhere", "/dangling")
    stat = volume.stat("/link")
    assert (stat.type, stat.size, stat.mode) == ("symlink", len("../lib/libfoo.so.1"), 0o777)
    with pytest.raises(OSError) as caught:
        volume.open_file("/link")  # the kernel follows links before the volume sees a path
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError) as long_target:
        volume.symlink("x" * 4096, "/long")
    assert long_target.value.errno == errno.ENAMETOOLONG
    again = reopened(volume)
    assert again.readlink("/link") == "../lib/libfoo.so.1"
    assert again.readlink("/dangling") == "/absolute/elsewhere"
    with pytest.raises(OSError) as not_a_link:
        again.readlink("/")
    assert not_a_link.value.errno == errno.EINVAL
    again.close()


def test_special_files_are_metadata(volume: Volume) -> None:
    volume.mknod("/fifo", "fifo", 0o600)
    volume.mknod("/sock", "socket", 0o755)
    volume.mknod("/null", "chardev", 0o666, os.makedev(1, 3))
    volume.mknod("/plain", "file", 0o640)
    again = reopened(volume)
    kinds = {s.path: (s.type, s.mode, s.rdev) for s in again.walk() if s.path != "/"}
    assert kinds == {
        "/fifo": ("fifo", 0o600, 0),
        "/sock": ("socket", 0o755, 0),
        "/null": ("chardev", 0o666, os.makedev(1, 3)),
        "/plain": ("file", 0o640, 0),
    }
    again.close()


def test_owners_modes_and_times_are_stored(volume: Volume) -> None:
    volume.mkdir("/srv", 0o2775, uid=0, gid=33)  # set-group-id: new entries take its group
    write(volume, "/srv/page.html", b"<html/>")
    volume.chown("/srv/page.html", 33, -1)
    volume.mkdir("/srv/sub", 0o755, uid=0, gid=0)
    volume.chmod("/srv/page.html", 0o4640)
    volume.utime("/srv/page.html", mtime=1_000_000_000.5, atime=1_100_000_000)
    again = reopened(volume)
    page = again.stat("/srv/page.html")
    assert (page.uid, page.gid, page.mode) == (33, 33, 0o4640)
    assert page.mtime_ns == 1_000_000_000_500_000_000 and page.atime_ns == 1_100_000_000 * 10**9
    sub = again.stat("/srv/sub")
    assert sub.gid == 33 and sub.mode & 0o2000, "a subdirectory inherits set-group-id"
    again.close()


def test_directory_link_counts(volume: Volume) -> None:
    volume.mkdir("/a")
    volume.mkdir("/a/b")
    volume.mkdir("/a/c")
    write(volume, "/a/f", b"")
    assert (volume.stat("/").nlink, volume.stat("/a").nlink, volume.stat("/a/b").nlink) == (3, 4, 2)
    volume.rename("/a/b", "/b")
    assert (volume.stat("/").nlink, volume.stat("/a").nlink) == (4, 3)
    volume.rmdir("/a/c")
    again = reopened(volume)
    assert (again.stat("/").nlink, again.stat("/a").nlink) == (4, 2)
    again.close()


def test_a_sparse_file_costs_no_storage_for_its_holes(volume: Volume) -> None:
    with volume.open_file("/sparse", "w") as handle:
        handle.truncate(2 << 30)
        handle.pwrite(b"middle", 1 << 30)
        handle.pwrite(b"end", (2 << 30) - 3)
    again = reopened(volume)
    with again.open_file("/sparse") as handle:
        assert handle.size == 2 << 30
        assert handle.pread(10, 0) == bytes(10)
        assert handle.pread(6, 1 << 30) == b"middle"
        assert handle.pread(3, (2 << 30) - 3) == b"end"
        assert handle.pread(CS * 3, (1 << 30) - CS) == bytes(CS) + b"middle" + bytes(2 * CS - 6)
    stored = sum(p.stat().st_blocks * 512 for p in (again.root / "objects").rglob("*") if p.is_file())
    assert stored < 1 << 20, f"{stored} bytes stored for 9 bytes of data in 2 GiB"
    again.close()
    assert verify_volume(volume.root, volume.keys._root)[1] == []


def test_extending_reseals_the_partial_last_chunk(volume: Volume) -> None:
    write(volume, "/f", b"abc")
    with volume.open_file("/f", "r+") as handle:
        handle.truncate(3 * CS + 5)
        assert handle.read() == b"abc" + bytes(3 * CS + 2)
        handle.truncate(2)
        assert handle.pread(100, 0) == b"ab"
        handle.truncate(CS + 1)
    again = reopened(volume)
    assert again.open_file("/f").read() == b"ab" + bytes(CS - 1)
    again.close()


def test_sizes_past_the_format_are_efbig(volume: Volume) -> None:
    write(volume, "/f", b"data")
    with volume.open_file("/f", "r+") as handle:
        for call in (lambda: handle.truncate(MAX_FILE_SIZE + 1), lambda: handle.pwrite(b"x", MAX_FILE_SIZE)):
            with pytest.raises(OSError) as caught:
                call()
            assert caught.value.errno == errno.EFBIG
        assert handle.read() == b"data"


def test_allocate_extends_or_keeps_the_size(volume: Volume) -> None:
    with volume.open_file("/f", "w+") as handle:
        handle.write(b"x")
        handle.allocate(0, 10 * CS, keep_size=True)
        assert handle.size == 1
        handle.allocate(CS, 2 * CS)
        assert handle.size == 3 * CS
        assert handle.pread(4, 0) == b"x\0\0\0"


def test_exchange_swaps_whole_subtrees(volume: Volume) -> None:
    volume.mkdir("/left")
    write(volume, "/left/l", b"L")
    volume.mkdir("/right")
    volume.mkdir("/right/deep")
    write(volume, "/right/deep/r", b"R")
    volume.rename("/left", "/right", 2)
    assert volume.open_file("/left/deep/r").read() == b"R"
    assert volume.open_file("/right/l").read() == b"L"
    with pytest.raises(OSError) as caught:
        volume.rename("/left", "/left/deep", 2)
    assert caught.value.errno == errno.EINVAL
    again = reopened(volume)
    assert sorted(s.path for s in again.walk()) == [
        "/",
        "/left",
        "/left/deep",
        "/left/deep/r",
        "/right",
        "/right/l",
    ]
    again.close()


def test_a_deep_tree_opens_and_walks(volume: Volume) -> None:
    path = ""
    for _ in range(1500):  # deeper than Python's recursion limit
        path += "/d"
        volume.mkdir(path)
    write(volume, path + "/leaf", b"deep")
    again = reopened(volume)
    assert again.open_file(path + "/leaf").read() == b"deep"
    assert sum(1 for _ in again.walk()) == 1502
    again.close()
