"""The tree of a volume: inodes, directories and their names, link counts
(docs/volume-format.md, "Inodes and the manifest").

Paths are resolved here without following symbolic links (the kernel follows them before
it asks the mount); every namespace error is an OSError with the errno a kernel file
system gives. The tree knows nothing of chunks, journals or storage.
"""

import errno
import os
import posixpath
import stat as stat_module
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ROOT = 1
#: the longest name, in bytes of UTF-8 (as the program gave it), and the longest link target
NAME_MAX = 255
TARGET_MAX = 4095
TYPES = {
    "file": stat_module.S_IFREG,
    "dir": stat_module.S_IFDIR,
    "symlink": stat_module.S_IFLNK,
    "fifo": stat_module.S_IFIFO,
    "socket": stat_module.S_IFSOCK,
    "chardev": stat_module.S_IFCHR,
    "blockdev": stat_module.S_IFBLK,
}
TYPE_OF_MODE = {kind: name for name, kind in TYPES.items()}


def oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def name_bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def split(path: str) -> list[str]:
    """The names of a volume path, normalised (no ".", ".."s resolved lexically, as
    posixpath does; the kernel hands the mount paths without them); ENAMETOOLONG for a
    name longer than NAME_MAX bytes, EINVAL for NUL."""
    if "\0" in path:
        raise oserror(errno.EINVAL, path)
    joined = posixpath.normpath("/" + path.lstrip("/"))
    names = [n for n in joined.split("/") if n]
    # shorter than NAME_MAX / 4 characters, no name can have NAME_MAX bytes of UTF-8
    if len(joined) > NAME_MAX // 4 and any(name_bytes(n) > NAME_MAX for n in names):
        raise oserror(errno.ENAMETOOLONG, path)
    return names


def normalize(path: str) -> str:
    return "/" + "/".join(split(path))


@dataclass(eq=False)
class Inode:
    """One inode. ``size``, ``file_id`` and the checkpoint's tag table (``root`` or inline
    ``tags``) are a regular file's; ``entries`` a directory's; ``target`` a symbolic
    link's; ``rdev`` a device's. ``nlink`` and ``parent`` are counted, not stored."""

    ino: int
    type: str
    mode: int
    uid: int
    gid: int
    atime: int
    mtime: int
    ctime: int
    size: int = 0
    file_id: bytes | None = None
    root: str | None = None
    tags: bytes | None = None
    target: str | None = None
    rdev: int = 0
    entries: dict[str, int] | None = None
    nlink: int = 0
    parent: int = 0
    #: the current tag table, when loaded or changed since the checkpoint (see volume.py)
    table: bytearray | None = None

    @property
    def st_mode(self) -> int:
        return TYPES[self.type] | self.mode

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    def attrs(self) -> dict[str, Any]:
        """What a journal's ``inode`` operation carries: all but entries, size and table."""
        raw: dict[str, Any] = {
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "atime": self.atime,
            "mtime": self.mtime,
            "ctime": self.ctime,
        }
        if self.file_id is not None:
            raw["id"] = self.file_id.hex()
        if self.target is not None:
            raw["target"] = self.target
        if self.rdev:
            raw["rdev"] = self.rdev
        return raw

    def set_attrs(self, raw: dict[str, Any]) -> None:
        self.type = str(raw["type"])
        self.mode = int(raw["mode"]) & 0o7777
        self.uid, self.gid = int(raw["uid"]), int(raw["gid"])
        self.atime, self.mtime, self.ctime = int(raw["atime"]), int(raw["mtime"]), int(raw["ctime"])
        if "id" in raw:
            self.file_id = bytes.fromhex(str(raw["id"]))
        if "target" in raw:
            self.target = str(raw["target"])
        self.rdev = int(raw.get("rdev", 0))

    def checkpoint(self) -> dict[str, Any]:
        """The inode as the manifest holds it."""
        raw = self.attrs()
        if self.type == "file":
            raw["size"] = self.size
            if self.root is not None:
                raw["root"] = self.root
            else:
                raw["tags"] = (self.tags or b"").hex()
        if self.entries is not None:
            raw["entries"] = dict(sorted(self.entries.items()))
        return raw

    @classmethod
    def from_checkpoint(cls, ino: int, raw: dict[str, Any]) -> "Inode":
        if raw.get("type") not in TYPES:
            raise ValueError(f"inode {ino} has an unknown type")
        inode = cls(ino, "file", 0, 0, 0, 0, 0, 0)
        inode.set_attrs(raw)
        if inode.type == "file":
            inode.size = int(raw["size"])
            if "root" in raw:
                inode.root = str(raw["root"])
            else:
                inode.tags = bytes.fromhex(str(raw.get("tags", "")))
        if inode.type == "dir":
            inode.entries = {str(k): int(v) for k, v in dict(raw.get("entries", {})).items()}
        return inode


