"""Commits and the journal (docs/volume-format.md, "Commit", "The journal", "Opening after a
crash"): what a commit acknowledged is in every later state, what it did not is either
wholly there or wholly absent, and no older state passes for the current one.

A crash of the process that has the volume open is simulated by copying the storage while
the volume is still open (the page cache survives a killed process); the copy is then
opened as the next run would.
"""

import os
import shutil
from pathlib import Path

import pytest

from veil.volume import IntegrityError, StaleVolume, Volume, verify_volume
from veil.volume.volume import CHECKPOINT_AT, DEFAULT_CHUNK

CS = DEFAULT_CHUNK


def key_of(volume: Volume) -> bytes:
    return volume.keys._root


def crash(volume: Volume, where: Path) -> Path:
    """The storage as a killed process leaves it: copied while the volume is open."""
    shutil.copytree(volume.root, where, ignore=shutil.ignore_patterns(".lock"))
    return where


def read(root: Path, key: bytes, path: str, tag: str | None = None) -> bytes:
    with Volume.open(root, key, tag) as opened, opened.open_file(path) as handle:
        return handle.read()


def write(volume: Volume, path: str, data: bytes, offset: int = 0, mode: str = "r+") -> None:
    if not volume.exists(path):
        mode = "w"
    with volume.open_file(path, mode) as handle:
        handle.pwrite(data, offset)


def test_a_commit_survives_a_crash_and_opens_without_anyone(volume: Volume, tmp_path: Path) -> None:
    write(volume, "/db", b"A" * (4 * CS))
    committed = volume.flush()
    write(volume, "/db", b"B" * 100, 10)  # overwrites a durable chunk: kept aside, not committed
    write(volume, "/new", b"never committed")
    copy = crash(volume, tmp_path / "after-crash")
    assert read(copy, key_of(volume), "/db", committed) == b"A" * (4 * CS)
    with Volume.open(copy, key_of(volume), committed) as reopened:
        assert not reopened.exists("/new")
        assert reopened.tag == committed
    assert verify_volume(copy, key_of(volume), committed)[1] == []


def test_an_overwrite_is_in_place_only_after_its_commit(volume: Volume, tmp_path: Path) -> None:
    """Writing a durable chunk in place before the commit would destroy the acknowledged
    version (issue #26: a rewrite-and-fsync loop lost whole files at kill -9)."""
    write(volume, "/f", bytes(range(256)) * 64)
    volume.flush()
    object_path = volume.root / "objects" / volume.file_id("/f")[:2] / volume.file_id("/f")
    before = object_path.read_bytes()
    write(volume, "/f", b"\xff" * 4096, 4096)
    assert object_path.read_bytes() == before, "nothing durable was touched"
    volume.flush()
    assert object_path.read_bytes() != before
    copy = crash(volume, tmp_path / "copy")
    assert read(copy, key_of(volume), "/f")[4096:8192] == b"\xff" * 4096


def test_cut_to_nothing_keeps_the_old_object_until_the_commit(volume: Volume, tmp_path: Path) -> None:
    write(volume, "/config", b"old and acknowledged" * 1000)
    volume.flush()
    with volume.open_file("/config", "w") as handle:  # O_TRUNC, then the new content
        handle.write(b"new, not yet committed")
    copy = crash(volume, tmp_path / "copy")
    assert read(copy, key_of(volume), "/config") == b"old and acknowledged" * 1000
    volume.flush()
    objects = [p.name for p in (volume.root / "objects").rglob("*") if p.is_file()]
    assert objects == [volume.file_id("/config")], "the old object was deleted"
    assert read(crash(volume, tmp_path / "later"), key_of(volume), "/config") == b"new, not yet committed"


