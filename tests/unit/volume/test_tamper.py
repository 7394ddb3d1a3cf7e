"""Every tampering the issue lists, in both modes: detected, named, and nothing crashes."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from veil.volume import IntegrityError, StaleVolume, Volume, VolumeBusy, WrongKey, verify_volume
from veil.volume.volume import DEFAULT_CHUNK

MODES = ["encrypted", "authenticated"]
CHUNK = DEFAULT_CHUNK


class Fixture:
    def __init__(self, root: Path, mode: str) -> None:
        self.root = root / "vol"
        self.key = os.urandom(32)
        with Volume.create(self.root, self.key, mode) as volume:
            volume.mkdir("/d")
            for name, size in (("/d/a", 3 * CHUNK + 100), ("/d/b", 3 * CHUNK + 100), ("/c", 10)):
                with volume.open_file(name, "w") as handle:
                    handle.write(bytes([len(name)]) * size)
            self.ids = {p: volume.file_id(p) for p in ("/d/a", "/d/b", "/c")}
            self.tag = volume.flush()
        self.stride = CHUNK + (28 if mode == "encrypted" else 16)

    def obj(self, path: str, suffix: str = "") -> Path:
        """The object of ``path``, or with suffix ".tags" its current tag table (ID.R.tags)."""
        file_id = self.ids[path]
        directory = self.root / "objects" / file_id[:2]
        if suffix == ".tags":
            [table] = directory.glob(f"{file_id}.*.tags")
            return table
        return directory / (file_id + suffix)

    def problems(self) -> dict[str, str]:
        _, found = verify_volume(self.root, self.key, self.tag)
        return {p.path: p.reason for p in found}

    def read(self, path: str) -> bytes:
        with Volume.open(self.root, self.key) as volume, volume.open_file(path) as handle:
            return handle.read()


@pytest.fixture(params=MODES)
def vol(request: pytest.FixtureRequest, tmp_path: Path) -> Fixture:
    return Fixture(tmp_path, request.param)


def _edit(path: Path, change: Callable[[bytearray], None]) -> None:
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))


def test_an_untouched_volume_verifies(vol: Fixture) -> None:
    assert vol.problems() == {}
    assert vol.read("/d/a") == bytes([4]) * (3 * CHUNK + 100)


@pytest.mark.parametrize("where", [0, 20, 4096, -17, -1])
def test_bit_flip_in_a_data_chunk(vol: Fixture, where: int) -> None:
    _edit(vol.obj("/d/a"), lambda d: d.__setitem__(where, d[where] ^ 1))
    assert "/d/a" in vol.problems()
    with pytest.raises(IntegrityError):
        vol.read("/d/a")
    assert vol.read("/d/b") == bytes([4]) * (3 * CHUNK + 100), "other files are unaffected"


def test_bit_flip_in_the_headers(vol: Fixture) -> None:
    _edit(vol.root / "manifest", lambda d: d.__setitem__(40, d[40] ^ 1))
    with pytest.raises(IntegrityError):
        Volume.open(vol.root, vol.key)


def test_header_fields_that_disagree_with_the_manifest(vol: Fixture) -> None:
    header = json.loads((vol.root / "volume.json").read_text())
    header["chunk_size"] = 2 * CHUNK
    (vol.root / "volume.json").write_text(json.dumps(header))
    with pytest.raises(IntegrityError, match="does not match the sealed manifest"):
        Volume.open(vol.root, vol.key)


def test_a_changed_key_check_or_wrong_key_is_refused(vol: Fixture) -> None:
    with pytest.raises(WrongKey):
        Volume.open(vol.root, os.urandom(32))


def test_bit_flip_in_the_tag_table(vol: Fixture) -> None:
    _edit(vol.obj("/d/a", ".tags"), lambda d: d.__setitem__(3, d[3] ^ 1))
    assert "tag table is not the current one" in vol.problems()["/d/a"]


def test_truncation_is_refused_and_bytes_past_the_size_are_ignored(vol: Fixture) -> None:
    """The size is sealed in the manifest: a truncated object is refused; bytes past it
    (records a crash left after writes no commit recorded) are never read."""
    _edit(vol.obj("/d/a"), lambda d: d.__delitem__(slice(-5, None)))
    _edit(vol.obj("/d/b"), lambda d: d.extend(b"more"))
    found = vol.problems()
    assert "shorter than its size" in found["/d/a"]
    assert "/d/b" not in found
    assert vol.read("/d/b") == bytes([4]) * (3 * CHUNK + 100)


def test_chunks_reordered(vol: Fixture) -> None:
    def swap(data: bytearray) -> None:
        s = vol.stride
        data[0:s], data[s : 2 * s] = data[s : 2 * s], data[0:s]

    _edit(vol.obj("/d/a"), swap)
    assert "/d/a" in vol.problems()


def test_two_files_contents_swapped(vol: Fixture) -> None:
    for suffix in ("", ".tags"):
        a, b = vol.obj("/d/a", suffix), vol.obj("/d/b", suffix)
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
    found = vol.problems()
    assert "/d/a" in found and "/d/b" in found


def test_a_file_moved_to_another_place(vol: Fixture) -> None:
    target = vol.root / "objects" / "ff" / ("ff" * 16)
    target.parent.mkdir(exist_ok=True)
    vol.obj("/c").rename(target)
    found = vol.problems()
    assert "stored object is missing" in found["/c"]
    assert any("no file refers to" in reason for reason in found.values())


def test_an_older_copy_of_one_file_restored(vol: Fixture, tmp_path: Path) -> None:
    old = {s: vol.obj("/d/a", s).read_bytes() for s in ("", ".tags")}
    with Volume.open(vol.root, vol.key) as volume, volume.open_file("/d/a", "r+") as handle:
        handle.write(b"new content")
    with Volume.open(vol.root, vol.key) as volume:
        vol.tag = volume.tag
    for suffix, data in old.items():
        vol.obj("/d/a", suffix).write_bytes(data)
    assert "not the current one" in vol.problems()["/d/a"]


def test_an_older_copy_of_the_whole_volume_restored(vol: Fixture, tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    shutil.copytree(vol.root, snapshot)
    with Volume.open(vol.root, vol.key) as volume, volume.open_file("/c", "w") as handle:
        handle.write(b"newer")
    with Volume.open(vol.root, vol.key) as volume:
        newest = volume.tag
    shutil.rmtree(vol.root)
    shutil.copytree(snapshot, vol.root)
    with pytest.raises(StaleVolume, match="older copy"):
        Volume.open(vol.root, vol.key, expected_tag=newest)
    with pytest.raises(StaleVolume):
        verify_volume(vol.root, vol.key, newest)


def test_an_older_manifest_alone_restored(vol: Fixture) -> None:
    old = (vol.root / "manifest").read_bytes()
    with Volume.open(vol.root, vol.key) as volume:
        volume.mkdir("/new")
    with Volume.open(vol.root, vol.key) as volume:
        newest = volume.tag
    (vol.root / "manifest").write_bytes(old)
    with pytest.raises(StaleVolume):
        Volume.open(vol.root, vol.key, expected_tag=newest)


def test_a_file_deleted(vol: Fixture) -> None:
    vol.obj("/c").unlink()
    assert "stored object is missing" in vol.problems()["/c"]


def test_a_foreign_file_added(vol: Fixture) -> None:
    foreign = vol.root / "objects" / "ab" / ("ab" * 16)
    foreign.parent.mkdir(exist_ok=True)
    foreign.write_bytes(b"planted")
    assert any("no file refers to" in reason for reason in vol.problems().values())


def test_only_one_process_opens_a_volume(vol: Fixture) -> None:
    with Volume.open(vol.root, vol.key), pytest.raises(VolumeBusy):
        Volume.open(vol.root, vol.key)


def test_encrypted_mode_hides_names_and_contents(tmp_path: Path) -> None:
    key = os.urandom(32)
    with (
        Volume.create(tmp_path / "v", key, "encrypted") as volume,
        volume.open_file("/secret-name.txt", "w") as f,
    ):
        f.write(b"PLAINTEXT-MARKER" * 100)
    for path in (tmp_path / "v").rglob("*"):
        if path.is_file():
            assert b"PLAINTEXT-MARKER" not in path.read_bytes()
            assert b"secret-name" not in path.read_bytes()
