"""Copying a whole tree into a volume and out of it, as `cp -a` would: every file type,
hard links as links, owners, modes and times (``veil volume encrypt|decrypt``)."""

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from veil.volume.volume import Volume, VolumeStat

_BLOCK = 1 << 20
_KINDS = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def tree_size(source: Path) -> int:
    """Bytes of the regular files under ``source`` (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _, files in os.walk(source):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def copy_in(source: Path, volume: Volume, progress: Callable[[int], None] = lambda _: None) -> None:
    """Everything under ``source`` into the (empty) volume's root."""
    linked: dict[tuple[int, int], str] = {}  # a file with several names: its first path in the volume
    directories: list[tuple[str, os.stat_result]] = []
    root_info = os.lstat(source)
    volume.chmod("/", stat.S_IMODE(root_info.st_mode))
    volume.chown("/", root_info.st_uid, root_info.st_gid)
    for directory, dirs, files in os.walk(source):
        dirs.sort()
        rel = os.path.relpath(directory, source)
        base = "/" if rel == "." else "/" + rel
        for name in sorted(dirs + files):
            path, inside = os.path.join(directory, name), os.path.join(base, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            mode, uid, gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
            key = (info.st_dev, info.st_ino)
            if kind != stat.S_IFDIR and info.st_nlink > 1 and key in linked:
                volume.link(linked[key], inside)
                continue
            if kind == stat.S_IFDIR:
                volume.mkdir(inside, mode, uid, gid)
                directories.append((inside, info))
                continue
            if kind == stat.S_IFREG:
                with open(path, "rb") as src, volume.open_file(inside, "x", mode, uid, gid) as dst:
                    while block := src.read(_BLOCK):
                        dst.write(block)
                        progress(len(block))
            elif kind == stat.S_IFLNK:
                volume.symlink(os.readlink(path), inside, uid, gid)
            else:
                volume.mknod(inside, _KINDS[kind], mode, info.st_rdev, uid, gid)
            if kind != stat.S_IFLNK:
                volume.chmod(inside, mode)  # set-id bits as they were (a creation may drop them)
            volume.utimens(inside, info.st_atime_ns, info.st_mtime_ns)
            if info.st_nlink > 1:
                linked[key] = inside
    for inside, info in reversed(directories):  # after their entries: adding those moved the times
        volume.utimens(inside, info.st_atime_ns, info.st_mtime_ns)
    volume.utimens("/", root_info.st_atime_ns, root_info.st_mtime_ns)


def copy_out(volume: Volume, destination: Path, progress: Callable[[int], None] = lambda _: None) -> int:
    """The volume's tree into ``destination`` (empty); owners only where this process may
    set them (root). The number of owners that could not be set."""
    linked: dict[int, Path] = {}
    unowned = 0
    directories = []
    for entry in volume.walk():
        out = destination / entry.path.lstrip("/")
        if entry.path == "/":
            directories.append((out, entry))
            continue
        if entry.type != "dir" and entry.nlink > 1 and entry.ino in linked:
            os.link(linked[entry.ino], out, follow_symlinks=False)
            continue
        if entry.type == "dir":
            out.mkdir(mode=0o700)
            directories.append((out, entry))
            continue
        if entry.type == "file":
            with volume.open_file(entry.path) as src, open(out, "xb") as dst:
                while block := src.read(_BLOCK):
                    dst.write(block)
                    progress(len(block))
        elif entry.type == "symlink":
            os.symlink(entry.target or "", out)
        else:
            kind = next(k for k, name in _KINDS.items() if name == entry.type)
            os.mknod(out, kind | 0o600, entry.rdev)
        unowned += _restore(out, entry)
        if entry.nlink > 1:
            linked[entry.ino] = out
    for out, entry in reversed(directories):
        unowned += _restore(out, entry)
    return unowned


def _restore(out: Path, entry: VolumeStat) -> int:
    """Owner, mode and times of ``entry`` on ``out``; 1 if the owner could not be set."""
    unowned = 0
    try:
        os.chown(out, entry.uid, entry.gid, follow_symlinks=False)
    except PermissionError:
        unowned = 1
    if entry.type != "symlink":
        os.chmod(out, entry.mode)
    with contextlib.suppress(OSError):
        os.utime(out, ns=(entry.atime_ns, entry.mtime_ns), follow_symlinks=False)
    return unowned


__all__ = ["copy_in", "copy_out", "tree_size"]