def test_a_commit_writes_the_journal_not_the_manifest(volume: Volume) -> None:
    for index in range(200):
        write(volume, f"/f{index}", b"x" * 100)
    volume.checkpoint()
    manifest = (volume.root / "manifest").read_bytes()
    write(volume, "/f7", b"changed")
    before = (volume.root / "journal").stat().st_size
    volume.flush()
    assert (volume.root / "manifest").read_bytes() == manifest
    grown = (volume.root / "journal").stat().st_size - before
    assert grown < 1500, f"one small change costs a small record ({grown} bytes), whatever the volume holds"


def test_a_checkpoint_empties_the_journal_and_keeps_the_tag(volume: Volume, tmp_path: Path) -> None:
    write(volume, "/a", os.urandom(5 * CS))
    tag = volume.flush()
    assert (volume.root / "journal").stat().st_size > 0
    assert volume.checkpoint() == tag
    assert (volume.root / "journal").stat().st_size == 0
    copy = crash(volume, tmp_path / "copy")
    with Volume.open(copy, key_of(volume), tag) as reopened:
        assert reopened.tag == tag


def test_a_large_journal_is_checkpointed_on_its_own(volume: Volume) -> None:
    data = os.urandom(CS)
    write(volume, "/big", data * 64)
    volume.flush()
    written = 0
    while written < CHECKPOINT_AT + (2 << 20):
        write(volume, "/big", data, 0)  # overwrites: each commit journals the chunk
        volume.flush()
        written += len(data) + 200
    assert (volume.root / "journal").stat().st_size < CHECKPOINT_AT


def test_a_torn_commit_is_ignored_and_reported(volume: Volume, tmp_path: Path) -> None:
    """A crash while a commit record is written leaves part of it: not part of the state."""
    write(volume, "/a", b"first")
    tag = volume.flush()
    copy = crash(volume, tmp_path / "copy")
    with open(copy / "journal", "ab") as journal:
        journal.write((5000).to_bytes(4, "big") + os.urandom(1200))  # a record never finished
    found, problems = verify_volume(copy, key_of(volume), tag)
    assert found == tag
    assert [p.path for p in problems] == ["journal"] and "not part of the volume" in problems[0].reason
    assert read(copy, key_of(volume), "/a", tag) == b"first"
    with Volume.open(copy, key_of(volume), tag) as reopened:  # opened for writing: the tail is cut
        write(reopened, "/a", b"third")
        later = reopened.flush()
    assert read(copy, key_of(volume), "/a", later) == b"third"
    assert verify_volume(copy, key_of(volume), later)[1] == []


def test_a_removed_or_edited_commit_is_never_read_as_data(volume: Volume, tmp_path: Path) -> None:
    """Committed records are written in place after the commit: whoever removes or edits
    one (not a crash: a synced record does not tear) gets a refusal by tag, or EIO for the
    chunks it changed, never their older content passed off as current."""
    write(volume, "/a", b"first")
    first = volume.flush()
    write(volume, "/a", b"second")
    second = volume.flush()
    copy = crash(volume, tmp_path / "copy")
    data = bytearray((copy / "journal").read_bytes())
    data[-3] ^= 1
    (copy / "journal").write_bytes(bytes(data))
    with pytest.raises(StaleVolume, match="does not descend"):
        Volume.open(copy, key_of(volume), second)
    with pytest.raises(IntegrityError, match="not the current version"):
        read(copy, key_of(volume), "/a", first)


def test_an_older_copy_is_refused_a_newer_one_accepted(volume: Volume, tmp_path: Path) -> None:
    write(volume, "/a", b"one")
    held = volume.flush()  # what the CAS holds
    old = crash(volume, tmp_path / "old")
    write(volume, "/a", b"two")
    newer = volume.flush()
    descendant = crash(volume, tmp_path / "descendant")
    with Volume.open(descendant, key_of(volume), held) as reopened:  # advanced past the CAS: fine
        assert reopened.tag == newer
    with pytest.raises(StaleVolume):
        Volume.open(old, key_of(volume), newer)
    volume.checkpoint()
    compacted = crash(volume, tmp_path / "compacted")
    with pytest.raises(StaleVolume):
        Volume.open(compacted, key_of(volume), held)  # the CAS's tag is not in its history any more


