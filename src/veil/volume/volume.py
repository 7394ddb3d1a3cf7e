"""The protected volume: a Python API over the on-disk format of docs/volume-format.md.

``Volume`` holds the manifest in memory and one shared state per open file (its object's
descriptor, size and tag table). Writes go to the objects at once; tag tables and the
manifest are written by ``flush()``, which returns the new volume tag. Namespace errors are
OSError with an errno (as os functions raise); tampering raises IntegrityError.
"""

import contextlib
import errno
import fcntl
import hmac
import json
import os
import posixpath
import stat as stat_module
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.volume.chunks import TAG, ChunkCodec, tags_root
from veil.volume.errors import IntegrityError, StaleVolume, VolumeBusy, VolumeError, WrongKey
from veil.volume.helper import Part, ReadHelper
from veil.volume.keys import VolumeKeys
from veil.volume.manifest import Manifest, volume_tag

FORMAT = "veil-volume"
VERSION = 1
MODES = ("encrypted", "authenticated")
DEFAULT_CHUNK = 8192
_IO_BLOCK = 1 << 20
_DISK_PREFETCH = 2 << 20  # ciphertext the disk reads ahead during a sequential read
_SPLIT_CHUNKS = 16  # reads of more chunks than this are shared with the helper, if any
_INLINE_TAGS = 2 * TAG  # a tag table this long or shorter lives in the manifest entry
#: the longest name (bytes of UTF-8, as the program gave it) and the largest file size: ext4's
NAME_MAX = 255
MAX_FILE_SIZE = 1 << 44
# renameat2 flags (linux/fs.h)
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
#: space kept allocated in DIR/reserve so that metadata can be written on a full disk:
#: at least this, and twice the sealed manifest
RESERVE_MIN = 1 << 20


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def normalize(path: str) -> str:
    """An absolute, normalised volume path; refuses to climb above the root, and names
    longer than NAME_MAX bytes (ENAMETOOLONG, as the kernel's own file systems do)."""
    joined = posixpath.normpath("/" + path.lstrip("/"))
    if joined.startswith("//"):
        joined = "/" + joined.lstrip("/")
    if "\0" in joined:
        raise _oserror(errno.EINVAL, path)
    if len(joined) > NAME_MAX // 4 and any(  # shorter, no name can have NAME_MAX bytes of UTF-8
        len(name.encode("utf-8", "surrogateescape")) > NAME_MAX for name in joined.split("/")
    ):
        raise _oserror(errno.ENAMETOOLONG, path)
    return joined


@dataclass(frozen=True)
class VolumeStat:
    path: str
    type: str  # "file" or "dir"
    size: int
    mode: int
    mtime: float

    @property
    def st_mode(self) -> int:
        kind = stat_module.S_IFDIR if self.type == "dir" else stat_module.S_IFREG
        return kind | self.mode


@dataclass
class _FileState:
    path: str
    file_id: bytes
    codec: ChunkCodec
    fd: int
    size: int
    tags: bytearray
    refs: int = 0
    dirty: bool = False
    unlinked: bool = False
    read_end: int = -1


