"""A chunk's two slots (docs/volume-format.md, "Two slots"): past SPILL_AT, overwrites of
durable chunks go to the slot that does not hold the durable record (the object ``ID`` or
``ID.b``), so a large random-write load writes each record once; the durable record stays
whole until the commit that replaces it is durable.

A crash is simulated as in test_journal: the storage copied while the volume is open.
"""

import json
import random
import shutil
from pathlib import Path

import pytest

from veil.volume import Volume, verify_volume
from veil.volume import volume as volume_module
from veil.volume.volume import DEFAULT_CHUNK

CS = DEFAULT_CHUNK
CHUNKS = 64


@pytest.fixture(autouse=True)
def small_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_module, "SPILL_AT", 4 * (CS + 64))  # a few records


def key_of(volume: Volume) -> bytes:
    return volume.keys._root


def second_slots(volume: Volume) -> list[Path]:
    return sorted((volume.root / "objects").rglob("*.b"))


def committed_file(volume: Volume, rnd: random.Random) -> tuple[bytearray, str]:
    """/f with CHUNKS chunks of random bytes, committed: (its content, the tag)."""
    model = bytearray(rnd.randbytes(CHUNKS * CS))
    with volume.open_file("/f", "w") as handle:
        handle.write(model)
    return model, volume.flush()


def overwrite_randomly(volume: Volume, path: str, rnd: random.Random, model: bytearray, count: int) -> None:
    with volume.open_file(path, "r+") as handle:
        for _ in range(count):
            at = rnd.randrange(CHUNKS) * CS + rnd.randrange(CS - 100)
            data = rnd.randbytes(100)
            handle.pwrite(data, at)
            model[at : at + 100] = data


def test_overwrites_past_the_threshold_go_to_the_second_slot_and_read_back(volume: Volume) -> None:
    rnd = random.Random(1)
    model, _ = committed_file(volume, rnd)
    overwrite_randomly(volume, "/f", rnd, model, 200)
    assert second_slots(volume), "nothing was spilled"
    with volume.open_file("/f") as handle:
        assert handle.read() == model  # before the commit
    tag = volume.flush()
    with volume.open_file("/f") as handle:
        assert handle.read() == model
    volume.close()
    with Volume.open(volume.root, key_of(volume), tag) as reopened, reopened.open_file("/f") as handle:
        assert handle.read() == model  # each chunk found in the slot whose record has its tag
    assert verify_volume(volume.root, key_of(volume), tag)[1] == []


def test_a_crash_before_the_commit_keeps_every_durable_record(volume: Volume, tmp_path: Path) -> None:
    """Rounds of overwrites, each ending in a commit, with crash copies taken in between:
    a copy opens at the last commit, byte for byte, whichever slot each chunk is in."""
    rnd = random.Random(2)
    model, first = committed_file(volume, rnd)
    committed = {first: bytes(model)}
    last = volume.tag
    for round_ in range(6):
        overwrite_randomly(volume, "/f", rnd, model, 150)
        copy = tmp_path / f"crash-{round_}"
        shutil.copytree(volume.root, copy, ignore=shutil.ignore_patterns(".lock"))
        with Volume.open(copy, key_of(volume), last) as reopened, reopened.open_file("/f") as handle:
            assert reopened.tag == last
            assert handle.read() == committed[last]
        assert verify_volume(copy, key_of(volume), last)[1] == []
        last = volume.flush()
        committed[last] = bytes(model)
    volume.close()


def test_the_second_slot_goes_with_its_file_and_is_not_an_orphan(volume: Volume) -> None:
    rnd = random.Random(3)
    model = bytearray(rnd.randbytes(CHUNKS * CS))
    for name in ("/kept", "/cut", "/gone"):
        with volume.open_file(name, "w") as handle:
            handle.write(model)
    volume.flush()
    for name in ("/kept", "/cut", "/gone"):
        overwrite_randomly(volume, name, rnd, bytearray(model), 100)
    volume.flush()
    assert len(second_slots(volume)) == 3
    with volume.open_file("/cut", "w"):  # O_TRUNC: a new object; the old one and its slot go
        pass
    volume.unlink("/gone")
    tag = volume.flush()
    assert len(second_slots(volume)) == 1
    volume.close()
    tag, problems = verify_volume(volume.root, key_of(volume), tag, repair=True)
    assert problems == []
    assert len(second_slots(volume)) == 1  # repair kept the live file's second slot


def test_disk_usage_counts_both_slots(volume: Volume) -> None:
    rnd = random.Random(4)
    with volume.open_file("/f", "w") as handle:
        handle.write(rnd.randbytes(CHUNKS * CS))
    volume.flush()
    before = volume.stat("/f").blocks
    overwrite_randomly(volume, "/f", rnd, bytearray(CHUNKS * CS), 200)
    volume.flush()
    assert volume.stat("/f").blocks > before
    volume.close()