def test_the_base_tag_survives_checkpoints(volume: Volume, tmp_path: Path) -> None:
    write(volume, "/a", b"one")
    held = volume.flush()
    volume.base = held  # the runtime reported it; later checkpoints keep it in the history
    for round_ in range(3):
        write(volume, "/a", bytes([round_]) * 10)
        volume.checkpoint()
    copy = crash(volume, tmp_path / "copy")
    with Volume.open(copy, key_of(volume), held) as reopened:
        assert reopened.open_file("/a").read() == bytes([2]) * 10


def test_a_file_open_but_unlinked_at_a_crash_is_removed(volume: Volume, tmp_path: Path) -> None:
    handle = volume.open_file("/temp", "w")
    handle.write(b"scratch" * 1000)
    volume.unlink("/temp")
    volume.flush()
    copy = crash(volume, tmp_path / "copy")
    handle.close()
    with Volume.open(copy, key_of(volume)) as reopened:
        assert reopened.tree.unreachable() == []
    assert verify_volume(copy, key_of(volume))[1] == [], "its object is gone too"


def test_a_damaged_tag_table_fails_its_file_only(volume: Volume, tmp_path: Path) -> None:
    write(volume, "/big", os.urandom(6 * CS))
    write(volume, "/other", b"fine")
    volume.checkpoint()
    write(volume, "/big", b"delta", 3 * CS)
    volume.flush()
    copy = crash(volume, tmp_path / "copy")
    [table] = (copy / "objects" / volume.file_id("/big")[:2]).glob(volume.file_id("/big") + ".*.tags")
    table.write_bytes(os.urandom(96))
    with Volume.open(copy, key_of(volume)) as reopened:
        assert reopened.open_file("/other").read() == b"fine"
        with pytest.raises(IntegrityError, match="tag table is not the current one"):
            reopened.open_file("/big")


def test_a_crash_inside_a_checkpoint_keeps_the_old_manifests_tables(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new tables are written before the new manifest: a crash between the two must
    leave the tables the old manifest names (issue #26's crash loop: "its tag table is not
    the current one" after a power cut during a checkpoint)."""
    write(volume, "/db", os.urandom(8 * CS))
    volume.checkpoint()  # the manifest names /db's table
    write(volume, "/db", os.urandom(CS), 2 * CS)
    write(volume, "/db", os.urandom(3 * CS), 8 * CS)  # the table grows and changes
    tag = volume.flush()
    expected = volume.open_file("/db").read()
    real = Volume._write_metadata
    copies: list[Path] = []

    def crash_before_the_manifest(self: Volume, path: str, data: bytes, durable: bool) -> None:
        if path.endswith("/manifest"):
            copies.append(crash(self, tmp_path / "during-checkpoint"))
            raise OSError(5, "the node lost power")
        real(self, path, data, durable)

    monkeypatch.setattr(Volume, "_write_metadata", crash_before_the_manifest)
    with pytest.raises(OSError, match="lost power"):
        volume.checkpoint()
    monkeypatch.undo()
    with Volume.open(copies[0], key_of(volume), tag) as reopened:
        assert reopened.open_file("/db").read() == expected
    assert verify_volume(copies[0], key_of(volume), tag)[1] == []


def test_cutting_inside_the_last_durable_chunk_waits_for_the_commit(volume: Volume, tmp_path: Path) -> None:
    """A cut that stays inside the last chunk must not shorten its durable record before the
    commit (the chunk count does not change, its length does)."""
    data = os.urandom(5 * CS + CS // 2)
    write(volume, "/wal", data)
    tag = volume.flush()
    with volume.open_file("/wal", "r+") as handle:
        handle.truncate(5 * CS + 100)
        copy = crash(volume, tmp_path / "copy")
    assert read(copy, key_of(volume), "/wal", tag) == data
    assert verify_volume(copy, key_of(volume), tag)[1] == []
    volume.flush()
    assert volume.open_file("/wal").read() == data[: 5 * CS + 100]
