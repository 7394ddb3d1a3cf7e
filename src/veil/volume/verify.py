"""Checking a whole volume: tag, manifest, every chunk of every file, and foreign objects."""

from dataclasses import dataclass
from pathlib import Path

from veil.volume.errors import IntegrityError
from veil.volume.volume import Volume

_BLOCK = 1 << 20


ORPHAN = "an object no file refers to (added outside veil, or left by a crash)"


@dataclass(frozen=True)
class VolumeProblem:
    path: str
    reason: str
    #: an object no file refers to: safe to delete (``repair``)
    orphan: bool = False


def verify_volume(
    root: Path, key: bytes, expected_tag: str | None = None, repair: bool = False
) -> tuple[str, list[VolumeProblem]]:
    """(the volume's tag, every problem found). A wrong key, a wrong tag or a damaged
    manifest raise at once: nothing below them can be trusted. ``repair`` deletes the
    objects no file refers to (after the manifest authenticated, so they are not data of
    this volume's current state); they are still listed, marked orphan."""
    problems: list[VolumeProblem] = []
    with Volume.open(root, key, expected_tag) as volume:
        referenced: set[str] = set()
        for path, entry in sorted(volume.manifest.entries.items()):
            if entry["type"] != "file":
                continue
            referenced.add(str(entry["id"]))
            if "root" in entry:  # its tag table is an object too (docs/volume-format.md)
                referenced.add(f"{entry['id']}.tags")
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
