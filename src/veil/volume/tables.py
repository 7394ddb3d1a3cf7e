"""Tag tables and chunk indexes: a table as stored (packed when mostly holes), and the
small arithmetic every part of a volume shares (docs/volume-format.md, "Per-file
integrity: the tag table")."""

import hmac
import zlib
from collections.abc import Container, Iterable

from veil.volume.chunks import TAG, tags_root

HOLE = bytes(TAG)


_PACKED = b"veil-tags-z1\n"


def pack_table(table: bytes | bytearray) -> bytes:
    """A tag table as ID.tags stores it: as it is, or compressed when holes make it
    mostly zeros (a 2 GiB sparse file has 4 MiB of table, nearly all holes)."""
    if table.count(HOLE) * 2 < len(table) // TAG:
        return bytes(table)
    return _PACKED + zlib.compress(bytes(table), 1)


def unpack_table(stored: bytes, root: str, length: int) -> bytes:
    """ID.tags as a table (the root, over the table itself, decides if it is right); a
    compressed one expands to at most ``length`` bytes, whatever it claims."""
    if stored.startswith(_PACKED) and not hmac.compare_digest(tags_root(stored), root):
        try:
            return zlib.decompressobj().decompress(stored[len(_PACKED) :], length + 1)
        except zlib.error:
            return stored
    return stored


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def is_hole(tags: bytes | bytearray, index: int) -> bool:
    return tags.startswith(HOLE, index * TAG)  # no slice copied: runs per random request


def has_hole(tags: bytes | bytearray, first: int, last: int) -> bool:
    """Whether any of chunks first..last is a hole (a search for zeros first: real tags
    almost never hold 16 zero bytes, so the common answer costs one C-level scan)."""
    view = bytes(tags[first * TAG : (last + 1) * TAG])
    at = view.find(HOLE)
    while at >= 0:
        if at % TAG == 0:
            return True
        at = view.find(HOLE, at + 1)
    return False


def runs(indices: Iterable[int], apart: Container[int] = ()) -> list[tuple[int, int]]:
    """Consecutive runs (first, last) of sorted ``indices``; a run never has members both
    in and out of ``apart`` (chunks in the second slot, and the others)."""
    found: list[tuple[int, int]] = []
    for index in sorted(indices):
        if found and found[-1][1] == index - 1 and ((index in apart) == (found[-1][1] in apart)):
            found[-1] = (found[-1][0], index)
        else:
            found.append((index, index))
    return found