@dataclass
class Volume:
    root: Path
    keys: VolumeKeys
    manifest: Manifest
    tag: str
    _lock_fd: int
    _open: dict[bytes, _FileState] = field(default_factory=dict)
    _children: dict[str, set[str]] = field(default_factory=dict)
    _pending_deletes: list[bytes] = field(default_factory=list)
    _new_dirs: set[str] = field(default_factory=set)  # object directories with new entries
    _dirty: bool = False
    _closed: bool = False
    helper: ReadHelper | None = None  # set by the mount: a second process for large reads
    chunk_size: int = field(init=False)  # the manifest's, read on every request

    def __post_init__(self) -> None:
        self.chunk_size = self.manifest.chunk_size
        self._objects = os.path.join(self.root, "objects")

    # -- creating and opening ---------------------------------------------------------

    @classmethod
    def create(
        cls, root: Path, key: bytes, mode: str = "encrypted", chunk_size: int = DEFAULT_CHUNK
    ) -> "Volume":
        if mode not in MODES:
            raise VolumeError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise VolumeError(f"{root} is not empty; a volume is created in an empty directory")
        volume_id = os.urandom(16)
        keys = VolumeKeys.derive(key, volume_id)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "mode": mode,
            "volume_id": volume_id.hex(),
            "chunk_size": chunk_size,
            "key_check": hmac.new(keys.check, b"veil-volume-key-check", "sha256").hexdigest(),
        }
        (root / "objects").mkdir()
        _write_atomic(root / "volume.json", json.dumps(header, indent=2).encode() + b"\n")
        manifest = Manifest(volume_id, mode, chunk_size, 0, {"/": _dir_entry(0o755)})
        _write_atomic(root / "manifest", manifest.seal(keys.manifest))
        return cls.open(root, key)

    @classmethod
    def open(cls, root: Path, key: bytes, expected_tag: str | None = None) -> "Volume":
        # absolute, not resolved: /proc/self/fd/N must stay a handle on the storage directory
        # even when a mount now covers its path (see veil.volume.daemon)
        root = root.absolute()
        header = _read_header(root)
        volume_id = bytes.fromhex(header["volume_id"])
        keys = VolumeKeys.derive(key, volume_id)
        check = hmac.new(keys.check, b"veil-volume-key-check", "sha256").hexdigest()
        if not hmac.compare_digest(check, str(header.get("key_check", ""))):
            raise WrongKey(f"the key does not open the volume in {root}")
        lock_fd = _lock(root)
        try:
            try:
                data = (root / "manifest").read_bytes()
            except FileNotFoundError:
                raise IntegrityError(f"{root}: the manifest is missing") from None
            tag = volume_tag(data)
            if expected_tag is not None and not hmac.compare_digest(tag, expected_tag):
                raise StaleVolume(
                    f"{root}: volume tag {tag[:16]}… is not the expected {expected_tag[:16]}… "
                    "(an older copy, a modified volume, or another volume)"
                )
            manifest = Manifest.open(data, keys.manifest, volume_id)
            if (manifest.mode, manifest.chunk_size) != (header["mode"], header["chunk_size"]):
                raise IntegrityError(f"{root}: volume.json does not match the sealed manifest")
        except BaseException:
            os.close(lock_fd)
            raise
        volume = cls(root, keys, manifest, tag, lock_fd)
        volume._index()
        return volume

    def _index(self) -> None:
        self._children = {p: set() for p, e in self.manifest.entries.items() if e["type"] == "dir"}
        for path in self.manifest.entries:
            if path != "/":
                self._children.setdefault(posixpath.dirname(path), set()).add(posixpath.basename(path))

    @property
    def mode(self) -> str:
        return self.manifest.mode

    @property
    def dirty(self) -> bool:
        return self._dirty or any(s.dirty for s in self._open.values())

    # -- paths of objects -------------------------------------------------------------

    # Strings, not Paths: a file created costs a few of these, and pathlib's parsing showed
    # in the profile of creating small files.
    def _object(self, file_id: bytes) -> str:
        name = file_id.hex()
        return f"{self._objects}/{name[:2]}/{name}"

    def _tags_path(self, file_id: bytes) -> str:
        return self._object(file_id) + ".tags"

    # -- namespace --------------------------------------------------------------------

    def _entry(self, path: str) -> dict[str, Any]:
        entry = self.manifest.entries.get(path)
        if entry is None:
            raise _oserror(errno.ENOENT, path)
        return entry

    def _parent_dir(self, path: str) -> str:
        parent = posixpath.dirname(path)
        entry = self.manifest.entries.get(parent)
        if entry is None:
            raise _oserror(errno.ENOENT, parent)
        if entry["type"] != "dir":
            raise _oserror(errno.ENOTDIR, parent)
        return parent

    def exists(self, path: str) -> bool:
        return normalize(path) in self.manifest.entries

    def stat(self, path: str) -> VolumeStat:
        path = normalize(path)
        entry = self._entry(path)
        size = int(entry.get("size", 0))
        if entry["type"] == "file":
            state = self._open.get(bytes.fromhex(entry["id"]))
            if state is not None:
                size = state.size
        return VolumeStat(path, entry["type"], size, int(entry["mode"]), float(entry["mtime"]))

    def listdir(self, path: str = "/") -> list[str]:
        path = normalize(path)
        if self._entry(path)["type"] != "dir":
            raise _oserror(errno.ENOTDIR, path)
        return sorted(self._children.get(path, ()))

    def walk(self) -> Iterator[VolumeStat]:
        for path in sorted(self.manifest.entries):
            yield self.stat(path)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        path = normalize(path)
        parent = self._parent_dir(path)
        if path in self.manifest.entries:
            raise _oserror(errno.EEXIST, path)
        self.manifest.entries[path] = _dir_entry(mode)
        self._children[parent].add(posixpath.basename(path))
        self._children[path] = set()
        self._touch(parent)

    def rmdir(self, path: str) -> None:
        path = normalize(path)
        if path == "/":
            raise _oserror(errno.EBUSY, path)
        if self._entry(path)["type"] != "dir":
            raise _oserror(errno.ENOTDIR, path)
        if self._children.get(path):
            raise _oserror(errno.ENOTEMPTY, path)
        del self.manifest.entries[path]
        del self._children[path]
        parent = posixpath.dirname(path)
        self._children[parent].discard(posixpath.basename(path))
        self._touch(parent)

    def unlink(self, path: str) -> None:
        path = normalize(path)
        entry = self._entry(path)
        if entry["type"] == "dir":
            raise _oserror(errno.EISDIR, path)
        self._drop_file(path, entry)
        parent = posixpath.dirname(path)
        self._children[parent].discard(posixpath.basename(path))
        self._touch(parent)

    def _drop_file(self, path: str, entry: dict[str, Any]) -> None:
        del self.manifest.entries[path]
        file_id = bytes.fromhex(entry["id"])
        state = self._open.get(file_id)
        if state is not None:
            state.unlinked = True
        self._pending_deletes.append(file_id)
        self._dirty = True

    def rename(self, source: str, target: str, flags: int = 0) -> None:
        """rename(2), and renameat2(2)'s RENAME_NOREPLACE and RENAME_EXCHANGE; any other flag
        (RENAME_WHITEOUT included) is EINVAL, never ignored."""
        source, target = normalize(source), normalize(target)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _oserror(errno.EINVAL, target)
        entry = self._entry(source)
        if flags & RENAME_EXCHANGE:
            self._exchange(source, target)
            return
        if flags & RENAME_NOREPLACE and target in self.manifest.entries:
            raise _oserror(errno.EEXIST, target)
        if source == target:
            return
        if target.startswith(source + "/"):
            raise _oserror(errno.EINVAL, target)
        target_parent = self._parent_dir(target)
        existing = self.manifest.entries.get(target)
        if existing is not None:
            if existing["type"] == "dir":
                if entry["type"] != "dir":
                    raise _oserror(errno.EISDIR, target)
                if self._children.get(target):
                    raise _oserror(errno.ENOTEMPTY, target)
                del self.manifest.entries[target]
                del self._children[target]
            else:
                if entry["type"] == "dir":
                    raise _oserror(errno.ENOTDIR, target)
                self._drop_file(target, existing)
        moved = [p for p in self.manifest.entries if p == source or p.startswith(source + "/")]
        for old in moved:
            new = target + old[len(source) :]
            self.manifest.entries[new] = self.manifest.entries.pop(old)
            if old in self._children:
                self._children[new] = self._children.pop(old)
        for state in self._open.values():
            if state.path == source or state.path.startswith(source + "/"):
                state.path = target + state.path[len(source) :]
        source_parent = posixpath.dirname(source)
        self._children[source_parent].discard(posixpath.basename(source))
        self._children[target_parent].add(posixpath.basename(target))
        self._touch(source_parent)
        self._touch(target_parent)

    def _exchange(self, first: str, second: str) -> None:
        """RENAME_EXCHANGE: ``first`` and ``second`` (both must exist; neither inside the
        other) swap their places, each with everything under it."""
        self._entry(first)
        self._entry(second)
        if first == second:
            return
        if second.startswith(first + "/") or first.startswith(second + "/"):
            raise _oserror(errno.EINVAL, second)
        entries = self.manifest.entries

        def subtree(root: str) -> list[str]:
            return [p for p in entries if p == root or p.startswith(root + "/")]

        moves = [(p, second + p[len(first) :]) for p in subtree(first)]
        moves += [(p, first + p[len(second) :]) for p in subtree(second)]
        taken = {old: entries.pop(old) for old, _ in moves}
        children = {old: self._children.pop(old) for old, _ in moves if old in self._children}
        for old, new in moves:
            entries[new] = taken[old]
            if old in children:
                self._children[new] = children[old]
        renamed = dict(moves)
        for state in self._open.values():
            root = next(
                (r for r in (first, second) if state.path == r or state.path.startswith(r + "/")), None
            )
            if root is not None:
                state.path = renamed[root] + state.path[len(root) :]
        for parent in {posixpath.dirname(first), posixpath.dirname(second)}:
            self._touch(parent)

    def chmod(self, path: str, mode: int) -> None:
        entry = self._entry(normalize(path))
        entry["mode"] = mode & 0o7777
        self._dirty = True

    def utime(self, path: str, mtime: float) -> None:
        entry = self._entry(normalize(path))
        entry["mtime"] = mtime
        self._dirty = True

    def _touch(self, path: str) -> None:
        self.manifest.entries[path]["mtime"] = time.time()
        self._dirty = True

    # -- files ------------------------------------------------------------------------

    def open_file(self, path: str, mode: str = "r", perm: int = 0o644) -> "VolumeFile":
        """Open a file; ``mode`` is one of r, r+, w, w+, a, a+, x, x+ (always binary)."""
        flags = mode.replace("b", "")
        if flags not in ("r", "r+", "w", "w+", "a", "a+", "x", "x+"):
            raise ValueError(f"invalid mode '{mode}'")
        path = normalize(path)
        entry = self.manifest.entries.get(path)
        if entry is None:
            if flags[0] == "r":
                raise _oserror(errno.ENOENT, path)
            entry = self._create_file(path, perm)
        elif flags[0] == "x":
            raise _oserror(errno.EEXIST, path)
        elif entry["type"] == "dir":
            raise _oserror(errno.EISDIR, path)
        state = self._state(path, entry)
        if flags[0] == "w":
            self._resize(state, 0)
        return VolumeFile(
            self,
            state,
            readable=flags[0] == "r" or "+" in flags,
            writable=flags != "r",
            append=flags[0] == "a",
        )

    def _create_file(self, path: str, perm: int) -> dict[str, Any]:
        """A new empty file: its entry, and its state already open (nothing to load)."""
        parent = self._parent_dir(path)
        file_id = os.urandom(16)
        obj = self._object(file_id)
        directory = posixpath.dirname(obj)
        try:
            fd = os.open(obj, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # the first object in its directory
            os.mkdir(directory)
            fd = os.open(obj, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        # No tag table yet: an empty file has none (see _load_state). The new directory entry
        # becomes durable at the next durable flush, before the manifest that names it.
        self._new_dirs.add(directory)
        codec = self.keys.codec(file_id, self.mode == "encrypted")
        self._open[file_id] = _FileState(path, file_id, codec, fd, 0, bytearray())
        entry = {
            "type": "file",
            "mode": perm & 0o7777,
            "mtime": time.time(),
            "size": 0,
            "id": file_id.hex(),
            "tags": "",
        }
        self.manifest.entries[path] = entry
        self._children[parent].add(posixpath.basename(path))
        self._touch(parent)
        return entry

    def _state(self, path: str, entry: dict[str, Any]) -> _FileState:
        file_id = bytes.fromhex(entry["id"])
        state = self._open.get(file_id)
        if state is None:
            state = self._load_state(path, entry, file_id)
            self._open[file_id] = state
        state.refs += 1
        return state

    def _load_state(self, path: str, entry: dict[str, Any], file_id: bytes) -> _FileState:
        codec = self.keys.codec(file_id, self.mode == "encrypted")
        size = int(entry["size"])
        try:
            fd = os.open(self._object(file_id), os.O_RDWR)
        except FileNotFoundError:
            raise IntegrityError(f"{path}: its stored object is missing") from None
        try:
            tags = self._load_tags(path, entry, file_id)
            if len(tags) != _chunks(size, self.chunk_size) * TAG:
                raise IntegrityError(f"{path}: its tag table does not fit its size")
            stored, expected = os.fstat(fd).st_size, self._object_size(size, codec)
            if stored < expected:
                raise IntegrityError(f"{path}: its stored object was truncated")
            if stored > expected:  # records written past the size no flush recorded (a crash)
                os.ftruncate(fd, expected)
        except BaseException:
            os.close(fd)
            raise
        return _FileState(path, file_id, codec, fd, size, tags)

    def _load_tags(self, path: str, entry: dict[str, Any], file_id: bytes) -> bytearray:
        """A file's tag table: inline in its (sealed) entry, or its ID.tags checked against
        the entry's root."""
        if "tags" in entry:
            return bytearray.fromhex(str(entry["tags"]))
        try:
            with open(self._tags_path(file_id), "rb") as table:
                tags = bytearray(table.read())
        except FileNotFoundError:
            tags = bytearray()  # only valid for an empty file: the root check decides
        if not hmac.compare_digest(tags_root(tags), str(entry["root"])):
            raise IntegrityError(f"{path}: its tag table is not the current one (modified or rolled back)")
        return tags

    def _store_tags(self, state: _FileState, entry: dict[str, Any], durable: bool) -> bool:
        """Put a flushed file's tag table where docs/volume-format.md says: inline in its
        entry, or in ID.tags with the entry's root. True if an ID.tags it had is no longer
        needed (the caller deletes it once the manifest that says so is written)."""
        if len(state.tags) <= _INLINE_TAGS:
            entry["tags"] = state.tags.hex()
            return entry.pop("root", None) is not None
        self._write_metadata(self._tags_path(state.file_id), bytes(state.tags), durable)
        entry.pop("tags", None)
        entry["root"] = tags_root(state.tags)
        return False

    def _release(self, state: _FileState) -> None:
        state.refs -= 1
        if state.refs == 0 and not state.dirty:
            os.close(state.fd)
            del self._open[state.file_id]

    def _object_size(self, size: int, codec: ChunkCodec) -> int:
        if size == 0:
            return 0
        count = _chunks(size, self.chunk_size)
        last = size - (count - 1) * self.chunk_size
        return (count - 1) * (self.chunk_size + codec.overhead) + last + codec.overhead

    def _chunk_len(self, size: int, index: int) -> int:
        return max(0, min(self.chunk_size, size - index * self.chunk_size))

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
        if helper is not None and helper.alive and self._shared(helper, first, last):
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
        if helper.alive and self._shared(helper, first, last):
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

    def _shared(self, helper: ReadHelper, first: int, last: int) -> bool:
        """Whether the helper opens part of chunks first..last."""
        return last - first >= _SPLIT_CHUNKS and (last + 1 - first) * self.chunk_size <= helper.slot

    def _open_chunks(self, state: _FileState, first: int, last: int, out: memoryview) -> None:
        """Read and open chunks ``first``..``last`` into ``out`` (their plaintext)."""
        span = self._span(state, first, last)
        raw = os.pread(state.fd, span, first * (self.chunk_size + state.codec.overhead))
        if len(raw) != span:
            raise IntegrityError(f"{state.path}: its stored object is shorter than its size")
        if first == last:  # one chunk (a random read): the short path
            state.codec.open_one_into(first, raw, state.tags, state.path, out)
        else:
            expected = bytes(state.tags[first * TAG : (last + 1) * TAG])
            state.codec.open_into(first, raw, expected, self.chunk_size, state.size, state.path, out)

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
        if following - last > _SPLIT_CHUNKS:
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

    def write_at(self, state: _FileState, offset: int, data: bytes | memoryview) -> int:
        if not data:
            return 0
        if offset + len(data) > MAX_FILE_SIZE:
            raise _oserror(errno.EFBIG, state.path)
        if offset > state.size:
            self._resize(state, offset)
        for block_start in range(0, len(data), _IO_BLOCK):
            self._write_block(state, offset + block_start, data[block_start : block_start + _IO_BLOCK])
        return len(data)

    def _write_block(self, state: _FileState, offset: int, data: bytes | memoryview) -> None:
        cs, stride = self.chunk_size, self.chunk_size + state.codec.overhead
        end = offset + len(data)
        old_size, new_size = state.size, max(state.size, end)
        first, last = offset // cs, (end - 1) // cs
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
        try:
            _pwrite_all(state.fd, records, first * stride)
        except OSError:
            if new_size > old_size:  # a full disk: no half-written record past the end
                os.ftruncate(state.fd, self._object_size(old_size, state.codec))
            raise
        needed = _chunks(new_size, cs) * TAG
        if len(state.tags) < needed:
            state.tags.extend(bytes(needed - len(state.tags)))
        state.tags[first * TAG : (last + 1) * TAG] = new_tags
        state.size = new_size
        state.dirty = True

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

    def _read_chunk(self, state: _FileState, index: int, length: int) -> bytes:
        stride = self.chunk_size + state.codec.overhead
        record = os.pread(state.fd, length + state.codec.overhead, index * stride)
        return state.codec.open(index, record, state.tags[index * TAG : (index + 1) * TAG], state.path)

    def _resize(self, state: _FileState, size: int) -> None:
        if size == state.size:
            return
        if size > MAX_FILE_SIZE:
            raise _oserror(errno.EFBIG, state.path)
        if size < 0:
            raise _oserror(errno.EINVAL, state.path)
        if size > state.size:
            while state.size < size:
                self._write_block(state, state.size, bytes(min(_IO_BLOCK, size - state.size)))
            return
        count = _chunks(size, self.chunk_size)
        tail = size - (count - 1) * self.chunk_size if count else 0
        if count and tail < self._chunk_len(state.size, count - 1):
            plain = self._read_chunk(state, count - 1, self._chunk_len(state.size, count - 1))[:tail]
            record, tag = state.codec.seal(count - 1, plain)
            _pwrite_all(state.fd, record, (count - 1) * (self.chunk_size + state.codec.overhead))
            state.tags[(count - 1) * TAG : count * TAG] = tag
        os.ftruncate(state.fd, self._object_size(size, state.codec))
        del state.tags[count * TAG :]
        state.size = size
        state.dirty = True

    def truncate(self, path: str, size: int) -> None:
        with self.open_file(path, "r+") as handle:
            handle.truncate(size)

    # -- flushing ---------------------------------------------------------------------

    def flush(self, durable: bool = True) -> str:
        """Write tag tables and the manifest (atomically); return the new volume tag."""
        if self._closed:
            raise VolumeError("the volume is closed")
        if not self.dirty:
            return self.tag
        unneeded_tables = []
        for state in list(self._open.values()):
            if not state.dirty:
                continue
            if durable:
                os.fsync(state.fd)
            if not state.unlinked:
                entry = self.manifest.entries[state.path]
                if self._store_tags(state, entry, durable):
                    unneeded_tables.append(self._tags_path(state.file_id))
                entry.update(size=state.size, mtime=time.time())
            state.dirty = False
            if state.refs == 0:
                os.close(state.fd)
                del self._open[state.file_id]
        if durable:
            for directory in self._new_dirs:
                _fsync_directory(directory)
            self._new_dirs.clear()
        self.manifest.generation += 1
        sealed = self.manifest.seal(self.keys.manifest)
        self._write_metadata(f"{self.root}/manifest", sealed, durable)
        self.tag = volume_tag(sealed)
        for table in unneeded_tables:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(table)
        for file_id in self._pending_deletes:
            if file_id not in self._open:
                for path in (self._object(file_id), self._tags_path(file_id)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        self._pending_deletes = [f for f in self._pending_deletes if f in self._open]
        self._dirty = False
        self._keep_reserve(len(sealed))
        return self.tag

    # -- a full disk ------------------------------------------------------------------

    def _write_metadata(self, path: str, data: bytes, durable: bool) -> None:
        """``_write_atomic``; on a full disk, once more with the reserve's space, so that a
        flush (and the deletes it carries out) still succeeds. ENOSPC only when even that
        space does not suffice: the old file stays whole either way."""
        try:
            _write_atomic(path, data, durable)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._release_reserve():
                raise
            _write_atomic(path, data, durable)

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

    def _keep_reserve(self, manifest_size: int) -> None:
        """Allocate DIR/reserve back up to what metadata needs, where the disk has room."""
        wanted = max(RESERVE_MIN, 2 * manifest_size)
        if self.reserve_size >= wanted:
            return
        fd = os.open(f"{self.root}/reserve", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, wanted)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EOPNOTSUPP):
                raise
            os.ftruncate(fd, 0)  # no room now: an empty reserve, allocated at a later flush
        finally:
            os.close(fd)

    def close(self) -> str:
        """Flush and release the volume; return the final tag."""
        if self._closed:
            return self.tag
        tag = self.flush()
        for state in self._open.values():
            os.close(state.fd)
        self._open.clear()
        os.close(self._lock_fd)
        self._closed = True
        return tag

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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

    def _check(self, writing: bool) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        if writing and not self.writable:
            raise _oserror(errno.EBADF, self.path)
        if not writing and not self.readable:
            raise _oserror(errno.EBADF, self.path)

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
        self._check(True)
        if self.append:
            self._pos = self._state.size
        written = self._volume.write_at(self._state, self._pos, bytes(data))
        self._pos += written
        return written

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
        """Write ``data`` at ``offset``; the caller's buffer is only read during the call."""
        self._check(True)
        return self._volume.write_at(self._state, offset, data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._state.size}[whence]
        if base + offset < 0:
            raise _oserror(errno.EINVAL, self.path)
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._check(True)
        target = self._pos if size is None else size
        self._volume._resize(self._state, target)
        return target

    def flush(self) -> None:
        """Data is in the object already; tag tables and the manifest follow Volume.flush()."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._volume._release(self._state)

    def __enter__(self) -> "VolumeFile":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _chunks(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def _dir_entry(mode: int) -> dict[str, Any]:
    return {"type": "dir", "mode": mode & 0o7777, "mtime": time.time()}


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (os.pwrite may write fewer); ENOSPC and
    every other error raise."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_atomic(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a reader, or a crash, sees the old or the new
    file whole: written aside completely (a short write or ENOSPC raises, and the old file
    stays), synced, renamed over, the directory synced."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            _pwrite_all(fd, data, 0)
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
        _fsync_directory(os.path.dirname(path))


def _fsync_directory(path: str | Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_header(root: Path) -> dict[str, Any]:
    try:
        header: dict[str, Any] = dict(json.loads((root / "volume.json").read_text()))
    except FileNotFoundError:
        raise VolumeError(f"{root} is not a veil volume (no volume.json)") from None
    except ValueError:
        raise IntegrityError(f"{root}/volume.json is not valid JSON") from None
    if header.get("format") != FORMAT:
        raise VolumeError(f"{root} is not a veil volume")
    if header.get("version") != VERSION:
        raise VolumeError(
            f"volume format version {header.get('version')} is not supported (this veil reads {VERSION})"
        )
    if header.get("mode") not in MODES or not isinstance(header.get("chunk_size"), int):
        raise IntegrityError(f"{root}/volume.json is damaged")
    try:
        if len(bytes.fromhex(str(header["volume_id"]))) != 16:
            raise ValueError
    except (KeyError, ValueError):
        raise IntegrityError(f"{root}/volume.json has no valid volume id") from None
    return header


def _lock(root: Path) -> int:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VolumeBusy(f"{root} is open in another process") from None
    return fd
