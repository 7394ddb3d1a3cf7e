"""POSIX operations as pjdfstest's groups test them (chmod, chown, link, mkdir, mkfifo,
mknod, open, rename, rmdir, symlink, truncate, ftruncate, unlink, utimensat,
posix_fallocate): veil gives the plain directory's results, as root and as another user
through allow_other. Modelled on pjdfstest's tests (read, not copied): every file type,
link counts, owners, and the errno of each refusal."""

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conformance.conftest import NOBODY, agree
from tests.conformance.targets import Ops, Scenario

TYPES = ("regular", "dir", "fifo", "socket", "char", "block", "symlink")


def create(ops: Ops, kind: str, name: str) -> object:
    """pjdfstest's create_file: one object of each type."""
    path = ops.path(name)

    def work() -> None:
        if kind == "regular":
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        elif kind == "dir":
            os.mkdir(path, 0o755)
        elif kind == "fifo":
            os.mkfifo(path, 0o644)
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path)
            os.chmod(path, 0o644)
        elif kind in ("char", "block"):
            mode = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
            os.mknod(path, mode | 0o644, os.makedev(1, 2))
        else:
            os.symlink("test", path)

    return ops.do(f"create {kind} {name}", work)


def remove(ops: Ops, kind: str, name: str) -> object:
    call = os.rmdir if kind == "dir" else os.unlink
    return ops.do(f"remove {name}", lambda: call(ops.path(name)))


def each_type(body: Callable[[Ops, str], None]) -> Scenario:
    def scenario(ops: Ops) -> None:
        for kind in TYPES:
            body(ops, kind)

    scenario.__name__ = body.__name__
    return scenario


@each_type
def chmod_and_chown(ops: Ops, kind: str) -> None:
    create(ops, kind, "n0")
    ops.lstat("n0", "type", "mode", "nlink", "uid", "gid", "rdev")
    if kind != "symlink":
        ops.do("chmod 0111", lambda: os.chmod(ops.path("n0"), 0o111))
        ops.do("chmod 04777", lambda: os.chmod(ops.path("n0"), 0o4777))
    ops.do("lchown", lambda: os.chown(ops.path("n0"), 65534, 65533, follow_symlinks=False))
    ops.do("lchown -1", lambda: os.chown(ops.path("n0"), -1, 65532, follow_symlinks=False))
    ops.lstat("n0", "type", "mode", "uid", "gid")
    remove(ops, kind, "n0")


@each_type
def hard_links(ops: Ops, kind: str) -> None:
    create(ops, kind, "n0")
    for name in ("n1", "n2"):
        ops.do(
            f"link {name}", lambda name=name: os.link(ops.path("n0"), ops.path(name), follow_symlinks=False)
        )
    ops.lstat("n1", "type", "nlink")
    if kind != "dir":
        ops.do("chown n1", lambda: os.chown(ops.path("n1"), 65534, 65533, follow_symlinks=False))
        ops.do("unlink n0", lambda: os.unlink(ops.path("n0")))
        ops.lstat("n2", "type", "nlink", "uid", "gid")
        ops.do("link onto existing", lambda: os.link(ops.path("n1"), ops.path("n2"), follow_symlinks=False))
    else:
        remove(ops, kind, "n0")


def directories(ops: Ops) -> None:
    ops.do("mkdir a", lambda: os.mkdir(ops.path("a"), 0o751))
    ops.do("mkdir a again", lambda: os.mkdir(ops.path("a")))
    ops.write("a/f", b"x")
    ops.do("mkdir under a file", lambda: os.mkdir(ops.path("a/f/d")))
    ops.do("mkdir a/b", lambda: os.mkdir(ops.path("a/b")))
    ops.do("mkdir a/c", lambda: os.mkdir(ops.path("a/c")))
    ops.lstat("a", "nlink")
    ops.lstat(".", "nlink")
    ops.do("rmdir a", lambda: os.rmdir(ops.path("a")))
    ops.do("rmdir a/f", lambda: os.rmdir(ops.path("a/f")))
    ops.do("unlink a/b", lambda: os.unlink(ops.path("a/b")))
    ops.do("rmdir a/b", lambda: os.rmdir(ops.path("a/b")))
    ops.do("rmdir missing", lambda: os.rmdir(ops.path("missing")))
    ops.do("rename a/c to top", lambda: os.rename(ops.path("a/c"), ops.path("c")))
    ops.lstat("a", "nlink")
    ops.lstat(".", "nlink")


