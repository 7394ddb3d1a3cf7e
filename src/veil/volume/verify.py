"""Checking a whole volume: tag, manifest, journal, every chunk of every file, and objects
no inode refers to (what a crash can leave)."""

import os
from dataclasses import dataclass
from pathlib import Path

from veil.volume.errors import IntegrityError
from veil.volume.volume import Volume

_BLOCK = 1 << 20
ORPHAN = "an object no file refers to (added outside veil, or left by a crash)"
TORN = "bytes after the last complete commit, not part of the volume (a crash during a commit, or damage)"


@dataclass(frozen=True)
class VolumeProblem:
    path: str
    reason: str
    #: an object no file refers to: safe to delete (``repair``)
    orphan: bool = False


def verify_volume(
    root: Path, key: bytes, expected_tag: str | None = None, repair: bool = False
) -> tuple[str, list[VolumeProblem]]:
    """(the volume's tag, every problem found). A wrong key, a tag the volume does not
    descend from, or a damaged manifest raise at once: nothing below them can be trusted.
    Read-only, except that ``repair`` deletes the objects no inode refers to (after the
    manifest and journal authenticated, so they are not data of this volume's current
    state); they are still listed, marked orphan."""
    problems: list[VolumeProblem] = []
    with Volume.open(root, key, expected_tag, readonly=True) as volume:
        if volume.journal is not None and volume.journal.tail:
            problems.append(VolumeProblem("journal", f"{volume.journal.tail} {TORN}"))
        referenced: set[str] = set()
        for inode in volume.tree.inodes.values():
            if inode.file_id is not None:  # its slots and its checkpoint's table
                referenced.update(
                    os.path.basename(name) for name in volume._files_of(inode.file_id, inode.root)
                )
        for path, inode in volume.tree.walk():
            if inode.type != "file":
                continue
            try:
                with volume.open_file(path) as handle:
                    position = 0
                    while position < handle.size:
                        position += len(handle.pread(_BLOCK, position))
            except IntegrityError as exc:
                problems.append(VolumeProblem(path, str(exc).removeprefix(f"{path}: ")))
        for item in sorted((root / "objects").rglob("*")):
            if item.is_file() and item.name not in referenced:
                problems.append(VolumeProblem(str(item.relative_to(root)), ORPHAN, orphan=True))
                if repair:
                    item.unlink()
        tag = volume.tag
    return tag, problems
