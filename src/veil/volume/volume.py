"""The protected volume: a Python API over the on-disk format of docs/volume-format.md.

``Volume`` holds the tree of inodes in memory and one shared state per open file (its
object's descriptor, size and tag table). Writes go to the objects at once where no durable
version of a chunk exists, and are kept aside otherwise; ``flush()`` commits everything
(journal record, then the kept-aside records in place) and returns the new volume tag;
``close()`` writes a checkpoint. Namespace errors are OSError with an errno (as os
functions raise); tampering raises IntegrityError.
"""

import contextlib
import copy
import errno
import hmac
import json
import logging
import os
import posixpath
import stat as stat_module
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.volume.chunks import TAG, ChunkCodec, tags_root
from veil.volume.diskio import (
    fsync_directory,
    pwrite_all,
    pwrite_or_put_back,
    pwritev_all,
    syncfs,
    write_atomic,
)
from veil.volume.errors import IntegrityError, StaleVolume, VolumeError, WrongKey
from veil.volume.header import MODES, VERSION, new_header, read_header, take_lock
from veil.volume.helper import Part, ReadHelper
from veil.volume.inodes import NAME_MAX, TARGET_MAX, TYPES, Inode, Tree, name_bytes, normalize, oserror
from veil.volume.journal import Commit, Journal, encode, genesis, upgraded
from veil.volume.keys import VolumeKeys
from veil.volume.manifest import Manifest, legacy_tag
from veil.volume.tables import HOLE, chunk_count, has_hole, is_hole, pack_table, runs, unpack_table

log = logging.getLogger(__name__)
DEFAULT_CHUNK = 8192
_IO_BLOCK = 1 << 20
_DISK_PREFETCH = 2 << 20  # ciphertext the disk reads ahead during a sequential read
_SPLIT_CHUNKS = 16  # reads of more chunks than this are shared with the helper, if any
_REWRITE_CHUNKS = 4  # writes over at most this many chunks may take the short path (_rewrite)
_INLINE_TAGS = 2 * TAG  # a tag table this long or shorter lives in the manifest
#: the largest file size: ext4's with 4 KiB blocks
MAX_FILE_SIZE = 1 << 44
LINK_MAX = 65000
# renameat2 flags (linux/fs.h)
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
#: space kept allocated in DIR/reserve so that metadata can be written on a full disk:
#: at least this, and twice the sealed manifest
RESERVE_MIN = 1 << 20
#: overwrites of durable chunks kept aside in memory (for the journal) up to this; past it
#: they go to each chunk's other slot (docs/volume-format.md, Two slots)
SPILL_AT = 8 << 20
#: a commit with more files (and object directories) written in place than this syncs the
#: file system once (syncfs) instead of each
_SYNCFS_ABOVE = 8
#: a checkpoint is written when the journal grows past this
CHECKPOINT_AT = 64 << 20
#: tags a checkpoint keeps as ones the CAS may hold (each session's starting tag, each report)
_BASE_TAGS = 8

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_FILE_SIZE",
    "MODES",
    "NAME_MAX",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "RENAME_WHITEOUT",
    "Volume",
    "VolumeFile",
    "VolumeStat",
    "normalize",
]


def _now() -> int:
    return time.time_ns()


@dataclass(frozen=True)
class VolumeStat:
    path: str
    type: str  # file, dir, symlink, fifo, socket, chardev, blockdev
    size: int
    mode: int  # permission bits
    mtime: float  # seconds
    ino: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    target: str | None = None
    blocks: int = 0

    @property
    def st_mode(self) -> int:
        return TYPES[self.type] | self.mode