def opening(ops: Ops) -> None:
    ops.write("f", b"0123456789")
    ops.do("O_EXCL existing", lambda: os.open(ops.path("f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) and None)
    ops.do("open missing", lambda: os.open(ops.path("missing"), os.O_RDONLY) and None)
    ops.do("open dir for writing", lambda: os.open(ops.path("."), os.O_WRONLY) and None)
    ops.do("O_DIRECTORY on a file", lambda: os.open(ops.path("f"), os.O_RDONLY | os.O_DIRECTORY) and None)
    ops.do("through a file", lambda: os.open(ops.path("f/x"), os.O_RDONLY) and None)
    ops.write("f", b"ab", os.O_WRONLY | os.O_APPEND)
    ops.read("f")
    ops.write("f", b"new", os.O_WRONLY | os.O_TRUNC)
    ops.read("f")
    ops.do("create mode", lambda: os.close(os.open(ops.path("g"), os.O_CREAT | os.O_WRONLY, 0o604)))


def truncating(ops: Ops) -> None:
    ops.write("f", b"x" * 20_000)
    ops.do("truncate down", lambda: os.truncate(ops.path("f"), 5000))
    ops.read("f")
    ops.do("truncate up", lambda: os.truncate(ops.path("f"), 100_000))
    ops.read("f")
    ops.do("truncate negative", lambda: os.truncate(ops.path("f"), -1))
    ops.do("truncate a directory", lambda: os.truncate(ops.path("."), 0))

    def ftruncate_read_only() -> None:
        fd = os.open(ops.path("f"), os.O_RDONLY)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    ops.do("ftruncate read-only", ftruncate_read_only)
    ops.fallocate("f", 0, 0, 200_000)
    ops.lstat("f", "size")
    ops.fallocate("f", 1, 0, 400_000)  # FALLOC_FL_KEEP_SIZE
    ops.lstat("f", "size")
    ops.read("f")


def symlinks(ops: Ops) -> None:
    ops.do("symlink", lambda: os.symlink("target/../x", ops.path("l")))
    ops.do("readlink", lambda: os.readlink(ops.path("l")))
    ops.do("stat dangling", lambda: os.stat(ops.path("l")) and None)
    ops.do("symlink over existing", lambda: os.symlink("y", ops.path("l")))
    ops.do("longest target", lambda: os.symlink("t" * 4095, ops.path("long")))
    ops.lstat("long", "size")
    ops.do("too long target", lambda: os.symlink("t" * 4096, ops.path("longer")))
    ops.do("loop", lambda: os.symlink("loop", ops.path("loop")))
    ops.do("open loop", lambda: os.open(ops.path("loop"), os.O_RDONLY) and None)
    ops.write("real", b"through the link")
    ops.do("link to real", lambda: os.symlink("real", ops.path("to-real")))
    ops.read("to-real")
    ops.do("readlink of a file", lambda: os.readlink(ops.path("real")))


def times(ops: Ops) -> None:
    ops.write("f", b"x")
    ops.do("set times", lambda: os.utime(ops.path("f"), ns=(1_000_000_001, 2_000_000_002)))
    ops.do("times", lambda: (os.stat(ops.path("f")).st_atime_ns, os.stat(ops.path("f")).st_mtime_ns))
    ops.do("symlink", lambda: os.symlink("f", ops.path("l")))
    ops.do(
        "set link's own times",
        lambda: os.utime(ops.path("l"), ns=(3_000_000_003, 4_000_000_004), follow_symlinks=False),
    )
    ops.do("link times", lambda: os.lstat(ops.path("l")).st_mtime_ns)
    ops.do("target untouched", lambda: os.stat(ops.path("f")).st_mtime_ns)
    ops.do("now", lambda: os.utime(ops.path("f")))
    ops.do("recent", lambda: abs(os.stat(ops.path("f")).st_mtime - __import__("time").time()) < 60)


def sparse(ops: Ops) -> None:
    ops.write("s", b"")
    ops.do("truncate 2 GiB", lambda: os.truncate(ops.path("s"), 2 << 30))
    ops.do("stored under 10 MiB", lambda: os.stat(ops.path("s")).st_blocks * 512 < 10 << 20)
    ops.lstat("s", "size")


SCENARIOS: list[Scenario] = [
    chmod_and_chown,
    hard_links,
    directories,
    opening,
    truncating,
    symlinks,
    times,
    sparse,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_as_root_as_the_plain_directory(scenario: Scenario, shared_tmp: Path) -> None:
    agree(scenario, shared_tmp)


def roots_files(ops: Ops) -> None:
    """Set up as root: a file only root may write, one only root may read, a sticky
    directory with root's file in it, a directory of the other user's."""
    ops.write("roots", b"root's")
    os.chmod(ops.path("roots"), 0o644)
    ops.write("secret", b"root only")
    os.chmod(ops.path("secret"), 0o600)
    os.mkdir(ops.path("sticky"), 0o1777)
    ops.write("sticky/roots", b"r")
    os.mkdir(ops.path("mine"), 0o755)
    os.chown(ops.path("mine"), NOBODY, NOBODY)


def unprivileged(ops: Ops) -> None:
    ops.write("mine/f", b"mine")
    ops.lstat("mine/f", "uid", "gid", "mode")
    ops.do("chmod own", lambda: os.chmod(ops.path("mine/f"), 0o600))
    ops.do("chmod root's", lambda: os.chmod(ops.path("roots"), 0o666))
    ops.do("chown own to root", lambda: os.chown(ops.path("mine/f"), 0, -1))
    ops.do("chown root's", lambda: os.chown(ops.path("roots"), NOBODY, -1))
    ops.write("roots", b"overwritten?")
    ops.read("secret")
    ops.read("roots")
    ops.do("unlink root's in a sticky dir", lambda: os.unlink(ops.path("sticky/roots")))
    ops.write("sticky/mine", b"m")
    ops.do("unlink own in a sticky dir", lambda: os.unlink(ops.path("sticky/mine")))
    ops.do("mkdir in root's 0755 dir", lambda: os.mkdir(ops.path("mine/../roots-dir")))
    ops.do("setgid on own file", lambda: os.chmod(ops.path("mine/f"), 0o2755))
    ops.lstat("mine/f", "mode")
    ops.do("utimes of root's file", lambda: os.utime(ops.path("roots"), ns=(1, 1)))
    ops.do("utime now of root's file", lambda: os.utime(ops.path("roots")))


def test_as_another_user_as_the_plain_directory(shared_tmp: Path) -> None:
    agree(unprivileged, shared_tmp, uid=NOBODY, setup=roots_files)


def test_renaming_a_file_keeps_its_inode_and_counts(shared_tmp: Path) -> None:
    def scenario(ops: Ops) -> None:
        ops.write("a", b"a")
        ops.do("link", lambda: os.link(ops.path("a"), ops.path("b")))
        ops.do("same inode", lambda: os.stat(ops.path("a")).st_ino == os.stat(ops.path("b")).st_ino)
        ops.do("rename a c", lambda: os.rename(ops.path("a"), ops.path("c")))
        ops.do("rename keeps inode", lambda: os.stat(ops.path("c")).st_ino == os.stat(ops.path("b")).st_ino)
        ops.lstat("c", "nlink")

    agree(scenario, shared_tmp)
