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


def overwrite_randomly(volume: Volume, path: str, rnd: random.Random, model: bytearray, count: int) -> None:
    with volume.open_file(path, "r+") as handle:
        for _ in range(count):
            at = rnd.randrange(CHUNKS) * CS + rnd.randrange(CS - 100)
            data = rnd.randbytes(100)
            handle.pwrite(data, at)
            model[at : at + 100] = data


def test_overwrites_past_the_threshold_go_to_the_second_slot_and_read_back(volume: Volume) -> None:
    rnd = random.Random(1)
    model = bytearray(rnd.randbytes(CHUNKS * CS))
    with volume.open_file("/f", "w") as handle:
        handle.write(model)
    volume.flush()
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
    model = bytearray(rnd.randbytes(CHUNKS * CS))
    with volume.open_file("/f", "w") as handle:
        handle.write(model)
    committed = {volume.flush(): bytes(model)}
    last = volume.tag
    for round_ in range(6):
        overwrite_randomly(volume, "/f", rnd, model, 150)
        copy = tmp_path / f"crash-{round_}"
        shutil.copytree(volume.root, copy, ignore=shutil.ignore_patterns(".lock"))
        with Volume.open(copy, key_of(volume), last) as reopened, reopened.open_file("/f") as handle:
            assert reopened.tag == last
            assert handle.read() == committed[last]
        assert verify_volume(copy, key_of(volume), last)[1] == []
        last = volume.flush(durable=round_ % 2 == 0)
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