def test_a_version_2_volume_is_marked_3_when_opened_for_writing(volume: Volume) -> None:
    """Version 2 readers do not look in second slots: the header says 3 from the first
    writable open on, so they refuse the volume instead of reading a chunk as damaged."""
    root, key = volume.root, key_of(volume)
    volume.close()
    header = json.loads((root / "volume.json").read_text())
    assert header["version"] == 3
    header["version"] = 2
    (root / "volume.json").write_text(json.dumps(header))
    with Volume.open(root, key, None, readonly=True):
        assert json.loads((root / "volume.json").read_text())["version"] == 2
    with Volume.open(root, key, None):
        assert json.loads((root / "volume.json").read_text())["version"] == 3


def test_a_lazy_commit_leaves_moved_chunks_to_the_next_durable_one(volume: Volume, tmp_path: Path) -> None:
    """The mount's periodic commits are lazy (nothing synced): they must not name records in
    a chunk's other slot, which may not be on disk yet. Those chunks keep their durable
    record in the lazy commit's state, and the next durable commit names the new ones."""
    rnd = random.Random(5)
    model, _ = committed_file(volume, rnd)
    durable = bytes(model)
    overwrite_randomly(volume, "/f", rnd, model, 200)
    assert second_slots(volume)
    with volume.open_file("/new", "w") as handle:
        handle.write(b"created before the lazy commit")
    lazy = volume.flush(durable=False)
    assert volume.dirty  # the moved chunks wait
    assert volume.flush(durable=False) == lazy  # nothing else to commit: no empty record
    copy = tmp_path / "crash"
    shutil.copytree(volume.root, copy, ignore=shutil.ignore_patterns(".lock"))
    with Volume.open(copy, key_of(volume), lazy) as reopened:
        assert reopened.open_file("/new").read() == b"created before the lazy commit"
        assert reopened.open_file("/f").read() == durable
    with volume.open_file("/f") as handle:
        assert handle.read() == model
    final = volume.flush()
    assert final != lazy and not volume.dirty
    volume.close()
    with Volume.open(volume.root, key_of(volume), final) as reopened, reopened.open_file("/f") as handle:
        assert handle.read() == model


def test_a_lazy_commit_moves_overwrites_kept_aside_and_syncs_nothing(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overwrites below the threshold are kept aside; putting them in place after a commit
    needs that commit durable. A periodic (lazy) commit moves them to their other slot
    instead and stays lazy: no sync while the mount's writers wait (a random-write load
    synced every 2 s before), the durable records untouched until a durable commit."""
    rnd = random.Random(7)
    model, first = committed_file(volume, rnd)
    durable = bytes(model)
    overwrite_randomly(volume, "/f", rnd, model, 2)  # below SPILL_AT: kept aside
    assert volume._kept_bytes and not second_slots(volume)
    with volume.open_file("/new", "w") as handle:
        handle.write(b"created before the lazy commit")

    def no_sync(*_: object) -> None:
        raise AssertionError("a lazy commit synced")

    with monkeypatch.context() as patch:
        patch.setattr(volume_module, "syncfs", no_sync)
        patch.setattr(volume_module.os, "fsync", no_sync)
        lazy = volume.flush(durable=False)
    assert volume.lazy and volume._kept_bytes == 0 and second_slots(volume)
    copy = tmp_path / "crash"
    shutil.copytree(volume.root, copy, ignore=shutil.ignore_patterns(".lock"))
    with Volume.open(copy, key_of(volume), first) as reopened:
        assert reopened.open_file("/f").read() == durable
        assert reopened.open_file("/new").read() == b"created before the lazy commit"
    with volume.open_file("/f") as handle:
        assert handle.read() == model
    final = volume.flush()
    assert final != lazy and not volume.lazy
    volume.close()
    with Volume.open(volume.root, key_of(volume), final) as reopened, reopened.open_file("/f") as handle:
        assert handle.read() == model


def test_records_in_the_second_slot_are_found_after_reopening_a_cut_and_a_regrowth(
    volume: Volume, tmp_path: Path
) -> None:
    """Opened again, a file's slots are found by tag as chunks are touched; chunks cut away
    (still durable until the commit) are found before their tags go, so writing them again
    never lands on their durable record (found by the model test: a record lost)."""
    rnd = random.Random(6)
    model, _ = committed_file(volume, rnd)
    overwrite_randomly(volume, "/f", rnd, model, 300)
    tag = volume.flush()
    assert second_slots(volume)
    root, key = volume.root, key_of(volume)
    volume.close()
    with Volume.open(root, key, tag) as reopened:
        with reopened.open_file("/f", "r+") as handle:
            handle.truncate(10 * CS + 7)
            handle.pwrite(rnd.randbytes(CHUNKS * CS - 10 * CS), 10 * CS)  # the cut chunks again
        copy = tmp_path / "crash"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".lock"))
        with Volume.open(copy, key, tag) as crashed, crashed.open_file("/f") as handle:
            assert handle.read() == model  # the last commit, whole