class Tree:
    """Every inode of a volume, by number, and the directory structure over them."""

    def __init__(self, inodes: dict[int, Inode], next_ino: int) -> None:
        self.inodes = inodes
        self.next_ino = next_ino

    @classmethod
    def empty(cls, mode: int, uid: int, gid: int, now: int) -> "Tree":
        root = Inode(ROOT, "dir", mode & 0o7777, uid, gid, now, now, now, entries={}, nlink=2, parent=ROOT)
        return cls({ROOT: root}, ROOT + 1)

    # -- reading ----------------------------------------------------------------------

    def get(self, ino: int) -> Inode:
        return self.inodes[ino]

    def lookup(self, path: str) -> Inode:
        """The inode at ``path`` (ENOENT, ENOTDIR on the way)."""
        node = self.inodes[ROOT]
        for name in split(path):
            if node.entries is None:
                raise oserror(errno.ENOTDIR, path)
            ino = node.entries.get(name)
            if ino is None:
                raise oserror(errno.ENOENT, path)
            node = self.inodes[ino]
        return node

    def parent_of(self, path: str) -> tuple[Inode, str]:
        """(the directory that would hold ``path``, its last name); the root has none."""
        names = split(path)
        if not names:
            raise oserror(errno.EBUSY, path)
        directory = self.lookup("/" + "/".join(names[:-1]))
        if directory.entries is None:
            raise oserror(errno.ENOTDIR, path)
        return directory, names[-1]

    def walk(self, ino: int = ROOT, path: str = "/") -> Iterator[tuple[str, Inode]]:
        """(path, inode) for ``ino`` and everything under it, depth first, names sorted; a
        file with several names comes once per name. Iterative: a tree may be deeper than
        Python's recursion limit."""
        stack = [(path, ino)]
        while stack:
            where, number = stack.pop()
            node = self.inodes[number]
            yield where, node
            if node.entries:
                stack.extend(
                    (posixpath.join(where, name), node.entries[name])
                    for name in sorted(node.entries, reverse=True)
                )

    def is_inside(self, ino: int, ancestor: int) -> bool:
        """Whether directory ``ino`` is ``ancestor`` or below it."""
        while True:
            if ino == ancestor:
                return True
            parent = self.inodes[ino].parent
            if parent == ino:
                return False
            ino = parent

    # -- changing ---------------------------------------------------------------------

    def allocate(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def add(self, inode: Inode) -> None:
        self.inodes[inode.ino] = inode
        self.next_ino = max(self.next_ino, inode.ino + 1)
        if inode.type == "dir" and inode.entries is None:
            inode.entries = {}

    def link(self, directory: Inode, name: str, inode: Inode) -> Inode | None:
        """``name`` in ``directory`` now names ``inode``; the inode it named before, if
        any (its link count already lowered). A directory's own count (2 and one per
        subdirectory) does not change by being named; its parent's grows by one."""
        assert directory.entries is not None
        replaced = self.unlink(directory, name) if name in directory.entries else None
        directory.entries[name] = inode.ino
        if inode.is_dir:
            inode.parent = directory.ino
            directory.nlink += 1
        else:
            inode.nlink += 1
        return replaced

    def unlink(self, directory: Inode, name: str) -> Inode:
        """Remove ``name`` from ``directory``; the inode it named, its link count lowered
        (a directory's parent loses the link its ".." held)."""
        assert directory.entries is not None
        inode = self.inodes[directory.entries.pop(name)]
        if inode.is_dir:
            directory.nlink -= 1
        else:
            inode.nlink -= 1
        return inode

    def drop(self, ino: int) -> Inode:
        return self.inodes.pop(ino)

    def count_links(self) -> None:
        """Link counts and parents from the directory structure (after reading a manifest)."""
        for inode in self.inodes.values():
            inode.nlink = 2 if inode.is_dir else 0
        root = self.inodes[ROOT]
        root.parent = ROOT
        for directory in list(self.inodes.values()):
            for ino in (directory.entries or {}).values():
                child = self.inodes.get(ino)
                if child is None:
                    raise ValueError(f"directory {directory.ino} names inode {ino}, which does not exist")
                if child.is_dir:
                    if child.parent:
                        raise ValueError(f"directory {ino} has two names")
                    child.parent = directory.ino
                    directory.nlink += 1
                else:
                    child.nlink += 1

    def unreachable(self) -> list[Inode]:
        """Inodes no name reaches (files open but unlinked when a crash came)."""
        seen = {inode.ino for _, inode in self.walk()}
        return [inode for ino, inode in self.inodes.items() if ino not in seen]

    # -- the manifest -----------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {str(ino): inode.checkpoint() for ino, inode in sorted(self.inodes.items())}

    @classmethod
    def from_checkpoint(cls, raw: dict[str, Any], next_ino: int) -> "Tree":
        inodes = {int(k): Inode.from_checkpoint(int(k), v) for k, v in raw.items()}
        if ROOT not in inodes or not inodes[ROOT].is_dir:
            raise ValueError("the manifest has no root directory")
        tree = cls(inodes, max(next_ino, max(inodes) + 1))
        tree.count_links()
        return tree

    @classmethod
    def from_paths(cls, entries: dict[str, dict[str, Any]], uid: int, gid: int) -> "Tree":
        """A version 1 manifest's path-keyed entries as a tree (owners were not stored:
        ``uid``/``gid``, the user opening it)."""

        def ns(seconds: object) -> int:
            return int(float(str(seconds)) * 1_000_000_000)

        root_entry = entries.get("/", {"mode": 0o755, "mtime": 0})
        now = ns(root_entry.get("mtime", 0))
        tree = cls.empty(int(root_entry["mode"]), uid, gid, now)
        for path in sorted(p for p in entries if p != "/"):
            entry = entries[path]
            directory, name = tree.parent_of(path)
            when = ns(entry.get("mtime", 0))
            kind = "dir" if entry["type"] == "dir" else "file"
            inode = Inode(tree.allocate(), kind, int(entry["mode"]) & 0o7777, uid, gid, when, when, when)
            if kind == "dir":
                inode.nlink = 2
            if kind == "file":
                inode.size = int(entry["size"])
                inode.file_id = bytes.fromhex(str(entry["id"]))
                if "root" in entry:
                    inode.root = str(entry["root"])
                else:
                    inode.tags = bytes.fromhex(str(entry.get("tags", "")))
            tree.add(inode)
            tree.link(directory, name, inode)
        return tree


__all__ = [
    "NAME_MAX",
    "ROOT",
    "TARGET_MAX",
    "TYPES",
    "TYPE_OF_MODE",
    "Inode",
    "Tree",
    "normalize",
    "oserror",
    "split",
]
