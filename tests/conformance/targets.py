"""The file systems a scenario runs on, and how an outcome is observed.

A scenario is a function of ``Ops`` (a root directory) that performs operations and returns
nothing; ``Ops`` records each operation's outcome ("ok", a value, or the errno's name), and
``snapshot`` records the tree left behind (names, types, modes, sizes, contents, link
targets, link counts, owners). Two targets agree when both records are equal. A scenario
may run as another user (in a child process that drops to that uid).
"""

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.volume import daemon

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
AT_FDCWD = -100


@dataclass
class Ops:
    """Operations relative to ``root``; each outcome recorded in ``log``."""

    root: Path
    log: list[tuple[str, object]] = field(default_factory=list)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def do(self, label: str, call: Callable[[], object]) -> object:
        try:
            value = call()
        except OSError as exc:
            outcome: object = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        else:
            outcome = "ok" if value is None else value
        self.log.append((label, outcome))
        return outcome

    def write(self, name: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> object:
        def work() -> int:
            fd = os.open(self.path(name), flags, 0o644)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        return self.do(f"write {name} {len(data)}", work)

    def read(self, name: str) -> object:
        return self.do(
            f"read {name}", lambda: hashlib.sha256(Path(self.path(name)).read_bytes()).hexdigest()[:16]
        )

    def lstat(self, name: str, *fields: str) -> object:
        """Chosen fields of lstat(2): type, mode, nlink, uid, gid, size, rdev."""

        def work() -> tuple[object, ...]:
            info = os.lstat(self.path(name))
            values = {
                "type": stat.S_IFMT(info.st_mode),
                "mode": stat.S_IMODE(info.st_mode),
                "nlink": info.st_nlink,
                "uid": info.st_uid,
                "gid": info.st_gid,
                "size": info.st_size,
                "rdev": info.st_rdev,
            }
            return tuple(values[f] for f in fields)

        return self.do(f"lstat {name} {','.join(fields)}", work)

    def renameat2(self, old: str, new: str, flags: int) -> object:
        def work() -> None:
            if _libc.renameat2(
                AT_FDCWD, os.fsencode(self.path(old)), AT_FDCWD, os.fsencode(self.path(new)), flags
            ):
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))

        return self.do(f"renameat2 {old} {new} {flags}", work)

    def fallocate(self, name: str, mode: int, offset: int, length: int) -> object:
        def work() -> None:
            fd = os.open(self.path(name), os.O_RDWR)
            try:
                if _libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)):
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            finally:
                os.close(fd)

        return self.do(f"fallocate {name} {mode} {offset} {length}", work)


def snapshot(root: Path) -> list[tuple[Any, ...]]:
    """The tree under ``root``: (path, type, mode, size, content digest, link target, nlink,
    uid, gid)."""
    rows: list[tuple[Any, ...]] = []
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory) / name
            info = path.lstat()
            regular = stat.S_ISREG(info.st_mode)
            rows.append(
                (
                    str(path.relative_to(root)),
                    stat.S_IFMT(info.st_mode),
                    stat.S_IMODE(info.st_mode),
                    info.st_size if regular else None,
                    hashlib.sha256(path.read_bytes()).hexdigest()[:16] if regular else None,
                    os.readlink(path) if stat.S_ISLNK(info.st_mode) else None,
                    info.st_nlink,
                    info.st_uid,
                    info.st_gid,
                )
            )
    return sorted(rows)


Scenario = Callable[[Ops], None]
Outcome = tuple[list[tuple[str, object]], list[tuple[Any, ...]]]


def outcome(scenario: Scenario, root: Path, uid: int | None = None) -> Outcome:
    """Run ``scenario`` in ``root`` (as ``uid``, in a child process, when given; the tree
    is read as root)."""
    if uid is None:
        ops = Ops(root)
        scenario(ops)
        return ops.log, snapshot(root)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            ops = Ops(root)
            scenario(ops)
            data = json.dumps(ops.log).encode()
            while data:
                data = data[os.write(write_end, data) :]
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the scenario failed in its process"
    log = [(label, tuple(value) if isinstance(value, list) else value) for label, value in json.loads(data)]
    return log, snapshot(root)


@contextlib.contextmanager
def plain(work: Path) -> Iterator[Path]:
    root = work / "plain"
    root.mkdir()
    yield root


@contextlib.contextmanager
def gocryptfs(work: Path) -> Iterator[Path]:
    cipher, mount = work / "gocryptfs.cipher", work / "gocryptfs.mnt"
    cipher.mkdir()
    mount.mkdir()
    password = ["-extpass", "echo conformance", "-scryptn", "10"]
    subprocess.run(["gocryptfs", "-init", "-q", *password, str(cipher)], check=True)
    subprocess.run(["gocryptfs", "-q", "-allow_other", *password[:2], str(cipher), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=False)


@contextlib.contextmanager
def veil(work: Path) -> Iterator[Path]:
    storage, mount = work / "veil.volume", work / "veil.mnt"
    mount.mkdir()
    daemon.start(storage, mount, os.urandom(32), None, create_mode="encrypted")
    try:
        yield mount
    finally:
        daemon.stop(mount, wait=10)


TARGETS = {"plain": plain, "gocryptfs": gocryptfs, "veil": veil}


def have_gocryptfs() -> bool:
    return shutil.which("gocryptfs") is not None
