"""Layer tar streams: reading them into the merged file tree, and writing new ones.

``MergedTree`` applies layers the way an unpacker does (whiteouts, opaque directories,
implicit parent directories as 0755 root), recording for each path the metadata the image
measurement covers and where its content came from. ``LayerWriter`` writes a gzip layer
deterministically and returns its descriptor and diff id.
"""

import gzip
import hashlib
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from veil.image.errors import ImageError
from veil.image.oci import LAYER_GZIP, Descriptor, Layout
from veil.tee.image_measure import TreeEntry, excluded, tree_digest, under
from veil.tee.measure import stream_sha256

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def member_path(name: str) -> str | None:
    """A tar member name as an absolute path in the image; None for the root itself."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"a layer entry escapes the root: {name}")
    return "/" + "/".join(parts) if parts else None


@dataclass(frozen=True)
class Node:
    entry: TreeEntry
    layer: int  # where the content comes from (files)
    member: str


_TYPES = {
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
}


class MergedTree:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def _remove(self, path: str) -> None:
        """Drop ``path`` and, if it is a directory, everything under it. Every node's
        parents are nodes too, so a path that is not one has nothing under it."""
        node = self.nodes.pop(path, None)
        if node is not None and node.entry.type == "dir":
            for key in [k for k in self.nodes if under(k, path)]:
                del self.nodes[key]

    def _parents(self, path: str) -> None:
        parts = path.split("/")[1:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:depth])
            node = self.nodes.get(parent)
            if node is None or node.entry.type != "dir":
                self._remove(parent)
                self.nodes[parent] = Node(TreeEntry(parent, "dir", 0o755, 0, 0), -1, "")

    def apply(self, index: int, stream: IO[bytes]) -> None:
        """Apply one layer: its whiteouts to the lower layers first, then its entries."""
        entries: list[tuple[str, tarfile.TarInfo, str | None]] = []
        whiteouts: list[str] = []
        opaque: list[str] = []
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    path = member_path(member.name)
                    if path is None:
                        continue
                    name = path.rsplit("/", 1)[1]
                    if name == OPAQUE:
                        opaque.append(path.rsplit("/", 1)[0] or "/")
                    elif name.startswith(WHITEOUT):
                        whiteouts.append(path.rsplit("/", 1)[0] + "/" + name[len(WHITEOUT) :])
                    else:
                        content = tar.extractfile(member) if member.isreg() else None
                        digest = stream_sha256(content) if content is not None else None
                        entries.append((path, member, digest))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ImageError(f"layer {index + 1} is not a readable tar stream: {exc}") from None
        for directory in opaque:
            for key in [k for k in self.nodes if k != directory and under(k, directory)]:
                del self.nodes[key]
        for path in whiteouts:
            self._remove(path)
        for path, member, digest in entries:
            self._add(index, path, member, digest)

    def _add(self, index: int, path: str, member: tarfile.TarInfo, digest: str | None) -> None:
        self._parents(path)
        mode = member.mode & 0o7777
        if member.islnk():
            target = member_path(member.linkname)
            found = self.nodes.get(target) if target else None
            if found is None or found.entry.type != "file":
                raise ImageError(f"hard link {path} points to {member.linkname}, which is not a file")
            self._remove(path)
            self.nodes[path] = replace(found, entry=replace(found.entry, path=path))
            return
        kind = "file" if member.isreg() else _TYPES.get(member.type)
        if kind is None:
            raise ImageError(f"unsupported layer entry type for {path}")
        existing = self.nodes.get(path)
        if not (kind == "dir" and existing is not None and existing.entry.type == "dir"):
            self._remove(path)
        entry = TreeEntry(
            path,
            kind,
            mode,
            member.uid,
            member.gid,
            sha256=digest,
            target=member.linkname if kind == "symlink" else None,
        )
        self.nodes[path] = Node(entry, index, member.name)

    def measurement(self, extra_excluded: list[str]) -> bytes:
        return tree_digest(n.entry for p, n in self.nodes.items() if not excluded(p, extra_excluded))


class _Hashing:
    """A write-only stream that hashes and counts what passes through."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


@dataclass(frozen=True)
class WrittenLayer:
    descriptor: Descriptor
    diff_id: str


class LayerWriter:
    """Writes one gzip layer into ``layout``; entries are added in the caller's order."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._file, self._path = layout.temporary_blob()
        self._compressed = _Hashing(self._file)
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._compressed, mtime=0, compresslevel=6)
        self._plain = _Hashing(self._gzip)  # type: ignore[arg-type]
        self.tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
            fileobj=self._plain, mode="w|", format=tarfile.PAX_FORMAT
        )

    def add(self, info: tarfile.TarInfo, content: IO[bytes] | None = None) -> None:
        self.tar.addfile(info, content)

    def finish(self) -> WrittenLayer:
        self.tar.close()
        self._gzip.close()
        self._file.close()
        digest = "sha256:" + self._compressed.digest.hexdigest()
        self.layout.commit_blob(self._path, digest)
        return WrittenLayer(
            Descriptor(LAYER_GZIP, digest, self._compressed.size), "sha256:" + self._plain.digest.hexdigest()
        )

    def abandon(self) -> None:
        self.tar.close()
        self._gzip.close()
        self._file.close()
        self._path.unlink(missing_ok=True)


@contextmanager
def new_layer(layout: Layout) -> Iterator[LayerWriter]:
    writer = LayerWriter(layout)
    try:
        yield writer
    except BaseException:
        writer.abandon()
        raise


def fixed_info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    """A tar header with nothing that varies between runs: mtime 0, root, no user names."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def filter_layer(
    layout: Layout, descriptor: Descriptor, protected: list[str], target: Layout
) -> WrittenLayer | None:
    """Rewrite a layer without any entry at or under a protected path; None when it has none
    (the blob is then reused as it is)."""

    def hit(name: str) -> bool:  # whiteouts inside a protected path go too
        path = member_path(name)
        return path is not None and any(under(path, p) for p in protected)

    with layout.open_blob(descriptor) as blob, tarfile.open(fileobj=blob, mode="r|*") as tar:
        if not any(hit(m.name) for m in tar):
            return None
    with (
        layout.open_blob(descriptor) as blob,
        tarfile.open(fileobj=blob, mode="r|*") as tar,
        new_layer(target) as writer,
    ):
        for member in tar:
            if hit(member.name):
                continue
            writer.add(member, tar.extractfile(member) if member.isreg() else None)
        return writer.finish()


def extract_files(layout: Layout, descriptor: Descriptor, wanted: dict[str, list[Path]]) -> None:
    """Copy the members named in ``wanted`` (member name -> files) out of a layer."""
    with layout.open_blob(descriptor) as blob, tarfile.open(fileobj=blob, mode="r|*") as tar:
        for member in tar:
            destinations = wanted.get(member.name)
            source = tar.extractfile(member) if destinations and member.isreg() else None
            if not destinations or source is None:
                continue
            first = destinations[0]
            first.parent.mkdir(parents=True, exist_ok=True)
            with first.open("wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
            for other in destinations[1:]:  # hard links to the same content
                other.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(first, other)


def layer_paths(path: Path) -> Iterator[Path]:
    """Every file and directory under ``path``, parents first, in a fixed order."""
    for child in sorted(path.iterdir()):
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from layer_paths(child)