@dataclass(eq=False)
class _FileState:
    inode: Inode
    codec: ChunkCodec
    fd: int
    path: str  # for messages: the name it was opened by
    refs: int = 0
    read_end: int = -1
    #: chunks of the durable state: a chunk below this has a durable version, unless fresh
    durable_count: int = 0
    durable_size: int = 0
    #: chunks written in place since the last commit (no durable version to protect): at
    #: the end of the object, or in the slot that does not hold the durable version
    fresh: set[int] = field(default_factory=set)
    #: chunks whose current record is in the second slot (the object ``ID.b``), and those
    #: whose durable record is there (docs/volume-format.md, Two slots)
    alt: set[int] = field(default_factory=set)
    durable_alt: set[int] = field(default_factory=set)
    alt_fd: int = -1
    #: ``ID.b`` exists (it may hold records)
    has_b: bool = False
    #: it existed when the file was opened: a chunk's slot is then known only once
    #: ``known`` has it (found by its tag before the chunk is first read or written);
    #: otherwise every record was in ``ID`` and ``alt`` follows each one moved since
    probe: bool = False
    known: set[int] = field(default_factory=set)
    found_b: int = 0  # records found in the second slot lately, less those found in the first
    #: overwrites of durable chunks, kept aside until the commit: index -> record
    kept: dict[int, bytes] = field(default_factory=dict)
    #: chunks whose tags changed since the last commit
    changed: set[int] = field(default_factory=set)
    sized: bool = False  # the size changed since the last commit
    unsynced: bool = False  # in-place writes since the last commit (fsync before it)
    # objects replaced (with their checkpoint's table root), deleted after the commit
    retired: list[tuple[bytes, str | None]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.inode.size

    @property
    def tags(self) -> bytearray:
        assert self.inode.table is not None
        return self.inode.table

    @property
    def file_id(self) -> bytes:
        assert self.inode.file_id is not None
        return self.inode.file_id

    @property
    def dirty(self) -> bool:
        return bool(self.sized or self.changed or self.kept or self.retired)

    @property
    def moved(self) -> set[int]:
        """Chunks with a durable record whose current one is in the other slot: a commit
        may name them only once that record is on disk (a durable commit syncs first; a
        lazy one leaves them to the next durable one)."""
        return {i for i in self.fresh if i < self.durable_count}

    def close_files(self) -> None:
        os.close(self.fd)
        if self.alt_fd >= 0:
            os.close(self.alt_fd)
            self.alt_fd = -1

    def sync(self) -> None:
        os.fsync(self.fd)
        if self.alt_fd >= 0:
            os.fsync(self.alt_fd)


@dataclass
class Volume:
    root: Path
    keys: VolumeKeys
    manifest: Manifest
    tree: Tree
    tag: str
    _lock_fd: int
    journal: Journal | None = None
    #: the tags an expected tag may be (docs/volume-format.md, The volume tag)
    history: set[str] = field(default_factory=set)
    readonly: bool = False
    helper: ReadHelper | None = None  # set by the mount: a second process for large reads
    chunk_size: int = field(init=False)
    _open: dict[int, _FileState] = field(default_factory=dict)
    _ops: list[dict[str, Any]] = field(default_factory=list)
    #: inodes whose attributes changed since the commit: one ``inode`` operation each, at
    #: its end (an inode a program creates files in changes with every file)
    _attrs: dict[int, None] = field(default_factory=dict)
    _blob: bytearray = field(default_factory=bytearray)
    _kept_bytes: int = 0
    #: overwrites went past SPILL_AT since the commit: they go to the other slot at once
    _spilling: bool = False
    _new_dirs: set[str] = field(default_factory=set)  # object directories with new entries
    # objects (and their checkpoint's table root) to delete after the commit
    _frees: list[tuple[bytes, str | None]] = field(default_factory=list)
    _tables_changed: set[int] = field(default_factory=set)  # since the checkpoint
    _applied: set[bytes] = field(default_factory=set)  # objects given journaled records since then
    _damaged: dict[int, str] = field(default_factory=dict)  # inode -> why its table is unusable
    #: journaled records found at open (inode -> (its object, chunk -> record)): those still
    #: current are written in place, or, opened readonly, read from here
    _replayed: dict[int, tuple[bytes, dict[int, bytes]]] = field(default_factory=dict)
    _manifest_size: int = 0
    _closed: bool = False
    #: lazy commits were written since the last durable one (see flush)
    _lazy: bool = False

    def __post_init__(self) -> None:
        self.chunk_size = self.manifest.chunk_size
        self._objects = os.path.join(self.root, "objects")

    # -- creating and opening ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        key: bytes,
        mode: str = "encrypted",
        chunk_size: int = DEFAULT_CHUNK,
        uid: int | None = None,
        gid: int | None = None,
    ) -> "Volume":
        if mode not in MODES:
            raise VolumeError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise VolumeError(f"{root} is not empty; a volume is created in an empty directory")
        volume_id = os.urandom(16)
        keys = VolumeKeys.derive(key, volume_id)
        header = new_header(mode, volume_id, chunk_size, keys)
        (root / "objects").mkdir()
        write_atomic(root / "volume.json", json.dumps(header, indent=2).encode() + b"\n")
        tree = Tree.empty(
            0o755, os.getuid() if uid is None else uid, os.getgid() if gid is None else gid, _now()
        )
        manifest = Manifest(volume_id, mode, chunk_size, 0, epoch=1, start=genesis(volume_id))
        manifest.inodes, manifest.next_ino = tree.checkpoint(), tree.next_ino
        write_atomic(root / "journal", b"")
        write_atomic(root / "manifest", manifest.seal(keys.manifest))
        return cls.open(root, key)

    @classmethod
    def open(
        cls, root: Path, key: bytes, expected_tag: str | None = None, readonly: bool = False
    ) -> "Volume":
        """Open the volume in ``root``: the checkpoint, then the journal's commits. With
        ``expected_tag``, refuse it unless that tag is in its history (StaleVolume).
        ``readonly``: change nothing on disk (no upgrade, no cleanup, no commit)."""
        # absolute, not resolved: /proc/self/fd/N must stay a handle on the storage directory
        # even when a mount now covers its path (see veil.volume.daemon)
        root = root.absolute()
        header = read_header(root)
        volume_id = bytes.fromhex(header["volume_id"])
        keys = VolumeKeys.derive(key, volume_id)
        check = hmac.new(keys.check, b"veil-volume-key-check", "sha256").hexdigest()
        if not hmac.compare_digest(check, str(header.get("key_check", ""))):
            raise WrongKey(f"the key does not open the volume in {root}")
        lock_fd = take_lock(root)
        try:
            volume = cls._load(root, keys, header, lock_fd, readonly)
            if expected_tag is not None and not any(
                hmac.compare_digest(expected_tag, t) for t in volume.history
            ):
                volume._release_files()
                raise StaleVolume(
                    f"{root}: volume tag {volume.tag[:16]}… does not descend from the expected "
                    f"{expected_tag[:16]}… (an older copy, a modified volume, or another volume)"
                )
        except BaseException:
            os.close(lock_fd)
            raise
        if not readonly:
            # the tag the CAS holds stays in the history however far the journal is compacted
            volume.base = expected_tag or volume.tag
            volume._settle()
        return volume

    @classmethod
    def _load(
        cls, root: Path, keys: VolumeKeys, header: dict[str, Any], lock_fd: int, readonly: bool
    ) -> "Volume":
        try:
            data = (root / "manifest").read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{root}: the manifest is missing") from None
        manifest = Manifest.open(data, keys.manifest, keys.volume_id)
        if (manifest.mode, manifest.chunk_size) != (header["mode"], header["chunk_size"]):
            raise IntegrityError(f"{root}: volume.json does not match the sealed manifest")
        if manifest.version < 3:  # version 1: converted now, written as version 2 by _settle
            old = legacy_tag(data)
            try:
                tree = Tree.from_paths(manifest.entries, os.getuid(), os.getgid())
            except (KeyError, ValueError, OSError) as exc:
                raise IntegrityError(f"{root}: the manifest's entries do not form a tree ({exc})") from None
            manifest.epoch, manifest.start, manifest.base = 0, upgraded(keys.volume_id, old), [old]
            volume = cls(root, keys, manifest, tree, old, lock_fd, None, {old}, readonly)
            return volume
        try:
            tree = Tree.from_checkpoint(manifest.inodes, manifest.next_ino)
        except (KeyError, ValueError, TypeError) as exc:
            raise IntegrityError(f"{root}: the manifest's inodes do not form a tree ({exc})") from None
        history = {manifest.start.hex(), *manifest.base}
        volume = cls(root, keys, manifest, tree, manifest.start.hex(), lock_fd, None, history, readonly)
        journal = Journal(
            f"{root}/journal", keys.journal, keys.volume_id, manifest.epoch, manifest.start, readonly
        )
        volume.journal = journal
        try:
            for commit in journal.read(accept=volume._records_authentic):
                volume._replay(commit.ops, commit.blob, commit.raw)
                volume.history.add(commit.chain.hex())
            volume._place_replayed()
        except BaseException:
            journal.close()
            raise
        volume.tag = journal.chain.hex()
        volume._manifest_size = len(data)
        return volume

    def _settle(self) -> None:
        """After opening for writing: a version 1 volume gets inodes and a journal (a
        checkpoint of the same state, whose base is the old tag), a version 2 volume's
        header says 3 (second slots may be written from now on). If the last session did not close (its
        marker ``.open`` is still there: a crash), files it left open but unlinked are
        removed, and objects no inode names (created for files never committed)."""
        crashed = os.path.exists(f"{self.root}/.open")
        write_atomic(f"{self.root}/.open", b"", durable=True)
        if self.journal is None:
            self._checkpoint(upgrade=True)
        header = read_header(self.root)
        if header["version"] < VERSION:  # 2: the same, but older veils do not read second slots
            header["version"] = VERSION
            write_atomic(self.root / "volume.json", json.dumps(header, indent=2).encode() + b"\n")
        for inode in self.tree.unreachable():
            self._free(inode)
        if self._ops or self._attrs:
            self.flush()
        if crashed:
            self._sweep()

    def _sweep(self) -> None:
        """Delete what a crash left: objects no inode names, half-written temporary files."""
        named: set[str] = set()
        for inode in self.tree.inodes.values():
            if inode.file_id is not None:
                named.update(os.path.basename(p) for p in self._files_of(inode.file_id, inode.root))
        for state in self._open.values():
            for file_id, root in state.retired:
                named.update(os.path.basename(p) for p in self._files_of(file_id, root))
        for directory in os.scandir(self._objects):
            if not directory.is_dir():
                continue
            for item in os.scandir(directory.path):
                if item.name not in named:
                    log.info("removing %s, which a crash left and no file names", item.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)
        for leftover in ("manifest.tmp", "volume.json.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.root}/{leftover}")

    @property
    def mode(self) -> str:
        return self.manifest.mode

    @property
    def dirty(self) -> bool:
        return bool(self._ops or self._attrs) or any(s.dirty for s in self._open.values())

    @property
    def lazy(self) -> bool:
        """Whether the last commit was lazy (durable only with the next durable commit)."""
        return self._lazy

    # -- paths of objects -------------------------------------------------------------

    # Strings, not Paths: a file created costs a few of these, and pathlib's parsing showed
    # in the profile of creating small files.
    def _object(self, file_id: bytes) -> str:
        name = file_id.hex()
        return f"{self._objects}/{name[:2]}/{name}"

    def _alt_path(self, file_id: bytes) -> str:
        """The object holding chunks' second slot (created when first needed)."""
        return f"{self._object(file_id)}.b"

    def _alt_fd(self, state: _FileState) -> int:
        state.has_b = True
        if state.alt_fd < 0:
            path = self._alt_path(state.file_id)
            if self.readonly:
                state.alt_fd = os.open(path, os.O_RDONLY)
            else:
                state.alt_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                self._new_dirs.add(posixpath.dirname(path))  # its name durable before a commit uses it
        return state.alt_fd

    def _slot_fd(self, state: _FileState, index: int) -> int:
        """The object holding chunk ``index``'s current record."""
        return self._alt_fd(state) if index in state.alt else state.fd

    def _tags_path(self, file_id: bytes, root: str) -> str:
        """Where the checkpoint whose table has ``root`` keeps it: named by the root, so a
        checkpoint never overwrites the table the previous manifest still names."""
        return f"{self._object(file_id)}.{root[:16]}.tags"

    def _files_of(self, file_id: bytes, root: str | None) -> list[str]:
        """Every file an object may have: its two slots and its tables."""
        return [self._object(file_id), self._alt_path(file_id), *self._table_files(file_id, root)]

    def _table_files(self, file_id: bytes, root: str | None) -> list[str]:
        """The files that may hold a table of ``file_id``: the one named by ``root`` and the
        name volumes before format version 2.1 used (``ID.tags``)."""
        legacy = self._object(file_id) + ".tags"
        return [self._tags_path(file_id, root), legacy] if root is not None else [legacy]

    def file_id(self, path: str) -> str:
        """The object id (hex) of the regular file at ``path`` (tests and tools)."""
        inode = self.tree.lookup(path)
        if inode.file_id is None:
            raise oserror(errno.EINVAL, path)
        return inode.file_id.hex()

    # -- the namespace ----------------------------------------------------------------

    def _writable(self, path: str) -> None:
        if self.readonly or self._closed:
            raise oserror(errno.EROFS, path)

    def _record(self, op: str, **fields: Any) -> None:
        self._ops.append({"op": op, **fields})

    def _changed(self, inode: Inode, now: int | None = None, times: str = "c") -> None:
        """Record ``inode``'s attributes (after a change; ``times``: which of m, c to set now)."""
        when = _now() if now is None else now
        if "m" in times:
            inode.mtime = when
        if "c" in times:
            inode.ctime = when
        self._attrs[inode.ino] = None

    def exists(self, path: str) -> bool:
        try:
            self.tree.lookup(path)
        except OSError:
            return False
        return True

    def stat(self, path: str) -> VolumeStat:
        return self._stat(normalize(path), self.tree.lookup(path))

    def stat_inode(self, inode: Inode, path: str = "") -> VolumeStat:
        """The attributes of ``inode`` (an open file's, whatever its names now)."""
        return self._stat(path, inode)

    def _stat(self, path: str, inode: Inode) -> VolumeStat:
        size = inode.size
        blocks = 0
        if inode.type == "file":
            state = self._open.get(inode.ino)
            if state is not None:
                with contextlib.suppress(OSError):
                    blocks = os.fstat(state.fd).st_blocks
                    if state.alt_fd >= 0:
                        blocks += os.fstat(state.alt_fd).st_blocks
            elif inode.file_id is not None:
                for name in (self._object(inode.file_id), self._alt_path(inode.file_id)):
                    with contextlib.suppress(OSError):
                        blocks += os.stat(name).st_blocks
        elif inode.type == "symlink":
            size = name_bytes(inode.target or "")
        elif inode.is_dir:
            size = 4096
            blocks = 8
        return VolumeStat(
            path,
            inode.type,
            size,
            inode.mode,
            inode.mtime / 1e9,
            inode.ino,
            inode.nlink,
            inode.uid,
            inode.gid,
            inode.atime,
            inode.mtime,
            inode.ctime,
            inode.rdev,
            inode.target,
            blocks,
        )

    def listdir(self, path: str = "/") -> list[str]:
        inode = self.tree.lookup(path)
        if inode.entries is None:
            raise oserror(errno.ENOTDIR, path)
        return sorted(inode.entries)

    def names_of(self, inode: Inode) -> list[str]:
        """Every path of ``inode`` (a walk: for files with several names, which are rare)."""
        return [path for path, found in self.tree.walk() if found is inode]

    def entries(self, path: str) -> list[tuple[str, int, int]]:
        """A directory's entries as readdir(3) gives them: (name, inode number, st_mode),
        with "." and ".." first."""
        inode = self.tree.lookup(path)
        if inode.entries is None:
            raise oserror(errno.ENOTDIR, path)
        parent = self.tree.get(inode.parent) if inode.parent in self.tree.inodes else inode
        rows = [(".", inode.ino, inode.st_mode), ("..", parent.ino, parent.st_mode)]
        for name, ino in sorted(inode.entries.items()):
            rows.append((name, ino, self.tree.get(ino).st_mode))
        return rows

    def walk(self) -> Iterator[VolumeStat]:
        for path, inode in self.tree.walk():
            yield self._stat(path, inode)

    def _new_inode(self, kind: str, mode: int, directory: Inode, uid: int | None, gid: int | None) -> Inode:
        now = _now()
        owner = os.getuid() if uid is None else uid
        group = (
            directory.gid if directory.mode & stat_module.S_ISGID else (os.getgid() if gid is None else gid)
        )
        if kind == "dir" and directory.mode & stat_module.S_ISGID:
            mode |= stat_module.S_ISGID  # a set-group-id directory's subdirectories inherit it
        inode = Inode(self.tree.allocate(), kind, mode & 0o7777, owner, group, now, now, now)
        if kind == "dir":
            inode.entries, inode.nlink = {}, 2
        return inode

    def _place(self, path: str, inode: Inode) -> None:
        """Give the new ``inode`` the name ``path`` (which must be free)."""
        directory, name = self._free_path(path)
        self._place_in(directory, name, inode)

    def _place_in(self, directory: Inode, name: str, inode: Inode) -> None:
        """Give the new ``inode`` the free ``name`` in ``directory``."""
        self.tree.add(inode)
        self.tree.link(directory, name, inode)
        self._record("inode", ino=inode.ino, attrs=inode.attrs())
        self._record("link", dir=directory.ino, name=name, ino=inode.ino)
        self._changed(directory, inode.ctime, "mc")

    def _free_path(self, path: str) -> tuple[Inode, str]:
        """(the directory, the name) where a new inode may go: EEXIST if taken."""
        directory, name = self.tree.parent_of(path)
        if name in (directory.entries or {}):
            raise oserror(errno.EEXIST, path)
        return directory, name

    def mkdir(self, path: str, mode: int = 0o755, uid: int | None = None, gid: int | None = None) -> None:
        self._writable(path)
        directory, _ = self._free_path(path)
        self._place(path, self._new_inode("dir", mode, directory, uid, gid))

    def symlink(self, target: str, path: str, uid: int | None = None, gid: int | None = None) -> None:
        """``path`` becomes a symbolic link to ``target`` (stored as given, sealed)."""
        self._writable(path)
        if not target:
            raise oserror(errno.ENOENT, path)
        if name_bytes(target) > TARGET_MAX or "\0" in target:
            raise oserror(errno.ENAMETOOLONG if "\0" not in target else errno.EINVAL, path)
        directory, _ = self._free_path(path)
        inode = self._new_inode("symlink", 0o777, directory, uid, gid)
        inode.target = target
        self._place(path, inode)

    def readlink(self, path: str) -> str:
        inode = self.tree.lookup(path)
        if inode.type != "symlink":
            raise oserror(errno.EINVAL, path)
        return inode.target or ""

    def mknod(
        self,
        path: str,
        kind: str,
        mode: int = 0o644,
        rdev: int = 0,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        """A FIFO, socket or device node (metadata only: the kernel gives it its meaning),
        or an empty regular file."""
        self._writable(path)
        if kind == "file":
            self.open_file(path, "x", mode, uid, gid).close()
            return
        if kind not in ("fifo", "socket", "chardev", "blockdev"):
            raise oserror(errno.EINVAL, path)
        directory, _ = self._free_path(path)
        inode = self._new_inode(kind, mode, directory, uid, gid)
        inode.rdev = rdev if kind in ("chardev", "blockdev") else 0
        self._place(path, inode)

    def link(self, existing: str, path: str) -> None:
        """A new name ``path`` for the inode at ``existing`` (not a directory)."""
        self._writable(path)
        inode = self.tree.lookup(existing)
        if inode.is_dir:
            raise oserror(errno.EPERM, existing)
        if inode.nlink >= LINK_MAX:
            raise oserror(errno.EMLINK, existing)
        directory, name = self._free_path(path)
        self.tree.link(directory, name, inode)
        self._record("link", dir=directory.ino, name=name, ino=inode.ino)
        now = _now()
        self._changed(inode, now, "c")
        self._changed(directory, now, "mc")

    def rmdir(self, path: str) -> None:
        self._writable(path)
        directory, name = self.tree.parent_of(path)
        inode = self.tree.lookup(path)
        if not inode.is_dir:
            raise oserror(errno.ENOTDIR, path)
        if inode.entries:
            raise oserror(errno.ENOTEMPTY, path)
        self.tree.unlink(directory, name)
        self._record("unlink", dir=directory.ino, name=name)
        self._free(inode)
        self._changed(directory, None, "mc")

    def unlink(self, path: str) -> None:
        self._writable(path)
        directory, name = self.tree.parent_of(path)
        inode = self.tree.lookup(path)
        if inode.is_dir:
            raise oserror(errno.EISDIR, path)
        self.tree.unlink(directory, name)
        self._record("unlink", dir=directory.ino, name=name)
        now = _now()
        self._changed(directory, now, "mc")
        self._dropped(inode, now)

    def _dropped(self, inode: Inode, now: int) -> None:
        """An inode lost a name: freed with its last name, unless a file still open."""
        state = self._open.get(inode.ino)
        if inode.nlink > 0 or (state is not None and state.refs > 0):
            self._changed(inode, now, "c")
            return
        self._free(inode)

    def _free(self, inode: Inode) -> None:
        """The inode goes, in the next commit with its last name; what an unused open state
        still had pending (writes not yet committed) goes with it."""
        state = self._open.pop(inode.ino, None)
        if state is not None:
            self._kept_bytes -= sum(len(r) for r in state.kept.values())
            self._frees.extend(state.retired)
            state.close_files()
        self.tree.drop(inode.ino)
        self._record("free", ino=inode.ino)
        if inode.file_id is not None:
            self._frees.append((inode.file_id, inode.root))
        self._tables_changed.discard(inode.ino)

    def rename(self, source: str, target: str, flags: int = 0) -> None:
        """rename(2), and renameat2(2)'s RENAME_NOREPLACE and RENAME_EXCHANGE; any other
        flag (RENAME_WHITEOUT included) is EINVAL, never ignored."""
        self._writable(target)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise oserror(errno.EINVAL, target)
        source_dir, source_name = self.tree.parent_of(source)
        inode = self.tree.lookup(source)
        target_dir, target_name = self.tree.parent_of(target)
        assert target_dir.entries is not None
        existing_ino = target_dir.entries.get(target_name)
        existing = None if existing_ino is None else self.tree.get(existing_ino)
        if flags & RENAME_EXCHANGE:
            if existing is None:
                raise oserror(errno.ENOENT, target)
            self._exchange(source_dir, source_name, inode, target_dir, target_name, existing)
            return
        if existing is not None and flags & RENAME_NOREPLACE:
            raise oserror(errno.EEXIST, target)
        if existing is inode:
            return  # two names of one inode: rename does nothing
        if inode.is_dir and self.tree.is_inside(target_dir.ino, inode.ino):
            raise oserror(errno.EINVAL, target)
        if existing is not None:
            if existing.is_dir and not inode.is_dir:
                raise oserror(errno.EISDIR, target)
            if inode.is_dir and not existing.is_dir:
                raise oserror(errno.ENOTDIR, target)
            if existing.is_dir and existing.entries:
                raise oserror(errno.ENOTEMPTY, target)
        now = _now()
        self.tree.unlink(source_dir, source_name)
        self._record("unlink", dir=source_dir.ino, name=source_name)
        replaced = self.tree.link(target_dir, target_name, inode)
        self._record("link", dir=target_dir.ino, name=target_name, ino=inode.ino)
        if replaced is not None:
            if replaced.is_dir:
                self._free(replaced)
            else:
                self._dropped(replaced, now)
        self._changed(inode, now, "c")
        self._changed(source_dir, now, "mc")
        if target_dir is not source_dir:
            self._changed(target_dir, now, "mc")

    def _exchange(
        self,
        first_dir: Inode,
        first_name: str,
        first: Inode,
        second_dir: Inode,
        second_name: str,
        second: Inode,
    ) -> None:
        if first is second:
            return
        for moved, into in ((first, second_dir), (second, first_dir)):
            if moved.is_dir and self.tree.is_inside(into.ino, moved.ino):
                raise oserror(errno.EINVAL, second_name)
        assert first_dir.entries is not None and second_dir.entries is not None
        self.tree.unlink(first_dir, first_name)
        self.tree.unlink(second_dir, second_name)
        self.tree.link(first_dir, first_name, second)
        self.tree.link(second_dir, second_name, first)
        self._record("link", dir=first_dir.ino, name=first_name, ino=second.ino)
        self._record("link", dir=second_dir.ino, name=second_name, ino=first.ino)
        now = _now()
        for inode in {first, second, first_dir, second_dir}:
            self._changed(inode, now, "mc" if inode in (first_dir, second_dir) else "c")

    def chmod(self, path: str, mode: int) -> None:
        self._writable(path)
        inode = self.tree.lookup(path)
        inode.mode = mode & 0o7777
        self._changed(inode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Owner and group (-1: unchanged); stored as given, enforced by the kernel."""
        self._writable(path)
        inode = self.tree.lookup(path)
        if uid != -1:
            inode.uid = uid
        if gid != -1:
            inode.gid = gid
        self._changed(inode)

    def utime(self, path: str, mtime: float | None = None, atime: float | None = None) -> None:
        """Seconds (floats); None keeps a time."""
        self.utimens(
            path, None if atime is None else int(atime * 1e9), None if mtime is None else int(mtime * 1e9)
        )

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        self._writable(path)
        inode = self.tree.lookup(path)
        if atime_ns is not None:
            inode.atime = atime_ns
        if mtime_ns is not None:
            inode.mtime = mtime_ns
        self._changed(inode)

    def touch_atime(self, inode: Inode) -> None:
        """relatime: after a read, atime moves when it is older than mtime or ctime, or a
        day old; recorded with the next commit."""
        now = _now()
        if inode.atime <= inode.mtime or inode.atime <= inode.ctime or now - inode.atime > 86_400 * 10**9:
            inode.atime = now
            self._attrs[inode.ino] = None

    # -- files ------------------------------------------------------------------------

    def open_file(
        self, path: str, mode: str = "r", perm: int = 0o644, uid: int | None = None, gid: int | None = None
    ) -> "VolumeFile":
        """Open a file; ``mode`` is one of r, r+, w, w+, a, a+, x, x+ (always binary)."""
        flags = mode.replace("b", "")
        if flags not in ("r", "r+", "w", "w+", "a", "a+", "x", "x+"):
            raise ValueError(f"invalid mode '{mode}'")
        if flags != "r":
            self._writable(path)
        path = normalize(path)
        try:
            inode: Inode | None = self.tree.lookup(path)
        except FileNotFoundError:
            inode = None
        if inode is None:
            if flags[0] == "r":
                raise oserror(errno.ENOENT, path)
            inode = self._create_file(path, perm, uid, gid)
        elif flags[0] == "x":
            raise oserror(errno.EEXIST, path)
        elif inode.is_dir:
            raise oserror(errno.EISDIR, path)
        elif inode.type != "file":
            raise oserror(errno.EINVAL if inode.type == "symlink" else errno.ENXIO, path)
        state = self._state(path, inode)
        if flags[0] == "w":
            self._resize(state, 0)
        return VolumeFile(
            self,
            state,
            readable=flags[0] == "r" or "+" in flags,
            writable=flags != "r",
            append=flags[0] == "a",
        )

    def _create_file(self, path: str, perm: int, uid: int | None, gid: int | None) -> Inode:
        """A new empty file at ``path`` (normalised): its inode, and its state already open
        (nothing to load)."""
        directory, name = self._free_path(path)
        inode = self._new_inode("file", perm, directory, uid, gid)
        file_id, fd = self._new_object()
        inode.file_id, inode.tags, inode.table = file_id, b"", bytearray()
        self._place_in(directory, name, inode)
        codec = self.keys.codec(file_id, self.mode == "encrypted")
        self._open[inode.ino] = _FileState(inode, codec, fd, path, durable_count=0, durable_size=0)
        return inode

    def _new_object(self) -> tuple[bytes, int]:
        """A new, empty object (its directory entry made durable before the commit that
        names it): its id, and a descriptor open for reading and writing."""
        file_id = os.urandom(16)
        obj = self._object(file_id)
        directory = posixpath.dirname(obj)
        try:
            fd = os.open(obj, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # the first object in its directory
            os.mkdir(directory)
            self._new_dirs.add(self._objects)
            fd = os.open(obj, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._new_dirs.add(directory)
        return file_id, fd

    def _state(self, path: str, inode: Inode) -> _FileState:
        state = self._open.get(inode.ino)
        if state is None:
            state = self._load_state(path, inode)
            self._open[inode.ino] = state
        state.refs += 1
        return state

    def _load_state(self, path: str, inode: Inode) -> _FileState:
        if inode.ino in self._damaged:
            raise IntegrityError(f"{path}: {self._damaged[inode.ino]}")
        assert inode.file_id is not None
        codec = self.keys.codec(inode.file_id, self.mode == "encrypted")
        try:
            fd = os.open(self._object(inode.file_id), os.O_RDONLY if self.readonly else os.O_RDWR)
        except FileNotFoundError:
            raise IntegrityError(f"{path}: its stored object is missing") from None
        try:
            table = self._table(inode, path)
        except BaseException:
            os.close(fd)
            raise
        count = chunk_count(inode.size, self.chunk_size)
        if len(table) != count * TAG:
            os.close(fd)
            raise IntegrityError(f"{path}: its tag table does not fit its size")
        state = _FileState(inode, codec, fd, path, durable_count=count, durable_size=inode.size)
        state.kept = {i: r for i, r in self._replayed.get(inode.ino, (b"", {}))[1].items() if i < count}
        state.has_b = state.probe = os.path.exists(self._alt_path(inode.file_id))
        return state

    def _locate(self, state: _FileState, index: int) -> None:
        """Find which slot holds chunk ``index``'s record (its durable one: called before
        the chunk is written): the slot whose record ends with the tag the table names (a
        record's last 16 bytes are its tag; a stale record has another). Neither: left in
        the first, where reading it reports the damage."""
        if not state.probe or index in state.known:
            return
        state.known.add(index)
        expected = bytes(state.tags[index * TAG : (index + 1) * TAG])
        if len(expected) != TAG or expected == HOLE:  # past the size (located before a cut), a hole
            return
        at = index * (self.chunk_size + state.codec.overhead)
        at += self._chunk_len(state.size, index) + state.codec.overhead - TAG
        if os.pread(state.fd, TAG, at) != expected and os.pread(self._alt_fd(state), TAG, at) == expected:
            state.alt.add(index)
            state.durable_alt.add(index)

    def _table(self, inode: Inode, path: str) -> bytearray:
        """A file's current tag table: loaded (the checkpoint's: inline, or ID.tags checked
        against its root) and kept on the inode."""
        if inode.table is None:
            if inode.root is None:
                inode.table = bytearray(inode.tags or b"")
            else:
                assert inode.file_id is not None
                tags = bytearray()  # none found: only valid for an empty file, the root decides
                for name in self._table_files(inode.file_id, inode.root):
                    try:
                        with open(name, "rb") as table:
                            expected = chunk_count(inode.size, self.chunk_size) * TAG
                            tags = bytearray(unpack_table(table.read(), inode.root, expected))
                        break
                    except FileNotFoundError:
                        continue
                if not hmac.compare_digest(tags_root(tags), inode.root):
                    raise IntegrityError(
                        f"{path}: its tag table is not the current one (modified or rolled back)"
                    )
                inode.table = tags
        return inode.table

    def _release(self, state: _FileState) -> None:
        state.refs -= 1
        if state.refs == 0 and (not state.dirty or state.inode.nlink == 0):
            self._close_state(state)

    def _close_state(self, state: _FileState) -> None:
        inode = state.inode
        if inode.ino in self.tree.inodes and inode.nlink == 0:
            self._free(inode)  # the last name went while it was open; this closes the state
            return
        state.close_files()
        del self._open[inode.ino]
        if inode.ino not in self._tables_changed:
            inode.table = None  # loaded again when opened: a large table need not stay in memory

    def _chunk_len(self, size: int, index: int) -> int:
        return max(0, min(self.chunk_size, size - index * self.chunk_size))

    # -- reading ----------------------------------------------------------------------

    def read_at(self, state: _FileState, offset: int, length: int) -> bytes:
        if offset >= state.size or length <= 0:
            return b""
        out = bytearray(min(length, state.size - offset))
        self.read_into(state, offset, memoryview(out))
        return bytes(out)

    def read_into(self, state: _FileState, offset: int, out: memoryview) -> int:
        """Read up to len(out) bytes at ``offset`` into ``out``; the count read. Chunks are
        decrypted straight into ``out`` when the read starts on a chunk and ends on one (or
        at the end of the file), as the kernel's page-aligned requests do."""
        if offset >= state.size or not len(out):
            return 0
        first, last, count = self._read_range(state, offset, len(out))
        start = offset - first * self.chunk_size
        helper = self.helper
        if helper is not None and helper.alive and self._shared(state, helper, first, last):
            at = self._open_shared(state, helper, first, last, out[:count] if start == 0 else None)
            if start:
                out[:count] = helper.view[at + start : at + start + count]
            return count
        plain_length = self._plain_length(state, first, last)
        in_place = start == 0 and count == plain_length  # whole chunks: no copy
        target = out[:count] if in_place else memoryview(bytearray(plain_length))
        self._open_chunks(state, first, last, target)
        if not in_place:
            out[:count] = target[start : start + count]
        return count

    def read_shared(self, state: _FileState, offset: int, size: int) -> tuple[int, int]:
        """The mount's read: open what ``size`` bytes at ``offset`` need into the helper's
        shared memory (its descriptor goes to the kernel, by splice, without a copy);
        (where the bytes start there, their count). ``size``: at most the helper's
        capacity."""
        helper = self.helper
        assert helper is not None and size <= helper.capacity
        if offset >= state.size or size <= 0:
            return 0, 0
        first, last, count = self._read_range(state, offset, size)
        start = offset - first * self.chunk_size
        if helper.alive and self._shared(state, helper, first, last):
            return self._open_shared(state, helper, first, last, None) + start, count
        at = helper.spare()
        self._open_chunks(state, first, last, helper.view[at : at + self._plain_length(state, first, last)])
        return at + start, count

    def _read_range(self, state: _FileState, offset: int, size: int) -> tuple[int, int, int]:
        """The chunks a read of ``size`` bytes at ``offset`` (inside the file) needs, and
        how many bytes it returns; a sequential reader's next ciphertext is read ahead."""
        end = min(state.size, offset + size)
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        if offset == state.read_end:  # sequential: have the disk read ahead while we decrypt
            stride = self.chunk_size + state.codec.overhead
            os.posix_fadvise(state.fd, (last + 1) * stride, _DISK_PREFETCH, os.POSIX_FADV_WILLNEED)
        state.read_end = end
        return first, last, end - offset

    def _plain_length(self, state: _FileState, first: int, last: int) -> int:
        """Bytes of plaintext chunks ``first``..``last`` hold."""
        return min(state.size, (last + 1) * self.chunk_size) - first * self.chunk_size

    def _shared(self, state: _FileState, helper: ReadHelper, first: int, last: int) -> bool:
        """Whether the helper opens part of chunks first..last: a large read of chunks all
        stored in the object (none kept aside, no hole)."""
        return (
            last - first >= _SPLIT_CHUNKS
            and (last + 1 - first) * self.chunk_size <= helper.slot
            and not state.kept
            and not state.has_b
            and not has_hole(state.tags, first, last)
        )

    def _open_chunks(self, state: _FileState, first: int, last: int, out: memoryview) -> None:
        """Read and open chunks ``first``..``last`` into ``out`` (their plaintext): holes
        as zeros, kept-aside records from memory, the rest from their slot's object."""
        if first == last and first not in state.kept and not is_hole(state.tags, first):  # random
            raw = self._read_record(state, first, len(out) + state.codec.overhead)
            state.codec.open_one_into(first, raw, state.tags, state.path, out)
            return
        if state.probe:
            for index in range(first, last + 1):
                if index not in state.kept:
                    self._locate(state, index)
        if state.kept or state.alt or has_hole(state.tags, first, last):
            self._open_chunks_slowly(state, first, last, out)
            return
        span = self._span(state, first, last)
        raw = os.pread(state.fd, span, first * (self.chunk_size + state.codec.overhead))
        if len(raw) != span:
            raise IntegrityError(f"{state.path}: its stored object is shorter than its size")
        if first == last:  # one chunk (a random read): the short path
            state.codec.open_one_into(first, raw, state.tags, state.path, out)
        else:
            expected = bytes(state.tags[first * TAG : (last + 1) * TAG])
            state.codec.open_into(first, raw, expected, self.chunk_size, state.size, state.path, out)

    def _open_chunks_slowly(self, state: _FileState, first: int, last: int, out: memoryview) -> None:
        cs = self.chunk_size
        index = first
        while index <= last:
            place = (index - first) * cs
            length = self._chunk_len(state.size, index)
            if is_hole(state.tags, index):
                out[place : place + length] = bytes(length)
                index += 1
            elif index in state.kept or index in state.alt:
                out[place : place + length] = self._read_chunk(state, index, length)
                index += 1
            else:  # a run of chunks stored in the object
                end = index
                while (
                    end < last
                    and not is_hole(state.tags, end + 1)
                    and end + 1 not in state.kept
                    and end + 1 not in state.alt
                ):
                    end += 1
                span = self._span(state, index, end)
                raw = os.pread(state.fd, span, index * (cs + state.codec.overhead))
                if len(raw) != span:
                    raise IntegrityError(f"{state.path}: chunk {end} lies past the end of its stored object")
                expected = bytes(state.tags[index * TAG : (end + 1) * TAG])
                target = out[place : place + self._plain_length(state, index, end)]
                state.codec.open_into(index, raw, expected, cs, state.size, state.path, target)
                index = end + 1

    def _open_shared(
        self,
        state: _FileState,
        helper: ReadHelper,
        first: int,
        last: int,
        out: memoryview | None,
    ) -> int:
        """``_open_chunks`` with the helper opening the second part, asked for ahead by the
        previous read (or now); then the helper is asked for the second part of the next
        range of the same length, which a sequential reader asks for next. The plaintext
        lands in a slot of the shared memory (returned: where it starts); with ``out``, in
        ``out`` too, this process's part straight, the helper's copied."""
        cs = self.chunk_size
        ours = self._helper_part(state, first, last)
        split = (ours.first - first) * cs
        where = helper.pending_at(ours, split)
        if where is None:
            where = helper.spare() + split
            self._submit(state, helper, ours, where)
        base = where - split
        length = self._plain_length(state, first, last)
        mine = out[:split] if out is not None else helper.view[base:where]
        self._open_chunks(state, first, ours.first - 1, mine)
        theirs = helper.view[where : base + length]
        opened = helper.collect(ours)
        following = min(last + 1 + last - first, (state.size - 1) // cs)
        if following - last > _SPLIT_CHUNKS and not has_hole(state.tags, last + 1, following):
            part = self._helper_part(state, last + 1, following)
            where = helper.other(base) + (part.first - last - 1) * cs
            self._submit(state, helper, part, where)
        if not opened:
            self._open_chunks(state, ours.first, last, theirs)
        if out is not None:
            out[split:] = theirs[: len(out) - split]
        return base

    def _helper_part(self, state: _FileState, first: int, last: int) -> Part:
        """The helper's part of chunks first..last: the last 10/16 (it works while this
        process replies to the kernel)."""
        middle = max(first + 1, first + (last + 1 - first) * 6 // 16)
        return Part(
            state.file_id, middle, last, state.size, bytes(state.tags[middle * TAG : (last + 1) * TAG])
        )

    def _submit(self, state: _FileState, helper: ReadHelper, part: Part, where: int) -> None:
        at = part.first * (self.chunk_size + state.codec.overhead)
        helper.submit(state.fd, part, at, self._span(state, part.first, part.last), where)

    def _span(self, state: _FileState, first: int, last: int) -> int:
        """Bytes the records of chunks ``first``..``last`` take in the object."""
        stride = self.chunk_size + state.codec.overhead
        return (last - first) * stride + self._chunk_len(state.size, last) + state.codec.overhead

    def _read_chunk(self, state: _FileState, index: int, length: int) -> bytes:
        """Chunk ``index``'s plaintext (``length`` bytes): zeros for a hole."""
        expected = state.tags[index * TAG : (index + 1) * TAG]
        if expected == HOLE:
            return bytes(length)
        record = state.kept.get(index)
        if record is None:
            record = self._read_record(state, index, length + state.codec.overhead)
        return state.codec.open(index, record, expected, state.path)

    def _read_record(self, state: _FileState, index: int, size: int) -> bytes:
        """Chunk ``index``'s stored record (``size`` bytes) from its slot; one not located
        yet is read whole from the slot that held the last ones found (under a sustained
        overwrite load most records end up in the second), and from the other one if its
        tag is not the table's (``_locate`` in one read)."""
        at = index * (self.chunk_size + state.codec.overhead)
        if not state.probe or index in state.known:
            return os.pread(self._slot_fd(state, index), size, at)
        state.known.add(index)
        expected = state.tags[index * TAG : (index + 1) * TAG]
        in_b = state.found_b > 0
        record = os.pread(self._alt_fd(state) if in_b else state.fd, size, at)
        if record[-TAG:] != expected:
            other = os.pread(state.fd if in_b else self._alt_fd(state), size, at)
            if other[-TAG:] != expected:  # neither: damage, reported from the first slot's
                return record if not in_b else other
            record, in_b = other, not in_b
        if in_b:
            state.alt.add(index)
            state.durable_alt.add(index)
            state.found_b = min(state.found_b + 1, 8)
        else:
            state.found_b = max(state.found_b - 1, -8)
        return record

    # -- writing ----------------------------------------------------------------------

    def write_at(self, state: _FileState, offset: int, data: bytes | memoryview) -> int:
        if not data:
            return 0
        end = offset + len(data)
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        if end <= state.size and last - first < _REWRITE_CHUNKS and self._rewritable(state, first, last):
            return self._rewrite(state, first, last, offset, data)
        if end > MAX_FILE_SIZE:
            raise oserror(errno.EFBIG, state.path)
        if offset > state.size:
            self._resize(state, offset)
        for block_start in range(0, len(data), _IO_BLOCK):
            try:
                self._write_block(state, offset + block_start, data[block_start : block_start + _IO_BLOCK])
            except OSError:
                if block_start == 0:
                    raise
                return block_start  # a short write, as file systems report a disk filling up
        if self._kept_bytes > SPILL_AT:
            self._spill()
        return len(data)

    @staticmethod
    def _rewritable(state: _FileState, first: int, last: int) -> bool:
        """Whether chunks first..last were all written in place since the last commit (none
        kept aside or a hole, their slot known): the short path of ``_rewrite``."""
        fresh, table = state.fresh, state.tags
        for index in range(first, last + 1):
            if (
                index not in fresh
                or (state.probe and index not in state.known)
                or index in state.kept
                or is_hole(table, index)
            ):
                return False
        return True

    def _rewrite(
        self, state: _FileState, first: int, last: int, offset: int, data: bytes | memoryview
    ) -> int:
        """``data`` written again over chunks first..last (a few), all written in place since
        the last commit and inside the file: what a random-write load does most (the
        periodic commits leave such chunks in place), on a short path, chunk by chunk. All
        or nothing: if a chunk's write fails or its record is refused, the chunks written
        before it are put back (no short write: on the kernel's write-back path a short
        count may not reach the program)."""
        if first == last:  # one chunk (a random write): nothing written before it to put back
            self._rewrite_chunk(state, first, offset, data)
            return len(data)
        cs, end = self.chunk_size, offset + len(data)
        done: list[tuple[int, int, int, bytes, bytes]] = []
        try:
            for index in range(first, last + 1):
                start, upto = max(offset, index * cs), min(end, (index + 1) * cs)
                done.append(self._rewrite_chunk(state, index, start, data[start - offset : upto - offset]))
        except BaseException:  # a failed write, or a later chunk's record refused as damaged
            for index, fd, at, stored, tag in reversed(done):
                with contextlib.suppress(OSError):  # over what the object holds: no new space
                    pwrite_all(fd, stored, at)
                    state.tags[index * TAG : (index + 1) * TAG] = tag
            raise
        return len(data)

    def _rewrite_chunk(
        self, state: _FileState, index: int, offset: int, data: bytes | memoryview
    ) -> tuple[int, int, int, bytes, bytes]:
        """``data`` written within chunk ``index`` (see ``_rewrite``): its stored record is
        read, opened, merged, sealed and written over itself, put back if that fails (the
        size is unchanged, so the new record is as long as the old: no new space, nothing
        to cut back). What undoes it: (index, object, where, the record, the tag it had)."""
        codec, cs, table = state.codec, self.chunk_size, state.tags
        chunk_start = index * cs
        fd = self._slot_fd(state, index)
        at = index * (cs + codec.overhead)
        length = min(cs, state.size - chunk_start)
        stored = os.pread(fd, length + codec.overhead, at)
        plain = bytearray(length)
        codec.open_one_into(index, stored, table, state.path, memoryview(plain))  # refuses a stale one
        plain[offset - chunk_start : offset - chunk_start + len(data)] = data
        record, tag = codec.seal(index, plain)
        while tag == HOLE:  # 2^-128: never a hole's tag
            record, tag = codec.seal(index, plain)
        pwrite_or_put_back(fd, record, at, stored)
        state.unsynced = True
        expected = bytes(table[index * TAG : (index + 1) * TAG])
        table[index * TAG : (index + 1) * TAG] = tag
        state.changed.add(index)
        state.inode.mtime = state.inode.ctime = time.time_ns()
        self._tables_changed.add(state.inode.ino)
        return index, fd, at, stored, expected

    def _write_block(self, state: _FileState, offset: int, data: bytes | memoryview) -> None:
        cs = self.chunk_size
        end = offset + len(data)
        old_size, new_size = state.size, max(state.size, end)
        first, last = offset // cs, (end - 1) // cs
        if state.probe:  # where the durable records are, before the tags move on
            for index in range(first, min(last, state.durable_count - 1) + 1):
                self._locate(state, index)
        view = memoryview(data)
        # Chunks the write covers whole are sealed straight from the caller's buffer; only
        # the first and the last may be partial and merged with what they held.
        plains: list[bytes | memoryview] = [
            view[start - offset : start - offset + cs] for start in range(first * cs, (last + 1) * cs, cs)
        ]
        for position, index in ((0, first), (-1, last))[: 1 if first == last else 2]:
            chunk_start = index * cs
            chunk_end = min(chunk_start + cs, new_size)
            if offset > chunk_start or end < chunk_end:
                plains[position] = self._merged(state, index, view, offset, old_size, chunk_end)
        records: bytes | bytearray
        if first == last:  # one chunk (random access): the short path
            records, new_tags = state.codec.seal(first, bytes(plains[0]))
        else:
            records, new_tags = state.codec.seal_many(first, plains)
        if HOLE in new_tags and has_hole(new_tags, 0, last - first):  # 2^-128: never a hole's tag
            records, new_tags = state.codec.seal_many(first, [bytes(p) for p in plains])
        self._store(state, first, last, records)
        needed = chunk_count(new_size, cs) * TAG
        if len(state.tags) < needed:
            state.tags.extend(bytes(needed - len(state.tags)))
        state.tags[first * TAG : (last + 1) * TAG] = new_tags
        if new_size != old_size:
            state.inode.size = new_size
            state.sized = True
        state.changed.update(range(first, last + 1))
        state.inode.mtime = state.inode.ctime = time.time_ns()
        self._tables_changed.add(state.inode.ino)

    def _store(self, state: _FileState, first: int, last: int, records: bytes | bytearray) -> None:
        """Put the records of chunks first..last where they go: in place where no durable
        version exists (past the durable chunk count, or written in place since the last
        commit), kept aside otherwise (docs/volume-format.md, Commit). All or nothing: if a
        write in place fails, those already written are undone and nothing is kept."""
        if first == last and first < state.durable_count and first not in state.fresh:
            if self._spilling:  # a large load: straight to the other slot
                was_alt = first in state.alt
                self._move(state, first)
                try:
                    self._write_in_place(state, first, records, undo=False)
                except OSError:
                    (state.alt.add if was_alt else state.alt.discard)(first)
                    raise
                self._kept_bytes -= len(state.kept.pop(first, b""))
                state.fresh.add(first)
                return
            previous_record = state.kept.get(first)  # one durable chunk (random writes): kept aside
            self._kept_bytes += len(records) - (len(previous_record) if previous_record else 0)
            state.kept[first] = bytes(records)
            return
        if first == last:  # one chunk with no durable version (a small file): in place
            self._write_in_place(state, first, records)
            state.fresh.add(first)
            return
        stride = self.chunk_size + state.codec.overhead
        in_place = [i for i in range(first, last + 1) if i >= state.durable_count or i in state.fresh]
        undo: list[tuple[int, int, bytes]] = []
        view = memoryview(records)
        try:
            for run_first, run_last in runs(in_place, state.alt):
                part = view[(run_first - first) * stride : (run_last - first + 1) * stride]
                undo.append(self._write_in_place(state, run_first, part))
        except OSError:
            for fd, at, previous in reversed(undo):
                with contextlib.suppress(OSError):  # overwrites what was there: no new space
                    pwrite_all(fd, previous, at)
            raise
        state.fresh.update(in_place)
        if len(in_place) == last - first + 1:
            return
        for index in range(first, last + 1):
            if index not in state.fresh:
                record = bytes(view[(index - first) * stride : (index - first + 1) * stride])
                previous_record = state.kept.get(index)
                self._kept_bytes += len(record) - (len(previous_record) if previous_record else 0)
                state.kept[index] = record

    def _spill(self) -> None:
        """Records kept aside go to their chunk's other slot (docs/volume-format.md, Two
        slots): the slot that does not hold the durable record, which stays whole. A record
        whose write fails stays kept aside (the journal takes it at the commit), and the
        error is raised."""
        self._spilling = True
        for state in self._open.values():
            if not state.kept:
                continue
            stride = self.chunk_size + state.codec.overhead
            moving = sorted(state.kept)
            for index in moving:
                self._move(state, index)
            written: list[int] = []
            try:
                for first, last in runs(moving, state.alt):
                    fd = self._slot_fd(state, first)
                    pwritev_all(fd, [state.kept[i] for i in range(first, last + 1)], first * stride)
                    written.extend(range(first, last + 1))
            finally:
                for index in moving:
                    if index in written:
                        self._kept_bytes -= len(state.kept.pop(index))
                        state.fresh.add(index)
                    elif index in state.durable_alt:  # still kept: its current record is that one
                        state.alt.add(index)
                    else:
                        state.alt.discard(index)
                state.unsynced = True

    @staticmethod
    def _move(state: _FileState, index: int) -> None:
        """Chunk ``index``'s current record goes to the slot its durable record is not in."""
        if index in state.durable_alt:
            state.alt.discard(index)
        else:
            state.alt.add(index)

    def _write_in_place(
        self, state: _FileState, first: int, records: bytes | bytearray | memoryview, undo: bool = True
    ) -> tuple[int, int, bytes]:
        """Write records where no durable version is, in the slot of chunk ``first`` (the
        same for all of them); (the object, where, what they overwrote). A write that fails
        (a full disk, a short write) leaves what the object held before it: the records it
        overwrote (written since the last commit, not yet committed) are put back, and the
        object is cut back to what it covered (the file's size is updated only after this
        succeeds). ``undo=False``: the slot holds no current record (a chunk moved to its
        other slot), nothing to put back."""
        fd = self._slot_fd(state, first)
        at = first * (self.chunk_size + state.codec.overhead)
        if fd == state.fd:
            covered = self._object_size(max(state.size, state.durable_size), state.codec)
            overlap = min(at + len(records), self._object_size(state.size, state.codec)) - at
        else:
            covered = os.fstat(fd).st_size
            overlap = min(at + len(records), covered) - at
        previous = os.pread(fd, overlap, at) if overlap > 0 and undo else b""
        try:
            pwrite_or_put_back(fd, records, at, previous)
        except OSError:
            if at + len(records) > covered:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, covered)
            raise
        state.unsynced = True
        return fd, at, previous

    def _merged(
        self, state: _FileState, index: int, data: memoryview, offset: int, old_size: int, chunk_end: int
    ) -> bytes:
        """Chunk ``index`` as it holds after writing ``data`` at ``offset`` over it."""
        chunk_start = index * self.chunk_size
        lo, hi = max(offset, chunk_start), min(offset + len(data), chunk_end)
        old_len = self._chunk_len(old_size, index)
        old = self._read_chunk(state, index, old_len) if old_len else b""
        buf = bytearray(old.ljust(chunk_end - chunk_start, b"\0"))
        buf[lo - chunk_start : hi - chunk_start] = data[lo - offset : hi - offset]
        return bytes(buf)

    def _object_size(self, size: int, codec: ChunkCodec) -> int:
        if size == 0:
            return 0
        count = chunk_count(size, self.chunk_size)
        last = size - (count - 1) * self.chunk_size
        return (count - 1) * (self.chunk_size + codec.overhead) + last + codec.overhead

    def _resize(self, state: _FileState, size: int) -> None:
        """Truncate or extend: new chunks are holes; a partial last chunk is sealed again at
        its new length. Nothing durable is destroyed before the commit: a file cut to
        nothing gets a new object (the old one goes after the commit), and an object
        is cut only after the commit that records its smaller size."""
        if size == state.size:
            return
        if size > MAX_FILE_SIZE:
            raise oserror(errno.EFBIG, state.path)
        if size < 0:
            raise oserror(errno.EINVAL, state.path)
        cs = self.chunk_size
        if size == 0 and state.durable_size > 0:
            self._replace_object(state)
            return
        old_count, new_count = chunk_count(state.size, cs), chunk_count(size, cs)
        last = min(old_count, new_count) - 1  # the chunk whose length changes, if any
        if last >= 0 and not is_hole(state.tags, last):
            old_len, new_len = self._chunk_len(state.size, last), self._chunk_len(size, last)
            if old_len != new_len:
                plain = self._read_chunk(state, last, old_len)
                plain = plain[:new_len] if new_len < old_len else plain.ljust(new_len, b"\0")
                record, tag = state.codec.seal(last, plain)
                self._store(state, last, last, record)
                state.tags[last * TAG : (last + 1) * TAG] = tag
                state.changed.add(last)
        if new_count > old_count:
            state.tags.extend(HOLE * (new_count - old_count))
        else:
            for index in range(new_count, min(old_count, state.durable_count)):
                self._locate(state, index)  # durable records past the cut: where, while tags say
            del state.tags[new_count * TAG :]
            for index in [i for i in state.kept if i >= new_count]:
                self._kept_bytes -= len(state.kept.pop(index))
            state.fresh -= set(range(new_count, old_count))
            state.alt = {i for i in state.alt if i < new_count}
            if size >= state.durable_size:  # nothing durable past it: cut the object now
                self._cut(state, size)
        state.changed.update(range(min(old_count, new_count), new_count))
        state.inode.size = size
        state.inode.mtime = state.inode.ctime = time.time_ns()
        state.sized = True
        self._tables_changed.add(state.inode.ino)

    def _cut(self, state: _FileState, size: int) -> None:
        """Cut the object (both slots) to what ``size`` bytes of file need."""
        length = self._object_size(size, state.codec)
        os.ftruncate(state.fd, length)
        if state.alt_fd >= 0 or os.path.exists(self._alt_path(state.file_id)):
            os.ftruncate(self._alt_fd(state), length)

    def _replace_object(self, state: _FileState) -> None:
        """A file cut to nothing continues in a new object; the old one, which the durable
        state still names, is deleted after the commit."""
        state.retired.append((state.file_id, state.inode.root))
        state.close_files()
        state.inode.file_id, state.fd = self._new_object()
        state.alt.clear()
        state.durable_alt.clear()
        state.known.clear()
        state.has_b = state.probe = False
        state.codec = self.keys.codec(state.inode.file_id, self.mode == "encrypted")
        for record in state.kept.values():
            self._kept_bytes -= len(record)
        state.kept.clear()
        state.fresh.clear()
        state.changed.clear()
        state.durable_count = 0
        state.durable_size = 0
        state.inode.table = bytearray()
        state.inode.size = 0
        state.inode.root, state.inode.tags = None, b""
        state.inode.mtime = state.inode.ctime = time.time_ns()
        state.sized = True
        self._tables_changed.add(state.inode.ino)
        self._record("inode", ino=state.inode.ino, attrs=state.inode.attrs())

    def allocate(self, state: _FileState, offset: int, length: int, keep_size: bool) -> None:
        """fallocate(2) modes 0 and FALLOC_FL_KEEP_SIZE: the range reads as it did, and as
        zeros where it was past the end; with KEEP_SIZE the size stays (a volume reserves
        no storage ahead: encryption decides each chunk's bytes when it is written)."""
        if offset < 0 or length <= 0:
            raise oserror(errno.EINVAL, state.path)
        if offset + length > MAX_FILE_SIZE:
            raise oserror(errno.EFBIG, state.path)
        if not keep_size and offset + length > state.size:
            self._resize(state, offset + length)

    def truncate(self, path: str, size: int) -> None:
        with self.open_file(path, "r+") as handle:
            handle.truncate(size)

    # -- committing -------------------------------------------------------------------

    def flush(self, durable: bool = True) -> str:
        """Commit everything pending (docs/volume-format.md, Commit); the new volume tag.
        ``durable=False``: a lazy commit, synced by the next durable one (the mount's
        periodic commits); one after which something durable is overwritten, cut or
        deleted is durable anyway."""
        if self._closed:
            raise VolumeError("the volume is closed")
        if not self.dirty:
            if durable and self._lazy:
                self._sync_lazy()
            return self.tag
        if self.readonly:
            raise oserror(errno.EROFS, str(self.root))
        assert self.journal is not None
        if not durable and self._kept_bytes:
            # overwrites kept aside go to their other slot: the commit stays lazy (no sync)
            # and leaves them waiting, where putting them in place needs a durable one
            with contextlib.suppress(OSError):  # those not moved are committed durably
                self._spill()
        states = [s for s in self._open.values() if s.dirty or s.unsynced]
        # lazy only when nothing durable is touched after the commit: no overwrite kept aside
        # to go in place, no object to delete or cut (the durable state may still need it).
        # Chunks moved to their other slot wait for the next durable commit (their records
        # must be on disk before a commit names them), unless the file's size changed too.
        durable = (
            durable
            or bool(self._frees)
            or any(s.kept or s.retired or s.size < s.durable_size or (s.sized and s.moved) for s in states)
        )
        waiting = {} if durable else {s.inode.ino: s.moved for s in states}
        if durable:
            unsynced = [s for s in states if s.unsynced]
            if self._lazy or len(unsynced) + len(self._new_dirs) > _SYNCFS_ABOVE:
                syncfs(self._lock_fd)  # one wait for the disk, not one per file
            else:
                for state in unsynced:
                    state.sync()
                for directory in sorted(self._new_dirs, key=len, reverse=True):
                    fsync_directory(directory)
            self._new_dirs.clear()
        ops, blob = [*self._ops], bytearray(self._blob)  # copies: a failed commit is retried whole
        raw = _Raw()
        for state in states:
            if state.inode.ino in self.tree.inodes:
                self._file_ops(state, ops, blob, raw, waiting.get(state.inode.ino, set()))
        inodes = self.tree.inodes
        ops += ({"op": "inode", "ino": i, "attrs": inodes[i].attrs()} for i in self._attrs if i in inodes)
        if not ops and not durable:  # a lazy commit of nothing: only moved chunks, which wait
            self._attrs = {}  # (inodes freed since: nothing to record)
            return self.tag
        plaintext = encode(ops, blob, _now(), raw.length)
        try:
            chain = self.journal.append(plaintext, raw.parts, durable)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._release_reserve():
                raise
            chain = self.journal.append(plaintext, raw.parts, durable)
        self._ops, self._blob, self._attrs = [], bytearray(), {}
        self._lazy = not durable
        self._after_commit(states, durable, waiting)
        self.tag = chain.hex()
        self.history.add(self.tag)
        if self.journal.size > CHECKPOINT_AT and not self._unapplied and not self._waiting:
            self._checkpoint()
        self._keep_reserve(max(self.journal.size, self._manifest_size))
        return self.tag

    def _file_ops(
        self, state: _FileState, ops: list[dict[str, Any]], blob: bytearray, raw: "_Raw", waiting: set[int]
    ) -> None:
        """A file's part of the commit: its size, the tags of changed chunks (in ``blob``)
        but those ``waiting`` for a durable commit, the records kept aside (in ``raw``)."""
        ino = state.inode.ino
        if state.sized:
            ops.append({"op": "size", "ino": ino, "size": state.size})
        count = chunk_count(state.size, self.chunk_size)
        changed = [i for i in state.changed if i < count and i not in waiting]
        for first, last in runs(changed):
            ops.append({"op": "tags", "ino": ino, "first": first, "count": last - first + 1, "at": len(blob)})
            blob += state.tags[first * TAG : (last + 1) * TAG]
        for first, last in runs(state.kept):
            at = raw.length
            for index in range(first, last + 1):
                raw.add(state.kept[index])
            ops.append(
                {
                    "op": "data",
                    "ino": ino,
                    "first": first,
                    "count": last - first + 1,
                    "at": at,
                    "length": raw.length - at,
                }
            )
        if state.sized or changed:  # its times moved with the data (recorded after)
            self._attrs[ino] = None

    def _sync_lazy(self) -> None:
        """Make the lazy commits since the last durable one durable: what they wrote in
        place and their journal records (the journal's sync covers every record before)."""
        assert self.journal is not None
        syncfs(self._lock_fd)
        self.journal.sync()
        self._lazy = False

    def _after_commit(self, states: list[_FileState], durable: bool, waiting: dict[int, set[int]]) -> None:
        """The commit is written: kept-aside records go in place (a commit that has them is
        durable), cut objects are cut, replaced and freed objects deleted. A lazy commit's
        files stay marked unsynced while open; closed ones the next durable commit syncs
        with the file system. Chunks ``waiting`` (moved, left out of a lazy commit) stay
        changed, in their slot, for the next durable commit."""
        for state in states:
            stride = self.chunk_size + state.codec.overhead
            if state.size < state.durable_size:  # cutting frees space: it does not fail for lack of it
                self._cut(state, state.size)
            try:
                for index, record in sorted(state.kept.items()):
                    pwrite_all(state.fd, record, index * stride)
            except OSError as exc:
                # the journal holds them: reads take them from memory, the next commit tries
                # again, no checkpoint drops the journal before, opening again repairs
                log.error("%s: writing committed records in place failed: %s", state.path, exc)
            else:
                if state.kept:
                    self._applied.add(state.file_id)
                self._kept_bytes -= sum(len(r) for r in state.kept.values())
                state.alt.difference_update(state.kept)  # now in the first slot
                state.kept.clear()
            left = waiting.get(state.inode.ino, set())
            state.fresh = set(left)
            if durable:
                state.durable_alt = set(state.alt)
            state.changed = set(left)
            state.sized = False
            state.unsynced = state.unsynced and not durable
            state.durable_count = chunk_count(state.size, self.chunk_size)
            state.durable_size = state.size
            self._frees.extend(state.retired)
            state.retired.clear()
            if state.refs == 0 and not state.kept and not state.changed:
                self._close_state(state)
        for file_id, root in self._frees:
            for path in self._files_of(file_id, root):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._applied.discard(file_id)
        self._frees.clear()
        self._spilling = False

    # -- replaying the journal --------------------------------------------------------

    def _records_authentic(self, commit: Commit) -> bool:
        """Whether every chunk record the commit carries is whole and authentic (each by its
        own tag; the sealed tags ops decide later whether it is current). A record that is
        not was cut by a crash during the commit's write: the commit never completed."""
        for op in commit.ops:
            if op.get("op") != "data":
                continue
            inode = self.tree.inodes.get(int(op["ino"]))
            if inode is None or inode.file_id is None:
                continue
            codec = self.keys.codec(inode.file_id, self.mode == "encrypted")
            stride = self.chunk_size + codec.overhead
            at, length, first = int(op["at"]), int(op["length"]), int(op["first"])
            records = commit.raw[at : at + length]
            if at + length > len(commit.raw):
                return False
            for index in range(int(op["count"])):
                record = records[index * stride : (index + 1) * stride]
                try:
                    codec.open(first + index, record, record[-TAG:], "journal")
                except IntegrityError:
                    return False
        return True

    def _replay(self, ops: list[dict[str, Any]], blob: bytes, raw: memoryview) -> None:
        """Apply one commit's operations to the checkpoint's tree (at open)."""
        for op in ops:
            kind = op["op"]
            if kind == "inode":
                ino = int(op["ino"])
                existing = self.tree.inodes.get(ino)
                if existing is None:
                    inode = Inode(ino, "file", 0, 0, 0, 0, 0, 0)
                    inode.set_attrs(op["attrs"])
                    if inode.type == "file":
                        inode.tags, inode.table = b"", bytearray()
                    if inode.is_dir:
                        inode.nlink = 2
                    self.tree.add(inode)
                else:
                    replaced_object = existing.file_id
                    existing.set_attrs(op["attrs"])
                    if existing.file_id != replaced_object:  # cut to nothing, a new object
                        existing.root, existing.tags, existing.table, existing.size = (
                            None,
                            b"",
                            bytearray(),
                            0,
                        )
                        self._tables_changed.add(ino)
                        self._damaged.pop(ino, None)
            elif kind == "link":
                self.tree.link(self.tree.get(int(op["dir"])), str(op["name"]), self.tree.get(int(op["ino"])))
            elif kind == "unlink":
                self.tree.unlink(self.tree.get(int(op["dir"])), str(op["name"]))
            elif kind == "free":
                freed = self.tree.inodes.get(int(op["ino"]))
                if freed is not None:
                    del self.tree.inodes[freed.ino]
                if freed is not None and freed.file_id is not None and not self.readonly:
                    for path in self._files_of(freed.file_id, freed.root):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
            elif kind in ("size", "tags", "data"):
                self._replay_file(op, blob, raw)
            else:
                raise IntegrityError(f"{self.root}: the journal holds an unknown operation '{kind}'")

    def _replay_file(self, op: dict[str, Any], blob: bytes, raw: memoryview) -> None:
        ino = int(op["ino"])
        inode = self.tree.get(ino)
        if ino in self._damaged:
            return
        try:
            table = self._table(inode, f"inode {ino}")
        except IntegrityError as exc:
            self._damaged[ino] = str(exc).removeprefix(f"inode {ino}: ")
            return
        self._tables_changed.add(ino)
        if op["op"] == "size":
            size = int(op["size"])
            count = chunk_count(size, self.chunk_size)
            if len(table) < count * TAG:
                table.extend(HOLE * (count - len(table) // TAG))
            del table[count * TAG :]
            inode.size = size
            return
        first, count, at = int(op["first"]), int(op["count"]), int(op["at"])
        if op["op"] == "tags":
            table[first * TAG : (first + count) * TAG] = blob[at : at + count * TAG]
            return
        assert inode.file_id is not None
        stride = self.chunk_size + self.keys.codec(inode.file_id, self.mode == "encrypted").overhead
        records = bytes(raw[at : at + int(op["length"])])
        found = self._replayed.get(ino)
        if found is None or found[0] != inode.file_id:  # a new object: the old one's records went
            found = self._replayed[ino] = (inode.file_id, {})
        for index in range(count):
            found[1][first + index] = records[index * stride : (index + 1) * stride]

    def _place_replayed(self) -> None:
        """After the whole journal is read: write in place the journaled records that are
        still the current version of their chunk. A later version was written in place
        before the commit that named it (a chunk cut away and written again, past the
        durable end), so an older journaled record must not go over it."""
        for ino, (file_id, records) in list(self._replayed.items()):
            inode = self.tree.inodes.get(ino)
            if inode is None or inode.file_id != file_id or ino in self._damaged or inode.table is None:
                del self._replayed[ino]
                continue
            table = inode.table
            current = {
                index: record
                for index, record in records.items()
                if record[-TAG:] == table[index * TAG : (index + 1) * TAG]
            }
            if self.readonly:  # nothing is written: read from memory (see _load_state)
                self._replayed[ino] = (file_id, current)
                continue
            del self._replayed[ino]
            if not current:
                continue
            stride = self.chunk_size + self.keys.codec(file_id, self.mode == "encrypted").overhead
            fd = os.open(self._object(file_id), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                for index, record in sorted(current.items()):
                    pwrite_all(fd, record, index * stride)
            finally:
                os.close(fd)
            self._applied.add(file_id)

    # -- checkpoints ------------------------------------------------------------------

    def checkpoint(self) -> str:
        """Commit, then write a checkpoint (docs/volume-format.md, Checkpoint); the tag."""
        self.flush()
        if self.journal is not None and self.journal.size:
            self._checkpoint()
        return self.tag

    def _checkpoint(self, upgrade: bool = False) -> None:
        """Tag tables and objects synced, the manifest replaced, the journal emptied. The
        tag does not change (the state is the same), except by an upgrade from version 1,
        whose chain starts here. Not while committed records could not be written in place
        (a full disk): the journal is their only durable copy."""
        if self._unapplied:
            raise oserror(errno.ENOSPC, str(self.root))
        if self._lazy:  # the checkpoint names what they wrote: durable first
            self._sync_lazy()
        for file_id in self._applied:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self._object(file_id), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        unneeded: list[str] = []
        written: list[str] = []
        before: list[tuple[Inode, str | None, bytes | None]] = []  # to put back if this fails
        try:
            for ino in sorted(self._tables_changed):
                inode = self.tree.inodes.get(ino)
                if inode is None or inode.table is None or inode.file_id is None:
                    continue
                before.append((inode, inode.root, inode.tags))
                old = self._table_files(inode.file_id, inode.root) if inode.root is not None else []
                if len(inode.table) <= _INLINE_TAGS:
                    inode.root, inode.tags = None, bytes(inode.table)
                else:
                    root = tags_root(inode.table)
                    new = self._tags_path(inode.file_id, root)
                    if not os.path.exists(new):  # a table is never rewritten: its name is its root
                        self._write_metadata(new, pack_table(inode.table), True)
                        written.append(new)
                    inode.root, inode.tags = root, None
                    old = [name for name in old if name != new]
                unneeded += old  # deleted once the new manifest is durable
            sealed = self._write_manifest()
        except BaseException:
            for inode, old_root, old_tags in before:
                inode.root, inode.tags = old_root, old_tags
            for name in written:
                with contextlib.suppress(OSError):
                    os.unlink(name)
            raise
        for ino in self._tables_changed:
            inode = self.tree.inodes.get(ino)
            if inode is not None and ino not in self._open:
                inode.table = None
        chain = self.journal.chain if self.journal is not None else self.manifest.start
        manifest = self.manifest
        self._manifest_size = len(sealed)
        if self.journal is None:
            header = new_header(self.mode, self.keys.volume_id, self.chunk_size, self.keys)
            write_atomic(self.root / "volume.json", json.dumps(header, indent=2).encode() + b"\n")
            self.journal = Journal(
                f"{self.root}/journal", self.keys.journal, self.keys.volume_id, manifest.epoch, chain
            )
        self.journal.reset(manifest.epoch, chain)
        for path in unneeded:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._tables_changed.clear()
        self._applied.clear()
        if upgrade:
            self.tag = chain.hex()
            self.history.add(self.tag)
        self._keep_reserve(len(sealed))

    def _write_manifest(self) -> bytes:
        """The checkpoint's manifest, durable: the next generation and epoch, starting at
        the current chain value. Nothing in memory changes unless it is written."""
        chain = self.journal.chain if self.journal is not None else self.manifest.start
        manifest = copy.copy(self.manifest)
        manifest.version = 3
        manifest.generation += 1
        manifest.epoch += 1
        manifest.start = chain
        manifest.inodes, manifest.next_ino = self.tree.checkpoint(), self.tree.next_ino
        sealed = manifest.seal(self.keys.manifest)
        self._write_metadata(f"{self.root}/manifest", sealed, True)
        self.manifest = manifest
        return sealed

    @property
    def _waiting(self) -> bool:
        """Moved chunks left out of lazy commits: the tables in memory are ahead of the
        journal until the next durable commit, so no checkpoint writes them now."""
        return any(s.moved for s in self._open.values())

    @property
    def _unapplied(self) -> bool:
        """Right after a commit: records it committed that could not be written in place."""
        return any(s.kept for s in self._open.values())

    @property
    def base(self) -> str | None:
        """The latest tag the CAS may hold: written into checkpoints (with a few before it),
        so that a volume whose journal was compacted past it still shows it in its history."""
        return self.manifest.base[-1] if self.manifest.base else None

    @base.setter
    def base(self, tag: str | None) -> None:
        if tag is None:
            return
        kept = [t for t in self.manifest.base if t != tag][-(_BASE_TAGS - 1) :]
        self.manifest.base = [*kept, tag]
        self.history.add(tag)

    def close(self) -> str:
        """Commit, checkpoint, release the volume; return the final tag."""
        if self._closed:
            return self.tag
        if not self.readonly:
            self.flush()  # a failure here is a failure: what is pending is not durable
            try:
                if self.journal is not None and self.journal.size:
                    self._checkpoint()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # the journal holds the state durably; the next open reads it
                log.warning("%s: no room for a checkpoint; the journal keeps the state", self.root)
            if not self._unapplied:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.root}/.open")  # closed cleanly: nothing to sweep next time
        self._release_files()
        os.close(self._lock_fd)
        self._closed = True
        return self.tag

    def _release_files(self) -> None:
        for state in self._open.values():
            state.close_files()
        self._open.clear()
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- a full disk ------------------------------------------------------------------

    def _write_metadata(self, path: str, data: bytes, durable: bool) -> None:
        """``_write_atomic``; on a full disk, once more with the reserve's space, so that a
        commit (and the deletes it carries out) still succeeds. ENOSPC only when even that
        space does not suffice: the old file stays whole either way."""
        try:
            write_atomic(path, data, durable)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._release_reserve():
                raise
            write_atomic(path, data, durable)

    @property
    def reserve_size(self) -> int:
        try:
            return os.stat(f"{self.root}/reserve").st_size
        except FileNotFoundError:
            return 0

    def _release_reserve(self) -> bool:
        """Give the reserve's space back to the file system; False if there was none."""
        if not self.reserve_size:
            return False
        os.truncate(f"{self.root}/reserve", 0)
        return True

    def _keep_reserve(self, metadata_size: int) -> None:
        """Allocate DIR/reserve back up to what metadata needs, where the disk has room."""
        wanted = max(RESERVE_MIN, 2 * metadata_size)
        if self.reserve_size >= wanted:
            return
        fd = os.open(f"{self.root}/reserve", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, wanted)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EOPNOTSUPP):
                raise
            os.ftruncate(fd, 0)  # no room now: an empty reserve, allocated at a later commit
        finally:
            os.close(fd)


class VolumeFile:
    """A file handle: read/write/seek/tell/truncate, like a binary Python file."""

    def __init__(
        self, volume: Volume, state: _FileState, readable: bool, writable: bool, append: bool
    ) -> None:
        self._volume, self._state = volume, state
        self.readable, self.writable, self.append = readable, writable, append
        self._pos = state.size if append else 0
        self.closed = False

    @property
    def path(self) -> str:
        return self._state.path

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def inode(self) -> Inode:
        return self._state.inode

    def _check(self, writing: bool) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        if writing and not self.writable:
            raise oserror(errno.EBADF, self.path)
        if not writing and not self.readable:
            raise oserror(errno.EBADF, self.path)

    def read(self, size: int = -1) -> bytes:
        self._check(False)
        length = self._state.size - self._pos if size < 0 else size
        data = self._volume.read_at(self._state, self._pos, length)
        self._pos += len(data)
        return data

    def pread(self, size: int, offset: int) -> bytes:
        self._check(False)
        return self._volume.read_at(self._state, offset, size)

    def write(self, data: bytes) -> int:
        """Write all of ``data`` at the position (a full disk raises ENOSPC, after what fit)."""
        self._check(True)
        view = memoryview(bytes(data))
        while view:
            if self.append:
                self._pos = self._state.size
            written = self._volume.write_at(self._state, self._pos, view)
            self._pos += written
            view = view[written:]
        return len(data)

    def pread_into(self, out: memoryview, offset: int) -> int:
        """Read up to len(out) bytes at ``offset`` into ``out``; the count read."""
        self._check(writing=False)
        return self._volume.read_into(self._state, offset, out)

    def pread_shared(self, size: int, offset: int) -> tuple[int, int]:
        """Read up to ``size`` bytes at ``offset`` into the read helper's shared memory:
        (where they start, their count); see Volume.read_shared."""
        self._check(writing=False)
        return self._volume.read_shared(self._state, offset, size)

    def pwrite(self, data: bytes | memoryview, offset: int) -> int:
        """Write ``data`` at ``offset``; the count written, which is short when the disk
        filled after a part (as pwrite(2)). The caller's buffer is only read during the call."""
        self._check(True)
        return self._volume.write_at(self._state, offset, data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._state.size}[whence]
        if base + offset < 0:
            raise oserror(errno.EINVAL, self.path)
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._check(True)
        target = self._pos if size is None else size
        self._volume._resize(self._state, target)
        return target

    def allocate(self, offset: int, length: int, keep_size: bool = False) -> None:
        self._check(True)
        self._volume.allocate(self._state, offset, length, keep_size)

    def flush(self) -> None:
        """Data is with the volume already; Volume.flush() commits it."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._volume._release(self._state)

    def __enter__(self) -> "VolumeFile":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class _Raw:
    """The chunk records a commit carries, in order, and their length so far."""

    parts: list[bytes] = field(default_factory=list)
    length: int = 0

    def add(self, record: bytes) -> None:
        self.parts.append(record)
        self.length += len(record)
